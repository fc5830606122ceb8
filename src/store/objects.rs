//! Named objects (S3), metadata side, local backend: buckets, each an ordered map of keys
//! to [`ObjectRecord`]s, and for every content hash that a key names, how many keys name
//! it and where its content blob (`storage/.objects/<hh>/<hash>`) stands.
//!
//! Rebuilt at start from the journal's S3 lines (`bucket`, `bucket_delete`, `object`,
//! `object_delete`), in journal order. The operations that change it are in
//! [`super::object_protocol`]; this module only keeps the state and its rules:
//! - a key's operations run one at a time ([`Objects::lock_key`]), so the journal order of
//!   a key's lines is the order they are published in. The key lock is an async lock held
//!   across the operation's syncs on purpose (waiters yield, the core runs on); the state
//!   lock below is a plain mutex taken only in short synchronous blocks;
//! - `refs` of a content counts the keys that name it plus the puts that reserved it;
//!   a blob is placed only by the put that found it absent (state `Placing`) and removed
//!   only by the operation that took `refs` to zero (state `Removing`); everyone else
//!   waits for such a state to end, so a blob is never removed under a key that names it
//!   and never placed twice at once;
//! - a native put of the same bytes may hard-link a `Present` blob, under the state lock
//!   ([`Objects::with_present_blob`]), so the removal of that blob cannot run meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::index::{Hash, parse_hash};
use super::journal::{JournalEntry, NamedEntry, ObjectRecord};

/// Key lock stripes: operations on keys of the same stripe run one at a time.
const KEY_LOCK_STRIPES: usize = 4096;

/// How long an operation waits for a blob being placed or removed by another one.
pub const BLOB_WAIT_MAX: Duration = Duration::from_secs(60);

/// Where the content blob of a hash stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlobState {
    /// A put is placing it (intent logged, rename to come).
    Placing,
    Present,
    /// Its last key went; the operation that saw it go is removing it.
    Removing,
}

#[derive(Debug)]
struct Content {
    refs: u32,
    blob: BlobState,
}

#[derive(Debug)]
struct Bucket {
    created_at: String,
    keys: BTreeMap<String, Arc<ObjectRecord>>,
    /// Puts into it under way: a bucket is deleted only when empty and without them.
    writers: u32,
}

#[derive(Default, Debug)]
struct State {
    buckets: BTreeMap<String, Bucket>,
    content: HashMap<Hash, Content>,
    objects: usize,
}

/// What [`Objects::reserve`] decided for a put's content.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserved {
    /// The blob is present and stays so while the reservation holds.
    Present,
    /// The blob is absent: the caller places it, then calls [`Objects::placed`].
    MustPlace,
}

/// How a blob whose last reference went is to be removed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Release {
    /// Its `blob_remove` line was logged with the line that dropped the reference.
    Prepared,
    /// Nothing logged yet: log `blob_remove`, make it durable, then remove.
    Orphaned,
}

/// One bucket as listed.
pub struct BucketInfo {
    pub name: String,
    pub created_at: String,
}

/// Why a bucket operation was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BucketRefusal {
    Exists,
    Missing,
    NotEmpty,
}

pub struct Objects {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
    key_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Some content is named by a key: native puts look for a blob to link only then.
    any_content: AtomicBool,
}

impl Default for Objects {
    fn default() -> Self {
        Objects::new()
    }
}

impl Objects {
    pub fn new() -> Objects {
        Objects {
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
            key_locks: (0..KEY_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            any_content: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one replayed journal line (start-up, single-threaded).
    pub fn apply(&self, entry: &NamedEntry) {
        let mut state = self.lock();
        match entry {
            NamedEntry::Bucket { bucket, created_at } => {
                state.buckets.entry(bucket.clone()).or_insert(Bucket {
                    created_at: created_at.clone(),
                    keys: BTreeMap::new(),
                    writers: 0,
                });
            }
            NamedEntry::BucketDelete { bucket } => {
                if let Some(gone) = state.buckets.remove(bucket) {
                    let hashes: Vec<Hash> = gone.keys.values().filter_map(|r| hash_of(r)).collect();
                    state.objects -= hashes.len();
                    for hash in hashes {
                        release_ref(&mut state, &hash);
                    }
                }
            }
            NamedEntry::Object(record) => {
                let Some(hash) = parse_hash(&record.hash) else {
                    crate::log_line!(
                        "rhinobox: warning: journal object {}/{} has an unreadable hash; skipped",
                        record.bucket,
                        record.key
                    );
                    return;
                };
                add_ref(&mut state, &hash, BlobState::Present);
                let record = Arc::new(record.clone());
                let old = match state.buckets.get_mut(&record.bucket) {
                    Some(bucket) => bucket.keys.insert(record.key.clone(), record),
                    None => {
                        crate::log_line!(
                            "rhinobox: warning: journal object {}/{} names a bucket that does \
                             not exist; skipped",
                            record.bucket,
                            record.key
                        );
                        release_ref(&mut state, &hash);
                        return;
                    }
                };
                match old.as_deref().and_then(hash_of) {
                    Some(old) => release_ref(&mut state, &old),
                    None => state.objects += 1,
                }
            }
            NamedEntry::ObjectDelete { bucket, key } => {
                let old = state
                    .buckets
                    .get_mut(bucket)
                    .and_then(|b| b.keys.remove(key));
                if let Some(old) = old.as_deref().and_then(hash_of) {
                    state.objects -= 1;
                    release_ref(&mut state, &old);
                }
            }
            NamedEntry::BlobPlace { .. } | NamedEntry::BlobRemove { .. } => {}
        }
        if !state.content.is_empty() {
            self.any_content.store(true, Ordering::Relaxed);
        }
    }

    /// Keys that name `hash`, and puts that reserved it.
    pub fn refs(&self, hash: &Hash) -> u32 {
        self.lock().content.get(hash).map_or(0, |c| c.refs)
    }

    /// Every hash named by a key (start-up checks, `verify`).
    pub fn hashes(&self) -> Vec<(Hash, u64)> {
        let state = self.lock();
        let mut sizes: HashMap<Hash, u64> = HashMap::with_capacity(state.content.len());
        for bucket in state.buckets.values() {
            for record in bucket.keys.values() {
                if let Some(hash) = hash_of(record) {
                    sizes.insert(hash, record.size);
                }
            }
        }
        sizes.into_iter().collect()
    }

    /// Buckets and objects: what compaction counts as live lines.
    pub fn live_lines(&self) -> usize {
        let state = self.lock();
        state.buckets.len() + state.objects
    }

    pub fn buckets(&self) -> Vec<BucketInfo> {
        self.lock()
            .buckets
            .iter()
            .map(|(name, b)| BucketInfo {
                name: name.clone(),
                created_at: b.created_at.clone(),
            })
            .collect()
    }

    pub fn bucket_exists(&self, bucket: &str) -> bool {
        self.lock().buckets.contains_key(bucket)
    }

    /// Creates `bucket` when absent, logging it with `log` under the state lock (so that
    /// two creates never both log it).
    pub fn create_bucket(
        &self,
        bucket: &str,
        created_at: &str,
        log: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, BucketRefusal> {
        let mut state = self.lock();
        if state.buckets.contains_key(bucket) {
            return Err(BucketRefusal::Exists);
        }
        if let Err(e) = log() {
            return Ok(Err(e));
        }
        state.buckets.insert(
            bucket.to_string(),
            Bucket {
                created_at: created_at.to_string(),
                keys: BTreeMap::new(),
                writers: 0,
            },
        );
        Ok(Ok(()))
    }

    /// Deletes `bucket` when it is empty and no put into it is under way, logging it with
    /// `log` under the state lock.
    pub fn delete_bucket(
        &self,
        bucket: &str,
        log: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, BucketRefusal> {
        let mut state = self.lock();
        let Some(found) = state.buckets.get(bucket) else {
            return Err(BucketRefusal::Missing);
        };
        if !found.keys.is_empty() || found.writers > 0 {
            return Err(BucketRefusal::NotEmpty);
        }
        if let Err(e) = log() {
            return Ok(Err(e));
        }
        state.buckets.remove(bucket);
        Ok(Ok(()))
    }

    /// Serializes the operations on one key (see the module docs).
    pub async fn lock_key(&self, bucket: &str, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash as _, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        bucket.hash(&mut hasher);
        key.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.key_locks.len();
        self.key_locks[stripe].lock().await
    }

    /// Registers a put into `bucket`; `false` when the bucket does not exist.
    pub fn begin_write(&self, bucket: &str) -> bool {
        match self.lock().buckets.get_mut(bucket) {
            Some(b) => {
                b.writers += 1;
                true
            }
            None => false,
        }
    }

    pub fn end_write(&self, bucket: &str) {
        if let Some(b) = self.lock().buckets.get_mut(bucket) {
            b.writers = b.writers.saturating_sub(1);
        }
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Arc<ObjectRecord>> {
        self.lock().buckets.get(bucket)?.keys.get(key).cloned()
    }

    /// Reserves `hash` for a put: one more reference, so a present blob stays; waits while
    /// another operation places or removes it. `None` after [`BLOB_WAIT_MAX`].
    pub async fn reserve(&self, hash: &Hash) -> Option<Reserved> {
        let deadline = tokio::time::Instant::now() + BLOB_WAIT_MAX;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                match state.content.get_mut(hash) {
                    Some(c) if c.blob == BlobState::Present => {
                        c.refs += 1;
                        return Some(Reserved::Present);
                    }
                    Some(_) => {}
                    None => {
                        state.content.insert(
                            *hash,
                            Content {
                                refs: 1,
                                blob: BlobState::Placing,
                            },
                        );
                        self.any_content.store(true, Ordering::Relaxed);
                        return Some(Reserved::MustPlace);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// The blob of a `MustPlace` reservation is in place.
    pub fn placed(&self, hash: &Hash) {
        if let Some(c) = self.lock().content.get_mut(hash) {
            c.blob = BlobState::Present;
        }
        self.changed.notify_waiters();
    }

    /// Gives a reservation back (the put failed before its commit). `true` when the blob
    /// is no longer needed: the caller removes it and then calls [`Objects::removed`].
    pub fn unreserve(&self, hash: &Hash) -> bool {
        let mut state = self.lock();
        let Some(c) = state.content.get_mut(hash) else {
            return false;
        };
        c.refs = c.refs.saturating_sub(1);
        if c.refs > 0 {
            return false;
        }
        c.blob = BlobState::Removing;
        true
    }

    /// Before logging the line that drops a key's reference to `hash`: `true` when that
    /// reference is the last, and the blob is then marked for removal (no new
    /// reservations wait on it until [`Objects::removed`] or [`Objects::keep_blob`]).
    pub fn prepare_release(&self, hash: &Hash) -> bool {
        let mut state = self.lock();
        match state.content.get_mut(hash) {
            Some(c) if c.refs == 1 && c.blob == BlobState::Present => {
                c.blob = BlobState::Removing;
                true
            }
            _ => false,
        }
    }

    /// The line of a prepared release was not logged: the blob stays.
    pub fn keep_blob(&self, hash: &Hash) {
        if let Some(c) = self.lock().content.get_mut(hash)
            && c.blob == BlobState::Removing
        {
            c.blob = BlobState::Present;
        }
        self.changed.notify_waiters();
    }

    /// Publishes what a key holds now (`None`: deleted); the reservation of a new record's
    /// hash becomes the key's reference, and the old record's reference goes. Returns the
    /// old record, and the old hash when its blob must now be removed: `Prepared` when
    /// [`Objects::prepare_release`] had marked it (its `blob_remove` line is logged),
    /// `Orphaned` when a reservation that held it went away meanwhile (not logged yet).
    pub fn publish(
        &self,
        bucket: &str,
        key: &str,
        record: Option<Arc<ObjectRecord>>,
    ) -> (Option<Arc<ObjectRecord>>, Option<(Hash, Release)>) {
        let mut state = self.lock();
        let Some(slot) = state.buckets.get_mut(bucket) else {
            return (None, None);
        };
        let old = match record {
            Some(record) => slot.keys.insert(key.to_string(), record),
            None => slot.keys.remove(key),
        };
        let new_exists = slot.keys.contains_key(key);
        match (&old, new_exists) {
            (None, true) => state.objects += 1,
            (Some(_), false) => state.objects -= 1,
            _ => {}
        }
        let mut release = None;
        if let Some(hash) = old.as_deref().and_then(hash_of)
            && let Some(c) = state.content.get_mut(&hash)
        {
            c.refs = c.refs.saturating_sub(1);
            if c.refs == 0 {
                release = Some(match c.blob {
                    BlobState::Removing => (hash, Release::Prepared),
                    _ => {
                        c.blob = BlobState::Removing;
                        (hash, Release::Orphaned)
                    }
                });
            }
        }
        (old, release)
    }

    /// The blob of a released or unreserved hash is gone (or was never placed).
    pub fn removed(&self, hash: &Hash) {
        let mut state = self.lock();
        if let Some(c) = state.content.get(hash)
            && c.refs == 0
        {
            state.content.remove(hash);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Runs `link` while the blob of `hash` is present and cannot start being removed
    /// (a native put sharing the blob's inode); `None` when there is no such blob.
    pub fn with_present_blob<T>(&self, hash: &Hash, link: impl FnOnce() -> T) -> Option<T> {
        if !self.any_content.load(Ordering::Relaxed) {
            return None;
        }
        let state = self.lock();
        match state.content.get(hash) {
            Some(c) if c.blob == BlobState::Present => Some(link()),
            _ => None,
        }
    }

    /// Visits the records of `bucket` from the first key after `after`, in key order,
    /// until `visit` returns false; `false` when the bucket does not exist.
    pub fn scan_from(
        &self,
        bucket: &str,
        after: &str,
        mut visit: impl FnMut(&Arc<ObjectRecord>) -> bool,
    ) -> bool {
        use std::ops::Bound;
        let state = self.lock();
        let Some(b) = state.buckets.get(bucket) else {
            return false;
        };
        let range = b
            .keys
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        for (_, record) in range {
            if !visit(record) {
                break;
            }
        }
        true
    }

    /// Up to `limit` records of `bucket` from `from` on, in key order (the lock is held
    /// for one bounded batch); `None` when the bucket does not exist.
    pub fn range(
        &self,
        bucket: &str,
        from: std::ops::Bound<&str>,
        limit: usize,
    ) -> Option<Vec<Arc<ObjectRecord>>> {
        use std::ops::Bound;
        let state = self.lock();
        let b = state.buckets.get(bucket)?;
        Some(
            b.keys
                .range::<str, _>((from, Bound::Unbounded))
                .take(limit)
                .map(|(_, r)| r.clone())
                .collect(),
        )
    }

    /// Every bucket line, then every object line, for compaction.
    pub fn for_each_line(&self, mut visit: impl FnMut(JournalEntry)) {
        let state = self.lock();
        for (name, b) in &state.buckets {
            visit(JournalEntry::Bucket {
                bucket: name.clone(),
                created_at: b.created_at.clone(),
            });
        }
        for b in state.buckets.values() {
            for record in b.keys.values() {
                visit(JournalEntry::Object(ObjectRecord::clone(record)));
            }
        }
    }

    /// Drops a key whose blob was found missing at start-up; returns its record.
    pub fn forget(&self, bucket: &str, key: &str) -> Option<Arc<ObjectRecord>> {
        let mut state = self.lock();
        let old = state.buckets.get_mut(bucket)?.keys.remove(key)?;
        state.objects -= 1;
        if let Some(hash) = hash_of(&old) {
            release_ref(&mut state, &hash);
        }
        Some(old)
    }
}

fn hash_of(record: &ObjectRecord) -> Option<Hash> {
    parse_hash(&record.hash)
}

fn add_ref(state: &mut State, hash: &Hash, blob: BlobState) {
    state
        .content
        .entry(*hash)
        .and_modify(|c| c.refs += 1)
        .or_insert(Content { refs: 1, blob });
}

/// Replay: a reference went; content no key names is forgotten.
fn release_ref(state: &mut State, hash: &Hash) {
    if let Some(c) = state.content.get_mut(hash) {
        c.refs = c.refs.saturating_sub(1);
        if c.refs == 0 {
            state.content.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: &str, key: &str, n: u8) -> NamedEntry {
        NamedEntry::Object(ObjectRecord {
            bucket: bucket.into(),
            key: key.into(),
            hash: format!("{n:064x}"),
            size: 1,
            etag: String::new(),
            content_type: String::new(),
            meta: BTreeMap::new(),
            last_modified: "2026-01-15T10:30:00Z".into(),
        })
    }

    fn hash(n: u8) -> Hash {
        parse_hash(&format!("{n:064x}")).unwrap()
    }

    /// Replay counts each key's reference once, overwrites move it, deletes drop it.
    #[test]
    fn replay_counts_references() {
        let objects = Objects::new();
        objects.apply(&NamedEntry::Bucket {
            bucket: "b".into(),
            created_at: String::new(),
        });
        objects.apply(&record("b", "x", 1));
        objects.apply(&record("b", "y", 1));
        objects.apply(&record("b", "z", 2));
        assert_eq!((objects.refs(&hash(1)), objects.refs(&hash(2))), (2, 1));
        objects.apply(&record("b", "z", 1));
        assert_eq!((objects.refs(&hash(1)), objects.refs(&hash(2))), (3, 0));
        objects.apply(&NamedEntry::ObjectDelete {
            bucket: "b".into(),
            key: "x".into(),
        });
        assert_eq!(objects.refs(&hash(1)), 2);
        assert_eq!(objects.live_lines(), 1 + 2);
        objects.apply(&record("nope", "x", 3));
        assert_eq!(
            objects.refs(&hash(3)),
            0,
            "an object of a missing bucket is skipped"
        );
    }

    /// A blob being placed makes a second reservation wait; a present one is shared; the
    /// last release marks it for removal and a reservation then waits until it is gone.
    #[test]
    fn reservations_wait_for_placing_and_removing() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let objects = Objects::new();
            let h = hash(9);
            assert_eq!(objects.reserve(&h).await, Some(Reserved::MustPlace));
            let waiting = objects.reserve(&h);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                    .await
                    .is_err(),
                "a second reservation must wait while the blob is placed"
            );
            objects.placed(&h);
            assert_eq!(waiting.await, Some(Reserved::Present));
            assert_eq!(objects.refs(&h), 2);
            assert!(!objects.unreserve(&h));
            assert!(objects.prepare_release(&h));
            assert!(objects.with_present_blob(&h, || ()).is_none());
            let waiting = objects.reserve(&h);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                    .await
                    .is_err(),
                "a reservation must wait while the blob is removed"
            );
            // The release is published (refs 0) and the blob removed.
            objects.lock().content.get_mut(&h).unwrap().refs = 0;
            objects.removed(&h);
            assert_eq!(waiting.await, Some(Reserved::MustPlace));
        });
    }
}
