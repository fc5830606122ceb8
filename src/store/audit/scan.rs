//! The read-only half of the audit: what the journal says is stored, what is on disk, and
//! every difference between them.
//!
//! In: the data dir. Out: an [`Audit`] (the live records, the damaged journal lines, the
//! strays, the missing and damaged files), each finding printed as one line as it is
//! found. Nothing is written. The journal is read line by line with a bounded line buffer
//! and, unlike the daemon's replay, goes on past a damaged line: the live set is what the
//! valid lines say, in order (a `put` inserts its hash, a `delete` removes it).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use memchr::memmem;

use super::AuditError;
use super::digest::{Progress, READ_BLOCK_BYTES, digest_file, for_each_parallel};
use crate::store::blobs::object_path;
use crate::store::index::{Hash, parse_hash};
use crate::store::journal::{EntryView, decode_line_view};

/// Longest journal line read as one; longer lines are damaged by definition. A record is
/// at most a few hundred KiB even with every field at its limit and fully escaped (a
/// 64 KiB comment, a 4 KiB name, six bytes per escaped character).
const JOURNAL_LINE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most invalid lines kept (about 100 bytes each): a file with more is not a journal.
const INVALID_LINES_MAX: usize = 1 << 20;

/// A record the journal says is stored now.
pub struct LiveRecord {
    pub path: String,
    pub size_bytes: u64,
    /// The journal line of its `put` (1-based).
    pub line_number: usize,
}

/// What the bytes of an invalid line still say, read without trusting them.
#[derive(Debug, PartialEq)]
pub enum LineHint {
    Nothing,
    /// A `put` (or a line whose `op` is unreadable) naming a well-formed stored path.
    Put {
        path: String,
    },
    /// A `delete` whose hash and path are both readable.
    Delete {
        hash: Hash,
        path: String,
    },
}

/// A line that does not decode (bad checksum, bad JSON, no newline, too long).
pub struct InvalidLine {
    pub line_number: usize,
    pub offset: u64,
    /// Bytes of the line with its newline, if it has one.
    pub length: u64,
    pub terminated: bool,
    pub hint: LineHint,
}

/// What the journal says.
#[derive(Default)]
pub struct JournalScan {
    pub live: HashMap<Hash, LiveRecord>,
    /// Hashes whose last valid line is a `delete`, with that line's number.
    pub deleted_at_line: HashMap<Hash, usize>,
    /// Every invalid line in order: the damaged ones, then the torn tail.
    pub invalid: Vec<InvalidLine>,
    /// `invalid[tail_start..]` follows the last valid line: the torn tail.
    pub tail_start: usize,
    /// Bytes of the journal.
    pub length: u64,
    /// S3 buckets and objects, as the valid lines say.
    pub objects: crate::store::objects::Objects,
}

impl JournalScan {
    /// Invalid lines followed by a valid one: corruption (the daemon refuses to start).
    pub fn damaged(&self) -> &[InvalidLine] {
        &self.invalid[..self.tail_start]
    }

    /// Invalid lines after the last valid one (the daemon cuts them at start).
    pub fn torn_tail(&self) -> &[InvalidLine] {
        &self.invalid[self.tail_start..]
    }

    fn apply(&mut self, line_number: usize, entry: EntryView<'_>, out: &mut dyn Write) {
        match entry {
            EntryView::Put(record) => {
                // The daemon skips a record whose hash or time does not parse: so do we.
                let time_ok = humantime::parse_rfc3339_weak(&record.uploaded_at).is_ok();
                let Some(hash) = parse_hash(&record.hash).filter(|_| time_ok) else {
                    say(
                        out,
                        format_args!(
                            "note: journal line {line_number}: the record of {:?} has an \
                             unreadable hash or time; the daemon skips it",
                            record.path
                        ),
                    );
                    return;
                };
                self.deleted_at_line.remove(&hash);
                let record = LiveRecord {
                    path: record.path.into_owned(),
                    size_bytes: record.size,
                    line_number,
                };
                self.live.insert(hash, record);
            }
            EntryView::Delete { hash, .. } => {
                if let Some(hash) = parse_hash(&hash) {
                    self.live.remove(&hash);
                    self.deleted_at_line.insert(hash, line_number);
                }
            }
            EntryView::Place { .. } => {}
            EntryView::Named(named) => self.objects.apply(&named),
        }
    }
}

/// Reads one line into `line` (at most `cap` bytes of it kept); returns its full length and
/// whether it ends in a newline, or `None` at the end of the input.
fn read_line_capped(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<(u64, bool)>> {
    line.clear();
    let mut length = 0u64;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((length > 0).then_some((length, false)));
        }
        let (used, terminated) = match memchr::memchr(b'\n', available) {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        line.extend_from_slice(&available[..used.min(room)]);
        length += used as u64;
        reader.consume(used);
        if terminated {
            return Ok(Some((length, true)));
        }
    }
}

/// Reads the journal without changing it. A missing journal is an empty one.
pub fn scan_journal(path: &Path, out: &mut dyn Write) -> Result<JournalScan, AuditError> {
    let cannot = |e: io::Error| AuditError(format!("cannot read {}: {e}", path.display()));
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(JournalScan::default()),
        Err(e) => return Err(cannot(e)),
    };
    let mut reader = BufReader::with_capacity(READ_BLOCK_BYTES, file);
    let mut scan = JournalScan::default();
    let mut line = Vec::with_capacity(64 * 1024);
    let mut line_number = 0usize;
    while let Some((length, terminated)) =
        read_line_capped(&mut reader, &mut line, JOURNAL_LINE_BYTES_MAX).map_err(cannot)?
    {
        line_number += 1;
        let whole = terminated && length as usize <= JOURNAL_LINE_BYTES_MAX;
        let entry = if whole {
            decode_line_view(&line[..line.len() - 1])
        } else {
            None
        };
        match entry {
            Some(entry) => {
                scan.apply(line_number, entry, out);
                scan.tail_start = scan.invalid.len();
            }
            None if scan.invalid.len() >= INVALID_LINES_MAX => {
                return Err(AuditError(format!(
                    "{}: more than {INVALID_LINES_MAX} invalid lines: this is not a rhinobox \
                     journal (move it aside)",
                    path.display()
                )));
            }
            None => scan.invalid.push(InvalidLine {
                line_number,
                offset: scan.length,
                length,
                terminated,
                hint: hint_of(&line),
            }),
        }
        scan.length += length;
    }
    Ok(scan)
}

/// The value of the first `"name":"..."` member in `bytes` (no escapes: the values read
/// here, hashes, paths and ops, never have any).
fn string_member<'a>(bytes: &'a [u8], name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = memmem::find(bytes, key.as_bytes())? + key.len();
    let length = memchr::memchr(b'"', &bytes[start..])?;
    std::str::from_utf8(&bytes[start..start + length]).ok()
}

/// What a damaged line still says (see [`LineHint`]).
pub fn hint_of(line: &[u8]) -> LineHint {
    let path = string_member(line, "path").filter(|path| stored_name_of(path).is_some());
    let Some(path) = path else {
        return LineHint::Nothing;
    };
    match string_member(line, "op") {
        Some("place") => LineHint::Nothing,
        Some("delete") => match string_member(line, "hash").and_then(parse_hash) {
            Some(hash) => LineHint::Delete {
                hash,
                path: path.to_string(),
            },
            None => LineHint::Nothing,
        },
        _ => LineHint::Put {
            path: path.to_string(),
        },
    }
}

/// True for `storage/<segment>/...` paths with no empty, `.` or `..` segment, outside
/// `storage/.tmp`: the only paths a record may name.
pub fn is_clean_record_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("storage/") else {
        return false;
    };
    !rest.starts_with(".tmp/")
        && !path.contains('\0')
        && rest
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// The parts of a stored file name `<12 hex>_<name>.<ext>`.
#[derive(Debug, PartialEq)]
pub struct StoredName<'a> {
    pub hash12: &'a str,
    pub name: &'a str,
    pub ext: &'a str,
}

/// Splits the last segment of a clean record path when it has the stored-name shape.
pub fn stored_name_of(path: &str) -> Option<StoredName<'_>> {
    if !is_clean_record_path(path) {
        return None;
    }
    let leaf = path.rsplit('/').next()?;
    let (stem, ext) = leaf.rsplit_once('.')?;
    let (hash12, name) = stem.split_once('_')?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let shaped = hash12.len() == 12 && hash12.bytes().all(hex);
    (shaped && !name.is_empty() && !ext.is_empty()).then_some(StoredName { hash12, name, ext })
}

/// A file under `storage/` that no live record references.
pub struct Stray {
    /// Relative to the data dir (`storage/...`).
    pub path: PathBuf,
    pub kind: StrayKind,
}

#[derive(Clone, Copy, PartialEq)]
pub enum StrayKind {
    File,
    Symlink,
    /// A fifo, socket or device.
    Other,
}

impl Stray {
    pub fn line(&self) -> String {
        let note = match self.kind {
            StrayKind::File => "",
            StrayKind::Symlink => " (symlink)",
            StrayKind::Other => " (not a regular file)",
        };
        format!("stray {}{note}", self.path.display())
    }
}

/// What the walk of `storage/` found.
#[derive(Default)]
pub struct TreeScan {
    pub strays: Vec<Stray>,
    pub tmp_files: usize,
}

/// Walks `storage/` without following symlinks; every entry but directories and the
/// referenced regular files is a stray. `storage/.tmp/` is listed, not judged.
pub fn walk_storage(
    data_dir: &Path,
    referenced: &HashSet<&str>,
    progress: &mut Progress,
    out: &mut dyn Write,
) -> Result<TreeScan, AuditError> {
    let mut tree = TreeScan::default();
    if !data_dir.join("storage").is_dir() {
        return Ok(tree);
    }
    let mut pending = vec![PathBuf::from("storage")];
    let mut entries_seen = 0usize;
    while let Some(dir) = pending.pop() {
        let mut subdirs = Vec::new();
        for (name, kind) in sorted_entries(&data_dir.join(&dir))? {
            entries_seen += 1;
            let path = dir.join(&name);
            if kind.is_dir() && dir.as_os_str() == "storage" && name == ".tmp" {
                tree.tmp_files += list_tmp(data_dir, &path, out)?;
            } else if kind.is_dir() {
                subdirs.push(path);
            } else if !(kind.is_file() && path.to_str().is_some_and(|p| referenced.contains(p))) {
                let kind = if kind.is_file() {
                    StrayKind::File
                } else if kind.is_symlink() {
                    StrayKind::Symlink
                } else {
                    StrayKind::Other
                };
                let stray = Stray { path, kind };
                say(out, format_args!("{}", stray.line()));
                tree.strays.push(stray);
            }
        }
        // Popped in name order: the output reads like a sorted listing.
        pending.extend(subdirs.into_iter().rev());
        progress.tick(|| format!("walking storage/: {entries_seen} entries"));
    }
    Ok(tree)
}

fn sorted_entries(dir: &Path) -> Result<Vec<(OsString, std::fs::FileType)>, AuditError> {
    let cannot = |e: io::Error| AuditError(format!("cannot read {}: {e}", dir.display()));
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        entries.push((entry.file_name(), entry.file_type().map_err(cannot)?));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Prints `tmp PATH` for everything below `storage/.tmp` (start-up empties it).
fn list_tmp(data_dir: &Path, tmp: &Path, out: &mut dyn Write) -> Result<usize, AuditError> {
    let mut listed = 0;
    let mut pending = vec![tmp.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for (name, kind) in sorted_entries(&data_dir.join(&dir))? {
            let path = dir.join(name);
            if kind.is_dir() {
                pending.push(path);
            } else {
                say(out, format_args!("tmp {}", path.display()));
                listed += 1;
            }
        }
    }
    Ok(listed)
}

/// The state of a live record's file.
pub enum FileState {
    Healthy,
    Missing { why: &'static str },
    Damaged { found: String },
}

/// Checks one live record's file: present, regular, right size, right BLAKE3.
pub fn check_record(
    data_dir: &Path,
    hash: &Hash,
    record: &LiveRecord,
    buffer: &mut [u8],
    bytes_done: &AtomicU64,
) -> FileState {
    if !is_clean_record_path(&record.path) {
        return FileState::Missing {
            why: " (not a path under storage/)",
        };
    }
    let path = data_dir.join(&record.path);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return FileState::Missing { why: "" },
        Ok(metadata) if !metadata.is_file() => {
            return FileState::Missing {
                why: " (not a regular file)",
            };
        }
        _ => {}
    }
    match digest_file(&path, Some(record.size_bytes), false, buffer, bytes_done) {
        Err(e) => FileState::Damaged {
            found: format!("unreadable: {e}"),
        },
        Ok(digest) if digest.size_bytes != record.size_bytes => FileState::Damaged {
            found: format!(
                "{} bytes instead of {}",
                digest.size_bytes, record.size_bytes
            ),
        },
        Ok(digest) => match digest.hash {
            Some(found) if found.as_bytes() == hash => FileState::Healthy,
            Some(found) => FileState::Damaged {
                found: found.to_hex().to_string(),
            },
            None => unreachable!("a file of the expected size is always hashed"),
        },
    }
}

/// Everything the audit found.
pub struct Audit {
    pub journal: JournalScan,
    pub tree: TreeScan,
    /// Live records whose file is missing, and those whose file is damaged.
    pub missing: Vec<Hash>,
    pub damaged: Vec<Hash>,
    /// Content of S3 objects whose blob is missing, or damaged.
    pub objects_missing: Vec<Hash>,
    pub objects_damaged: Vec<Hash>,
    pub files_checked: usize,
    pub bytes_checked: u64,
}

impl Audit {
    /// Findings that make the store inconsistent (`tmp` files and notes are not).
    pub fn problems(&self) -> usize {
        self.journal.damaged().len()
            + self.missing.len()
            + self.damaged.len()
            + self.tree.strays.len()
            + self.objects_missing.len()
            + self.objects_damaged.len()
    }
}

/// Runs the whole read-only audit, printing each finding on `out` as it is found.
pub fn audit(
    data_dir: &Path,
    progress: &mut Progress,
    out: &mut dyn Write,
) -> Result<Audit, AuditError> {
    let journal = scan_journal(&data_dir.join("metadata").join("journal.ndjson"), out)?;
    for line in journal.damaged() {
        say(
            out,
            format_args!(
                "damaged-journal-line {} (byte {})",
                line.line_number, line.offset
            ),
        );
    }
    if let Some(first) = journal.torn_tail().first() {
        let bytes: u64 = journal.torn_tail().iter().map(|line| line.length).sum();
        say(
            out,
            format_args!(
                "note: torn journal tail from line {} (byte {}): {bytes} bytes, which the \
                 daemon cuts at start",
                first.line_number, first.offset
            ),
        );
    }
    let object_blobs: HashMap<Hash, LiveRecord> = journal
        .objects
        .hashes()
        .into_iter()
        .map(|(hash, size_bytes)| {
            let path = object_path(blake3::Hash::from_bytes(hash).to_hex().as_str());
            let record = LiveRecord {
                path,
                size_bytes,
                line_number: 0,
            };
            (hash, record)
        })
        .collect();
    let referenced: HashSet<&str> = journal
        .live
        .values()
        .chain(object_blobs.values())
        .map(|r| r.path.as_str())
        .collect();
    let tree = walk_storage(data_dir, &referenced, progress, out)?;
    drop(referenced);
    let mut records: Vec<(&Hash, &LiveRecord)> = journal.live.iter().collect();
    records.extend(object_blobs.iter());
    records.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    let bytes_total = records.iter().map(|(_, r)| r.size_bytes).sum();
    let (mut missing, mut damaged) = (Vec::new(), Vec::new());
    let (mut objects_missing, mut objects_damaged) = (Vec::new(), Vec::new());
    let check = |(hash, record): &(&Hash, &LiveRecord), buffer: &mut [u8], done: &AtomicU64| {
        check_record(data_dir, hash, record, buffer, done)
    };
    let is_object = |record: &LiveRecord| record.line_number == 0;
    for_each_parallel(
        &records,
        bytes_total,
        check,
        progress,
        |(hash, record), state| match state {
            FileState::Healthy => {}
            FileState::Missing { why } => {
                say(out, format_args!("missing {}{why}", record.path));
                match is_object(record) {
                    true => objects_missing.push(**hash),
                    false => missing.push(**hash),
                }
            }
            FileState::Damaged { found } => {
                let expected = blake3::Hash::from_bytes(**hash).to_hex();
                let path = &record.path;
                say(
                    out,
                    format_args!("damaged {path} (expected {expected}, found {found})"),
                );
                match is_object(record) {
                    true => objects_damaged.push(**hash),
                    false => damaged.push(**hash),
                }
            }
        },
    );
    let files_checked = records.len();
    drop(records);
    drop(object_blobs);
    Ok(Audit {
        journal,
        tree,
        missing,
        damaged,
        objects_missing,
        objects_damaged,
        files_checked,
        bytes_checked: bytes_total,
    })
}

/// One line on stdout; a closed stdout (`verify | head`) does not stop the work.
pub fn say(out: &mut dyn Write, line: std::fmt::Arguments<'_>) {
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only daemon-shaped leaves under a clean `storage/` path split.
    #[test]
    fn stored_names() {
        assert_eq!(
            stored_name_of("storage/images/png/holiday/0123456789ab_beach_1.png"),
            Some(StoredName {
                hash12: "0123456789ab",
                name: "beach_1",
                ext: "png"
            })
        );
        for bad in [
            "storage/images/png/0123456789AB_x.png",
            "storage/images/png/0123456789a_x.png",
            "storage/images/png/0123456789ab_.png",
            "storage/images/png/0123456789ab_x",
            "storage/.tmp/0123456789ab_x.png",
            "storage/images/../0123456789ab_x.png",
            "other/0123456789ab_x.png",
        ] {
            assert_eq!(stored_name_of(bad), None, "{bad}");
        }
    }

    /// A damaged line still tells a put's path, a delete's hash and path, and nothing
    /// for a place intent or an unreadable path.
    #[test]
    fn hints_of_damaged_lines() {
        let path = "storage/images/png/0123456789ab_x.png";
        let hash = "ab".repeat(32);
        let put = format!(r#"{{"op":"put","path":"{path}","size":1#,"crc":1}}"#);
        assert_eq!(hint_of(put.as_bytes()), LineHint::Put { path: path.into() });
        let delete = format!(r#"{{"op":"delete","hash":"{hash}","path":"{path}","#);
        assert_eq!(
            hint_of(delete.as_bytes()),
            LineHint::Delete {
                hash: parse_hash(&hash).unwrap(),
                path: path.into()
            }
        );
        let place = format!(r#"{{"op":"place","hash":"{hash}","path":"{path}"}}"#);
        assert_eq!(hint_of(place.as_bytes()), LineHint::Nothing);
        let torn = r#"{"op":"put","path":"storage/ima"#;
        assert_eq!(hint_of(torn.as_bytes()), LineHint::Nothing);
    }

    /// Lines longer than the cap are read to their end but kept only up to the cap.
    #[test]
    fn capped_lines() {
        let data = b"abcdef\ngh";
        let mut reader = &data[..];
        let mut line = Vec::new();
        assert_eq!(
            read_line_capped(&mut reader, &mut line, 3).unwrap(),
            Some((7, true))
        );
        assert_eq!(line, b"abc");
        assert_eq!(
            read_line_capped(&mut reader, &mut line, 3).unwrap(),
            Some((2, false))
        );
        assert_eq!(read_line_capped(&mut reader, &mut line, 3).unwrap(), None);
    }
}
