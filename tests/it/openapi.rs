//! The OpenAPI document describes every endpoint the API serves, with its security.

use crate::common::{client, TestServer};
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

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn the_docs_page_renders_offline_in_a_browser() {
    let server = TestServer::start(|_| {});
    // The page and every asset come from portcullis itself.
    let page = client().get(server.url("/auth/docs")).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside assets: {html}"
    );
    for asset in [
        "/auth/docs/swagger-ui.css",
        "/auth/docs/swagger-ui-bundle.js",
        "/auth/docs/init.js",
    ] {
        assert!(html.contains(asset), "{asset} not referenced");
        let resp = client().get(server.url(asset)).send().unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        assert!(resp.bytes().unwrap().len() > 100, "{asset}");
    }
    // Rendered by a real browser: the operations appear in the DOM.
    let browser = chromium().expect("chromium is installed by the README's test command");
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(server.url("/auth/docs"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "portcullis accounts API",
        "/register",
        "/login",
        "/accounts_management/{id}",
        "/verify",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} not rendered; DOM:\n{}",
            &dom[..dom.len().min(3000)]
        );
    }
    assert!(
        dom.contains("opblock"),
        "Swagger UI did not render operations"
    );
}
