//! Header stripping: whatever names and values a client sends, after the headers that
//! `spoofable_headers` names are removed, none is left that an upstream could read as
//! portcullis's identity, service token, forwarding or rewritten-URL header, in any case or
//! with `_` for `-`.

#![no_main]

#[path = "common.rs"]
mod common;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::config::IdentityHeaders;
use portcullis::proxy::headers::{spoofable_headers, OWNED_HEADERS};
use std::sync::OnceLock;


fn identity() -> &'static IdentityHeaders {
    static I: OnceLock<IdentityHeaders> = OnceLock::new();
    I.get_or_init(|| common::config("").proxy.identity)
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let identity = identity();
    for name in spoofable_headers(&headers, identity) {
        headers.remove(&name);
    }
    for name in headers.keys() {
        let canon = name.as_str().to_ascii_lowercase().replace('_', "-");
        assert!(
            !canon.starts_with(&identity.prefix) && !OWNED_HEADERS.contains(&canon.as_str()),
            "{name} survived"
        );
    }
});
