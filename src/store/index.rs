//! The dedup index: BLAKE3 hash → stored file, sharded (DashMap) and shared by all cores.
//!
//! A hash is either `Stored` (committed and durable per the durability mode) or `Pending`
//! (claimed by one request that is committing it). A request claims every new hash it
//! holds, in ascending hash order, so two requests never wait on each other in a cycle.
//! A request that meets a `Pending` hash waits until the owner publishes or abandons it,
//! then looks again: two identical files uploaded at once end as one stored copy.
//!
//! DashMap guards are only held inside short synchronous blocks, never across `.await`.
//!
//! Beside the hash map the index keeps two views for the read API, updated with every
//! insert and removal so that no request walks the disk or sorts the whole index:
//! - `by_path`: record path → hash, for `?path=` lookups;
//! - `newest`: the [`Chronicle`], every file in journal order, read newest first without
//!   sorting per request and without a lock across the pass (writers never wait for a
//!   scan longer than one segment).
//!
//! A delete turns `Stored` into `Pending` first ([`Index::begin_delete`]): an upload of the
//! same content waits until the file is gone from disk and the delete is journaled, so it
//! never lands on the path the delete is about to unlink.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Semaphore;

use super::chronicle::Chronicle;
use super::journal::{FileRecord, RecordView};

pub use super::stored::Hash;

use super::stored::Interner;
pub use super::stored::StoredFile;
use crate::ingest::sniff::MEDIA_TYPES;

enum Slot {
    Stored(Arc<StoredFile>),
    /// Closed when the owner publishes or abandons the claim.
    Pending(Arc<Semaphore>),
}

/// The outcome of [`Index::claim`].
pub enum Claim<'a> {
    /// This request owns the hash now and must publish or abandon it.
    Claimed,
    /// Already stored: the request's file is a duplicate of this one. The lease keeps a
    /// delete of it waiting until the request has answered.
    Existing(Arc<StoredFile>, Lease<'a>),
}

/// A duplicate upload's hold on a stored file: [`Index::begin_delete`] callers wait in
/// [`Index::wait_unleased`] until every lease on the hash is dropped, so a 200 that says
/// `duplicate: true` never names a file a concurrent delete has already unlinked.
pub struct Lease<'a> {
    index: &'a Index,
    hash: Hash,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Entry::Occupied(mut count) = self.index.leases.entry(self.hash) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// How long a delete waits for the duplicate uploads that hold its file to answer
/// (they only wait for a sync); beyond it the delete fails with a timeout.
const LEASE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Totals per media type of what is stored now.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

pub struct Index {
    slots: DashMap<Hash, Slot>,
    /// Leases held on stored hashes (only hashes with at least one).
    leases: DashMap<Hash, u32>,
    next_sequence: AtomicU64,
    /// Files and bytes stored now, per media type, in `MEDIA_TYPES` order.
    totals: [(AtomicU64, AtomicU64); MEDIA_TYPES.len()],
    /// 64-bit hash of the record path → file hash (8 bytes a file instead of the path).
    by_path: DashMap<u64, Hash>,
    /// Paths whose 64-bit hash collided with another stored path (rare).
    by_path_overflow: Mutex<HashMap<String, Hash>>,
    path_hasher: std::collections::hash_map::RandomState,
    interner: Interner,
    /// Every stored file by journal sequence, read newest first.
    newest: Chronicle,
}

/// One page of a filtered newest-first listing.
pub struct Page {
    pub files: Vec<Arc<StoredFile>>,
    /// Files matching the filter over the whole index.
    pub total: usize,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    pub fn new() -> Index {
        Index {
            slots: DashMap::with_shard_amount(64),
            leases: DashMap::with_shard_amount(16),
            next_sequence: AtomicU64::new(1),
            totals: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
            by_path: DashMap::with_shard_amount(64),
            by_path_overflow: Mutex::new(HashMap::new()),
            path_hasher: std::collections::hash_map::RandomState::new(),
            interner: Interner::default(),
            newest: Chronicle::default(),
        }
    }

    /// Looks a hash up; pending claims count as absent.
    pub fn get(&self, hash: &Hash) -> Option<Arc<StoredFile>> {
        match self.slots.get(hash)?.value() {
            Slot::Stored(file) => Some(file.clone()),
            Slot::Pending(_) => None,
        }
    }

    /// Claims `hash` for the caller, or returns the stored file; waits out other claims.
    pub async fn claim(&self, hash: &Hash) -> Claim<'_> {
        loop {
            let pending = match self.slots.entry(*hash) {
                Entry::Occupied(slot) => match slot.get() {
                    Slot::Stored(file) => {
                        // Taken under the slot's lock: a delete that turns the slot into
                        // a claim afterwards sees this lease.
                        *self.leases.entry(*hash).or_insert(0) += 1;
                        let lease = Lease {
                            index: self,
                            hash: *hash,
                        };
                        return Claim::Existing(file.clone(), lease);
                    }
                    Slot::Pending(gate) => gate.clone(),
                },
                Entry::Vacant(slot) => {
                    slot.insert(Slot::Pending(Arc::new(Semaphore::new(0))));
                    return Claim::Claimed;
                }
            };
            // The gate is closed, never given permits: acquire returns once it closes.
            let _ = pending.acquire().await;
        }
    }

    /// Turns the caller's claim into a stored file and wakes the waiters.
    pub fn publish(&self, hash: &Hash, record: &FileRecord) -> Arc<StoredFile> {
        self.insert(hash, &RecordView::of(record))
            .expect("records built by the commit always compact")
    }

    /// Drops the caller's claim (its request failed) and wakes the waiters.
    pub fn abandon(&self, hash: &Hash) {
        if let Some((_, Slot::Pending(gate))) = self
            .slots
            .remove_if(hash, |_, slot| matches!(slot, Slot::Pending(_)))
        {
            gate.close();
        }
    }

    /// Inserts a stored file (publish, journal replay); `None`, with nothing inserted, when
    /// the record's upload time does not parse (replay skips it with a warning).
    pub fn insert(&self, hash: &Hash, record: &RecordView<'_>) -> Option<Arc<StoredFile>> {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(StoredFile::from_view(
            sequence,
            *hash,
            record,
            &self.interner,
        )?);
        let previous = self.slots.insert(*hash, Slot::Stored(file.clone()));
        match previous {
            Some(Slot::Pending(gate)) => gate.close(),
            Some(Slot::Stored(old)) => self.unlink(hash, &old),
            None => {}
        }
        self.link(hash, &file);
        Some(file)
    }

    /// Removes a stored file; returns it when it was stored.
    pub fn remove(&self, hash: &Hash) -> Option<Arc<StoredFile>> {
        let (_, slot) = self
            .slots
            .remove_if(hash, |_, slot| matches!(slot, Slot::Stored(_)))?;
        match slot {
            Slot::Stored(file) => {
                self.unlink(hash, &file);
                Some(file)
            }
            Slot::Pending(_) => None,
        }
    }

    /// Starts deleting `hash`: a stored file becomes a pending claim owned by the caller,
    /// so uploads of the same content wait. Returns the file, or `None` when not stored.
    /// The caller ends it with [`Index::abandon`] (deleted) or [`Index::cancel_delete`].
    pub fn begin_delete(&self, hash: &Hash) -> Option<Arc<StoredFile>> {
        let file = {
            let mut slot = self.slots.get_mut(hash)?;
            let Slot::Stored(file) = slot.value() else {
                return None;
            };
            let file = file.clone();
            *slot = Slot::Pending(Arc::new(Semaphore::new(0)));
            file
        };
        self.unlink(hash, &file);
        Some(file)
    }

    /// Turns the stored `file` of `hash` into a claim of the caller when the slot still
    /// holds it (its copy on disk was found missing or damaged, and the caller stores the
    /// content again); false when the slot changed meanwhile.
    pub fn claim_damaged(&self, hash: &Hash, file: &Arc<StoredFile>) -> bool {
        {
            let Some(mut slot) = self.slots.get_mut(hash) else {
                return false;
            };
            match slot.value() {
                Slot::Stored(current) if Arc::ptr_eq(current, file) => {}
                _ => return false,
            }
            *slot = Slot::Pending(Arc::new(Semaphore::new(0)));
        }
        self.unlink(hash, file);
        true
    }

    /// Waits until no duplicate upload holds a lease on `hash` (called after
    /// [`Index::begin_delete`], so no new lease can be taken); false after
    /// `LEASE_WAIT_MAX`.
    pub async fn wait_unleased(&self, hash: &Hash) -> bool {
        let started = std::time::Instant::now();
        while self.leases.contains_key(hash) {
            if started.elapsed() > LEASE_WAIT_MAX {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        true
    }

    /// Undoes [`Index::begin_delete`]: the file is stored again, in its old place in order.
    pub fn cancel_delete(&self, hash: &Hash, file: Arc<StoredFile>) {
        let previous = self.slots.insert(*hash, Slot::Stored(file.clone()));
        if let Some(Slot::Pending(gate)) = previous {
            gate.close();
        }
        self.link(hash, &file);
    }

    /// Every stored file in journal order, oldest first (journal compaction). Takes one
    /// segment lock at a time, like the listings.
    pub fn for_each_oldest_first(&self, visit: impl FnMut(&Arc<StoredFile>)) {
        self.newest.oldest_first(visit);
    }

    /// Looks a stored file up by its record path (`storage/...`).
    pub fn get_by_path(&self, path: &str) -> Option<Arc<StoredFile>> {
        let key = self.path_key(&[path]);
        let candidate = self.by_path.get(&key).map(|h| *h);
        if let Some(file) = candidate.and_then(|h| self.get(&h))
            && file.path() == path
        {
            return Some(file);
        }
        let overflow = self
            .by_path_overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let hash = *overflow.get(path)?;
        drop(overflow);
        self.get(&hash).filter(|file| file.path() == path)
    }

    /// Newest first: the files matching `keep`, skipping `offset` of them, at most `limit`,
    /// and how many match in all. One pass over the index, never under a lock that ingest
    /// waits for longer than one segment; `keep` must be cheap and must not block.
    pub fn page_newest_first(
        &self,
        keep: impl Fn(&StoredFile) -> bool,
        offset: usize,
        limit: usize,
    ) -> Page {
        let mut files = Vec::with_capacity(limit.min(1024));
        let mut total = 0usize;
        self.newest.newest_first(0, |file| {
            if keep(file) {
                if total >= offset && files.len() < limit {
                    files.push(file.clone());
                }
                total += 1;
            }
            true
        });
        Page { files, total }
    }

    /// Newest first, the files matching `keep` when `total` of them match in all (known
    /// from the totals): the pass stops at the end of the page instead of counting on.
    pub fn page_newest_first_counted(
        &self,
        keep: impl Fn(&StoredFile) -> bool,
        offset: usize,
        limit: usize,
        total: usize,
    ) -> Page {
        let mut files = Vec::with_capacity(limit.min(1024));
        let mut seen = 0usize;
        if limit > 0 && offset < total {
            self.newest.newest_first(0, |file| {
                if keep(file) {
                    if seen >= offset {
                        files.push(file.clone());
                    }
                    seen += 1;
                }
                files.len() < limit
            });
        }
        Page { files, total }
    }

    /// Files stored now of one media type.
    pub fn files_of_media_type(&self, media_type: &str) -> usize {
        MEDIA_TYPES
            .iter()
            .position(|m| *m == media_type)
            .map_or(0, |slot| {
                self.totals[slot].0.load(Ordering::Relaxed) as usize
            })
    }

    /// Newest first, without a filter: no pass over the files that are not shown.
    pub fn page_all_newest_first(&self, offset: usize, limit: usize) -> Page {
        let mut files = Vec::with_capacity(limit.min(1024));
        if limit > 0 {
            self.newest.newest_first(offset, |file| {
                files.push(file.clone());
                files.len() < limit
            });
        }
        Page {
            files,
            total: self.len(),
        }
    }

    /// Files stored now.
    pub fn len(&self) -> usize {
        self.totals
            .iter()
            .map(|(files, _)| files.load(Ordering::Relaxed) as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `by_path` key of a path given in pieces (hashing the pieces equals hashing the
    /// joined path, so no path string is built per insert).
    fn path_key(&self, pieces: &[&str]) -> u64 {
        let mut hasher = self.path_hasher.build_hasher();
        for piece in pieces {
            hasher.write(piece.as_bytes());
        }
        hasher.finish()
    }

    /// Adds a stored file to the totals and the read views.
    fn link(&self, hash: &Hash, file: &Arc<StoredFile>) {
        self.account(file.media_type(), file.size, true);
        let key = self.path_key(&file.path_pieces());
        let collided = match self.by_path.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(*hash);
                false
            }
            Entry::Occupied(mut slot) => {
                let owner = *slot.get();
                let same_path = owner == *hash
                    || self
                        .get(&owner)
                        .is_none_or(|other| other.path() == file.path());
                if same_path {
                    slot.insert(*hash);
                }
                !same_path
            }
        };
        if collided {
            let mut overflow = self
                .by_path_overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            overflow.insert(file.path(), *hash);
        }
        self.newest.insert(file);
    }

    /// Takes a stored file out of the totals and the read views.
    fn unlink(&self, hash: &Hash, file: &StoredFile) {
        self.account(file.media_type(), file.size, false);
        let key = self.path_key(&file.path_pieces());
        if self
            .by_path
            .remove_if(&key, |_, owner| owner == hash)
            .is_none()
        {
            let path = file.path();
            let mut overflow = self
                .by_path_overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if overflow.get(&path) == Some(hash) {
                overflow.remove(&path);
            }
        }
        self.newest.remove(file.sequence);
    }

    /// Adds or removes one file of `size` bytes in the totals of its media type (one of
    /// `MEDIA_TYPES`: the stored media type is always one of them).
    fn account(&self, media_type: &str, size: u64, add: bool) {
        let slot = MEDIA_TYPES
            .iter()
            .position(|m| *m == media_type)
            .unwrap_or(MEDIA_TYPES.len() - 1);
        let (files, bytes) = &self.totals[slot];
        if add {
            files.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(size, Ordering::Relaxed);
        } else {
            files.fetch_sub(1, Ordering::Relaxed);
            bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    /// Files and bytes stored now, per media type (types with no files left out).
    pub fn totals(&self) -> Vec<(String, Totals)> {
        let mut out: Vec<_> = MEDIA_TYPES
            .iter()
            .zip(&self.totals)
            .map(|(media_type, (files, bytes))| {
                let totals = Totals {
                    files: files.load(Ordering::Relaxed),
                    bytes: bytes.load(Ordering::Relaxed),
                };
                (media_type.to_string(), totals)
            })
            .filter(|(_, t)| t.files > 0)
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Parses 64 lowercase or uppercase hex digits into a hash.
pub fn parse_hash(hex: &str) -> Option<Hash> {
    blake3::Hash::from_hex(hex)
        .ok()
        .map(|hash| *hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        runtime.block_on(future)
    }

    /// A second claimer waits for the first and then sees the stored file.
    #[test]
    fn concurrent_claims_resolve_to_one_owner() {
        let index = Arc::new(Index::new());
        let hash = [7u8; 32];
        block_on(async {
            assert!(matches!(index.claim(&hash).await, Claim::Claimed));
            let waiter = {
                let index = index.clone();
                tokio::spawn(async move {
                    match index.claim(&hash).await {
                        Claim::Existing(file, _lease) => Some(file.size),
                        Claim::Claimed => None,
                    }
                })
            };
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            let record = FileRecord {
                path: "storage/x".into(),
                mime_type: "a/b".into(),
                media_type: "other".into(),
                category: "other/bin".into(),
                hash: "07".repeat(32),
                size: 3,
                original_name: "x".into(),
                comment: String::new(),
                uploaded_at: "2026-01-01T00:00:00Z".into(),
            };
            index.publish(&hash, &record);
            assert_eq!(
                waiter.await.unwrap(),
                Some(3),
                "second claimer must see the stored file"
            );
        });
        assert_eq!(index.totals()[0].1.files, 1);
    }

    /// An abandoned claim lets the waiter claim the hash itself.
    #[test]
    fn abandoned_claim_passes_to_waiter() {
        let index = Arc::new(Index::new());
        let hash = [9u8; 32];
        block_on(async {
            assert!(matches!(index.claim(&hash).await, Claim::Claimed));
            let waiter = {
                let index = index.clone();
                tokio::spawn(async move { matches!(index.claim(&hash).await, Claim::Claimed) })
            };
            tokio::task::yield_now().await;
            index.abandon(&hash);
            assert!(waiter.await.unwrap());
        });
    }

    /// A delete waits for the lease of a duplicate upload (the upload still answers with
    /// a live file), and a claim after `begin_delete` waits instead of taking a new lease.
    #[test]
    fn delete_waits_for_the_leases_of_duplicates() {
        let index = Arc::new(Index::new());
        let hash = [5u8; 32];
        let record = FileRecord {
            path: "storage/other/bin/050505050505_x.bin".into(),
            mime_type: "application/octet-stream".into(),
            media_type: "other".into(),
            category: "other/bin".into(),
            hash: "05".repeat(32),
            size: 1,
            original_name: "x.bin".into(),
            comment: String::new(),
            uploaded_at: "2026-01-01T00:00:00Z".into(),
        };
        block_on(async {
            assert!(matches!(index.claim(&hash).await, Claim::Claimed));
            index.publish(&hash, &record);
            let Claim::Existing(_, lease) = index.claim(&hash).await else {
                panic!("the stored hash must be a duplicate");
            };
            assert!(index.begin_delete(&hash).is_some());
            let deleter = {
                let index = index.clone();
                tokio::spawn(async move { index.wait_unleased(&hash).await })
            };
            let claimer = {
                let index = index.clone();
                tokio::spawn(async move { matches!(index.claim(&hash).await, Claim::Claimed) })
            };
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(!deleter.is_finished(), "the delete must wait for the lease");
            assert!(!claimer.is_finished(), "a claim must wait for the delete");
            drop(lease);
            assert!(
                deleter.await.unwrap(),
                "the delete goes on once the lease is gone"
            );
            index.abandon(&hash);
            assert!(
                claimer.await.unwrap(),
                "after the delete the content is new again"
            );
        });
    }

    #[test]
    fn hash_hex_parsing() {
        assert_eq!(parse_hash(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_hash("abc"), None);
        assert_eq!(parse_hash(&"zz".repeat(32)), None);
    }
}
