//! Range and conditional headers: `api::files::parse_range` and `api::files::select`.
//!
//! Input layout: bytes 0..8 are the representation size (little endian; every other input
//! also tries a small size, where clamping happens), byte 8 says which headers are sent,
//! the rest is split at `\n` into the header values (If-None-Match, If-Modified-Since,
//! If-Range, Range), skipping those `HeaderValue` rejects.
//!
//! Invariants: a returned range is `start <= end < size`; `Partial` only for a GET with a
//! Range header; `NotModified` only with a conditional header; no panic.
#![no_main]

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rhinobox::api::files::{RangeSpec, Selection, Validators, parse_range, select};

const HEADERS: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

fn check_range(value: &str, size: u64) {
    if let RangeSpec::Bytes { start, end } = parse_range(value, size) {
        assert!(
            start <= end && end < size,
            "{value:?} size {size}: {start}-{end}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    let raw_size = u64::from_le_bytes(head[..8].try_into().unwrap());
    let mask = head[8];
    let sizes = [raw_size, raw_size % 1024];
    let validators = Validators {
        etag: "\"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"".into(),
        last_modified_s: 1_767_225_600,
    };

    let mut headers = HeaderMap::new();
    let mut values = rest.split(|&b| b == b'\n');
    for (i, name) in HEADERS.iter().enumerate() {
        let Some(value) = values.next() else { break };
        if mask & (1 << i) == 0 {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name.clone(), value);
        }
    }
    for size in sizes {
        if let Ok(text) = std::str::from_utf8(rest) {
            check_range(text, size);
        }
        if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            check_range(range, size);
        }
        let is_get = mask & 0x10 == 0;
        match select(&headers, &validators, size, is_get) {
            Selection::Partial { start, end } => {
                assert!(start <= end && end < size, "size {size}: {start}-{end}");
                assert!(is_get && headers.contains_key(header::RANGE));
            }
            Selection::NotModified => assert!(
                headers.contains_key(header::IF_NONE_MATCH)
                    || headers.contains_key(header::IF_MODIFIED_SINCE)
            ),
            Selection::Unsatisfiable => assert!(headers.contains_key(header::RANGE)),
            Selection::Full => {}
        }
    }
});
