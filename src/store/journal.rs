//! The journal: an append-only NDJSON log of every stored file and every delete.
//!
//! One line per record; each line carries a CRC-32 of itself so that a torn or corrupted
//! line is recognised at start-up. The line is the record's JSON with `"crc":N` added as
//! the last member, N being the CRC-32 of the JSON text without that member.
//!
//! Invariants:
//! - Appends go through one mutex, one `write` per request, so records of concurrent
//!   requests never interleave inside a line.
//! - A failed append truncates the file back to its length before the append, so a later
//!   append never lands after a partial line.
//! - At start-up, invalid lines are accepted only at the tail (a crash mid-append); they
//!   are truncated away with a warning. An invalid line followed by a valid one is
//!   corruption and refuses the start.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The stored description of one file, as returned by the API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub path: String,
    pub mime_type: String,
    pub media_type: String,
    pub category: String,
    pub hash: String,
    pub size: u64,
    pub original_name: String,
    pub comment: String,
    pub uploaded_at: String,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum JournalEntry {
    Put(FileRecord),
    Delete {
        hash: String,
        path: String,
        deleted_at: String,
    },
    /// An intent, logged (and synced with the file's data) before a file is placed under
    /// its final name: if the daemon dies before the `put` record of `path` is durable,
    /// start-up finds the intent and removes the file (see `store::protocol`).
    Place {
        hash: String,
        path: String,
    },
}

/// Encodes one entry as a checksummed line (with the trailing newline) onto `out`.
pub fn encode_line(entry: &JournalEntry, out: &mut Vec<u8>) {
    let start = out.len();
    serde_json::to_writer(&mut *out, entry).expect("journal entries always serialize");
    let crc = crc32fast::hash(&out[start..]);
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(b",\"crc\":");
    out.extend_from_slice(crc.to_string().as_bytes());
    out.extend_from_slice(b"}\n");
}

/// A record borrowed from a journal line (replay reads a million of them: no copies).
#[derive(Debug)]
pub struct RecordView<'a> {
    pub path: Cow<'a, str>,
    pub mime_type: Cow<'a, str>,
    pub media_type: Cow<'a, str>,
    pub category: Cow<'a, str>,
    pub hash: Cow<'a, str>,
    pub size: u64,
    pub original_name: Cow<'a, str>,
    pub comment: Cow<'a, str>,
    pub uploaded_at: Cow<'a, str>,
}

impl<'a> RecordView<'a> {
    pub fn of(record: &'a FileRecord) -> RecordView<'a> {
        RecordView {
            path: Cow::Borrowed(&record.path),
            mime_type: Cow::Borrowed(&record.mime_type),
            media_type: Cow::Borrowed(&record.media_type),
            category: Cow::Borrowed(&record.category),
            hash: Cow::Borrowed(&record.hash),
            size: record.size,
            original_name: Cow::Borrowed(&record.original_name),
            comment: Cow::Borrowed(&record.comment),
            uploaded_at: Cow::Borrowed(&record.uploaded_at),
        }
    }

    pub fn to_record(&self) -> FileRecord {
        FileRecord {
            path: self.path.to_string(),
            mime_type: self.mime_type.to_string(),
            media_type: self.media_type.to_string(),
            category: self.category.to_string(),
            hash: self.hash.to_string(),
            size: self.size,
            original_name: self.original_name.to_string(),
            comment: self.comment.to_string(),
            uploaded_at: self.uploaded_at.to_string(),
        }
    }
}

/// A journal entry borrowed from its line.
#[derive(Debug)]
pub enum EntryView<'a> {
    Put(RecordView<'a>),
    Delete {
        hash: Cow<'a, str>,
        path: Cow<'a, str>,
    },
    Place {
        hash: Cow<'a, str>,
        path: Cow<'a, str>,
    },
}

/// The fields of any line, flat: one pass, no buffering (an internally tagged enum or
/// `flatten` would first collect every member into a map).
#[derive(Deserialize)]
struct LineView<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    category: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hash: Option<Cow<'a, str>>,
    size: Option<u64>,
    #[serde(borrow)]
    original_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    comment: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uploaded_at: Option<Cow<'a, str>>,
}

impl<'a> LineView<'a> {
    fn into_entry(self) -> Option<EntryView<'a>> {
        match self.op.as_ref() {
            "put" => Some(EntryView::Put(RecordView {
                path: self.path?,
                mime_type: self.mime_type?,
                media_type: self.media_type?,
                category: self.category?,
                hash: self.hash?,
                size: self.size?,
                original_name: self.original_name?,
                comment: self.comment?,
                uploaded_at: self.uploaded_at?,
            })),
            "delete" => Some(EntryView::Delete {
                hash: self.hash?,
                path: self.path?,
            }),
            "place" => Some(EntryView::Place {
                hash: self.hash?,
                path: self.path?,
            }),
            _ => None,
        }
    }
}

/// Checks a line's CRC; returns the JSON text it covers (without the `crc` member).
fn verified_json(line: &[u8]) -> Option<&[u8]> {
    const MARK: &[u8] = b",\"crc\":";
    let body_end = line.len().checked_sub(1)?;
    if line.last() != Some(&b'}') {
        return None;
    }
    let mark_at = line.windows(MARK.len()).rposition(|w| w == MARK)?;
    let crc: u32 = std::str::from_utf8(&line[mark_at + MARK.len()..body_end])
        .ok()?
        .parse()
        .ok()?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&line[..mark_at]);
    hasher.update(b"}");
    if hasher.finalize() != crc {
        return None;
    }
    Some(line)
}

/// Decodes one line (without its newline) without copying its strings; `None` when torn,
/// corrupted or unparsable. Serde ignores the trailing `crc` member.
pub fn decode_line_view(line: &[u8]) -> Option<EntryView<'_>> {
    let json = verified_json(line)?;
    let view: LineView<'_> = serde_json::from_slice(json).ok()?;
    view.into_entry()
}

/// Decodes one line into an owned entry (tests and tools).
pub fn decode_line(line: &[u8]) -> Option<JournalEntry> {
    let json = verified_json(line)?;
    serde_json::from_slice(json).ok()
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Valid records applied.
    pub records: usize,
    /// Bytes cut from a torn tail (0 when the journal was clean).
    pub torn_tail_bytes: u64,
}

/// Errors that refuse the start.
#[derive(Debug)]
pub enum ReplayError {
    Io(io::Error),
    Corrupt { line_number: usize, offset: u64 },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io(e) => write!(f, "cannot read journal: {e}"),
            ReplayError::Corrupt {
                line_number,
                offset,
            } => write!(
                f,
                "journal corrupted at line {line_number} (byte {offset}) before its tail; \
                 refusing to start; run `rhinobox repair` with the same --data-dir to set \
                 it aside"
            ),
        }
    }
}

/// Bytes read per step of the replay; bounds its memory whatever the journal size.
const REPLAY_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// Streaming replay state: where the first bad line was, how far we are.
struct ReplayCursor {
    line_number: usize,
    offset: u64,
    first_bad: Option<(usize, u64)>,
    records: usize,
}

impl ReplayCursor {
    /// Applies the decoded lines of one block, in order.
    fn apply_block(
        &mut self,
        lines: Vec<(usize, Option<EntryView<'_>>)>,
        apply: &mut impl FnMut(EntryView<'_>),
    ) -> Result<(), ReplayError> {
        for (len, entry) in lines {
            self.line_number += 1;
            match (entry, self.first_bad) {
                (Some(_), Some((line_number, offset))) => {
                    return Err(ReplayError::Corrupt {
                        line_number,
                        offset,
                    });
                }
                (Some(entry), None) => {
                    apply(entry);
                    self.records += 1;
                }
                (None, None) => self.first_bad = Some((self.line_number, self.offset)),
                (None, Some(_)) => {}
            }
            self.offset += len as u64;
        }
        Ok(())
    }
}

/// Decodes complete lines (each ending in `\n`), on two threads for large blocks.
fn decode_block(block: &[u8]) -> Vec<(usize, Option<EntryView<'_>>)> {
    fn decode_lines(bytes: &[u8]) -> Vec<(usize, Option<EntryView<'_>>)> {
        bytes
            .split_inclusive(|&b| b == b'\n')
            .map(|line| (line.len(), decode_line_view(&line[..line.len() - 1])))
            .collect()
    }
    if block.len() < 64 * 1024 {
        return decode_lines(block);
    }
    let middle = block.len() / 2;
    let split = middle
        + block[middle..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(0)
        + 1;
    let (first, second) = block.split_at(split.min(block.len()));
    std::thread::scope(|scope| {
        let other = scope.spawn(|| decode_lines(second));
        let mut lines = decode_lines(first);
        lines.extend(other.join().expect("journal decoding does not panic"));
        lines
    })
}

/// Replays a journal from `reader`, calling `apply` for each valid record in order.
/// Returns what it found and the length of the valid prefix (where a torn tail starts).
pub fn replay(
    reader: &mut impl Read,
    mut apply: impl FnMut(EntryView<'_>),
) -> Result<(Replay, u64), ReplayError> {
    let mut cursor = ReplayCursor {
        line_number: 0,
        offset: 0,
        first_bad: None,
        records: 0,
    };
    let mut block: Vec<u8> = Vec::with_capacity(REPLAY_BLOCK_BYTES + 4096);
    let mut eof = false;
    while !eof {
        let start = block.len();
        block.resize(start + REPLAY_BLOCK_BYTES, 0);
        let n = read_full(reader, &mut block[start..]).map_err(ReplayError::Io)?;
        block.truncate(start + n);
        eof = n == 0;
        let complete = match block.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None if eof => 0,
            None => continue, // a line longer than a block: read on
        };
        let lines = decode_block(&block[..complete]);
        cursor.apply_block(lines, &mut apply)?;
        block.drain(..complete);
    }
    // What is left has no newline: a torn last line (or nothing).
    if !block.is_empty() && cursor.first_bad.is_none() {
        cursor.first_bad = Some((cursor.line_number + 1, cursor.offset));
    }
    let total = cursor.offset + block.len() as u64;
    let valid_len = cursor.first_bad.map(|(_, o)| o).unwrap_or(total);
    let replay = Replay {
        records: cursor.records,
        torn_tail_bytes: total - valid_len,
    };
    Ok((replay, valid_len))
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Parses a whole in-memory journal (tests and tools).
pub fn parse(data: &[u8]) -> Result<(Vec<JournalEntry>, Replay, u64), ReplayError> {
    let mut entries = Vec::new();
    let (replay, valid_len) = replay(&mut &data[..], |e| {
        entries.push(match e {
            EntryView::Put(record) => JournalEntry::Put(record.to_record()),
            EntryView::Delete { hash, path } => JournalEntry::Delete {
                hash: hash.into_owned(),
                path: path.into_owned(),
                deleted_at: String::new(),
            },
            EntryView::Place { hash, path } => JournalEntry::Place {
                hash: hash.into_owned(),
                path: path.into_owned(),
            },
        })
    })?;
    Ok((entries, replay, valid_len))
}

/// The open journal, appended to by every core.
pub struct Journal {
    /// The file and its length: the length marks where a failed append is cut back to,
    /// kept here so an append costs one `write`, not an `fstat` too.
    file: Mutex<(File, u64)>,
}

impl Journal {
    /// Opens (creating) the journal, replays it through `apply` and truncates a torn tail.
    pub fn open(
        path: &Path,
        apply: impl FnMut(EntryView<'_>),
    ) -> Result<(Journal, Replay), ReplayError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(ReplayError::Io)?;
        let (replay, valid_len) = replay(&mut std::io::BufReader::new(&file), apply)?;
        if replay.torn_tail_bytes > 0 {
            file.set_len(valid_len).map_err(ReplayError::Io)?;
            file.sync_all().map_err(ReplayError::Io)?;
        }
        let journal = Journal {
            file: Mutex::new((file, valid_len)),
        };
        Ok((journal, replay))
    }

    /// Appends whole lines in one write; on failure the file is cut back to where it was.
    pub fn append(&self, lines: &[u8]) -> io::Result<()> {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, len) = &mut *guard;
        if let Err(e) = file.write_all(lines) {
            // Cut a partial record so the next append starts on a line boundary.
            file.set_len(*len)?;
            return Err(e);
        }
        *len += lines.len() as u64;
        Ok(())
    }

    /// fsyncs the journal file (used at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> FileRecord {
        FileRecord {
            path: format!("storage/other/bin/{n}_x.bin"),
            mime_type: "application/octet-stream".into(),
            media_type: "other".into(),
            category: "other/bin".into(),
            hash: format!("{n:064x}"),
            size: n as u64,
            original_name: "x \"quoted\"\n".into(),
            comment: String::new(),
            uploaded_at: "2026-01-15T10:30:00Z".into(),
        }
    }

    /// A line decodes to what was encoded; flipping any byte breaks the checksum.
    #[test]
    fn line_round_trip_and_checksum() {
        let mut out = Vec::new();
        encode_line(&JournalEntry::Put(record(1)), &mut out);
        let line = &out[..out.len() - 1];
        assert_eq!(decode_line(line), Some(JournalEntry::Put(record(1))));
        for i in 0..line.len() {
            let mut bad = line.to_vec();
            bad[i] ^= 0x01;
            assert_eq!(decode_line(&bad), None, "flip at {i} went unnoticed");
        }
    }

    /// A torn tail is cut; a bad line before a good one is corruption.
    #[test]
    fn torn_tail_versus_corruption() {
        let mut data = Vec::new();
        encode_line(&JournalEntry::Put(record(1)), &mut data);
        encode_line(&JournalEntry::Put(record(2)), &mut data);
        let good_len = data.len();
        data.extend_from_slice(b"{\"op\":\"put\",\"pa");
        let (entries, replay, valid) = parse(&data).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(replay.records, 2);
        assert_eq!(valid as usize, good_len);
        assert_eq!(replay.torn_tail_bytes as usize, data.len() - good_len);

        let mut corrupt = Vec::new();
        encode_line(&JournalEntry::Put(record(1)), &mut corrupt);
        corrupt.extend_from_slice(b"garbage\n");
        encode_line(&JournalEntry::Put(record(2)), &mut corrupt);
        assert!(matches!(
            parse(&corrupt),
            Err(ReplayError::Corrupt { line_number: 2, .. })
        ));
    }
}
