//! Journal replay: `store::journal::parse` of a whole journal image (what start-up does).
//!
//! Invariants: no panic; replay's numbers add up (`valid_len + torn_tail_bytes == len`,
//! one entry per record); the valid prefix ends at a line end, and replaying it again
//! finds the same entries and no torn tail. (`replay` sizes its read block to the input,
//! so a small image costs a small block.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::store::journal::parse;

fuzz_target!(|data: &[u8]| {
    let Ok((entries, replay, valid_len)) = parse(data) else {
        return;
    };
    let len = data.len() as u64;
    assert!(valid_len <= len);
    assert_eq!(valid_len + replay.torn_tail_bytes, len);
    assert_eq!(entries.len(), replay.records);
    let valid = &data[..valid_len as usize];
    assert!(
        valid.is_empty() || valid.ends_with(b"\n"),
        "valid prefix ends mid-line"
    );
    let (again, replay_again, valid_len_again) = parse(valid).expect("valid prefix refused");
    assert_eq!(again, entries, "valid prefix replays differently");
    assert_eq!(replay_again.torn_tail_bytes, 0);
    assert_eq!(valid_len_again, valid_len);
});
