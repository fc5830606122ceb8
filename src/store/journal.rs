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
//! - After every completed sync the sync thread records a [`SyncPoint`] in
//!   `journal.synced`: the journal length before the sync, and the lowest offset of an
//!   operation still [`InFlight`]. The marker is overwritten in place and reaches the disk
//!   with the next sync (or an idle flush), so it may lag by one sync, never lead.
//! - At start-up ([`TailRule`]): a bad line before the marker's synced length is damage
//!   and refuses the start; from the first bad line after it, the rest is a torn tail,
//!   cut after its bytes are set aside. Without a readable marker, a bad line is a torn
//!   tail only when no valid line follows it.

use std::collections::BTreeMap;
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
    /// An S3 bucket was created.
    Bucket {
        bucket: String,
        created_at: String,
    },
    /// An S3 bucket (empty) was deleted.
    #[serde(rename = "bucket_delete")]
    BucketDelete {
        bucket: String,
    },
    /// An S3 key now holds this object (a put, a copy, a completed multipart upload).
    Object(ObjectRecord),
    /// An S3 key was deleted.
    #[serde(rename = "object_delete")]
    ObjectDelete {
        bucket: String,
        key: String,
    },
    /// An intent: the content blob of `hash` (`storage/.objects/..`) is about to be placed.
    /// Start-up removes it when no object names the hash (see `store::object_protocol`).
    #[serde(rename = "blob_place")]
    BlobPlace {
        hash: String,
    },
    /// An intent: the content blob of `hash` is about to be removed (its last key went).
    /// Start-up removes it when still present and no object names the hash.
    #[serde(rename = "blob_remove")]
    BlobRemove {
        hash: String,
    },
}

/// The stored description of one S3 object: a key naming content by its BLAKE3 hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ObjectRecord {
    pub bucket: String,
    pub key: String,
    pub hash: String,
    pub size: u64,
    /// Without quotes: the MD5 hex of the bytes, or `<md5 of part md5s>-N`.
    pub etag: String,
    pub content_type: String,
    /// `x-amz-meta-*` as sent, names without the prefix.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub last_modified: String,
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
    /// The S3 lines (rare next to puts: owned).
    Named(NamedEntry),
}

/// The S3 lines of the journal, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedEntry {
    Bucket { bucket: String, created_at: String },
    BucketDelete { bucket: String },
    Object(ObjectRecord),
    ObjectDelete { bucket: String, key: String },
    BlobPlace { hash: String },
    BlobRemove { hash: String },
}

impl NamedEntry {
    pub fn into_entry(self) -> JournalEntry {
        match self {
            NamedEntry::Bucket { bucket, created_at } => {
                JournalEntry::Bucket { bucket, created_at }
            }
            NamedEntry::BucketDelete { bucket } => JournalEntry::BucketDelete { bucket },
            NamedEntry::Object(record) => JournalEntry::Object(record),
            NamedEntry::ObjectDelete { bucket, key } => JournalEntry::ObjectDelete { bucket, key },
            NamedEntry::BlobPlace { hash } => JournalEntry::BlobPlace { hash },
            NamedEntry::BlobRemove { hash } => JournalEntry::BlobRemove { hash },
        }
    }
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
    bucket: Option<String>,
    key: Option<String>,
    created_at: Option<String>,
    etag: Option<String>,
    content_type: Option<String>,
    meta: Option<BTreeMap<String, String>>,
    last_modified: Option<String>,
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
            "bucket" => Some(EntryView::Named(NamedEntry::Bucket {
                bucket: self.bucket?,
                created_at: self.created_at?,
            })),
            "bucket_delete" => Some(EntryView::Named(NamedEntry::BucketDelete {
                bucket: self.bucket?,
            })),
            "object" => Some(EntryView::Named(NamedEntry::Object(ObjectRecord {
                bucket: self.bucket?,
                key: self.key?,
                hash: self.hash?.into_owned(),
                size: self.size?,
                etag: self.etag?,
                content_type: self.content_type?,
                meta: self.meta.unwrap_or_default(),
                last_modified: self.last_modified?,
            }))),
            "object_delete" => Some(EntryView::Named(NamedEntry::ObjectDelete {
                bucket: self.bucket?,
                key: self.key?,
            })),
            "blob_place" => Some(EntryView::Named(NamedEntry::BlobPlace {
                hash: self.hash?.into_owned(),
            })),
            "blob_remove" => Some(EntryView::Named(NamedEntry::BlobRemove {
                hash: self.hash?.into_owned(),
            })),
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
    /// Lines in the torn tail that still checked out (written after the last sync whose
    /// marker reached the disk; kept in the set-aside copy, never applied).
    pub torn_tail_valid_lines: usize,
}

/// Errors that refuse the start.
#[derive(Debug)]
pub enum ReplayError {
    Io(io::Error),
    Corrupt {
        line_number: usize,
        offset: u64,
    },
    /// The marker says more bytes were synced than the journal holds now.
    Shorter {
        synced_len: u64,
        len: u64,
    },
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
            ReplayError::Shorter { synced_len, len } => write!(
                f,
                "journal is {len} bytes but {synced_len} bytes of it were synced before; \
                 refusing to start (restore the journal, or run `rhinobox repair`)"
            ),
        }
    }
}

/// Bytes read per step of the replay; bounds its memory whatever the journal size.
const REPLAY_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// How replay tells a torn tail from damage.
#[derive(Clone, Copy, Debug)]
pub enum TailRule {
    /// No sync marker (a journal from before markers, or a lost marker): a bad line is a
    /// torn tail only when no valid line follows it.
    NoMarker,
    /// Bytes before `synced_len` were on stable storage when the marker was written: a
    /// bad line there is damage. From the first bad line after it everything is the
    /// torn tail (a power cut may keep later pages of an unsynced append and lose
    /// earlier ones).
    SyncedUpTo(u64),
}

/// Streaming replay state: where the first bad line was, how far we are.
struct ReplayCursor {
    rule: TailRule,
    line_number: usize,
    offset: u64,
    first_bad: Option<(usize, u64)>,
    records: usize,
    valid_after_bad: usize,
}

impl ReplayCursor {
    /// Applies the decoded lines of one block, in order.
    fn apply_block(
        &mut self,
        lines: Vec<(usize, Option<EntryView<'_>>)>,
        apply: &mut impl FnMut(u64, EntryView<'_>),
    ) -> Result<(), ReplayError> {
        for (len, entry) in lines {
            self.line_number += 1;
            match (entry, self.first_bad, self.rule) {
                (Some(_), Some((line_number, offset)), TailRule::NoMarker) => {
                    return Err(ReplayError::Corrupt {
                        line_number,
                        offset,
                    });
                }
                (Some(_), Some(_), TailRule::SyncedUpTo(_)) => self.valid_after_bad += 1,
                (Some(entry), None, _) => {
                    apply(self.offset, entry);
                    self.records += 1;
                }
                (None, None, TailRule::SyncedUpTo(synced)) if self.offset < synced => {
                    return Err(ReplayError::Corrupt {
                        line_number: self.line_number,
                        offset: self.offset,
                    });
                }
                (None, None, _) => self.first_bad = Some((self.line_number, self.offset)),
                (None, Some(_), _) => {}
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

/// Replays a journal from `reader`, calling `apply` with the byte offset and the entry of
/// each valid record in order. Returns what it found and the length of the valid prefix
/// (where a torn tail starts). `len_hint` (the journal's size, when known) only sizes the
/// read block: a small journal does not pay for zeroing an 8 MiB block.
pub fn replay(
    reader: &mut impl Read,
    rule: TailRule,
    len_hint: u64,
    mut apply: impl FnMut(u64, EntryView<'_>),
) -> Result<(Replay, u64), ReplayError> {
    let block_bytes = usize::try_from(len_hint)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
        .clamp(4096, REPLAY_BLOCK_BYTES);
    let mut cursor = ReplayCursor {
        rule,
        line_number: 0,
        offset: 0,
        first_bad: None,
        records: 0,
        valid_after_bad: 0,
    };
    let mut block: Vec<u8> = Vec::with_capacity(block_bytes + 4096);
    let mut eof = false;
    while !eof {
        let start = block.len();
        block.resize(start + block_bytes, 0);
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
    let total = cursor.offset + block.len() as u64;
    if let TailRule::SyncedUpTo(synced_len) = rule
        && synced_len > total
    {
        return Err(ReplayError::Shorter {
            synced_len,
            len: total,
        });
    }
    // What is left has no newline: a torn last line (or nothing).
    if !block.is_empty() && cursor.first_bad.is_none() {
        if let TailRule::SyncedUpTo(synced) = rule
            && cursor.offset < synced
        {
            return Err(ReplayError::Corrupt {
                line_number: cursor.line_number + 1,
                offset: cursor.offset,
            });
        }
        cursor.first_bad = Some((cursor.line_number + 1, cursor.offset));
    }
    let valid_len = cursor.first_bad.map(|(_, o)| o).unwrap_or(total);
    let replay = Replay {
        records: cursor.records,
        torn_tail_bytes: total - valid_len,
        torn_tail_valid_lines: cursor.valid_after_bad,
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

/// Parses a whole in-memory journal without a marker (tests and tools).
pub fn parse(data: &[u8]) -> Result<(Vec<JournalEntry>, Replay, u64), ReplayError> {
    parse_with(data, TailRule::NoMarker)
}

/// Parses a whole in-memory journal under `rule` (tests and tools).
pub fn parse_with(
    data: &[u8],
    rule: TailRule,
) -> Result<(Vec<JournalEntry>, Replay, u64), ReplayError> {
    let mut entries = Vec::new();
    let (replay, valid_len) = replay(&mut &data[..], rule, data.len() as u64, |_, e| {
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
            EntryView::Named(named) => named.into_entry(),
        })
    })?;
    Ok((entries, replay, valid_len))
}

/// A point the sync thread reached: everything below `synced_len` was written before the
/// sync started, and every operation logged below `resolved_before` had finished its
/// effects on the tree (renames, unlinks) before it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPoint {
    pub synced_len: u64,
    pub resolved_before: u64,
}

/// An operation logged in the journal whose effects on the tree are not finished yet
/// (a file being placed, a file being unlinked). Start-up re-checks the paths of every
/// operation logged at or after the marker's `resolved_before`, so each token must end in
/// [`Journal::resolve`] once the effects were issued; a token never resolved (the daemon
/// died) is exactly what start-up cleans up after.
#[must_use = "an in-flight operation must be resolved"]
#[derive(Debug)]
pub struct InFlight {
    offset: u64,
}

struct JournalState {
    file: File,
    /// The file's length: where a failed append is cut back to, kept here so an append
    /// costs one `write`, not an `fstat` too.
    len: u64,
    /// Offsets of in-flight operations → how many (one append can log several).
    in_flight: BTreeMap<u64, u32>,
}

/// The open journal, appended to by every core.
pub struct Journal {
    state: Mutex<JournalState>,
    marker: SyncMarker,
}

impl Journal {
    /// Opens (creating) the journal at `path`, replays it through `apply` and cuts a torn
    /// tail, setting its bytes aside in `journal-tail-<unix seconds>.torn` beside it.
    /// The caller has synced the file systems first, so what is read is what is on disk.
    pub fn open(
        path: &Path,
        apply: impl FnMut(u64, EntryView<'_>),
    ) -> Result<(Journal, Replay, SyncPoint), ReplayError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(ReplayError::Io)?;
        let marker_path = path.with_extension("synced");
        let (marker, found) = SyncMarker::open(&marker_path).map_err(ReplayError::Io)?;
        let rule = match found {
            Some(point) => TailRule::SyncedUpTo(point.synced_len),
            None => TailRule::NoMarker,
        };
        let len_hint = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let (replay, valid_len) =
            replay(&mut std::io::BufReader::new(&file), rule, len_hint, apply)?;
        if replay.torn_tail_bytes > 0 {
            set_aside_tail(path, &file, valid_len).map_err(ReplayError::Io)?;
            file.set_len(valid_len).map_err(ReplayError::Io)?;
            file.sync_all().map_err(ReplayError::Io)?;
        }
        let recorded = found.unwrap_or(SyncPoint {
            synced_len: 0,
            resolved_before: 0,
        });
        let journal = Journal {
            state: Mutex::new(JournalState {
                file,
                len: valid_len,
                in_flight: BTreeMap::new(),
            }),
            marker,
        };
        Ok((journal, replay, recorded))
    }

    /// Takes over a journal file that was just written whole and synced (compaction):
    /// nothing to replay, nothing in flight, and a marker saying all of it is synced.
    pub fn adopt(path: &Path) -> io::Result<Journal> {
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let (marker, _) = SyncMarker::open(&path.with_extension("synced"))?;
        let point = SyncPoint {
            synced_len: len,
            resolved_before: len,
        };
        marker.write(point)?;
        marker.file.sync_data()?;
        Ok(Journal {
            state: Mutex::new(JournalState {
                file,
                len,
                in_flight: BTreeMap::new(),
            }),
            marker,
        })
    }

    /// Empties the sync marker durably: the journal is about to be replaced, and its
    /// offsets would not apply to the new one (no marker means the marker-less tail rule).
    pub fn forget_marker(&self) -> io::Result<()> {
        self.marker.file.set_len(0)?;
        self.marker.file.sync_all()
    }

    /// The sync point recorded beside the journal at `path`, read-only; `None` when there
    /// is no readable marker.
    pub fn recorded_point(path: &Path) -> Option<SyncPoint> {
        let bytes = std::fs::read(path.with_extension("synced")).ok()?;
        decode_marker(&bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends whole lines in one write; on failure the file is cut back to where it was.
    pub fn append(&self, lines: &[u8]) -> io::Result<()> {
        self.append_at(lines).map(|_| ())
    }

    /// Appends lines that log an operation still to be carried out on the tree.
    pub fn append_in_flight(&self, lines: &[u8]) -> io::Result<InFlight> {
        let mut state = self.lock();
        let offset = append_locked(&mut state, lines)?;
        *state.in_flight.entry(offset).or_insert(0) += 1;
        Ok(InFlight { offset })
    }

    /// The operation's effects were issued (or undone): a sync that starts from now on
    /// makes them durable.
    pub fn resolve(&self, token: InFlight) {
        let mut state = self.lock();
        if let std::collections::btree_map::Entry::Occupied(mut entry) =
            state.in_flight.entry(token.offset)
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// The operation's effects could not be carried out (an unlink failed): it stays in
    /// flight for this process's life, so the next start re-checks it.
    pub fn keep_in_flight(&self, token: InFlight) {
        let _ = token;
    }

    fn append_at(&self, lines: &[u8]) -> io::Result<u64> {
        append_locked(&mut self.lock(), lines)
    }

    /// Where the journal is now: taken by the sync thread right before it syncs.
    pub fn sync_point(&self) -> SyncPoint {
        let state = self.lock();
        SyncPoint {
            synced_len: state.len,
            resolved_before: state.in_flight.keys().next().copied().unwrap_or(state.len),
        }
    }

    /// Records that a sync starting at `point` completed (sync thread only). The marker
    /// itself reaches the disk with the next sync, or [`Journal::flush_marker`].
    pub fn record_synced(&self, point: SyncPoint) -> io::Result<()> {
        self.marker.write(point)
    }

    /// Records, durably, that the daemon stops cleanly at `point` (everything synced,
    /// nothing in flight). The next start writes `running` again.
    pub fn record_clean_stop(&self, point: SyncPoint) -> io::Result<()> {
        self.marker.write_state(point, Stop::Clean)?;
        self.marker.file.sync_data()
    }

    /// How the daemon last left the journal at `path`; `None` without a readable marker.
    pub fn last_stop(path: &Path) -> Option<Stop> {
        let bytes = std::fs::read(path.with_extension("synced")).ok()?;
        decode_marker_state(&bytes).map(|(_, stop)| stop)
    }

    /// Makes the last recorded point durable (the sync thread, when idle, and shutdown).
    pub fn flush_marker(&self) -> io::Result<()> {
        self.marker.file.sync_data()
    }

    /// fsyncs the journal file (used at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.lock().file.sync_all()
    }
}

fn append_locked(state: &mut JournalState, lines: &[u8]) -> io::Result<u64> {
    debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
    let offset = state.len;
    if let Err(e) = state.file.write_all(lines) {
        // Cut a partial record so the next append starts on a line boundary.
        state.file.set_len(offset)?;
        return Err(e);
    }
    state.len += lines.len() as u64;
    Ok(offset)
}

/// Copies the journal's bytes from `from` to its end into `journal-tail-<unix seconds>.torn`
/// beside it, synced, so that cutting the tail deletes nothing silently.
fn set_aside_tail(path: &Path, file: &File, from: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_file_name(format!("journal-tail-{seconds}.torn"));
    let mut out = OpenOptions::new().create(true).append(true).open(&aside)?;
    let mut source = file.try_clone()?;
    source.seek(SeekFrom::Start(from))?;
    io::copy(&mut source, &mut out)?;
    out.sync_all()?;
    if let Some(dir) = aside.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes the sync marker of the journal at `journal_path` (tools that build a journal
/// offline, e.g. the benchmark harness: a journal they wrote and synced whole).
pub fn write_marker_file(journal_path: &Path, point: SyncPoint) -> io::Result<()> {
    let path = journal_path.with_extension("synced");
    let file = File::create(path)?;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&encode_marker(point, Stop::Running), 0)?;
    file.sync_all()
}

/// `journal.synced`: the last [`SyncPoint`] whose sync completed, as one checksummed line
/// overwritten in place (96 bytes: inside one sector, so a write lands whole or not at
/// all; the checksum catches anything else, and a bad marker counts as no marker).
struct SyncMarker {
    file: File,
}

const MARKER_BYTES: usize = 96;

impl SyncMarker {
    fn open(path: &Path) -> io::Result<(SyncMarker, Option<SyncPoint>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::with_capacity(MARKER_BYTES);
        (&mut file)
            .take(MARKER_BYTES as u64 * 2)
            .read_to_end(&mut bytes)?;
        let found = decode_marker(&bytes);
        if found.is_none() && !bytes.is_empty() {
            crate::log_line!(
                "rhinobox: warning: {} is unreadable; the journal tail is judged without it",
                path.display()
            );
        }
        Ok((SyncMarker { file }, found))
    }

    fn write(&self, point: SyncPoint) -> io::Result<()> {
        self.write_state(point, Stop::Running)
    }

    fn write_state(&self, point: SyncPoint, stop: Stop) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&encode_marker(point, stop), 0)
    }
}

/// How the daemon last left the journal: running (or killed), or stopped cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Running,
    Clean,
}

fn encode_marker(point: SyncPoint, stop: Stop) -> [u8; MARKER_BYTES] {
    let state = match stop {
        Stop::Running => "running",
        Stop::Clean => "clean",
    };
    let body = format!(
        "synced {:020} resolved {:020} {state}",
        point.synced_len, point.resolved_before
    );
    let line = format!("{body} {:010}", crc32fast::hash(body.as_bytes()));
    let mut out = [b' '; MARKER_BYTES];
    out[..line.len()].copy_from_slice(line.as_bytes());
    out[MARKER_BYTES - 1] = b'\n';
    out
}

fn decode_marker(bytes: &[u8]) -> Option<SyncPoint> {
    decode_marker_state(bytes).map(|(point, _)| point)
}

fn decode_marker_state(bytes: &[u8]) -> Option<(SyncPoint, Stop)> {
    let text = std::str::from_utf8(bytes.get(..MARKER_BYTES)?).ok()?;
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let [synced_word, synced, resolved_word, resolved, state, crc] = words[..] else {
        return None;
    };
    if synced_word != "synced" || resolved_word != "resolved" {
        return None;
    }
    let stop = match state {
        "running" => Stop::Running,
        "clean" => Stop::Clean,
        _ => return None,
    };
    let body = format!("{synced_word} {synced} {resolved_word} {resolved} {state}");
    if crc32fast::hash(body.as_bytes()) != crc.parse::<u32>().ok()? {
        return None;
    }
    let point = SyncPoint {
        synced_len: synced.parse().ok()?,
        resolved_before: resolved.parse().ok()?,
    };
    (point.resolved_before <= point.synced_len).then_some((point, stop))
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

    /// Every S3 line decodes, through both decoders, to what was encoded.
    #[test]
    fn named_lines_round_trip() {
        let mut meta = BTreeMap::new();
        meta.insert("color".to_string(), "blue \"x\"".to_string());
        let entries = [
            JournalEntry::Bucket {
                bucket: "photos".into(),
                created_at: "2026-01-15T10:30:00Z".into(),
            },
            JournalEntry::Object(ObjectRecord {
                bucket: "photos".into(),
                key: "a/b c/ü.jpg".into(),
                hash: format!("{:064x}", 7),
                size: 3,
                etag: "900150983cd24fb0d6963f7d28e17f72".into(),
                content_type: "image/jpeg".into(),
                meta,
                last_modified: "2026-01-15T10:30:01Z".into(),
            }),
            JournalEntry::ObjectDelete {
                bucket: "photos".into(),
                key: "a/b c/ü.jpg".into(),
            },
            JournalEntry::BlobPlace {
                hash: format!("{:064x}", 7),
            },
            JournalEntry::BlobRemove {
                hash: format!("{:064x}", 7),
            },
            JournalEntry::BucketDelete {
                bucket: "photos".into(),
            },
        ];
        let mut data = Vec::new();
        for entry in &entries {
            encode_line(entry, &mut data);
        }
        let (parsed, replay, _) = parse(&data).expect("parses");
        assert_eq!(replay.records, entries.len());
        assert_eq!(parsed, entries);
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(decode_line(line).is_some());
        }
    }

    /// The marker survives a round trip; any flipped byte makes it unreadable.
    #[test]
    fn sync_marker_round_trip() {
        let point = SyncPoint {
            synced_len: 123_456_789_012,
            resolved_before: 42,
        };
        let bytes = encode_marker(point, Stop::Clean);
        assert_eq!(decode_marker_state(&bytes), Some((point, Stop::Clean)));
        for i in 0..bytes.len() - 1 {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            assert_ne!(
                decode_marker(&bad),
                Some(point),
                "flip at {i} went unnoticed"
            );
        }
    }

    /// With a marker, a bad line before the synced length is corruption even when it is
    /// the last line; after it, everything from the bad line on is the torn tail.
    #[test]
    fn marker_tells_damage_from_a_torn_tail() {
        let mut data = Vec::new();
        encode_line(&JournalEntry::Put(record(1)), &mut data);
        let first_len = data.len();
        encode_line(&JournalEntry::Put(record(2)), &mut data);
        let mut flipped = data.clone();
        flipped[first_len + 10] ^= 0x01;
        let synced = TailRule::SyncedUpTo(data.len() as u64);
        assert!(matches!(
            parse_with(&flipped, synced),
            Err(ReplayError::Corrupt { line_number: 2, .. })
        ));
        // Without the marker the same flip is taken for a torn tail.
        let (_, replay, valid) = parse(&flipped).unwrap();
        assert_eq!((replay.records, valid as usize), (1, first_len));
        // Synced only up to the first line: the second and a valid third are the tail.
        encode_line(&JournalEntry::Put(record(3)), &mut flipped);
        let (entries, replay, valid) =
            parse_with(&flipped, TailRule::SyncedUpTo(first_len as u64)).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(valid as usize, first_len);
        assert_eq!(replay.torn_tail_valid_lines, 1);
        // A journal shorter than what was synced refuses.
        assert!(matches!(
            parse_with(&data[..first_len], TailRule::SyncedUpTo(data.len() as u64)),
            Err(ReplayError::Shorter { .. })
        ));
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
