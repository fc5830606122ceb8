//! The store's protocols: put and delete. Ingest and the API call these; nothing else
//! writes the journal, places a file under `storage/` or removes one.
//!
//! The protocols drive the store's two sides and nothing below them: the metadata side
//! ([`super::metadata`]: claims and leases in the index, intents and records in the
//! journal, publication) and the blob side ([`super::blobs`]: stage, place, check,
//! remove), with one durability barrier ([`Store::make_durable`]) between the steps. The
//! safety argument below is written against those operations, so it holds for any
//! backend that gives them the same meaning:
//!
//! | step        | local (today)                          | cluster (PostgreSQL + S3)            |
//! |-------------|----------------------------------------|--------------------------------------|
//! | claim       | index slot → `Pending`                 | `INSERT … ON CONFLICT (hash)`        |
//! | intent      | `place` / `delete` line, in flight     | intent row, swept after a grace time |
//! | place       | `renameat2(RENAME_NOREPLACE)`          | content-addressed PUT (idempotent)   |
//! | commit      | `put` line                             | record row, transaction commit       |
//! | barrier     | fsync/syncfs of journal + file systems | the engines' own durable answers     |
//!
//! Named objects (S3: bucket/key → content by hash) are a second kind of record on the
//! metadata side that references content the same way a native record does; the content
//! is then counted by every record and key that names it, and a blob is removed only when
//! the last of them goes — under the same claim, so the I5 argument carries over.
//!
//! # Invariants
//! - I1 (acknowledged is durable): with durability `batch`, a put or delete returns only
//!   after a sync that started after all its writes (file data, directory entries,
//!   journal lines) completed on every file system of the data dir.
//! - I2 (a record names a complete file): a file reaches its final name only by a rename
//!   of a complete tmp file whose data was synced (`batch`) before the rename; its `put`
//!   line is appended after the rename.
//! - I3 (a final name never replaces): renames use `RENAME_NOREPLACE`; a name taken by
//!   another content gets a longer hash prefix (16, 24, 32, then all 64 hex digits).
//! - I4 (nothing stray stays): every file placed under a final name was logged first as
//!   a `place` intent, synced with its data; every unlink of a stored file is preceded by
//!   its `delete` line. Both are "in flight" in the journal ([`super::journal::InFlight`])
//!   until their effects were issued; the sync marker records the lowest offset still in
//!   flight, so start-up re-checks only the paths logged after it.
//! - I5 (duplicates name a live file): a duplicate upload holds a lease on the stored
//!   hash until it answers; a delete waits for the leases after turning the hash into a
//!   claim (no new lease), so `duplicate: true` never names an unlinked file.
//! - I6 (dedup trusts no stale copy): a duplicate hit checks the stored copy (a regular
//!   file of the recorded size); a missing or short copy is deleted from the journal and
//!   the upload's bytes are stored in its place.
//! - Hashes are claimed in ascending order, so two requests never wait on each other.
//!
//! # Put (one request, all files or none)
//! 1. claim each distinct hash; a stored hash is a duplicate (leased, its copy checked);
//! 2. append `place` intents for the new hashes (and `delete` lines for damaged copies);
//! 3. write new in-memory files to tmp files (large ones arrived in tmp files already);
//! 4. `batch`: sync — tmp data and intents durable;
//! 5. unlink damaged copies; rename each new tmp file to its final name (no replace);
//!    remove the tmp files of duplicates;
//! 6. append the `put` records — the commit point;
//! 7. `batch`: sync; resolve the intents; publish the hashes; drop the leases.
//!
//! Crash points and what start-up does (see `store::recovery`):
//! - before 4 completes: tmp files are removed (`.tmp` is emptied); intents without a
//!   file are harmless;
//! - between 5 and the durable end of 6: a placed file with an intent but no record is a
//!   stray: start-up finds it through the intent (all prefix lengths) and removes it;
//! - after 6 is durable: the file and record stand.
//! - A failure in 3–6 removes what was renamed and abandons the claims (a damaged copy
//!   whose delete line was written stays deleted: the index agrees with the journal).
//!
//! # Delete
//! 1. the hash turns from stored into a claim (it leaves listings; uploads of the same
//!    content wait) and the delete waits for the leases of duplicate uploads;
//! 2. append the `delete` line (in flight); a failure restores the file;
//! 3. `batch`: sync;
//! 4. unlink the file; resolve; drop the claim.
//!
//! A crash after 3 and before 4 leaves the file on disk without a record: start-up finds
//! it through the `delete` line and removes it. An unlink that fails (not "missing")
//! keeps its line in flight, so the next start retries it.
//!
//! Errors are [`StoreError`]s: what failed and the io error; callers map them to status
//! codes. A failed sync never returns: the sync thread exits the process with 70.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::Store;
use super::index::{Claim, Hash, Lease, StoredFile};
use super::io::CoreIo;
use super::journal::{FileRecord, InFlight};
use super::tmp::TmpFiles;

/// A failed store operation: what was being done, and the io error.
#[derive(Debug)]
pub struct StoreError {
    pub context: &'static str,
    pub error: io::Error,
}

impl StoreError {
    fn new(context: &'static str, error: io::Error) -> StoreError {
        StoreError { context, error }
    }
}

impl From<super::durability::SyncUnavailable> for StoreError {
    fn from(e: super::durability::SyncUnavailable) -> StoreError {
        StoreError::new("cannot sync", e.into())
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.error)
    }
}

/// Where a file to put has its bytes.
pub enum Staged<'a> {
    /// In memory: written to a tmp file only when its content is new.
    Memory(&'a [Bytes]),
    /// In a complete tmp file under `storage/.tmp/`, renamed or removed by the put.
    Tmp(&'a Path),
}

/// One file of a put: its hash, the record it gets if its content is new, its bytes.
pub struct PutItem<'a> {
    pub hash: Hash,
    pub record: FileRecord,
    pub staged: Staged<'a>,
}

/// One file's outcome, in request order.
pub struct Stored {
    pub record: FileRecord,
    /// The content was stored before (or earlier in the same request).
    pub duplicate: bool,
}

/// Files written or renamed beyond this many run one after another (bounds ops in flight
/// per request).
const PLACE_CONCURRENCY_MAX: usize = 16;

/// What a put decided for one distinct hash.
enum Plan<'a> {
    /// New content: stored from item `first`, under `record`.
    New { first: usize, record: FileRecord },
    /// Stored before, copy intact: answered with its record.
    /// The lease is held, not read: it drops with the plan, after the answer is built.
    Duplicate(Arc<StoredFile>, #[allow(dead_code)] Lease<'a>),
}

/// Undoes a put that failed before its commit point; disarmed at the commit point.
struct Rollback<'a> {
    store: &'a Store,
    claimed: Vec<Hash>,
    /// Record paths of the blobs placed so far.
    placed: Vec<String>,
    intents: Option<InFlight>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed_all = self.store.blobs.remove_placed_now(&self.placed);
        for hash in &self.claimed {
            self.store.metadata.index.abandon(hash);
        }
        // A file that could not be removed keeps its intent in flight: the next start
        // removes it.
        if let Some(token) = self.intents.take()
            && removed_all
        {
            self.store.metadata.resolve(token);
        }
    }
}

impl Store {
    /// Stores the files of one request (see the module docs); the outcome of each file in
    /// request order. On error nothing of the request stays, and the tmp files of `items`
    /// are left to the caller's guard.
    pub async fn put(
        &self,
        io: &CoreIo,
        items: &[PutItem<'_>],
        tmp_files: &mut TmpFiles,
    ) -> Result<Vec<Stored>, StoreError> {
        if let Some(cluster) = &self.cluster {
            return self.put_in_cluster(io, cluster, items).await;
        }
        let mut first_of: HashMap<Hash, usize> = HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            first_of.entry(item.hash).or_insert(i);
        }
        let mut unique: Vec<Hash> = first_of.keys().copied().collect();
        unique.sort_unstable();

        let mut rollback = Rollback {
            store: self,
            claimed: Vec::new(),
            placed: Vec::new(),
            intents: None,
            armed: true,
        };
        let mut plans: HashMap<Hash, Plan<'_>> = HashMap::with_capacity(unique.len());
        let mut damaged: Vec<Arc<StoredFile>> = Vec::new();
        for hash in &unique {
            let first = first_of[hash];
            let plan = self.plan(hash, first, items, &mut damaged).await;
            if matches!(plan, Plan::New { .. }) {
                rollback.claimed.push(*hash);
            }
            plans.insert(*hash, plan);
        }

        let new_hashes: Vec<Hash> = rollback.claimed.clone();
        rollback.intents = self
            .metadata
            .log_intents(&new_records(&new_hashes, &plans), &damaged)
            .map_err(|e| StoreError::new("cannot append to the journal", e))?;
        let mut tmp_of: HashMap<Hash, PathBuf> = HashMap::with_capacity(new_hashes.len());
        self.write_new_in_memory(io, items, &plans, tmp_files, &mut tmp_of)
            .await?;
        // Planted bug for the power-loss harness (tools/crashdisk): no data sync before
        // the renames.
        #[cfg(not(feature = "planted-skip-data-sync"))]
        if !new_hashes.is_empty() {
            self.make_durable().await?;
        }
        for file in &damaged {
            self.blobs
                .remove(io, &file.path())
                .await
                .map_err(|e| StoreError::new("cannot remove a damaged stored copy", e))?;
        }
        self.place(io, items, &mut plans, &tmp_of, &mut rollback)
            .await?;

        let records = new_records(&new_hashes, &plans);
        self.metadata
            .log_records(&records)
            .map_err(|e| StoreError::new("cannot append to the journal", e))?;
        // The journal record is the commit point: from here the files stay, even if this
        // task is dropped at shutdown (the final sync at exit covers them).
        rollback.armed = false;
        let intents = rollback.intents.take();
        // Planted bug for the power-loss harness (tools/crashdisk): no sync after the
        // append.
        #[cfg(not(feature = "planted-skip-journal-sync"))]
        if !records.is_empty() {
            self.make_durable().await?;
        }
        if let Some(token) = intents {
            self.metadata.resolve(token);
        }
        for hash in &new_hashes {
            if let Some(Plan::New { record, .. }) = plans.get(hash) {
                self.metadata.index.publish(hash, record);
                self.count_ingested(record.size);
            }
        }
        Ok(self.outcomes(items, &first_of, plans))
    }

    /// Claims `hash` or takes a lease on its stored copy, checking that copy (I6).
    async fn plan<'s>(
        &'s self,
        hash: &Hash,
        first: usize,
        items: &[PutItem<'_>],
        damaged: &mut Vec<Arc<StoredFile>>,
    ) -> Plan<'s> {
        loop {
            match self.metadata.index.claim(hash).await {
                Claim::Claimed => {
                    let record = items[first].record.clone();
                    return Plan::New { first, record };
                }
                Claim::Existing(file, lease) => {
                    if self.blobs.is_intact(&file.path(), file.size) {
                        return Plan::Duplicate(file, lease);
                    }
                    drop(lease);
                    if self.metadata.index.claim_damaged(hash, &file) {
                        crate::log_line!(
                            "rhinobox: warning: stored copy {} is missing or damaged; \
                             storing the uploaded bytes in its place",
                            file.path()
                        );
                        damaged.push(file);
                        let record = items[first].record.clone();
                        return Plan::New { first, record };
                    }
                    // The slot changed meanwhile (a delete, a heal): look again.
                }
            }
        }
    }

    /// Writes the first copy of each new in-memory hash into a tmp file, so that the
    /// rename after the sync places only complete files (I2). Copies of duplicates never
    /// touch the disk.
    async fn write_new_in_memory(
        &self,
        io: &CoreIo,
        items: &[PutItem<'_>],
        plans: &HashMap<Hash, Plan<'_>>,
        tmp_files: &mut TmpFiles,
        tmp_of: &mut HashMap<Hash, PathBuf>,
    ) -> Result<(), StoreError> {
        let mut writes: Vec<(Hash, &[Bytes], PathBuf)> = Vec::new();
        for (hash, plan) in plans {
            let Plan::New { first, record } = plan else {
                continue;
            };
            // The same bytes stored for S3 keys: a hard link, not a second copy (O4 of
            // `store::object_protocol`).
            if let Some(linked) = self.link_object_blob(hash, record.size, tmp_files) {
                tmp_of.insert(*hash, linked);
                continue;
            }
            match items[*first].staged {
                Staged::Memory(chunks) => {
                    let path = self.blobs.next_tmp_path();
                    tmp_files.add(path.clone());
                    writes.push((*hash, chunks, path));
                }
                Staged::Tmp(path) => {
                    tmp_of.insert(*hash, path.to_path_buf());
                }
            }
        }
        let results: Vec<(Hash, PathBuf, io::Result<()>)> = futures_util::stream::iter(writes)
            .map(|(hash, chunks, path)| async move {
                let result = self.blobs.write_tmp(io, &path, chunks).await;
                (hash, path, result)
            })
            .buffer_unordered(PLACE_CONCURRENCY_MAX)
            .collect()
            .await;
        let mut first_error = None;
        for (hash, path, result) in results {
            match result {
                Ok(()) => {
                    tmp_of.insert(hash, path);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(StoreError::new("cannot write tmp file", e)),
            None => Ok(()),
        }
    }

    /// Hard-links the S3 content blob of `hash` into a new tmp file when one is present
    /// (the blob cannot start being removed meanwhile); `None` otherwise.
    fn link_object_blob(
        &self,
        hash: &Hash,
        size: u64,
        tmp_files: &mut TmpFiles,
    ) -> Option<PathBuf> {
        let tmp = self.blobs.next_tmp_path();
        let blob = super::blobs::object_path(blake3::Hash::from_bytes(*hash).to_hex().as_str());
        let linked = self
            .metadata
            .objects
            .with_present_blob(hash, || self.blobs.link_into_tmp(&blob, &tmp))?;
        tmp_files.add(tmp.clone());
        match linked {
            Ok(linked_size) if linked_size == size => Some(tmp),
            Ok(_) => {
                let _ = std::fs::remove_file(&tmp);
                None
            }
            Err(_) => None,
        }
    }

    /// Renames each new hash's tmp file into its final name (I3) and removes every other
    /// tmp file of the request.
    async fn place(
        &self,
        io: &CoreIo,
        items: &[PutItem<'_>],
        plans: &mut HashMap<Hash, Plan<'_>>,
        tmp_of: &HashMap<Hash, PathBuf>,
        rollback: &mut Rollback<'_>,
    ) -> Result<(), StoreError> {
        let mut moves: Vec<(Hash, &Path, String)> = Vec::with_capacity(tmp_of.len());
        for (hash, tmp) in tmp_of {
            let Some(Plan::New { record, .. }) = plans.get(hash) else {
                continue;
            };
            moves.push((*hash, tmp.as_path(), record.path.clone()));
        }
        let placed: Vec<(Hash, io::Result<String>)> = futures_util::stream::iter(moves)
            .map(|(hash, tmp, path)| async move {
                (hash, self.blobs.place(io, tmp, &path, &hash).await)
            })
            .buffer_unordered(PLACE_CONCURRENCY_MAX)
            .collect()
            .await;
        let mut first_error = None;
        for (hash, result) in placed {
            match result {
                Ok(path) => {
                    rollback.placed.push(path.clone());
                    if let Some(Plan::New { record, .. }) = plans.get_mut(&hash) {
                        record.path = path;
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(StoreError::new("cannot move file into place", e));
        }
        // Tmp files that were not renamed: copies of duplicates.
        let renamed: std::collections::HashSet<&Path> =
            tmp_of.values().map(|p| p.as_path()).collect();
        for item in items {
            if let Staged::Tmp(path) = item.staged
                && !renamed.contains(path)
            {
                self.blobs
                    .remove_tmp(io, path)
                    .await
                    .map_err(|e| StoreError::new("cannot remove tmp file", e))?;
            }
        }
        Ok(())
    }

    /// The `stored` entries in request order: the last occurrence of a new hash takes its
    /// record, earlier ones copy it; later copies are duplicates of the first.
    fn outcomes(
        &self,
        items: &[PutItem<'_>],
        first_of: &HashMap<Hash, usize>,
        mut plans: HashMap<Hash, Plan<'_>>,
    ) -> Vec<Stored> {
        let mut last_of: HashMap<Hash, usize> = HashMap::with_capacity(first_of.len());
        for (i, item) in items.iter().enumerate() {
            last_of.insert(item.hash, i);
        }
        let mut stored = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let first = first_of[&item.hash] == i;
            let last = last_of[&item.hash] == i;
            let (record, duplicate) = match plans.get(&item.hash) {
                Some(Plan::New { record, .. }) if !last => (record.clone(), !first),
                Some(Plan::New { .. }) => match plans.remove(&item.hash) {
                    Some(Plan::New { record, .. }) => (record, !first),
                    _ => unreachable!("the plan was just seen"),
                },
                Some(Plan::Duplicate(file, _)) => (file.record(), true),
                None => unreachable!("every hash of the request has a plan"),
            };
            if duplicate {
                self.count_duplicate(record.size);
            }
            stored.push(Stored { record, duplicate });
        }
        // The leases of duplicates drop with `plans`, after the answer is built.
        stored
    }

    /// Cluster mode's put (`crate::cluster::protocol`): the same items and answers; the
    /// tmp files of large files are removed once their objects are written.
    async fn put_in_cluster(
        &self,
        io: &CoreIo,
        cluster: &Arc<crate::cluster::Cluster>,
        items: &[PutItem<'_>],
    ) -> Result<Vec<Stored>, StoreError> {
        use crate::cluster::protocol::{Content, Item};
        let cluster_items: Vec<Item> = items
            .iter()
            .map(|item| Item {
                hash: item.hash,
                record: item.record.clone(),
                content: match &item.staged {
                    Staged::Memory(chunks) => Content::Memory(chunks.to_vec()),
                    Staged::Tmp(path) => Content::File(path.to_path_buf()),
                },
            })
            .collect();
        let outcomes = cluster
            .put(cluster_items)
            .await
            .map_err(|e| StoreError::new("cannot store in the cluster", e.into()))?;
        for item in items {
            if let Staged::Tmp(path) = &item.staged {
                // Best effort: the object is written; a tmp file left goes at the next start.
                let _ = self.blobs.remove_tmp(io, path).await;
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                if outcome.duplicate {
                    self.count_duplicate(outcome.record.size);
                } else {
                    self.count_ingested(outcome.record.size);
                }
                Stored {
                    record: outcome.record,
                    duplicate: outcome.duplicate,
                }
            })
            .collect())
    }

    /// Deletes the stored file of `hash` (see the module docs); `None` when not stored.
    pub async fn delete(&self, io: &CoreIo, hash: &Hash) -> Result<Option<FileRecord>, StoreError> {
        if let Some(cluster) = &self.cluster {
            let cluster_ = cluster.clone();
            let hash = *hash;
            return cluster
                .run(async move { crate::cluster::protocol::delete(&cluster_, &hash).await })
                .await
                .map_err(|e| StoreError::new("cannot delete in the cluster", e.into()));
        }
        let index = &self.metadata.index;
        let Some(file) = index.begin_delete(hash) else {
            return Ok(None);
        };
        if !index.wait_unleased(hash).await {
            index.cancel_delete(hash, file);
            return Err(StoreError::new(
                "duplicate uploads of this file did not finish",
                io::Error::from(io::ErrorKind::TimedOut),
            ));
        }
        let record = file.record();
        let token = match self.metadata.log_delete(&record) {
            Ok(token) => token,
            Err(e) => {
                index.cancel_delete(hash, file);
                return Err(StoreError::new("cannot append to the journal", e));
            }
        };
        // From here the delete stands (the line may be durable): the hash stays claimed
        // until the file is gone, and only then do waiting uploads go on.
        let synced = self.make_durable().await;
        let removed = match synced {
            Ok(()) => self.blobs.remove(io, &record.path).await,
            Err(unavailable) => Err(io::Error::from(unavailable)),
        };
        index.abandon(hash);
        match removed {
            Ok(()) => {
                self.metadata.resolve(token);
                Ok(Some(record))
            }
            // The line stays in flight: the next start removes the file.
            Err(e) => {
                self.metadata.keep_in_flight(token);
                Err(StoreError::new(
                    "deleted from the index and the journal, but removing the file failed",
                    e,
                ))
            }
        }
    }
}

/// The records of the new hashes of a put, in hash order.
fn new_records<'p>(new_hashes: &[Hash], plans: &'p HashMap<Hash, Plan<'_>>) -> Vec<&'p FileRecord> {
    new_hashes
        .iter()
        .filter_map(|hash| match plans.get(hash) {
            Some(Plan::New { record, .. }) => Some(record),
            _ => None,
        })
        .collect()
}
