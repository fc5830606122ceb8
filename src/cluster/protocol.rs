//! Cluster mode's put, delete and read: what a node does with the files of a request once
//! ingest has hashed, sniffed and named them.
//!
//! # Put (one batch: the files of one request, or of several small ones, [`super::packer`])
//! 1. look up every distinct hash in PostgreSQL: a stored one is a duplicate (its record);
//! 2. write the new files' bytes to the blob cluster under keys never used before
//!    ([`super::Cluster::object_key`]): every small file of the batch into one pack (one
//!    PUT; each file an offset and a length in it), a file received into `.tmp` as an
//!    object of its own (one PUT, or a multipart upload from the file, memory O(part));
//! 3. if less than half the reclaim grace passed since step 2 began, commit in one
//!    transaction ([`super::metadata::PgMetadata::commit`]): insert the records (the hash
//!    is the primary key: **the dedup decision**), the objects' rows and the totals;
//!    else fail (503) — reclaim may take an object that old for a stray;
//! 4. answer: stored, or duplicate when the insert found the hash taken (another node
//!    committed the same bytes in the same moment: its record is the answer).
//!
//! # Invariants
//! - C1 (acknowledged is durable): a 200 comes after the cluster acknowledged every blob
//!   the records name and PostgreSQL committed the records. Nothing of a node's own disk
//!   is needed afterwards: kill -9 of the node loses nothing acknowledged.
//! - C2 (a record names complete bytes): a record is inserted only after the PUT of its
//!   object returned 2xx, and names that object; objects are never written again (keys
//!   are unique), so a record's bytes never change under it.
//! - C3 (one copy per content): the primary key on the hash; a loser's bytes are dead
//!   space in its pack (counted out of the pack's live bytes, so rewrite and reclaim
//!   see them).
//! - C4 (no blob removed under a reader or a writer): see [`super::reclaim`].
//!
//! # Crash points
//! - before step 2 completes: nothing is in PostgreSQL; an object written (or a
//!   multipart upload begun) is a stray: no row names it; reclaim removes it after the
//!   grace;
//! - during step 3: PostgreSQL rolls the transaction back when the connection drops;
//!   the same as above;
//! - after step 3 commits: the records stand (the reply may not reach the client; a
//!   retry is a duplicate).
//!
//! # Delete
//! One transaction: delete the record, count its bytes out of its object (an object
//! whose last file goes becomes empty, with the time), and out of the totals. The blob
//! stays until reclaim removes the emptied object after the grace, so a download that
//! looked the record up just before still reads it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::blob_client::{BlobBody, BlobClient};
use super::metadata::{Committed, Located, NewFile, NewObject};
use super::{Cluster, ClusterError};
use crate::store::index::Hash;
use crate::store::journal::FileRecord;

/// Where a file to put has its bytes.
pub enum Content {
    /// In memory (small files): goes into the batch's pack.
    Memory(Vec<Bytes>),
    /// A complete file in the node's `.tmp` (large files): an object of its own. The
    /// caller removes the file afterwards.
    File(PathBuf),
}

/// One file to put: its hash, the record it gets when new, its bytes.
pub struct Item {
    pub hash: Hash,
    pub record: FileRecord,
    pub content: Content,
}

/// One file's answer, in the order given.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub record: FileRecord,
    pub duplicate: bool,
}

/// Large objects uploaded at the same time for one batch.
const OBJECT_UPLOADS_IN_FLIGHT_MAX: usize = 4;

/// What the put decided for one item before the commit.
enum Plan {
    /// The same content as item `first` of the batch (answered as a duplicate of it).
    SameAs(usize),
    /// Stored before the batch.
    Known(FileRecord),
    /// New: the commit's file number `n`.
    New(usize),
}

/// Puts one batch (see the module docs); answers per item, in order.
pub async fn put(cluster: &Cluster, items: Vec<Item>) -> Result<Vec<Outcome>, ClusterError> {
    let mut first_of: HashMap<Hash, usize> = HashMap::with_capacity(items.len());
    let mut distinct = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(slot) = first_of.entry(item.hash) {
            slot.insert(i);
            distinct.push(item.hash);
        }
    }
    let known: HashMap<String, FileRecord> = cluster
        .metadata
        .lookup_hashes(&distinct)
        .await?
        .into_iter()
        .map(|located| (located.record.hash.clone(), located.record))
        .collect();

    let mut plans = Vec::with_capacity(items.len());
    let mut new_files: Vec<NewFile> = Vec::new();
    let mut objects: Vec<NewObject> = Vec::new();
    let mut pack = BytesMut::new();
    let mut large: Vec<(usize, PathBuf, u64)> = Vec::new(); // (object number, path, size)
    let mut pack_object = None;
    for (i, item) in items.iter().enumerate() {
        let first = first_of[&item.hash];
        if first != i {
            plans.push(Plan::SameAs(first));
            continue;
        }
        if let Some(record) = known.get(&item.record.hash) {
            plans.push(Plan::Known(record.clone()));
            continue;
        }
        let (object, offset) = match &item.content {
            Content::Memory(chunks) => {
                let object = *pack_object.get_or_insert_with(|| {
                    objects.push(NewObject {
                        key: String::new(),
                        size: 0,
                    });
                    objects.len() - 1
                });
                let offset = pack.len() as u64;
                for chunk in chunks {
                    pack.extend_from_slice(chunk);
                }
                (object, offset)
            }
            Content::File(path) => {
                let key = cluster.object_key("files", &blake3::Hash::from_bytes(item.hash));
                objects.push(NewObject {
                    key,
                    size: item.record.size,
                });
                large.push((objects.len() - 1, path.clone(), item.record.size));
                (objects.len() - 1, 0)
            }
        };
        plans.push(Plan::New(new_files.len()));
        new_files.push(NewFile {
            hash: item.hash,
            record: item.record.clone(),
            object,
            object_offset: offset,
        });
    }

    let started = Instant::now();
    let pack = pack.freeze();
    if let Some(object) = pack_object {
        objects[object].key = cluster.object_key("packs", &blake3::hash(&pack));
        objects[object].size = pack.len() as u64;
    }
    write_objects(cluster, &objects, pack_object.map(|o| (o, pack)), &large).await?;
    let grace_half = cluster.settings.reclaim_grace / 2;
    if started.elapsed() > grace_half {
        return Err(ClusterError::Unavailable(format!(
            "writing the blobs took {:.1} s, more than half the reclaim grace ({} s): not \
             committed (reclaim may already count them as strays)",
            started.elapsed().as_secs_f64(),
            cluster.settings.reclaim_grace.as_secs()
        )));
    }
    let committed = if new_files.is_empty() {
        Vec::new()
    } else {
        cluster.metadata.commit(&objects, &new_files).await?
    };

    let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
    for plan in plans {
        let outcome = match plan {
            Plan::SameAs(first) => Outcome {
                record: outcomes[first].record.clone(),
                duplicate: true,
            },
            Plan::Known(record) => Outcome {
                record,
                duplicate: true,
            },
            Plan::New(n) => match &committed[n] {
                Committed::Stored(record) => Outcome {
                    record: record.clone(),
                    duplicate: false,
                },
                Committed::Duplicate(record) => Outcome {
                    record: record.clone(),
                    duplicate: true,
                },
            },
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Writes the pack (when there is one) and the large objects, a few at a time.
async fn write_objects(
    cluster: &Cluster,
    objects: &[NewObject],
    pack: Option<(usize, Bytes)>,
    large: &[(usize, PathBuf, u64)],
) -> Result<(), ClusterError> {
    let blobs = &cluster.blobs;
    let pack_write = async {
        match pack {
            Some((object, bytes)) => blobs.put(&objects[object].key, bytes).await,
            None => Ok(()),
        }
    };
    // Owned inputs per write: a stream of futures borrowing from a closure's argument
    // trips the compiler's `Send` check for the spawned batch.
    let writes: Vec<(BlobClient, String, PathBuf, u64)> = large
        .iter()
        .map(|(object, path, size)| {
            (
                blobs.clone(),
                objects[*object].key.clone(),
                path.clone(),
                *size,
            )
        })
        .collect();
    let large_writes = async move {
        let mut writes = futures_util::stream::iter(writes)
            .map(|(blobs, key, path, size)| async move { blobs.put_file(&key, &path, size).await })
            .buffer_unordered(OBJECT_UPLOADS_IN_FLIGHT_MAX);
        while let Some(result) = writes.next().await {
            result?;
        }
        Ok(())
    };
    let (packed, written) = futures_util::future::join(pack_write, large_writes).await;
    packed?;
    written
}

/// Deletes the record of `hash` (see the module docs); `None` when not stored.
pub async fn delete(cluster: &Cluster, hash: &Hash) -> Result<Option<FileRecord>, ClusterError> {
    Ok(cluster
        .metadata
        .delete(hash)
        .await?
        .map(|located| located.record))
}

/// The bytes `offset .. offset + length` of a stored file, streamed from its object.
pub async fn read(
    cluster: &Cluster,
    located: &Located,
    offset: u64,
    length: u64,
) -> Result<BlobBody, ClusterError> {
    let end = offset.saturating_add(length);
    if end > located.record.size {
        return Err(ClusterError::Failed(format!(
            "range {offset}+{length} is beyond the file's {} bytes",
            located.record.size
        )));
    }
    Ok(cluster
        .blobs
        .get(&located.object_key, located.object_offset + offset, length)
        .await?)
}

/// Shared handle, for the closures the cores hand to [`Cluster::run`].
pub type SharedCluster = Arc<Cluster>;
