//! Request-target normalization and route classification: whatever the bytes, parsing never
//! panics, its output is a fixed point of normalization with no empty, `.` or `..` segment, no
//! segment ending in a dot or space, no encoded delimiter, and the route chosen is the longest one that covers the path on a segment boundary.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::path::{normalize_path, parse_target};
use portcullis::routes::{Destination, Route, RouteTable};
use std::sync::OnceLock;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = common::config("");
        let routes = config
            .live
            .routes
            .iter()
            .map(|spec| Route::new(spec, None))
            .collect();
        RouteTable::new(&config.api.prefix, routes)
    })
}

fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = parse_target(data) else {
        return;
    };
    let path = target.path.as_str();
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    for seg in path.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "{path:?}");
        // No segment another server would trim into a different one.
        assert!(!seg.ends_with('.') && !seg.ends_with("%20"), "{path:?}");
    }
    // No delimiter hidden behind one or two layers of encoding.
    for hidden in ["%3B", "%3F", "%23", "%253B", "%253F", "%2523"] {
        assert!(!path.to_ascii_uppercase().contains(hidden), "{path:?}");
    }
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'#' && b != b';'),
        "{path:?}"
    );
    match normalize_path(path.as_bytes()) {
        Ok(again) => assert_eq!(again, path, "not a fixed point"),
        Err(e) => panic!("{path:?} normalized once is refused the second time: {e:?}"),
    }

    let table = table();
    match table.classify(path, portcullis::api::owns) {
        Destination::Api(rest) => {
            assert!(
                covers("/auth", path),
                "{path:?} is not under the API prefix"
            );
            assert!(rest.starts_with('/'));
        }
        Destination::Route(i) => {
            let chosen = table.route(i);
            assert!(
                covers(&chosen.path, path),
                "{path:?} not under {}",
                chosen.path
            );
            for other in table.routes() {
                if covers(&other.path, path) {
                    assert!(
                        other.path.len() <= chosen.path.len(),
                        "a longer route covers {path:?}"
                    );
                }
            }
        }
        Destination::NotFound => {
            assert!(table.routes().iter().all(|r| !covers(&r.path, path)));
        }
    }
});
