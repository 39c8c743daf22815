//! Bearer-token validation: no input panics it, and a token is accepted only when its signed
//! part (header and claims) is exactly that of a token portcullis issued. Inputs are either
//! raw strings or edits of a genuine token (flipped, inserted or removed bytes).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use portcullis::auth::tokens::{Subject, TokenService};
use std::sync::OnceLock;

const NOW: i64 = 1_900_000_000;

struct Fixture {
    service: TokenService,
    genuine: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let config = common::config("");
        let key = config
            .auth
            .secret_key
            .clone()
            .expect("the fuzz config sets a key");
        let service = TokenService::new(&config.auth, &key);
        let genuine = service
            .issue(
                &Subject {
                    user_id: "user-1",
                    email: "alice@example.com",
                    nickname: "alice",
                    role: "user",
                    session_id: "session-1",
                },
                NOW,
            )
            .expect("issue");
        Fixture { service, genuine }
    })
}

fn signed_part(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(signed, _)| signed)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let candidate = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // Edit the genuine token: pairs of (position, byte); byte 0 removes, odd inserts,
        // even replaces.
        let mut bytes = f.genuine.clone().into_bytes();
        for pair in rest.chunks(2) {
            if bytes.is_empty() {
                break;
            }
            let at = pair[0] as usize % bytes.len();
            match pair.get(1) {
                None | Some(0) => {
                    bytes.remove(at);
                }
                Some(b) if b % 2 == 1 => bytes.insert(at, *b),
                Some(b) => bytes[at] = *b,
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    if let Ok(identity) = f.service.validate(&candidate, NOW) {
        assert_eq!(
            signed_part(&candidate),
            signed_part(&f.genuine),
            "accepted a token portcullis did not sign"
        );
        assert_eq!(identity.user_id, "user-1");
    }
});
