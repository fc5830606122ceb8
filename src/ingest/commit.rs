//! Committing a request: dedup, final names, journal, durability — all or nothing.
//!
//! Order (the Garage block-write protocol, grouped per request):
//! 1. claim every new hash in ascending order (no cycles between requests);
//! 2. write each new in-memory (small) file into a tmp file (duplicates never touch disk);
//! 3. `batch`: group sync — the tmp files' data is on stable storage;
//! 4. rename each new tmp file to its final path (directories created once per process);
//! 5. append every record of the request to the journal in one write;
//! 6. `batch`: group sync — the renames' directory entries and the journal records;
//! 7. publish the hashes in the index; duplicates reuse the stored records.
//!
//! Any failure in 2–5 removes the files placed and abandons the claims, so nothing of the
//! request stays. Only complete tmp files are renamed into place: a crash never leaves a
//! torn file under a final name. The commit runs as its own task: a client that disconnects cannot cancel
//! it half way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::IngestContext;
use super::naming::{sanitize, stem_of};
use super::receive::{Content, ReceivedFile, TmpFiles, wait_written};
use crate::api::errors::ApiError;
use crate::store::index::{Claim, Hash, StoredFile};
use crate::store::journal::{FileRecord, JournalEntry, encode_line};

/// One entry of the `stored` array: the record, and whether it was stored before.
pub struct StoredEntry {
    pub record: FileRecord,
    pub duplicate: bool,
}

// Written field by field (not through a JSON map): this runs once per uploaded file.
impl Serialize for StoredEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = &self.record;
        let mut entry = serializer.serialize_struct("StoredEntry", 10)?;
        entry.serialize_field("path", &r.path)?;
        entry.serialize_field("mime_type", &r.mime_type)?;
        entry.serialize_field("media_type", &r.media_type)?;
        entry.serialize_field("category", &r.category)?;
        entry.serialize_field("hash", &r.hash)?;
        entry.serialize_field("size", &r.size)?;
        entry.serialize_field("original_name", &r.original_name)?;
        entry.serialize_field("comment", &r.comment)?;
        entry.serialize_field("uploaded_at", &r.uploaded_at)?;
        entry.serialize_field("duplicate", &self.duplicate)?;
        entry.end()
    }
}

/// The 200 reply of an ingest request.
#[derive(serde::Serialize)]
pub struct IngestResponse {
    pub stored: Vec<StoredEntry>,
}

/// Request-wide fields that apply to every file.
pub struct Annotations {
    pub category_hint: String,
    pub comment: String,
}

/// Claimed hashes and renamed files of a commit in progress; undone on drop.
struct Rollback<'a> {
    ctx: &'a IngestContext,
    claimed: Vec<Hash>,
    renamed: Vec<PathBuf>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for path in &self.renamed {
            let _ = std::fs::remove_file(path);
        }
        for hash in &self.claimed {
            self.ctx.store.index.abandon(hash);
        }
    }
}

/// Commits the files of one request and returns the `stored` entries in part order.
pub async fn commit(
    ctx: Rc<IngestContext>,
    files: Vec<ReceivedFile>,
    annotations: Annotations,
    mut tmp_files: TmpFiles,
) -> Result<Vec<StoredEntry>, ApiError> {
    // The tmp guard moves into the task: only the task decides what stays on disk.
    let task = tokio::task::spawn_local(async move {
        let result = commit_now(&ctx, files, &annotations, &mut tmp_files).await;
        if result.is_ok() {
            tmp_files.disarm();
        }
        drop(tmp_files);
        result
    });
    task.await.map_err(|e| {
        ApiError::new(
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            format!("commit failed: {e}"),
        )
    })?
}

fn build_record(
    file: &ReceivedFile,
    annotations: &Annotations,
    hash_hex: &str,
    now: &str,
) -> FileRecord {
    let d = &file.detected;
    let category_dir = sanitize(&annotations.category_hint, "");
    let mut category = format!("{}/{}", d.media_type, d.ext);
    if !category_dir.is_empty() {
        category.push('/');
        category.push_str(&category_dir);
    }
    let stem = sanitize(stem_of(&file.original_name), "file");
    FileRecord {
        path: format!("storage/{category}/{}_{stem}.{}", &hash_hex[..12], d.ext),
        mime_type: d.mime_type.clone(),
        media_type: d.media_type.to_string(),
        category,
        hash: hash_hex.to_string(),
        size: file.size,
        original_name: file.original_name.clone(),
        comment: annotations.comment.clone(),
        uploaded_at: now.to_string(),
    }
}

async fn commit_now(
    ctx: &IngestContext,
    mut files: Vec<ReceivedFile>,
    annotations: &Annotations,
    tmp_files: &mut TmpFiles,
) -> Result<Vec<StoredEntry>, ApiError> {
    wait_written(&mut files).await?;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // First occurrence of each hash in the request; later ones are duplicates of it.
    let mut first_of: HashMap<Hash, usize> = HashMap::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        first_of.entry(file.hash).or_insert(i);
    }
    let mut unique: Vec<Hash> = first_of.keys().copied().collect();
    unique.sort_unstable();

    let mut rollback = Rollback {
        ctx,
        claimed: Vec::new(),
        renamed: Vec::new(),
        armed: true,
    };
    let mut existing: HashMap<Hash, Arc<StoredFile>> = HashMap::new();
    for hash in &unique {
        match ctx.store.index.claim(hash).await {
            Claim::Claimed => rollback.claimed.push(*hash),
            Claim::Existing(file) => {
                existing.insert(*hash, file);
            }
        }
    }
    let mut new_records: HashMap<Hash, FileRecord> = HashMap::with_capacity(rollback.claimed.len());
    for hash in &rollback.claimed {
        let file = &files[first_of[hash]];
        let hex = blake3::Hash::from_bytes(*hash).to_hex();
        new_records.insert(*hash, build_record(file, annotations, hex.as_str(), &now));
    }

    write_small_files(ctx, &mut files, &first_of, &new_records, tmp_files).await?;
    // Planted bug for the power-loss harness (tools/crashdisk): no data sync before rename.
    #[cfg(not(feature = "planted-skip-data-sync"))]
    if !new_records.is_empty() {
        ctx.store.make_durable().await;
    }
    place_files(ctx, &files, &first_of, &new_records, &mut rollback).await?;
    let mut lines = Vec::with_capacity(new_records.len() * 400);
    for hash in &rollback.claimed {
        encode_line(&JournalEntry::Put(new_records[hash].clone()), &mut lines);
    }
    if !lines.is_empty() {
        ctx.store
            .journal
            .append(&lines)
            .map_err(|e| ApiError::storage("cannot append to the journal", &e))?;
    }
    // The journal record is the commit point: from here the files stay, even if this
    // task is dropped at shutdown (the final sync at exit covers them).
    rollback.armed = false;
    // Planted bug for the power-loss harness (tools/crashdisk): no sync after the append.
    #[cfg(not(feature = "planted-skip-journal-sync"))]
    if !lines.is_empty() {
        ctx.store.make_durable().await;
    }

    for (hash, record) in &new_records {
        ctx.store.index.publish(hash, record);
        ctx.store.count_ingested(record.size);
        ctx.stats
            .files
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    // The last occurrence of a new hash takes its record; earlier ones copy it.
    let mut last_of: HashMap<Hash, usize> = HashMap::with_capacity(first_of.len());
    for (i, file) in files.iter().enumerate() {
        last_of.insert(file.hash, i);
    }
    let mut stored = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let first = first_of[&file.hash] == i;
        let new = if last_of[&file.hash] == i {
            new_records.remove(&file.hash)
        } else {
            new_records.get(&file.hash).cloned()
        };
        let (record, duplicate) = match (new, existing.get(&file.hash)) {
            (Some(new), _) => (new, !first),
            (None, Some(old)) => (old.record(), true),
            (None, None) => unreachable!("every hash is either claimed or existing"),
        };
        if duplicate {
            ctx.store.count_duplicate(file.size);
        }
        stored.push(StoredEntry { record, duplicate });
    }
    Ok(stored)
}

/// Creates `dir` unless this process already did.
async fn ensure_dir(ctx: &IngestContext, dir: &Path) -> Result<(), ApiError> {
    if !ctx.store.dir_known(dir) {
        ctx.io
            .create_dir_all(dir)
            .await
            .map_err(|e| ApiError::storage("cannot create directory", &e))?;
        ctx.store.remember_dir(dir.to_path_buf());
    }
    Ok(())
}

/// Renames `tmp` to `target`. When the target's directory has vanished since this process
/// created it (an operator removed it), creates it again and retries once, instead of
/// failing every later upload of that category until a restart.
async fn move_into_place(ctx: &IngestContext, tmp: &Path, target: &Path) -> std::io::Result<()> {
    match ctx.io.rename(tmp, target).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && tmp.exists() => {
            recreate_parent(ctx, target).await?;
            ctx.io.rename(tmp, target).await
        }
        other => other,
    }
}

async fn recreate_parent(ctx: &IngestContext, target: &Path) -> std::io::Result<()> {
    let parent = target.parent().expect("stored paths have a parent");
    ctx.store.forget_dir(parent);
    ctx.io.create_dir_all(parent).await?;
    ctx.store.remember_dir(parent.to_path_buf());
    Ok(())
}

/// Writes `chunks` into a new file at `path` (O_EXCL).
async fn write_new(ctx: &IngestContext, path: &Path, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut writer = ctx.io.create_new(path.to_path_buf());
    for chunk in chunks {
        writer.write(chunk).await?;
    }
    writer.finish().await.map(|_| ())
}

/// Files written or renamed beyond this many run one after another (bounds ops in flight
/// per request).
const PLACE_CONCURRENCY_MAX: usize = 16;

/// The final path of file `i` when it is the first copy of a new hash.
fn target_of(
    ctx: &IngestContext,
    files: &[ReceivedFile],
    i: usize,
    first_of: &HashMap<Hash, usize>,
    new_records: &HashMap<Hash, FileRecord>,
) -> Option<PathBuf> {
    let file = &files[i];
    new_records
        .get(&file.hash)
        .filter(|_| first_of[&file.hash] == i)
        .map(|record| ctx.store.absolute(&record.path))
}

/// Writes the first copy of each new in-memory hash into a tmp file, as the receive path
/// does for larger files, so that the rename after the sync places only complete files: a
/// crash never leaves a torn file under a final name. Copies of duplicates never touch
/// the disk, and a request refused before its commit wrote nothing at all.
async fn write_small_files(
    ctx: &IngestContext,
    files: &mut [ReceivedFile],
    first_of: &HashMap<Hash, usize>,
    new_records: &HashMap<Hash, FileRecord>,
    tmp_files: &mut TmpFiles,
) -> Result<(), ApiError> {
    let mut writes: Vec<(usize, PathBuf)> = Vec::new();
    for i in 0..files.len() {
        let is_new = new_records.contains_key(&files[i].hash) && first_of[&files[i].hash] == i;
        if is_new && matches!(files[i].content, Content::Memory { .. }) {
            let path = ctx.next_tmp_path();
            tmp_files.add(path.clone());
            writes.push((i, path));
        }
    }
    let shared_files: &[ReceivedFile] = files;
    let results: Vec<(usize, PathBuf, std::io::Result<()>)> = futures_util::stream::iter(writes)
        .map(|(i, path)| async move {
            let Content::Memory { chunks, .. } = &shared_files[i].content else {
                unreachable!("only in-memory files are written here");
            };
            let result = write_new(ctx, &path, chunks).await;
            (i, path, result)
        })
        .buffer_unordered(PLACE_CONCURRENCY_MAX)
        .collect()
        .await;
    let mut first_error = None;
    for (i, path, result) in results {
        match result {
            Ok(()) => {
                files[i].content = Content::Tmp {
                    path,
                    written: None,
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(ApiError::storage("cannot write tmp file", &e)),
        None => Ok(()),
    }
}

/// Renames the first tmp copy of each new hash into place and removes every other tmp file.
async fn place_files(
    ctx: &IngestContext,
    files: &[ReceivedFile],
    first_of: &HashMap<Hash, usize>,
    new_records: &HashMap<Hash, FileRecord>,
    rollback: &mut Rollback<'_>,
) -> Result<(), ApiError> {
    // (tmp path, final path or None for a tmp file to drop)
    let mut moves: Vec<(&PathBuf, Option<PathBuf>)> = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let Content::Tmp { path, .. } = &file.content else {
            continue;
        };
        let target = target_of(ctx, files, i, first_of, new_records);
        if let Some(parent) = target.as_ref().and_then(|t| t.parent()) {
            ensure_dir(ctx, parent).await?;
        }
        moves.push((path, target));
    }
    let results: Vec<(Option<PathBuf>, std::io::Result<()>)> = futures_util::stream::iter(moves)
        .map(|(tmp, target)| async move {
            match target {
                Some(target) => {
                    let result = move_into_place(ctx, tmp, &target).await;
                    (Some(target), result)
                }
                None => (None, ctx.io.remove_file(tmp).await),
            }
        })
        .buffer_unordered(PLACE_CONCURRENCY_MAX)
        .collect()
        .await;
    let mut first_error = None;
    for (target, result) in results {
        match (target, result) {
            (Some(target), Ok(())) => rollback.renamed.push(target),
            (_, Err(e)) => {
                first_error.get_or_insert(e);
            }
            (None, Ok(())) => {}
        }
    }
    match first_error {
        Some(e) => Err(ApiError::storage("cannot move file into place", &e)),
        None => Ok(()),
    }
}
