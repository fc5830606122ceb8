//! Names: decoding what the client sent (Content-Disposition) and sanitizing what we store.
//!
//! Decoding: `filename*` (RFC 5987) wins; in a quoted value backslash escapes
//! are undone, then percent-escapes decoded, and the bytes read as UTF-8. Quotes, `;` and
//! `=` inside a quoted value never split parameters.
//!
//! Sanitizing: lowercase, only `[a-z0-9_-]` (anything else becomes `_`, runs collapse),
//! bounded length; nothing can name a parent or a separator, so a stored path never leaves
//! the storage tree. A name that sanitizes to nothing becomes `file`.

use percent_encoding::percent_decode;

/// Longest sanitized file stem or category hint, in bytes.
pub const SANITIZED_BYTES_MAX: usize = 100;

/// The parameters of a `Content-Disposition: form-data; ...` header that we use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Disposition {
    pub name: Option<String>,
    pub filename: Option<String>,
}

/// Parses a Content-Disposition header value.
pub fn parse_disposition(value: &[u8]) -> Disposition {
    let mut out = Disposition::default();
    let mut extended_filename = None;
    for (key, raw, quoted) in parameters(value) {
        let key = key.trim().to_ascii_lowercase();
        match key.as_str() {
            "name" => out.name = Some(decode_plain(&raw, quoted)),
            "filename" => out.filename = Some(decode_plain(&raw, quoted)),
            "filename*" => extended_filename = decode_extended(&raw),
            _ => {}
        }
    }
    if extended_filename.is_some() {
        out.filename = extended_filename;
    }
    out
}

/// Splits `type; k=v; k="q;u=o\"ted"` into (key, raw value with escapes undone, quoted).
fn parameters(value: &[u8]) -> Vec<(String, Vec<u8>, bool)> {
    let mut params = Vec::new();
    let mut i = value
        .iter()
        .position(|&b| b == b';')
        .map(|p| p + 1)
        .unwrap_or(value.len());
    while i < value.len() {
        while i < value.len() && (value[i] == b' ' || value[i] == b'\t' || value[i] == b';') {
            i += 1;
        }
        let key_start = i;
        while i < value.len() && value[i] != b'=' && value[i] != b';' {
            i += 1;
        }
        let key = String::from_utf8_lossy(&value[key_start..i])
            .trim()
            .to_string();
        if i >= value.len() || value[i] == b';' {
            continue; // a parameter without a value
        }
        i += 1; // '='
        while i < value.len() && (value[i] == b' ' || value[i] == b'\t') {
            i += 1;
        }
        let mut raw = Vec::new();
        let quoted = i < value.len() && value[i] == b'"';
        if quoted {
            i += 1;
            while i < value.len() && value[i] != b'"' {
                if value[i] == b'\\' && i + 1 < value.len() {
                    i += 1;
                }
                raw.push(value[i]);
                i += 1;
            }
            // Skip the closing quote and anything up to the next separator.
            while i < value.len() && value[i] != b';' {
                i += 1;
            }
        } else {
            let start = i;
            while i < value.len() && value[i] != b';' {
                i += 1;
            }
            raw.extend_from_slice(value[start..i].trim_ascii());
        }
        params.push((key, raw, quoted));
    }
    params
}

fn decode_plain(raw: &[u8], _quoted: bool) -> String {
    let decoded: Vec<u8> = percent_decode(raw).collect();
    String::from_utf8_lossy(&decoded).into_owned()
}

/// RFC 5987 `charset'language'percent-encoded`; UTF-8 and ISO-8859-1 are understood.
fn decode_extended(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut pieces = text.splitn(3, '\'');
    let charset = pieces.next()?.to_ascii_lowercase();
    let _language = pieces.next()?;
    let encoded = pieces.next()?;
    let bytes: Vec<u8> = percent_decode(encoded.as_bytes()).collect();
    match charset.as_str() {
        "utf-8" | "" => Some(String::from_utf8_lossy(&bytes).into_owned()),
        "iso-8859-1" | "latin1" => Some(bytes.iter().map(|&b| b as char).collect()),
        _ => None,
    }
}

/// Lowercase `[a-z0-9_-]` only, runs of anything else as one `_`, bounded, never empty
/// when `fallback` is given.
pub fn sanitize(input: &str, fallback: &str) -> String {
    let mut out = String::with_capacity(input.len().min(SANITIZED_BYTES_MAX));
    let mut pending_separator = false;
    for c in input.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
            if pending_separator && !out.is_empty() {
                out.push('_');
            }
            pending_separator = false;
            out.push(c);
        } else {
            pending_separator = true;
        }
        if out.len() >= SANITIZED_BYTES_MAX {
            break;
        }
    }
    // A separator and a character may both land on the last step (fuzz finding).
    out.truncate(SANITIZED_BYTES_MAX);
    let trimmed = out.trim_matches(|c| c == '_' || c == '-');
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

/// The stem of a client file name: its last path component without the extension.
pub fn stem_of(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filename(header: &str) -> Option<String> {
        parse_disposition(header.as_bytes()).filename
    }

    /// The decoding rules above, one case each.
    #[test]
    fn filename_decoding() {
        assert_eq!(
            filename(r#"form-data; name="file"; filename="photo1.jpg""#).as_deref(),
            Some("photo1.jpg")
        );
        assert_eq!(
            filename(r#"form-data; name="file"; filename="a;b=c.jpg""#).as_deref(),
            Some("a;b=c.jpg")
        );
        assert_eq!(
            filename(r#"form-data; name="file"; filename="say \"hi\".txt""#).as_deref(),
            Some("say \"hi\".txt")
        );
        assert_eq!(
            filename(r#"form-data; name="file"; filename="%22q%22.txt""#).as_deref(),
            Some("\"q\".txt")
        );
        assert_eq!(
            filename(
                "form-data; name=\"file\"; filename=\"x.jpg\"; filename*=UTF-8''caf%C3%A9.jpg"
            )
            .as_deref(),
            Some("café.jpg")
        );
        assert_eq!(
            filename("form-data; name=\"file\"; filename=\"café.jpg\"").as_deref(),
            Some("café.jpg")
        );
        assert_eq!(
            filename("form-data; name=file; filename=plain.txt").as_deref(),
            Some("plain.txt")
        );
        assert_eq!(
            filename(r#"form-data; name="file"; filename="""#).as_deref(),
            Some("")
        );
        assert_eq!(
            parse_disposition(br#"form-data; name="category""#)
                .name
                .as_deref(),
            Some("category")
        );
    }

    /// Hostile names never keep a separator, a dot-dot or a control character.
    #[test]
    fn sanitizing() {
        assert_eq!(sanitize("../../etc/passwd", "file"), "etc_passwd");
        assert_eq!(sanitize("a/b\\c", "file"), "a_b_c");
        assert_eq!(sanitize("\u{0}\u{1f}\n", "file"), "file");
        assert_eq!(
            sanitize("Summer Vacation 2024!", "file"),
            "summer_vacation_2024"
        );
        assert_eq!(
            sanitize(&"x".repeat(1000), "file").len(),
            SANITIZED_BYTES_MAX
        );
        assert_eq!(sanitize("", ""), "");
        assert_eq!(stem_of("photo1.jpg"), "photo1");
        assert_eq!(stem_of(".bashrc"), ".bashrc");
        assert_eq!(stem_of("C:\\x\\y.png"), "y");
    }

    /// Fuzz finding (fuzz/regressions/disposition/sanitized-101-bytes): a separator
    /// pending at byte 99 pushed `_` and the next character in one step, 101 bytes.
    #[test]
    fn sanitized_name_never_exceeds_its_bound() {
        let name = format!("{} y", "x".repeat(SANITIZED_BYTES_MAX - 1));
        assert_eq!(sanitize(&name, "file"), "x".repeat(SANITIZED_BYTES_MAX - 1));
        let found: &[u8] = b"frmcccc\0cccccccccccccccccccccc\0ccccc\0ccci\xf1\
            cccccccccccccccccccccccccccccc\0cccicc\0cccicc\0ccccc\0cccicc\0cc";
        let clean = sanitize(&String::from_utf8_lossy(found), "file");
        assert!(clean.len() <= SANITIZED_BYTES_MAX, "{} bytes", clean.len());
    }
}
