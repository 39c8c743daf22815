//! Header policy toward the upstream: remove every client-sent header that could pass for
//! portcullis's own (identity, service token, forwarding, rewritten-URL headers) in any spelling,
//! then inject the real identity, request id and forwarding headers. Also derives the client IP.

use crate::auth::sessions::Principal;
use crate::config::{IdentityHeaders, ProxySettings};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use std::net::IpAddr;

pub const REQUEST_ID: &str = "x-request-id";

/// Headers only portcullis may set on a proxied request (compared after lower-casing and
/// turning `_` into `-`).
pub const OWNED_HEADERS: &[&str] = &[
    "x-service-token",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-real-ip",
    "forwarded",
    REQUEST_ID,
];

/// Headers some proxies, CDNs and servers use to tell the upstream who the client is or how it
/// connected. Believed by many frameworks, so removed unless the peer is a trusted proxy (which
/// sets them itself).
pub const CLIENT_CLAIM_HEADERS: &[&str] = &[
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "client-ip",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "front-end-https",
    "x-url-scheme",
    "x-host",
];

/// Headers other authentication proxies and web servers use to name the authenticated user.
/// Only portcullis says who the user is: removed from every request, trusted proxy or not.
pub const USER_CLAIM_HEADERS: &[&str] = &["x-forwarded-user", "x-forwarded-email", "remote-user"];

/// Header values are visible ASCII; anything else in an identity value is percent-encoded.
const IDENTITY_ENCODE: &AsciiSet = &CONTROLS.add(b'%').add(b'"').add(b'\\').add(0x7f);

/// Does a (lower-case) header name equal `canon` when `_` is read as `-`, the way many
/// upstream frameworks read it? `prefix` compares only the start. No allocation.
fn same_name(name: &str, canon: &str, prefix: bool) -> bool {
    let (n, c) = (name.as_bytes(), canon.as_bytes());
    let len_ok = if prefix {
        n.len() >= c.len()
    } else {
        n.len() == c.len()
    };
    len_ok
        && n.iter()
            .zip(c)
            .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// Names of the client-sent headers that must not reach the upstream: portcullis's own, other
/// user claims, the operator's `proxy.strip_headers`, and — unless the peer is a trusted proxy —
/// claims about the client's address and scheme.
pub fn spoofable_headers(
    headers: &HeaderMap,
    proxy: &ProxySettings,
    from_trusted_proxy: bool,
) -> Vec<HeaderName> {
    let is = |n: &str, list: &[&str]| list.iter().any(|canon| same_name(n, canon, false));
    let mut names: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let spoofable = same_name(n, &proxy.identity.prefix, true)
            || is(n, OWNED_HEADERS)
            || is(n, USER_CLAIM_HEADERS)
            || (!from_trusted_proxy && is(n, CLIENT_CLAIM_HEADERS))
            || proxy
                .strip_headers
                .iter()
                .any(|s| same_name(n, s.as_str(), false));
        if spoofable && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Is `peer` one of `server.trusted_proxies`?
pub fn is_trusted_proxy(peer: IpAddr, trusted: &[IpNet]) -> bool {
    is_trusted(peer, trusted)
}

/// The identity header value for a claim: visible ASCII as is; controls, `%`, quotes and
/// non-ASCII bytes percent-encoded (percent_encoding always encodes non-ASCII).
pub fn identity_value(value: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(value, IDENTITY_ENCODE).to_string();
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The identity headers to inject for `who`.
pub fn identity_headers(
    names: &IdentityHeaders,
    who: &Principal,
) -> [(HeaderName, HeaderValue); 4] {
    [
        (names.user_id.clone(), identity_value(&who.user_id)),
        (names.email.clone(), identity_value(&who.email)),
        (names.nickname.clone(), identity_value(&who.nickname)),
        (names.role.clone(), identity_value(&who.role)),
    ]
}

/// Keep a client's request id when it is well formed (1–128 of `A-Za-z0-9-_.:`), else make one.
pub fn request_id(incoming: Option<&HeaderValue>) -> String {
    if let Some(v) = incoming {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        {
            // Checked ASCII above.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    // From the thread's CSPRNG (seeded once), not a system call per request.
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// All `X-Forwarded-For` entries in order, across repeated headers.
fn forwarded_for(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for(headers).iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The forwarding headers for the upstream. From a trusted proxy the chain is extended and its
/// proto/host are kept; from anyone else they are replaced.
pub fn forwarding_headers(
    peer: IpAddr,
    client: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Vec<(&'static str, String)> {
    let from_proxy = is_trusted(peer, trusted);
    let chain = if from_proxy {
        let mut entries: Vec<String> = forwarded_for(headers)
            .iter()
            .map(|s| s.to_string())
            .collect();
        entries.push(peer.to_string());
        entries.join(", ")
    } else {
        peer.to_string()
    };
    let keep = |name: &str| -> Option<String> {
        if !from_proxy {
            return None;
        }
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let proto = keep("x-forwarded-proto")
        .filter(|p| p == "http" || p == "https")
        .unwrap_or_else(|| "http".to_string());
    let host = keep("x-forwarded-host").or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let mut out = vec![
        ("x-forwarded-for", chain),
        ("x-forwarded-proto", proto),
        ("x-real-ip", client.to_string()),
    ];
    if let Some(host) = host {
        out.push(("x-forwarded-host", host));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> IdentityHeaders {
        IdentityHeaders {
            prefix: "x-auth-".into(),
            user_id: HeaderName::from_static("x-auth-user-id"),
            email: HeaderName::from_static("x-auth-email"),
            nickname: HeaderName::from_static("x-auth-nickname"),
            role: HeaderName::from_static("x-auth-role"),
        }
    }

    fn proxy(strip: &[&'static str]) -> ProxySettings {
        ProxySettings {
            connect_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            write_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            identity: identity(),
            strip_headers: strip.iter().map(|s| HeaderName::from_static(s)).collect(),
        }
    }

    #[test]
    fn client_and_user_claims_are_found() {
        let mut h = HeaderMap::new();
        for name in CLIENT_CLAIM_HEADERS.iter().chain(USER_CLAIM_HEADERS) {
            h.append(*name, HeaderValue::from_static("x"));
        }
        h.append("Remote_User", HeaderValue::from_static("root"));
        h.append("x-tenant", HeaderValue::from_static("other"));
        h.append("accept", HeaderValue::from_static("*/*"));
        let untrusted = spoofable_headers(&h, &proxy(&["x-tenant"]), false);
        assert_eq!(
            untrusted.len(),
            CLIENT_CLAIM_HEADERS.len() + USER_CLAIM_HEADERS.len() + 2,
            "{untrusted:?}"
        );
        let trusted = spoofable_headers(&h, &proxy(&["x-tenant"]), true);
        assert_eq!(trusted.len(), USER_CLAIM_HEADERS.len() + 2, "{trusted:?}");
        assert!(!trusted
            .iter()
            .any(|n| n == "accept" || n == "cf-connecting-ip"));
    }

    #[test]
    fn every_spelling_of_identity_headers_is_found() {
        let mut h = HeaderMap::new();
        h.append("X-Auth-User-Id", HeaderValue::from_static("1"));
        h.append("x-auth-user-id", HeaderValue::from_static("2"));
        h.append("X_Auth_Role", HeaderValue::from_static("admin"));
        h.append("x-auth-anything", HeaderValue::from_static("x"));
        h.append("X-Service-Token", HeaderValue::from_static("x"));
        h.append("X-Original-URL", HeaderValue::from_static("/admin"));
        h.append("accept", HeaderValue::from_static("*/*"));
        let names = spoofable_headers(&h, &proxy(&[]), false);
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(!names.iter().any(|n| n == "accept"));
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &[]), peer);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn trusted_proxy_yields_rightmost_untrusted_entry() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.7"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let fwd = forwarding_headers(peer, "198.51.100.7".parse().unwrap(), &h, &trusted);
        assert_eq!(fwd[0].1, "6.6.6.6, 198.51.100.7, 10.0.0.2, 10.0.0.1");
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            request_id(Some(&HeaderValue::from_static("abc-123"))),
            "abc-123"
        );
        let made = request_id(Some(&HeaderValue::from_static("bad id\"")));
        assert_eq!(made.len(), 36);
        assert_eq!(request_id(None).len(), 36);
    }

    #[test]
    fn identity_values_stay_valid_headers() {
        assert_eq!(identity_value("Zoë").to_str().unwrap(), "Zo%C3%AB");
        assert_eq!(
            identity_value("a\r\nX-Evil: 1").to_str().unwrap(),
            "a%0D%0AX-Evil: 1"
        );
    }
}
