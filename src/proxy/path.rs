//! Request-target normalization: the one place that decides what path a request is for. The
//! route decision and the upstream both use its output, so no encoding trick can make them
//! disagree. Anything ambiguous is refused with 400.

use crate::error::Error;

/// A request target reduced to a normalized origin-form path and its (unchanged) query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Normalized path: starts with `/`, no empty, `.` or `..` segments, unreserved characters
    /// decoded, every other escape in upper-case hex.
    pub path: String,
    /// The query without its `?`, exactly as sent.
    pub query: Option<String>,
    /// The authority of an absolute-form target (`GET http://host/…`), if any.
    pub authority: Option<String>,
}

impl Target {
    /// The origin-form target the upstream receives.
    pub fn origin_form(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

const MAX_TARGET_LEN: usize = 8 * 1024;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Parse and normalize a raw request target (origin-form or absolute-form).
pub fn parse_target(raw: &[u8]) -> Result<Target, Error> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(Error::BadRequest("Request target too long"));
    }
    let (authority, rest) = split_absolute_form(raw)?;
    let (raw_path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let query = match query {
        Some(q) => {
            if q.iter().any(|&b| b <= b' ' || b >= 0x7f || b == b'#') {
                return Err(Error::BadRequest("Invalid character in query"));
            }
            // Only visible ASCII passed the check above, so this is valid UTF-8.
            Some(String::from_utf8_lossy(q).into_owned())
        }
        None => None,
    };
    Ok(Target {
        path: normalize_path(raw_path)?,
        query,
        authority,
    })
}

/// Split `http://authority/path?q` into its authority and the rest; origin-form passes through.
fn split_absolute_form(raw: &[u8]) -> Result<(Option<String>, &[u8]), Error> {
    if raw.first() == Some(&b'/') {
        return Ok((None, raw));
    }
    let lower: Vec<u8> = raw.iter().take(8).map(u8::to_ascii_lowercase).collect();
    let scheme_len = if lower.starts_with(b"http://") {
        7
    } else if lower.starts_with(b"https://") {
        8
    } else {
        return Err(Error::BadRequest("Request target must be an absolute path"));
    };
    let after = &raw[scheme_len..];
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = &after[..end];
    if authority.is_empty()
        || authority
            .iter()
            .any(|&b| !(b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)))
    {
        return Err(Error::BadRequest("Invalid authority in request target"));
    }
    let rest = &after[end..];
    if rest.first() == Some(&b'?') || rest.is_empty() {
        // `http://host` and `http://host?q` address the root.
        return Err(Error::BadRequest("Absolute-form target without a path"));
    }
    Ok((
        Some(String::from_utf8_lossy(authority).to_ascii_lowercase()),
        rest,
    ))
}

/// Normalize a raw path (RFC 3986 §6.2.2 plus slash merging), refusing what could be read two
/// ways: encoded `/` or `\`, backslashes, NUL and control bytes, `;` path parameters and the
/// delimiters `;`, `?` and `#` encoded (once or twice), double encoding of `/`, `\`, `.` or `%`,
/// segments ending in a dot or a space (which some servers strip: `admin.` is `admin` there),
/// non-ASCII bytes, and `..` above the root.
pub fn normalize_path(raw: &[u8]) -> Result<String, Error> {
    if raw.first() != Some(&b'/') {
        return Err(Error::BadRequest("Path must start with /"));
    }
    // Pass 1: validate bytes and decode unreserved escapes.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Error::BadRequest("Malformed percent-encoding in path"));
                };
                let v = h * 16 + l;
                if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                    return Err(Error::BadRequest(
                        "Encoded slash, backslash or control character in path",
                    ));
                }
                if matches!(v, b';' | b'?' | b'#') {
                    return Err(Error::BadRequest("Encoded delimiter (;, ? or #) in path"));
                }
                if unreserved(v) {
                    decoded.push(v as char);
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                    decoded.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                }
                i += 3;
            }
            b'\\' => return Err(Error::BadRequest("Backslash in path")),
            b';' => return Err(Error::BadRequest("Path parameters (;) are not accepted")),
            b'#' => return Err(Error::BadRequest("Fragment in request target")),
            0..=0x20 | 0x7f..=0xff => return Err(Error::BadRequest("Invalid character in path")),
            _ => {
                decoded.push(b as char);
                i += 1;
            }
        }
    }
    // An escaped `%` followed by two hex digits is a second layer of encoding. Checked on the
    // decoded text, since decoding can make one (`%25%32%66` decodes to `%252f`).
    for (at, _) in decoded.match_indices("%25") {
        let rest = decoded.as_bytes();
        if let (Some(h), Some(l)) = (
            rest.get(at + 3).copied().and_then(hex),
            rest.get(at + 4).copied().and_then(hex),
        ) {
            let inner = h * 16 + l;
            if matches!(inner, b'/' | b'\\' | b'.' | b'%' | b';' | b'?' | b'#')
                || inner < 0x20
                || inner == 0x7f
            {
                return Err(Error::BadRequest("Double-encoded character in path"));
            }
        }
    }
    // Pass 2: remove dot-segments and empty segments.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(Error::BadRequest("Path escapes the root"));
                }
            }
            s if s.ends_with('.') || s.ends_with("%20") => {
                return Err(Error::BadRequest("Path segment ending in a dot or a space"));
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, Error> {
        normalize_path(p.as_bytes())
    }

    #[test]
    fn dot_segments_and_slashes_collapse() {
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(
            norm("/%2e%2e/admin").unwrap_err().to_string(),
            "bad request: Path escapes the root"
        );
        assert_eq!(norm("/a/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("//admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/%41%7e").unwrap(), "/A~");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%c3%a9").unwrap(), "/a%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "/a%2fb",
            "/a%2Fb",
            "/a%252fb",
            "/a%255cb",
            "/a%252e%252e/x",
            "/a\\b",
            "/a%5cb",
            "/a%00b",
            "/a\0b",
            "/admin;x",
            "/a%zz",
            "/a%2",
            "/../x",
            "a/b",
            "/a b",
            "/caf\u{e9}",
            "/a#b",
            "/api/admin%3Bx",
            "/api/admin%3bx",
            "/api/admin%3Fx",
            "/api/admin%23x",
            "/api/admin%253Bx",
            "/api/admin%253Fx",
            "/api/admin%2523x",
            "/api/admin.",
            "/api/admin./x",
            "/api/admin%2E",
            "/api/admin%2e/x",
            "/api/admin%20",
            "/api/admin%20/x",
            "/api/admin...",
            // Found by the path_route fuzz target: decoding made a double encoding.
            "/a%25%32%66b",
            "/a%25%32%65%25%32%65/x",
            "/%25c%25252/ctt*ps:/5",
        ] {
            assert!(norm(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in [
            "/a/%7e/%41%2541/b",
            "/%25c/x",
            "/a%20b/%E2%82%AC",
            "/a/b/../c/./",
        ] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p:?}");
        }
    }

    #[test]
    fn absolute_form_yields_authority() {
        let t = parse_target(b"http://Example.com:8000/x/../y?q=1").unwrap();
        assert_eq!(t.authority.as_deref(), Some("example.com:8000"));
        assert_eq!(t.origin_form(), "/y?q=1");
        assert!(parse_target(b"*").is_err());
        assert!(parse_target(b"ftp://x/y").is_err());
        assert!(parse_target(b"http://x").is_err());
        assert!(parse_target(b"/x?a b").is_err());
    }
}
