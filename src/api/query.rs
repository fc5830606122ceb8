//! Query strings: `application/x-www-form-urlencoded` pairs, decoded by form_urlencoded.
//!
//! `+` is a space, percent-escapes are decoded, invalid UTF-8 becomes U+FFFD; the first
//! pair with the name wins. No input can make these panic (fuzzed: `fuzz/`).

use hyper::Request;

/// Value of the first `name=` pair of a raw query string, decoded.
pub fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Query parameter `name` of a request, decoded.
pub fn query_param<B>(request: &Request<B>, name: &str) -> Option<String> {
    param(request.uri().query()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(param("a=1&b=x+y%21", "b").as_deref(), Some("x y!"));
        assert_eq!(param("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(param("flag&b=", "flag").as_deref(), Some(""));
        assert_eq!(param("a=%ff%C3%A9", "a").as_deref(), Some("\u{fffd}\u{e9}"));
        assert_eq!(param("a=%zz%", "a").as_deref(), Some("%zz%"));
        assert_eq!(param("a=1", "b"), None);
    }
}
