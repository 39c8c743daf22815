//! The OpenAPI document describes every endpoint the API serves, with its security.

mod common;

use common::{client, TestServer};
use serde_json::Value;

#[test]
fn the_openapi_document_describes_every_endpoint() {
    let server = TestServer::start(|_| {});
    let resp = client()
        .get(server.url("/auth/openapi.json"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["servers"][0]["url"], "/auth");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["service_token"]["in"], "header");
    assert_eq!(schemes["service_token"]["name"], "X-Service-Token");

    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/register", "post"),
        ("/verify-email", "get"),
        ("/verify-email/resend", "post"),
        ("/login", "post"),
        ("/logout", "post"),
        ("/recovery", "post"),
        ("/my_account/", "get"),
        ("/my_account/", "put"),
        ("/my_account/delete", "delete"),
        ("/accounts_management/", "get"),
        ("/accounts_management/", "post"),
        ("/accounts_management/{id}", "get"),
        ("/accounts_management/{id}", "put"),
        ("/accounts_management/{id}", "delete"),
        ("/audit", "get"),
        ("/verify", "post"),
    ];
    for (path, method) in expected {
        let op = &paths.get(path).unwrap_or_else(|| panic!("{path} missing"))[method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
    assert_eq!(
        paths["/verify"]["post"]["security"][0]
            .as_object()
            .unwrap()
            .len(),
        2,
        "bearer and service token"
    );
    assert!(paths["/my_account/"]["get"]["security"][0]["bearer"].is_array());
    // Every $ref points at a schema the document defines.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref to {name}");
    }
    assert!(
        schemas.contains_key("RegisterBody") && schemas.contains_key("UserView"),
        "{:?}",
        schemas.keys()
    );
    // The document itself needs no token, and its answer parses as the API's other answers do.
    assert!(schemas["RegisterBody"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "passphrase"));
}
