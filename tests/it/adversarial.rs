//! Hostile requests over raw TCP, each with its expected answer, and a check of exactly which
//! requests reached the (counting) echo upstream: request smuggling, premature upgrades, early
//! answers with a request hidden in the body, malformed request lines and headers, oversized
//! heads, and hostile JSON on the accounts API. Path confusion and rewrite headers are in
//! `paths.rs`, identity-header spoofing in every spelling and through `Connection:` in
//! `headers.rs`, oversized headers (431) and slow clients in `limits.rs`.

use crate::common::echo::Seen;
use crate::common::{client, parse_response, raw_exchange_for, EchoUpstream, TestServer};
use serde_json::Value;
use std::time::Duration;

/// One attack: the bytes sent on a fresh connection, the statuses the client must get (in
/// order, nothing more), and how many requests tagged with its name the upstream must receive.
struct Attack {
    name: &'static str,
    bytes: Vec<u8>,
    statuses: &'static [u16],
    upstream: usize,
}

/// A request the gate must never let through: the admin route needs a token with the admin
/// role, and the attacker has none. `tag` names it in the upstream's log should it get there.
fn smuggled(tag: &str) -> String {
    format!("GET /admin/smuggled-{tag} HTTP/1.1\r\nHost: x\r\n\r\n")
}

fn attack(
    name: &'static str,
    statuses: &'static [u16],
    upstream: usize,
    bytes: impl Into<Vec<u8>>,
) -> Attack {
    Attack {
        name,
        bytes: bytes.into(),
        statuses,
        upstream,
    }
}

fn post_head(name: &str, framing: &str) -> String {
    format!("POST /public/{name} HTTP/1.1\r\nHost: x\r\n{framing}\r\n")
}

fn attacks() -> Vec<Attack> {
    let s = smuggled;
    let mut list = vec![
        // Content-Length and Transfer-Encoding together: the body is chunked (pingora drops
        // the Content-Length), the upstream gets one chunked request, and the connection is
        // closed after the answer, so the bytes after the chunked body are never a request.
        attack(
            "cl-te",
            &[200],
            1,
            format!(
                "{}0\r\n\r\n{}",
                post_head(
                    "cl-te",
                    "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"
                ),
                s("cl-te")
            ),
        ),
        attack(
            "te-cl",
            &[200],
            1,
            format!(
                "{}0\r\n\r\n{}",
                post_head(
                    "te-cl",
                    "Transfer-Encoding: chunked\r\nContent-Length: 43\r\n"
                ),
                s("te-cl")
            ),
        ),
        attack(
            "cl-conflict",
            &[400],
            0,
            format!(
                "{}{}",
                post_head("cl-conflict", "Content-Length: 0\r\nContent-Length: 43\r\n"),
                s("cl-conflict")
            ),
        ),
        // Identical duplicates are one length (RFC 9110 §8.6).
        attack(
            "cl-same-twice",
            &[200],
            1,
            format!(
                "{}ab",
                post_head(
                    "cl-same-twice",
                    "Content-Length: 2\r\nContent-Length: 2\r\n"
                )
            ),
        ),
        attack(
            "cl-list",
            &[400],
            0,
            format!("{}ab", post_head("cl-list", "Content-Length: 2, 2\r\n")),
        ),
        attack(
            "cl-plus",
            &[400],
            0,
            format!("{}ab", post_head("cl-plus", "Content-Length: +2\r\n")),
        ),
        attack(
            "cl-hex",
            &[400],
            0,
            format!("{}ab", post_head("cl-hex", "Content-Length: 0x2\r\n")),
        ),
    ];
    // Obfuscated Transfer-Encoding: anything that is not plainly `chunked` is refused.
    for (name, te) in [
        ("te-xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("te-space-colon", "Transfer-Encoding : chunked\r\n"),
        (
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        (
            "te-two-lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        ("te-folded", "Transfer-Encoding:\r\n chunked\r\n"),
        ("te-gzip", "Transfer-Encoding: gzip\r\n"),
        ("te-vertical-tab", "Transfer-Encoding: \x0bchunked\r\n"),
    ] {
        list.push(attack(
            name,
            &[400],
            0,
            format!("{}0\r\n\r\n{}", post_head(name, te), s(name)),
        ));
    }
    // Spellings that do mean chunked are read as chunked; what follows the last chunk is not
    // a request the upstream ever sees (pingora closes a connection with bytes left over).
    for (name, te) in [
        ("te-upper", "Transfer-Encoding: CHUNKED\r\n"),
        ("te-tab", "Transfer-Encoding:\tchunked\r\n"),
        (
            "te-identity-chunked",
            "Transfer-Encoding: identity, chunked\r\n",
        ),
    ] {
        list.push(attack(
            name,
            &[200],
            1,
            format!("{}0\r\n\r\n{}", post_head(name, te), s(name)),
        ));
    }
    list.extend([
        // HTTP/1.0 has no chunked encoding (RFC 9112 §6.1).
        attack(
            "http10-chunked",
            &[400],
            0,
            format!(
                "POST /public/http10-chunked HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                s("http10-chunked")
            ),
        ),
        // Broken chunk framing is refused; the upstream, which has started receiving the
        // request, never gets a complete one.
        attack(
            "chunk-size-overflow",
            &[400],
            0,
            format!(
                "{}FFFFFFFFFFFFFFFFF1\r\nab\r\n0\r\n\r\n",
                post_head("chunk-size-overflow", "Transfer-Encoding: chunked\r\n")
            ),
        ),
        attack(
            "chunk-bare-lf",
            &[400],
            0,
            format!(
                "{}2\nab\n0\n\n{}",
                post_head("chunk-bare-lf", "Transfer-Encoding: chunked\r\n"),
                s("chunk-bare-lf")
            ),
        ),
        // A refusal sent before the body is read: the body (a complete request for a public
        // route) must not be taken as the next request.
        attack(
            "early-401-length",
            &[401],
            0,
            {
                let hidden = "GET /public/early-401-length HTTP/1.1\r\nHost: x\r\n\r\n";
                format!(
                    "POST /admin/x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}",
                    hidden.len()
                )
            },
        ),
        attack(
            "early-401-chunked",
            &[401],
            0,
            {
                let hidden = "GET /public/early-401-chunked HTTP/1.1\r\nHost: x\r\n\r\n";
                format!(
                    "POST /admin/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
                    hidden.len()
                )
            },
        ),
        // A GET body is a body, forwarded as such, never a second request.
        attack("get-with-body", &[200], 1, {
            let hidden = s("get-with-body");
            format!(
                "GET /public/get-with-body HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{hidden}",
                hidden.len()
            )
        }),
        // An Upgrade the upstream declines (200, not 101): the connection stays HTTP, so the
        // request pipelined behind it goes through the gate (401) instead of being tunnelled.
        attack(
            "upgrade-declined",
            &[200],
            1,
            format!(
                "GET /public/upgrade-declined?refuse_upgrade=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n{}",
                s("upgrade-declined")
            ),
        ),
        // Malformed heads.
        attack(
            "no-host-http11",
            &[400],
            0,
            "GET /public/no-host-http11 HTTP/1.1\r\n\r\n",
        ),
        attack(
            "no-host-http10",
            &[200],
            1,
            "GET /public/no-host-http10 HTTP/1.0\r\n\r\n",
        ),
        attack(
            "duplicate-host",
            &[400],
            0,
            "GET /public/duplicate-host HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\n\r\n",
        ),
        attack(
            "nul-in-header",
            &[400],
            0,
            "GET /public/nul-in-header HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        ),
        attack(
            "obs-fold",
            &[400],
            0,
            "GET /public/obs-fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        ),
        attack(
            "identity-space-colon",
            &[400],
            0,
            "GET /public/identity-space-colon HTTP/1.1\r\nHost: x\r\nX-Auth-User-Id : evil\r\n\r\n",
        ),
        attack(
            "http2-version",
            &[400],
            0,
            "GET /public/http2-version HTTP/2.0\r\nHost: x\r\n\r\n",
        ),
        attack(
            "h2-preface",
            &[400],
            0,
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
        attack(
            "connect",
            &[405],
            0,
            "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
        ),
        // pingora escapes an illegal request line (space → %20) rather than refusing it; the
        // escaped path is what is judged and what the upstream gets, so it cannot reach a route
        // the gate did not decide on.
        attack(
            "space-in-target",
            &[401],
            0,
            "GET /public/../admin/space-in-target x HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        attack(
            "long-target",
            &[400],
            0,
            format!(
                "GET /public/long-target/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(100_000)
            ),
        ),
        attack(
            "many-headers",
            &[400],
            0,
            format!(
                "GET /public/many-headers HTTP/1.1\r\nHost: x\r\n{}\r\n",
                "X-A: b\r\n".repeat(500)
            ),
        ),
        attack(
            "huge-header-line",
            &[431],
            0,
            format!(
                "GET /public/huge-header-line HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n",
                "b".repeat(200_000)
            ),
        ),
    ]);
    list
}

fn statuses(text: &str) -> Vec<u16> {
    text.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect()
}

fn tagged<'a>(seen: &'a [Seen], tag: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|s| {
            let path = s.target.split('?').next().unwrap_or("");
            path.rsplit('/').next() == Some(tag) || path.contains(&format!("/{tag}/"))
        })
        .collect()
}

#[test]
fn smuggling_and_malformed_requests_get_their_expected_answers() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let attacks = attacks();
    let answers: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = attacks
            .iter()
            .map(|a| {
                let addr = server.addr();
                scope.spawn(move || raw_exchange_for(addr, &a.bytes, Duration::from_secs(3)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Requests the upstream has started to receive finish (or fail) within moments.
    std::thread::sleep(Duration::from_millis(300));
    let seen = upstream.record.seen.lock().unwrap().clone();
    let mut failures = Vec::new();
    for (a, text) in attacks.iter().zip(&answers) {
        let got = statuses(text);
        if got != a.statuses {
            failures.push(format!(
                "{}: statuses {got:?}, expected {:?}\n{}",
                a.name,
                a.statuses,
                text.chars().take(300).collect::<String>()
            ));
        }
        let arrived = tagged(&seen, a.name);
        if arrived.len() != a.upstream {
            failures.push(format!(
                "{}: upstream received {} requests, expected {}: {:?}",
                a.name,
                arrived.len(),
                a.upstream,
                arrived.iter().map(|s| &s.target).collect::<Vec<_>>()
            ));
        }
    }
    for s in &seen {
        if s.target.contains("smuggled") || s.target.starts_with("/admin") {
            failures.push(format!("the upstream received {}", s.target));
        }
        if s.header("content-length").is_some() && s.header("transfer-encoding").is_some() {
            failures.push(format!(
                "{} reached the upstream with both framings",
                s.target
            ));
        }
        if s.all("x-auth-user-id").iter().any(|v| v.contains("evil")) {
            failures.push(format!("{} carried a spoofed identity", s.target));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The GET body arrived as a body.
    let get = tagged(&seen, "get-with-body");
    assert_eq!(get[0].body_bytes as usize, smuggled("get-with-body").len());
    // And the server is still fine.
    assert_eq!(
        client()
            .get(server.url("/public/after"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn hostile_json_on_the_accounts_api_gets_a_clear_answer() {
    let server = TestServer::start(|_| {});
    let post = |path: &str, body: Vec<u8>| {
        let resp = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().unwrap_or(Value::Null);
        (status, answer)
    };
    let deep_array = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let deep_object = format!("{}1{}", "{\"email\":".repeat(1500), "}".repeat(1500)).into_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid utf-8",
            b"{\"email\": \"a\xff\xfe@example.com\", \"password\": \"x\"}".to_vec(),
        ),
        (
            "lone surrogate",
            br#"{"email": "\ud800@example.com", "password": "x"}"#.to_vec(),
        ),
        ("deep array", deep_array),
        ("deep object", deep_object),
        (
            "huge number",
            br#"{"email": 1e999999, "password": "x"}"#.to_vec(),
        ),
        (
            "wrong types",
            br#"{"email": ["a"], "password": {"x": 1}}"#.to_vec(),
        ),
        (
            "trailing garbage",
            br#"{"email": "a@example.com", "password": "x"} {}"#.to_vec(),
        ),
        (
            "bom",
            b"\xef\xbb\xbf{\"email\": \"a@example.com\", \"password\": \"x\"}".to_vec(),
        ),
    ];
    for path in ["/auth/login", "/auth/register", "/auth/recovery"] {
        for (name, body) in &cases {
            let (status, answer) = post(path, body.clone());
            assert!(
                status == 400 || status == 422,
                "{path} {name}: {status} {answer}"
            );
            assert!(
                answer["detail"].is_string(),
                "{path} {name}: no detail in {answer}"
            );
        }
        // Well-formed JSON with a NUL in the email: refused like any unknown or invalid email.
        let (status, answer) = post(
            path,
            b"{\"email\": \"a\\u0000@example.com\", \"password\": \"x\", \"nickname\": \"n\"}"
                .to_vec(),
        );
        assert!(
            [400, 401, 422].contains(&status) && answer["detail"].is_string(),
            "{path} NUL: {status} {answer}"
        );
    }
    // The same over the wire with a chunked body larger than the limit: 413, not read whole.
    let chunk = "a".repeat(4096);
    let mut req = String::from(
        "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..8 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let resp = parse_response(&raw_exchange_for(
        server.addr(),
        req.as_bytes(),
        Duration::from_secs(3),
    ));
    assert_eq!(resp.status, 413, "{}", resp.body);

    // Nothing was created, and the API still works.
    assert_eq!(
        crate::common::block_on(server.store().count_users()).unwrap(),
        0
    );
    server.register("fine@example.com", "fine", "Tr1cky-Horse!");
    assert_eq!(
        crate::common::block_on(server.store().count_users()).unwrap(),
        1
    );
}
