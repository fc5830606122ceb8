//! The journal: `store::journal::decode_line` per line and `parse` of a whole image.
//!
//! Invariants: no panic; a line that decodes re-encodes (`encode_line`) to a line that
//! decodes to the same entry; what `decode_line` accepts, replay's borrowing decoder
//! (`decode_line_view`, through `parse`) accepts with the same fields; replay's numbers
//! add up (`valid_len + torn_tail_bytes == len`, one entry per record), and replaying the
//! valid prefix again finds the same entries and no torn tail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::store::journal::{
    EntryView, JournalEntry, decode_line, decode_line_view, encode_line, parse,
};

fn check_line(line: &[u8]) {
    let Some(entry) = decode_line(line) else {
        return;
    };
    let mut encoded = Vec::new();
    encode_line(&entry, &mut encoded);
    assert_eq!(encoded.pop(), Some(b'\n'));
    assert_eq!(
        decode_line(&encoded).as_ref(),
        Some(&entry),
        "round trip changed it"
    );
    let view = decode_line_view(line).expect("decode_line accepted what replay refuses");
    match (&entry, view) {
        (JournalEntry::Put(record), EntryView::Put(view)) => {
            assert_eq!(&view.to_record(), record, "replay read other fields");
        }
        (JournalEntry::Delete { hash, .. }, EntryView::Delete { hash: viewed }) => {
            assert_eq!(hash, &*viewed, "replay read another hash");
        }
        (entry, view) => panic!("decoded {entry:?}, replay saw {view:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        check_line(line);
    }
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
