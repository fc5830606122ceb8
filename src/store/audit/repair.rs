//! The writing half of the audit: from what [`super::scan::audit`] found, make the store
//! consistent again, losing no byte that might matter.
//!
//! Order, each step durable before the next depends on it:
//! 1. every invalid journal line (damaged or torn tail) is copied, byte for byte, into
//!    `metadata/damaged-<stamp>.ndjson` (fsync, fsync `metadata/`);
//! 2. each damaged file is moved to `<data>/damaged-<stamp>/<its path>` (never deleted);
//! 3. the journal gets a `delete` line for every record whose file is missing or was moved
//!    aside (and for a delete that only a damaged line still tells), then a `put` line for
//!    every stray file rebuilt into a record; when lines were set aside it is rewritten
//!    without them (`journal.ndjson.repair`, fsync, rename, fsync `metadata/`, and the
//!    `journal.synced` marker, whose offsets no longer apply, removed), else appended to
//!    and fsynced; then read back, which must find no invalid line;
//! 4. the remaining strays are removed (each parent directory fsynced).
//!
//! A crash at any point leaves a store that `verify` describes and `repair` finishes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use super::AuditError;
use super::digest::{Progress, READ_BLOCK_BYTES, digest_file, for_each_parallel};
use super::scan::{Audit, LineHint, StrayKind, say, scan_journal, stored_name_of};
use crate::ingest::sniff::detect;
use crate::store::blobs::object_path;
use crate::store::index::Hash;
use crate::store::journal::{FileRecord, JournalEntry, encode_line};

/// What repair did, for the summary line.
#[derive(Default)]
pub struct Repaired {
    pub lines_set_aside: usize,
    pub records_rebuilt: usize,
    pub records_deleted: usize,
    pub files_moved_aside: usize,
    pub files_removed: usize,
    /// Steps that failed (each printed on stderr); the store is not consistent yet.
    pub failures: usize,
}

/// Repairs what `audit` found; `stamp` names the set-aside file and directory.
pub fn repair(
    data_dir: &Path,
    audit: &Audit,
    stamp: &str,
    progress: &mut Progress,
    out: &mut dyn Write,
) -> Result<Repaired, AuditError> {
    let mut done = Repaired::default();
    let journal_path = data_dir.join("metadata").join("journal.ndjson");
    drop_marker_past_the_end(&journal_path, out)?;
    if !audit.journal.invalid.is_empty() {
        set_aside_lines(&journal_path, audit, stamp, out)?;
        done.lines_set_aside = audit.journal.invalid.len();
    }
    let mut aside = AsideDir::new(data_dir, stamp);
    let completed = completed_deletes(audit);
    let mut lines = end_records(audit, &completed, &mut aside, &mut done, out);
    let strays = sort_strays(data_dir, audit, &completed, progress);
    for (record, origin) in &strays.rebuilt {
        encode_line(&JournalEntry::Put(record.clone()), &mut lines);
        say(out, format_args!("rebuilt {} ({origin})", record.path));
        done.records_rebuilt += 1;
    }
    if let Err(e) = write_journal(&journal_path, audit, &lines, out) {
        let message = format_args!("{e}; nothing removed, run repair again");
        fail(&mut done, message);
        return Ok(done);
    }
    for (path, error) in &strays.unreadable {
        let path = path.display();
        fail(
            &mut done,
            format_args!("cannot read stray {path}: {error}; left in place"),
        );
    }
    for (path, reason) in &strays.misnamed {
        match aside.move_in(path) {
            Ok(to) => {
                let (from, to) = (path.display(), to.display());
                say(out, format_args!("moved stray {from} to {to} ({reason})"));
                done.files_moved_aside += 1;
            }
            Err(e) => {
                let path = path.display();
                fail(&mut done, format_args!("cannot move {path} aside: {e}"));
            }
        }
    }
    let mut removals = strays.removed;
    for (hash, line_number) in &completed {
        let path = &audit.journal.live[hash].path;
        let what = format!("{path} (deleted by damaged-journal-line {line_number})");
        removals.push((PathBuf::from(path), what));
    }
    remove_files(data_dir, &removals, &mut done, out);
    Ok(done)
}

/// The delete lines for live records that end: damaged files (once moved aside), missing
/// files, and deletes only a damaged line tells.
fn end_records(
    audit: &Audit,
    completed: &[(Hash, usize)],
    aside: &mut AsideDir<'_>,
    done: &mut Repaired,
    out: &mut dyn Write,
) -> Vec<u8> {
    let now = rfc3339_seconds(SystemTime::now());
    let mut lines = Vec::new();
    let mut delete = |hash: &Hash, path: &str| {
        let entry = JournalEntry::Delete {
            hash: blake3::Hash::from_bytes(*hash).to_hex().to_string(),
            path: path.to_string(),
            deleted_at: now.clone(),
        };
        encode_line(&entry, &mut lines);
    };
    for hash in &audit.damaged {
        let path = &audit.journal.live[hash].path;
        match aside.move_in(Path::new(path)) {
            Ok(to) => {
                say(
                    out,
                    format_args!("moved damaged {path} to {}", to.display()),
                );
                delete(hash, path);
                say(out, format_args!("delete line for damaged {path}"));
                done.files_moved_aside += 1;
                done.records_deleted += 1;
            }
            // The record stays: verify still says `damaged`, a rerun tries again.
            Err(e) => fail(done, format_args!("cannot move {path} aside: {e}")),
        }
    }
    for hash in &audit.missing {
        let path = &audit.journal.live[hash].path;
        delete(hash, path);
        say(out, format_args!("delete line for missing {path}"));
        done.records_deleted += 1;
    }
    for (hash, line) in completed {
        let path = &audit.journal.live[hash].path;
        delete(hash, path);
        let why = format!("the delete of damaged-journal-line {line}");
        say(out, format_args!("delete line for {path} ({why})"));
        done.records_deleted += 1;
    }
    end_objects(audit, aside, done, out, &mut lines);
    lines
}

/// The `object_delete` lines for S3 keys whose content blob is missing or damaged (the
/// damaged blob moved aside first; when that fails the keys stay and a rerun tries again).
fn end_objects(
    audit: &Audit,
    aside: &mut AsideDir<'_>,
    done: &mut Repaired,
    out: &mut dyn Write,
    lines: &mut Vec<u8>,
) {
    let objects = &audit.journal.objects;
    let mut lost: Vec<&Hash> = audit.objects_missing.iter().collect();
    for hash in &audit.objects_damaged {
        let path = object_path(blake3::Hash::from_bytes(*hash).to_hex().as_str());
        match aside.move_in(Path::new(&path)) {
            Ok(to) => {
                say(
                    out,
                    format_args!("moved damaged {path} to {}", to.display()),
                );
                done.files_moved_aside += 1;
                lost.push(hash);
            }
            Err(e) => fail(done, format_args!("cannot move {path} aside: {e}")),
        }
    }
    for hash in lost {
        let hex = blake3::Hash::from_bytes(*hash).to_hex();
        for bucket in objects.buckets() {
            objects.scan_from(&bucket.name, "", |record| {
                if record.hash == hex.as_str() {
                    let entry = JournalEntry::ObjectDelete {
                        bucket: record.bucket.clone(),
                        key: record.key.clone(),
                    };
                    encode_line(&entry, lines);
                    let (b, k) = (&record.bucket, &record.key);
                    say(
                        out,
                        format_args!("object_delete line for {b}/{k} (content {hex} lost)"),
                    );
                    done.records_deleted += 1;
                }
                true
            });
        }
    }
}

/// Reports a failed step on stderr and counts it.
fn fail(done: &mut Repaired, message: std::fmt::Arguments<'_>) {
    crate::log_line!("rhinobox: error: {message}");
    done.failures += 1;
}

/// Healthy live records that a damaged `delete` line (before the tail) still names, by
/// hash and path, after their `put`: the delete was acknowledged, so repair completes it.
fn completed_deletes(audit: &Audit) -> Vec<(Hash, usize)> {
    let unhealthy: HashSet<&Hash> = audit.missing.iter().chain(&audit.damaged).collect();
    let mut completed = Vec::new();
    for line in audit.journal.damaged() {
        let LineHint::Delete { hash, path } = &line.hint else {
            continue;
        };
        let Some(record) = audit.journal.live.get(hash) else {
            continue;
        };
        let later = record.line_number < line.line_number;
        if later && record.path == *path && !unhealthy.contains(hash) {
            completed.retain(|(h, _)| h != hash);
            completed.push((*hash, line.line_number));
        }
    }
    completed
}

/// What becomes of the strays.
#[derive(Default)]
struct StrayPlan {
    /// Records rebuilt from stray files, with where the record came from.
    rebuilt: Vec<(FileRecord, String)>,
    /// Files to remove, with what to print after `removed`.
    removed: Vec<(PathBuf, String)>,
    /// Stored-name files that could not be read: left in place (a failed step).
    unreadable: Vec<(PathBuf, io::Error)>,
    /// Stored-name files whose content does not match their name: kept aside.
    misnamed: Vec<(PathBuf, String)>,
}

/// A stray that may become a record again: a regular file with a stored name.
struct Candidate<'a> {
    path: &'a str,
    hash12: &'a str,
    absolute: PathBuf,
}

/// Decides every stray's fate: hashes the stored-name ones (in parallel) and rebuilds a
/// record for each whose content matches its name and is not stored (or deleted) already.
fn sort_strays(
    data_dir: &Path,
    audit: &Audit,
    completed: &[(Hash, usize)],
    progress: &mut Progress,
) -> StrayPlan {
    let mut plan = StrayPlan::default();
    let mut candidates = Vec::new();
    for stray in &audit.tree.strays {
        let path = stray
            .path
            .to_str()
            .filter(|_| stray.kind == StrayKind::File);
        match path.and_then(|p| Some((p, stored_name_of(p)?))) {
            Some((path, name)) => candidates.push(Candidate {
                path,
                hash12: name.hash12,
                absolute: data_dir.join(path),
            }),
            None => plan.removed.push((stray.path.clone(), stray.line())),
        }
    }
    let bytes_total = candidates
        .iter()
        .filter_map(|c| std::fs::symlink_metadata(&c.absolute).ok())
        .map(|metadata| metadata.len())
        .sum();
    let indexed: Vec<(usize, &Candidate<'_>)> = candidates.iter().enumerate().collect();
    let work = |(_, c): &(usize, &Candidate<'_>), buffer: &mut [u8], done: &AtomicU64| {
        rebuild_record(c, buffer, done)
    };
    let mut results: Vec<(usize, io::Result<FileRecord>)> = Vec::with_capacity(indexed.len());
    for_each_parallel(&indexed, bytes_total, work, progress, |(i, _), result| {
        results.push((*i, result));
    });
    // In path order, so that of two strays with one content the first is kept.
    results.sort_by_key(|(i, _)| *i);
    let mut judge = StrayJudge::new(audit, completed);
    for (i, result) in results {
        judge.decide(&candidates[i], result, &mut plan);
    }
    plan
}

/// What the journal says about a stray's hash, to decide whether it becomes a record.
struct StrayJudge<'a> {
    audit: &'a Audit,
    /// Live records that repair deletes (file missing, damaged, or deleted by a damaged
    /// line, with that line's number or 0).
    ending: HashMap<Hash, usize>,
    /// Where a damaged line names a path, the line number (a put logged after a delete).
    hinted: HashMap<&'a str, usize>,
    rebuilt: HashSet<Hash>,
}

impl<'a> StrayJudge<'a> {
    fn new(audit: &'a Audit, completed: &[(Hash, usize)]) -> StrayJudge<'a> {
        let unhealthy = audit.missing.iter().chain(&audit.damaged).map(|h| (*h, 0));
        let ending = unhealthy.chain(completed.iter().copied()).collect();
        let mut hinted = HashMap::new();
        for line in &audit.journal.invalid {
            if let LineHint::Put { path } = &line.hint {
                hinted.insert(path.as_str(), line.line_number);
            }
        }
        StrayJudge {
            audit,
            ending,
            hinted,
            rebuilt: HashSet::new(),
        }
    }

    /// The journal line of the delete that ended `hash`, if its last word is a delete.
    fn deleted_at(&self, hash: &Hash) -> Option<usize> {
        let completed = self.ending.get(hash).copied().filter(|line| *line > 0);
        completed.or_else(|| self.audit.journal.deleted_at_line.get(hash).copied())
    }

    fn decide(
        &mut self,
        candidate: &Candidate<'_>,
        result: io::Result<FileRecord>,
        plan: &mut StrayPlan,
    ) {
        let path = PathBuf::from(candidate.path);
        let record = match result {
            Ok(record) => record,
            Err(e) => return plan.unreadable.push((path, e)),
        };
        let hash = crate::store::index::parse_hash(&record.hash).expect("we wrote this hash");
        let stored =
            self.audit.journal.live.contains_key(&hash) && !self.ending.contains_key(&hash);
        let hinted_line = self.hinted.get(candidate.path).copied();
        let deleted = self
            .deleted_at(&hash)
            .filter(|line| hinted_line.is_none_or(|hinted| hinted < *line));
        if !record.hash.starts_with(candidate.hash12) {
            let reason = "its content does not match its name".to_string();
            plan.misnamed.push((path, reason));
        } else if stored || self.rebuilt.contains(&hash) {
            let what = format!("stray {} (a copy of a stored file)", candidate.path);
            plan.removed.push((path, what));
        } else if let Some(line) = deleted {
            let what = format!("stray {} (deleted at journal line {line})", candidate.path);
            plan.removed.push((path, what));
        } else {
            self.rebuilt.insert(hash);
            let origin = match hinted_line {
                Some(line) => format!("from journal line {line}"),
                None => "from its name".to_string(),
            };
            plan.rebuilt.push((record, origin));
        }
    }
}

/// Hashes and sniffs a stray stored-name file into the record it would have.
fn rebuild_record(
    candidate: &Candidate<'_>,
    buffer: &mut [u8],
    bytes_done: &AtomicU64,
) -> io::Result<FileRecord> {
    let digest = digest_file(&candidate.absolute, None, true, buffer, bytes_done)?;
    let name = stored_name_of(candidate.path).expect("candidates have stored names");
    let original_name = format!("{}.{}", name.name, name.ext);
    let detected = detect(&digest.head, None, &original_name);
    let relative = &candidate.path["storage/".len()..];
    let category = relative.rsplit_once('/').map_or("", |(dir, _)| dir);
    Ok(FileRecord {
        path: candidate.path.to_string(),
        mime_type: detected.mime_type,
        media_type: detected.media_type.to_string(),
        category: category.to_string(),
        hash: digest
            .hash
            .expect("hashed: no size given")
            .to_hex()
            .to_string(),
        size: digest.size_bytes,
        original_name,
        comment: String::new(),
        uploaded_at: rfc3339_seconds(digest.modified),
    })
}

/// RFC 3339 to the second, clamped to what RFC 3339 can say (years 1970..=9999).
pub fn rfc3339_seconds(time: SystemTime) -> String {
    const YEAR_10000_S: u64 = 253_402_300_800;
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(YEAR_10000_S - 1);
    let clamped = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(clamped).to_string()
}

/// `20260115T103000Z`: the UTC time in a file name (no `:`).
pub fn utc_stamp(time: SystemTime) -> String {
    rfc3339_seconds(time).replace(['-', ':'], "")
}

/// Copies `length` bytes at `offset` of `from` onto `to`, one buffer at a time.
fn copy_range(
    from: &File,
    offset: u64,
    length: u64,
    to: &mut impl Write,
    buffer: &mut [u8],
) -> io::Result<()> {
    let mut done = 0u64;
    while done < length {
        let want = (length - done).min(buffer.len() as u64) as usize;
        from.read_exact_at(&mut buffer[..want], offset + done)?;
        to.write_all(&buffer[..want])?;
        done += want as u64;
    }
    Ok(())
}

/// Creates `<dir>/<stem><ext>`, or `<stem>-2<ext>`, ... when taken (never overwrites).
fn create_unique(dir: &Path, stem: &str, ext: &str) -> io::Result<(File, PathBuf)> {
    for attempt in 1..=100 {
        let name = match attempt {
            1 => format!("{stem}{ext}"),
            n => format!("{stem}-{n}{ext}"),
        };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{stem}{ext} and 99 variants exist in {}", dir.display()),
    ))
}

/// Step 1: every invalid line, exactly, one per line, durable before the journal changes.
fn set_aside_lines(
    journal_path: &Path,
    audit: &Audit,
    stamp: &str,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let metadata = journal_path.parent().expect("the journal is in metadata/");
    let failed = |e: io::Error| {
        AuditError(format!(
            "cannot set damaged lines aside in {}: {e}",
            metadata.display()
        ))
    };
    let source = File::open(journal_path).map_err(failed)?;
    let (file, path) =
        create_unique(metadata, &format!("damaged-{stamp}"), ".ndjson").map_err(failed)?;
    let mut writer = BufWriter::with_capacity(READ_BLOCK_BYTES, file);
    let mut buffer = vec![0u8; READ_BLOCK_BYTES];
    for line in &audit.journal.invalid {
        copy_range(&source, line.offset, line.length, &mut writer, &mut buffer).map_err(failed)?;
        if !line.terminated {
            writer.write_all(b"\n").map_err(failed)?;
        }
    }
    let file = writer.into_inner().map_err(|e| failed(e.into_error()))?;
    file.sync_all().map_err(failed)?;
    sync_dir(metadata).map_err(failed)?;
    let into = Path::new("metadata").join(path.file_name().expect("a file name"));
    let into = into.display();
    let tail_start = audit.journal.tail_start;
    for (i, line) in audit.journal.invalid.iter().enumerate() {
        let kind = if i < tail_start {
            "damaged-journal-line"
        } else {
            "torn tail line"
        };
        let (number, offset) = (line.line_number, line.offset);
        say(
            out,
            format_args!("set aside {kind} {number} (byte {offset}) in {into}"),
        );
    }
    Ok(())
}

/// Step 3: the new lines, and the journal without its invalid lines; read back after.
fn write_journal(
    journal_path: &Path,
    audit: &Audit,
    lines: &[u8],
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let metadata = journal_path.parent().expect("the journal is in metadata/");
    let shown = Path::new("metadata").join("journal.ndjson");
    let failed = |e: io::Error| AuditError(format!("cannot write {}: {e}", journal_path.display()));
    if audit.journal.invalid.is_empty() {
        if lines.is_empty() {
            return Ok(());
        }
        append_synced(journal_path, lines).map_err(failed)?;
        let count = lines.iter().filter(|&&b| b == b'\n').count();
        say(
            out,
            format_args!("appended {count} lines to {}", shown.display()),
        );
    } else {
        let marker = metadata.join("journal.synced");
        match std::fs::remove_file(&marker) {
            Ok(()) => {
                sync_dir(metadata).map_err(failed)?;
                say(
                    out,
                    format_args!("removed metadata/journal.synced (its offsets no longer apply)"),
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        // After the marker is gone for good: a crash between the two must not leave a
        // marker whose offsets point past the rewritten journal (the start would refuse).
        rewrite(journal_path, audit, lines).map_err(failed)?;
        let dropped = audit.journal.invalid.len();
        say(
            out,
            format_args!(
                "rewrote {} without its {dropped} invalid lines",
                shown.display()
            ),
        );
    }
    // Read back what was written: a journal repair leaves invalid is a bug, not a state.
    let check = scan_journal(journal_path, &mut io::sink())?;
    if !check.invalid.is_empty() {
        return Err(AuditError(format!(
            "{} still has {} invalid lines after the repair",
            journal_path.display(),
            check.invalid.len()
        )));
    }
    Ok(())
}

/// A marker claiming more synced bytes than the journal holds (the disk lost synced
/// data) makes the daemon refuse to start; the journal as it is now is what repair works
/// from, so the marker goes (durably) and the marker-less tail rule applies.
fn drop_marker_past_the_end(journal_path: &Path, out: &mut dyn Write) -> Result<(), AuditError> {
    let Some(point) = crate::store::journal::Journal::recorded_point(journal_path) else {
        return Ok(());
    };
    let len = std::fs::metadata(journal_path)
        .map(|m| m.len())
        .unwrap_or(0);
    if point.synced_len <= len {
        return Ok(());
    }
    let marker = journal_path.with_extension("synced");
    let failed = |e: io::Error| AuditError(format!("cannot remove {}: {e}", marker.display()));
    std::fs::remove_file(&marker).map_err(failed)?;
    let metadata = journal_path.parent().expect("the journal is in metadata/");
    sync_dir(metadata).map_err(failed)?;
    say(
        out,
        format_args!(
            "removed metadata/journal.synced: it says {} bytes were synced, the journal has {len}",
            point.synced_len
        ),
    );
    Ok(())
}

/// Appends whole lines and fsyncs; a failed write is cut back so no partial line stays.
/// Creates `metadata/` and the journal when they were lost.
fn append_synced(journal_path: &Path, lines: &[u8]) -> io::Result<()> {
    let metadata = journal_path.parent().expect("the journal is in metadata/");
    let data_dir = metadata.parent().expect("metadata/ is in the data dir");
    create_dirs_synced(data_dir, metadata)?;
    let created = !journal_path.exists();
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(journal_path)?;
    let length = file.metadata()?.len();
    if let Err(e) = file.write_all(lines) {
        file.set_len(length)?;
        return Err(e);
    }
    file.sync_all()?;
    if created {
        sync_dir(metadata)?;
    }
    Ok(())
}

/// The valid lines of the journal (exact bytes), then `lines`, into a new file renamed over
/// the journal.
fn rewrite(journal_path: &Path, audit: &Audit, lines: &[u8]) -> io::Result<()> {
    let metadata = journal_path.parent().expect("the journal is in metadata/");
    let temp_path = metadata.join("journal.ndjson.repair");
    let source = File::open(journal_path)?;
    let temp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)?;
    let mut writer = BufWriter::with_capacity(READ_BLOCK_BYTES, temp);
    let mut buffer = vec![0u8; READ_BLOCK_BYTES];
    let mut at = 0u64;
    for line in &audit.journal.invalid {
        copy_range(&source, at, line.offset - at, &mut writer, &mut buffer)?;
        at = line.offset + line.length;
    }
    copy_range(
        &source,
        at,
        audit.journal.length - at,
        &mut writer,
        &mut buffer,
    )?;
    writer.write_all(lines)?;
    let temp = writer.into_inner().map_err(|e| e.into_error())?;
    temp.sync_all()?;
    std::fs::rename(&temp_path, journal_path)?;
    sync_dir(metadata)
}

/// Step 4: removes files (a stray symlink itself, never its target), fsyncing each parent.
fn remove_files(
    data_dir: &Path,
    removals: &[(PathBuf, String)],
    done: &mut Repaired,
    out: &mut dyn Write,
) {
    let mut parents = BTreeSet::new();
    for (path, what) in removals {
        match std::fs::remove_file(data_dir.join(path)) {
            Ok(()) => {
                say(out, format_args!("removed {what}"));
                done.files_removed += 1;
                parents.extend(path.parent().map(|p| data_dir.join(p)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => fail(done, format_args!("cannot remove {}: {e}", path.display())),
        }
    }
    for parent in parents {
        if let Err(e) = sync_dir(&parent) {
            fail(done, format_args!("cannot fsync {}: {e}", parent.display()));
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `<data>/damaged-<stamp>/`, created on first use.
struct AsideDir<'a> {
    data_dir: &'a Path,
    stamp: &'a str,
    root: Option<PathBuf>,
}

impl<'a> AsideDir<'a> {
    fn new(data_dir: &'a Path, stamp: &'a str) -> AsideDir<'a> {
        AsideDir {
            data_dir,
            stamp,
            root: None,
        }
    }

    fn root(&mut self) -> io::Result<PathBuf> {
        if let Some(root) = &self.root {
            return Ok(root.clone());
        }
        for attempt in 1..=100 {
            let name = match attempt {
                1 => format!("damaged-{}", self.stamp),
                n => format!("damaged-{}-{n}", self.stamp),
            };
            match std::fs::create_dir(self.data_dir.join(&name)) {
                Ok(()) => {
                    sync_dir(self.data_dir)?;
                    self.root = Some(PathBuf::from(&name));
                    return Ok(PathBuf::from(name));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "damaged-<stamp> and 99 variants exist",
        ))
    }

    /// Moves `relative` (to the data dir) to the same path under the aside dir, durably;
    /// returns where it went, relative to the data dir.
    fn move_in(&mut self, relative: &Path) -> io::Result<PathBuf> {
        let to_relative = self.root()?.join(relative);
        let from = self.data_dir.join(relative);
        let to = self.data_dir.join(&to_relative);
        let to_parent = to.parent().expect("under the aside dir");
        create_dirs_synced(self.data_dir, to_parent)?;
        if std::fs::symlink_metadata(&to).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "target exists",
            ));
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            // storage/ on another file system than the data dir: copy, sync, then remove.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut source = File::open(&from)?;
                let mut target = OpenOptions::new().write(true).create_new(true).open(&to)?;
                io::copy(&mut source, &mut target)?;
                target.sync_all()?;
                std::fs::remove_file(&from)?;
            }
            Err(e) => return Err(e),
        }
        sync_dir(to_parent)?;
        sync_dir(from.parent().expect("stored files have a parent"))?;
        Ok(to_relative)
    }
}

/// `create_dir_all` that fsyncs the parent of each directory it creates.
fn create_dirs_synced(base: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| p.starts_with(base));
    if let Some(parent) = parent {
        create_dirs_synced(base, parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(parent.unwrap_or(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times print as RFC 3339 seconds, clamped to its years; stamps have no `:`.
    #[test]
    fn times() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_768_473_000);
        assert_eq!(rfc3339_seconds(t), "2026-01-15T10:30:00Z");
        assert_eq!(utc_stamp(t), "20260115T103000Z");
        let before = UNIX_EPOCH - std::time::Duration::from_secs(10);
        assert_eq!(rfc3339_seconds(before), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_seconds(far), "9999-12-31T23:59:59Z");
    }
}
