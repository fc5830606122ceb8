//! Content-Disposition decoding and file-name sanitizing, on raw header bytes.
//!
//! Invariants: no panic; `sanitize` returns only `[a-z0-9_-]`, never starts or ends with
//! `_`/`-`, at most `SANITIZED_BYTES_MAX` bytes, the fallback when nothing is left (so
//! never empty with a non-empty fallback), and is idempotent; `stem_of` returns a part
//! of its input without a path separator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::ingest::naming::{SANITIZED_BYTES_MAX, parse_disposition, sanitize, stem_of};

fn check_sanitized(input: &str, fallback: &str) {
    let clean = sanitize(input, fallback);
    if clean == fallback {
        return;
    }
    assert!(!clean.is_empty(), "{input:?} sanitized to nothing");
    assert!(
        clean.len() <= SANITIZED_BYTES_MAX,
        "{input:?}: {} bytes",
        clean.len()
    );
    assert!(
        clean
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
        "{input:?} -> {clean:?}"
    );
    assert!(
        !clean.starts_with(['_', '-']) && !clean.ends_with(['_', '-']),
        "{input:?} -> {clean:?}"
    );
    assert_eq!(
        sanitize(&clean, fallback),
        clean,
        "not idempotent: {input:?}"
    );
}

fn check_name(name: &str) {
    let stem = stem_of(name);
    assert!(!stem.contains(['/', '\\']), "{name:?} -> stem {stem:?}");
    assert!(name.contains(stem), "{name:?} -> stem {stem:?}");
    check_sanitized(stem, "file");
    check_sanitized(name, "file");
    // The category hint is sanitized with an empty fallback (ingest/commit.rs).
    check_sanitized(name, "");
}

fuzz_target!(|data: &[u8]| {
    let disposition = parse_disposition(data);
    if let Some(name) = &disposition.name {
        check_name(name);
    }
    if let Some(filename) = &disposition.filename {
        check_name(filename);
    }
    check_name(&String::from_utf8_lossy(data));
});
