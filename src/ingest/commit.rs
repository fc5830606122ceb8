//! Committing a request: the received files become a store put (`store::protocol`).
//!
//! This stage only turns what ingest knows (the detected type, the decoded name, the
//! request's category and comment) into the record each new file gets, and the store's
//! answer into the `stored` entries of the reply. The put protocol itself — dedup, tmp
//! files, syncs, final names, journal, publication, and its crash safety — is the
//! store's. The commit runs as its own task: a client that disconnects cannot cancel it
//! half way.

use std::rc::Rc;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::IngestContext;
use super::naming::{sanitize, stem_of};
use super::receive::{Content, ReceivedFile, TmpFiles, wait_written};
use crate::api::errors::ApiError;
use crate::store::journal::FileRecord;
use crate::store::{PutItem, Staged};

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
    let items: Vec<PutItem<'_>> = files
        .iter()
        .map(|file| {
            let hex = blake3::Hash::from_bytes(file.hash).to_hex();
            PutItem {
                hash: file.hash,
                record: build_record(file, annotations, hex.as_str(), &now),
                staged: match &file.content {
                    Content::Memory { chunks, .. } => Staged::Memory(chunks),
                    Content::Tmp { path, .. } => Staged::Tmp(path),
                    Content::At { .. } => {
                        unreachable!("the native ingest receives to its own tmp files only")
                    }
                },
            }
        })
        .collect();
    let stored = ctx
        .store
        .put(&ctx.io, &items, tmp_files)
        .await
        .map_err(ApiError::from)?;
    let mut entries = Vec::with_capacity(stored.len());
    let mut new_files = 0u64;
    for outcome in stored {
        new_files += u64::from(!outcome.duplicate);
        entries.push(StoredEntry {
            record: outcome.record,
            duplicate: outcome.duplicate,
        });
    }
    ctx.stats
        .files
        .fetch_add(new_files, std::sync::atomic::Ordering::Relaxed);
    Ok(entries)
}
