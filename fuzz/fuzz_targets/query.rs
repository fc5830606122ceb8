//! Query strings and search times: `api::query::param` and `api::manage::parse_time`.
//!
//! Invariants: no panic on any input (the hand-written predecessor of `parse_time` split a
//! string inside a UTF-8 character); `param` finds what it is asked for only as a decoded
//! value of a pair whose decoded name matches; a date-only `parse_time` range has its end
//! of day after its start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::api::manage::parse_time;
use rhinobox::api::query::param;

/// The parameters the API reads, and one that is never sent.
const NAMES: &[&str] = &[
    "from",
    "to",
    "name",
    "ext",
    "media_type",
    "category",
    "limit",
    "offset",
    "path",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    for name in NAMES {
        if let Some(value) = param(query, name) {
            // Search ranges come straight from `from`/`to`.
            check_time(&value);
        }
    }
    check_time(query);
});

fn check_time(value: &str) {
    let start = parse_time(value, false);
    let end = parse_time(value, true);
    assert_eq!(start.is_some(), end.is_some(), "{value:?}");
    if let (Some(start), Some(end)) = (start, end) {
        assert!(start <= end, "{value:?}: end of day before its start");
    }
}
