//! The ingest request path: multipart framing, part headers, filename decoding.
//!
//! Input layout: byte 0 picks the boundary (one of four realistic ones, or the next
//! 1..=70 input bytes) and the limits (the defaults, or tiny ones derived from bytes 1..=3
//! so that every limit is reached with short inputs); bytes 1..=3 give the chunk sizes,
//! cycled; the rest is the body.
//!
//! Each body is parsed twice, as one chunk and in the derived chunks. Invariants checked:
//! - `Data` is never empty and comes only between `Part` and `PartEnd`;
//! - `Finished` comes at most once, only after `end()`, outside a part, and is followed
//!   only by errors; after an error only errors come; after `end()`, never `Ok(None)`;
//! - `buffered_bytes()` is at most the largest limit plus a small constant when input is
//!   asked for, and that plus one chunk otherwise;
//! - the chunking changes nothing: same events (data merged), same success or failure;
//! - each part's Content-Disposition decodes, and its filename sanitizes to a non-empty
//!   `[a-z0-9_-]` name of at most `SANITIZED_BYTES_MAX` bytes.
//!
//! `boundary_of` is run on the body read as a Content-Type value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rhinobox::ingest::multipart::{Event, MultipartLimits, MultipartParser, boundary_of};
use rhinobox::ingest::naming::{SANITIZED_BYTES_MAX, parse_disposition, sanitize, stem_of};

/// Boundaries as real clients send them: curl, Chrome/Safari, Firefox, and a short one.
const BOUNDARIES: &[&[u8]] = &[
    b"------------------------d74496d66958873e",
    b"----WebKitFormBoundary7MA4YWxkTrZu0gW",
    b"---------------------------9051914041544843365972754266",
    b"XyZ",
];

/// What `buffered_bytes` may hold beyond the largest limit when the parser asks for input:
/// a delimiter (at most 4 + 70 bytes) or a boundary line's padding (256) and its CRLF.
const SLACK_BYTES: usize = 512;

/// Events with consecutive data merged (chunking decides where data is split).
#[derive(Debug, PartialEq, Eq)]
enum Merged {
    Part(rhinobox::ingest::multipart::PartHead),
    Data(Vec<u8>),
    PartEnd,
    Finished,
}

struct Outcome {
    events: Vec<Merged>,
    failed: bool,
}

fn limits_max(limits: &MultipartLimits) -> usize {
    limits
        .preamble_bytes_max
        .max(limits.part_head_bytes_max)
        .max(limits.epilogue_bytes_max)
}

/// Runs the parser over `body` cut into `chunks`, checking the per-run invariants.
fn run(boundary: &[u8], limits: MultipartLimits, body: &[u8], chunks: &[usize]) -> Outcome {
    let mut parser = MultipartParser::new(boundary, limits);
    let bound_idle = limits_max(&limits) + SLACK_BYTES;
    let mut events = Vec::new();
    let mut rest = body;
    let mut turn = 0;
    let mut last_chunk = 0;
    let mut ended = false;
    let mut in_part = false;
    // Each step either yields an event (at least one byte of input per Data, bounded
    // others) or consumes input, so this bounds a parser that loops without progress.
    let steps_max = 8 * body.len() + 64;
    for _ in 0..steps_max {
        let event = match parser.next_event() {
            Err(_) => {
                assert_eq!(parser.buffered_bytes(), 0, "buffer kept after an error");
                assert!(parser.next_event().is_err(), "an error was not final");
                return Outcome {
                    events,
                    failed: true,
                };
            }
            Ok(None) => {
                assert!(!ended, "asked for input after end()");
                let held = parser.buffered_bytes();
                assert!(held <= bound_idle, "{held} bytes held while idle");
                if rest.is_empty() {
                    parser.end();
                    ended = true;
                } else {
                    let size = chunks[turn % chunks.len()].min(rest.len());
                    turn += 1;
                    let (chunk, after) = rest.split_at(size);
                    parser.push(chunk);
                    rest = after;
                    last_chunk = size;
                }
                continue;
            }
            Ok(Some(event)) => event,
        };
        let held = parser.buffered_bytes();
        assert!(held <= bound_idle + last_chunk, "{held} bytes held");
        match event {
            Event::Part(head) => {
                assert!(!in_part, "Part inside a part");
                in_part = true;
                if let Some(disposition) = &head.disposition {
                    check_disposition(disposition);
                }
                events.push(Merged::Part(head));
            }
            Event::Data(data) => {
                assert!(in_part, "Data outside a part");
                assert!(!data.is_empty(), "empty Data");
                if let Some(Merged::Data(previous)) = events.last_mut() {
                    previous.extend_from_slice(&data);
                } else {
                    events.push(Merged::Data(data.to_vec()));
                }
            }
            Event::PartEnd => {
                assert!(in_part, "PartEnd outside a part");
                in_part = false;
                events.push(Merged::PartEnd);
            }
            Event::Finished => {
                assert!(ended, "Finished before end()");
                assert!(!in_part, "Finished inside a part");
                assert!(parser.next_event().is_err(), "an event after Finished");
                events.push(Merged::Finished);
                return Outcome {
                    events,
                    failed: false,
                };
            }
        }
    }
    panic!("no progress after {steps_max} steps");
}

/// The part-header side of ingest: decode the disposition, sanitize the file name.
fn check_disposition(value: &[u8]) {
    let disposition = parse_disposition(value);
    for name in [&disposition.name, &disposition.filename]
        .into_iter()
        .flatten()
    {
        for candidate in [name.as_str(), stem_of(name)] {
            let clean = sanitize(candidate, "file");
            assert!(!clean.is_empty(), "{candidate:?} sanitized to nothing");
            assert!(
                clean.len() <= SANITIZED_BYTES_MAX,
                "{candidate:?} -> {clean:?}"
            );
            assert!(
                clean.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_'),
                "{candidate:?} -> {clean:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    if data.len() < 3 {
        return;
    }
    let (pattern, data) = data.split_at(3);
    let (boundary, body): (Vec<u8>, &[u8]) = if selector & 0x80 == 0 {
        (
            BOUNDARIES[usize::from(selector) % BOUNDARIES.len()].to_vec(),
            data,
        )
    } else {
        let len = (1 + usize::from(selector & 0x3f) % 70).min(data.len());
        if len == 0 {
            return;
        }
        let (boundary, body) = data.split_at(len);
        (boundary.to_vec(), body)
    };
    let limits = if selector & 0x40 == 0 {
        MultipartLimits::default()
    } else {
        MultipartLimits {
            preamble_bytes_max: usize::from(pattern[0] % 64),
            part_head_bytes_max: usize::from(pattern[1] % 128),
            part_headers_max: 1 + usize::from(pattern[2] % 8),
            epilogue_bytes_max: usize::from(pattern[2] / 8 % 32),
        }
    };
    // Chunk sizes 1..=64, or 4 KiB for 0xff (a socket read).
    let chunks: Vec<usize> = pattern
        .iter()
        .map(|&b| {
            if b == 0xff {
                4096
            } else {
                1 + usize::from(b % 64)
            }
        })
        .collect();

    let whole = run(&boundary, limits, body, &[body.len().max(1)]);
    let chunked = run(&boundary, limits, body, &chunks);
    assert_eq!(
        whole.failed, chunked.failed,
        "chunking changed success: whole {:?}, chunked {:?}",
        whole.events, chunked.events
    );
    if !whole.failed {
        assert_eq!(whole.events, chunked.events, "chunking changed the events");
    }

    if let Ok(text) = std::str::from_utf8(body) {
        if let Some(found) = boundary_of(text) {
            assert!((1..=70).contains(&found.len()), "boundary {found:?}");
        }
    }
});
