//! `server::parse_errors::hyper_error_head`: recognising hyper's own parse-error heads.
//!
//! Invariants: no panic; a recognised head is short, a whole head (ends with an empty
//! line), says 400, 414 or 431 in its status line and carries `content-length: 0`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::server::parse_errors::hyper_error_head;

fuzz_target!(|data: &[u8]| {
    let Some((status, message)) = hyper_error_head(data) else {
        return;
    };
    assert!(data.len() <= 256 && data.ends_with(b"\r\n\r\n"));
    assert!(matches!(status, 400 | 414 | 431));
    assert!(data.starts_with(format!("HTTP/1.1 {status}").as_bytes()));
    assert!(data.windows(17).any(|w| w == b"content-length: 0"));
    assert!(!message.is_empty());
});
