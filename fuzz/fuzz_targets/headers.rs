//! Header stripping: whatever names and values a client sends, after the headers that
//! `spoofable_headers` names are removed, none is left that an upstream could read as
//! portcullis's identity, service token, forwarding or rewritten-URL header, or another proxy's
//! user claim, or (from an untrusted peer) its client-address claim, in any case or with `_` for
//! `-`.

#![no_main]

#[path = "common.rs"]
mod common;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::config::ProxySettings;
use portcullis::proxy::headers::{
    spoofable_headers, CLIENT_CLAIM_HEADERS, OWNED_HEADERS, USER_CLAIM_HEADERS,
};
use std::sync::OnceLock;

fn proxy() -> &'static ProxySettings {
    static P: OnceLock<ProxySettings> = OnceLock::new();
    P.get_or_init(|| common::config("").proxy)
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
    let proxy = proxy();
    for name in spoofable_headers(&headers, proxy, false) {
        headers.remove(&name);
    }
    for name in headers.keys() {
        let canon = name.as_str().to_ascii_lowercase().replace('_', "-");
        let canon = canon.as_str();
        assert!(
            !canon.starts_with(&proxy.identity.prefix)
                && !OWNED_HEADERS.contains(&canon)
                && !USER_CLAIM_HEADERS.contains(&canon)
                && !CLIENT_CLAIM_HEADERS.contains(&canon),
            "{name} survived"
        );
    }
});
