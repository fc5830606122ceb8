//! The journal line decoder: `store::journal::decode_line` and `decode_line_view` on each
//! line of the input. Whole-image replay (`parse`) is the `journal_replay` target: it
//! costs two 8 MiB fills per call (its read block), 400 runs/s against 10^5 here.
//!
//! Invariants: no panic; a line that decodes re-encodes (`encode_line`) to a line that
//! decodes to the same entry; what `decode_line` accepts, replay's borrowing decoder
//! (`decode_line_view`) accepts with the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::store::journal::{
    EntryView, JournalEntry, decode_line, decode_line_view, encode_line,
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
        (
            JournalEntry::Delete { hash, path, .. },
            EntryView::Delete {
                hash: viewed,
                path: viewed_path,
            },
        ) => {
            assert_eq!(hash, &*viewed, "replay read another hash");
            assert_eq!(path, &*viewed_path, "replay read another path");
        }
        (
            JournalEntry::Place { hash, path },
            EntryView::Place {
                hash: viewed,
                path: viewed_path,
            },
        ) => {
            assert_eq!(hash, &*viewed, "replay read another hash");
            assert_eq!(path, &*viewed_path, "replay read another path");
        }
        (entry, EntryView::Named(named)) => {
            assert_eq!(&named.into_entry(), entry, "replay read another S3 line");
        }
        (entry, view) => panic!("decoded {entry:?}, replay saw {view:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        check_line(line);
    }
});
