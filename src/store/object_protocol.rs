//! The store's protocols for named objects (S3): put, delete, buckets. The S3 front calls
//! these; like [`super::protocol`] they drive the metadata side
//! ([`super::objects`], the journal) and the blob side ([`super::blobs`]: the content blob
//! `storage/.objects/<hh>/<hash>`) around the one durability barrier.
//!
//! # Invariants (beside I1–I6 of `store::protocol`)
//! - O1 (acknowledged is durable): a put or delete returns after a sync that started after
//!   its blob was placed and its line appended.
//! - O2 (a key names a complete blob): a blob reaches its name only by the rename of a
//!   complete tmp file (or of a hard link of a stored native file of the same bytes) whose
//!   data was synced, after a `blob_place` intent that the same sync made durable; the
//!   `object` line naming it is appended after the rename.
//! - O3 (a blob outlives its keys, never the reverse): a blob is removed only when no key
//!   and no put in progress names its hash ([`super::objects`] counts them), after a
//!   `blob_remove` line that is durable before the unlink — logged in the same append as
//!   the line that dropped the last reference when the put/delete saw that coming, or on
//!   its own (with its own sync) when a reservation went away meanwhile.
//! - O4 (content shared, lifetimes independent): a native file and a blob of the same bytes
//!   share one inode by a hard link; deleting either name leaves the other.
//! - O5 (one key, one order): a key's operations run one at a time, so the journal order of
//!   its lines is the order they are published in.
//!
//! # Put (bucket, key, a complete tmp file of known hash — or the hash alone, for a copy)
//! 1. lock the key; register a writer of the bucket (a bucket with writers is not
//!    deleted); `If-None-Match: *` → 412 when the key holds an object;
//! 2. reserve the hash: present → shared (the reservation keeps it present); absent → this
//!    put places it: a hard link of the native file of that hash when one is stored (the
//!    upload's own tmp file otherwise), a `blob_place` intent (in flight), sync, rename;
//! 3. when the key held another hash whose only reference it was, mark that blob for
//!    removal; append the `object` line (and that `blob_remove` line) in flight;
//! 4. sync — the commit point; publish; unlink the released blob; resolve.
//!
//! Crash points (start-up, `store::recovery`): before the `object` line is durable, a
//! placed blob has its intent after the marker and no key naming it → removed; after it,
//! a released blob has its `blob_remove` after the marker → removed when no key names it.
//! An `object` line after the marker whose blob is missing or not its BLAKE3 (durability
//! `none`) is deleted with an `object_delete` line.
//!
//! # Delete: lock the key; mark the blob when the key is its last reference; append
//! `object_delete` (and `blob_remove`) in flight; sync; publish; unlink; resolve.

use std::path::Path;
use std::sync::Arc;

use super::Store;
use super::blobs::object_path;
use super::index::Hash;
use super::io::CoreIo;
use super::journal::{InFlight, JournalEntry, ObjectRecord};
use super::metadata::now_rfc3339;
use super::objects::{BucketRefusal, Release, Reserved};
use super::protocol::StoreError;

/// Why an object operation did not happen.
#[derive(Debug)]
pub enum ObjectError {
    NoSuchBucket,
    NoSuchKey,
    /// `If-None-Match: *` and the key holds an object.
    PreconditionFailed,
    BucketExists,
    BucketNotEmpty,
    /// Another operation on the same content did not finish in time.
    Busy,
    Store(StoreError),
}

impl From<StoreError> for ObjectError {
    fn from(e: StoreError) -> ObjectError {
        ObjectError::Store(e)
    }
}

impl From<super::durability::SyncUnavailable> for ObjectError {
    fn from(e: super::durability::SyncUnavailable) -> ObjectError {
        ObjectError::Store(StoreError::from(e))
    }
}

fn journal_error(e: std::io::Error) -> ObjectError {
    ObjectError::Store(StoreError {
        context: "cannot append to the journal",
        error: e,
    })
}

/// Where a put's bytes are.
pub enum ObjectSource<'a> {
    /// A small body still in memory: written to a tmp file only when its content is new.
    Memory(&'a [bytes::Bytes]),
    /// A complete tmp file under `storage/.tmp/` of the record's hash and size; renamed
    /// into place or left for the caller's guard to remove.
    Tmp(&'a Path),
    /// Content already stored (a copy): under a key, or as a native file.
    Stored,
}

/// A put's precondition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfAbsent {
    No,
    /// `If-None-Match: *`: create only.
    Yes,
}

impl Store {
    /// Creates a bucket (durable before it returns).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        let created_at = now_rfc3339();
        let entry = JournalEntry::Bucket {
            bucket: bucket.to_string(),
            created_at: created_at.clone(),
        };
        match self
            .metadata
            .objects
            .create_bucket(bucket, &created_at, || {
                self.metadata.log_named(std::slice::from_ref(&entry))
            }) {
            Err(_) => Err(ObjectError::BucketExists),
            Ok(Err(e)) => Err(journal_error(e)),
            Ok(Ok(())) => Ok(self.make_durable().await?),
        }
    }

    /// Deletes an empty bucket (durable before it returns).
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), ObjectError> {
        let entry = JournalEntry::BucketDelete {
            bucket: bucket.to_string(),
        };
        match self.metadata.objects.delete_bucket(bucket, || {
            self.metadata.log_named(std::slice::from_ref(&entry))
        }) {
            Err(BucketRefusal::NotEmpty) => Err(ObjectError::BucketNotEmpty),
            Err(_) => Err(ObjectError::NoSuchBucket),
            Ok(Err(e)) => Err(journal_error(e)),
            Ok(Ok(())) => Ok(self.make_durable().await?),
        }
    }

    /// Puts `record` under its bucket and key (see the module docs); the record as
    /// published.
    pub async fn put_object(
        &self,
        io: &CoreIo,
        record: ObjectRecord,
        hash: Hash,
        source: ObjectSource<'_>,
        if_absent: IfAbsent,
    ) -> Result<Arc<ObjectRecord>, ObjectError> {
        let objects = &self.metadata.objects;
        let _key = objects.lock_key(&record.bucket, &record.key).await;
        if !objects.begin_write(&record.bucket) {
            return Err(ObjectError::NoSuchBucket);
        }
        let bucket = record.bucket.clone();
        let result = self.put_locked(io, record, hash, source, if_absent).await;
        objects.end_write(&bucket);
        result
    }

    async fn put_locked(
        &self,
        io: &CoreIo,
        record: ObjectRecord,
        hash: Hash,
        source: ObjectSource<'_>,
        if_absent: IfAbsent,
    ) -> Result<Arc<ObjectRecord>, ObjectError> {
        let objects = &self.metadata.objects;
        let old = objects.get(&record.bucket, &record.key);
        if if_absent == IfAbsent::Yes && old.is_some() {
            return Err(ObjectError::PreconditionFailed);
        }
        let placed_intent = match objects.reserve(&hash).await {
            None => return Err(ObjectError::Busy),
            Some(Reserved::Present) => None,
            Some(Reserved::MustPlace) => match self.place_object_blob(io, &hash, &source).await {
                Ok(token) => Some(token),
                Err(e) => {
                    // Nothing was placed: the reservation goes with nothing to remove.
                    if objects.unreserve(&hash) {
                        objects.removed(&hash);
                    }
                    return Err(e);
                }
            },
        };
        let released = old
            .as_deref()
            .and_then(|o| super::index::parse_hash(&o.hash))
            .filter(|old_hash| objects.prepare_release(old_hash));
        let mut lines = vec![JournalEntry::Object(record.clone())];
        if let Some(old_hash) = &released {
            lines.push(JournalEntry::BlobRemove {
                hash: blake3::Hash::from_bytes(*old_hash).to_hex().to_string(),
            });
        }
        let token = match self.metadata.log_named_in_flight(&lines) {
            Ok(token) => token,
            Err(e) => {
                if let Some(old_hash) = &released {
                    objects.keep_blob(old_hash);
                }
                self.give_back(io, &hash, placed_intent).await;
                return Err(journal_error(e));
            }
        };
        // The commit point: from here the object stands.
        self.make_durable().await?;
        let record = Arc::new(record);
        let (_, release) = objects.publish(&record.bucket, &record.key, Some(record.clone()));
        if let Some(intent) = placed_intent {
            self.metadata.resolve(intent);
        }
        self.finish_release(io, release, token).await;
        Ok(record)
    }

    /// Deletes the object under `bucket`/`key`; `None` when there was none.
    pub async fn delete_object(
        &self,
        io: &CoreIo,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Arc<ObjectRecord>>, ObjectError> {
        let objects = &self.metadata.objects;
        let _key = objects.lock_key(bucket, key).await;
        if !objects.bucket_exists(bucket) {
            return Err(ObjectError::NoSuchBucket);
        }
        let Some(old) = objects.get(bucket, key) else {
            return Ok(None);
        };
        let released = super::index::parse_hash(&old.hash).filter(|h| objects.prepare_release(h));
        let mut lines = vec![JournalEntry::ObjectDelete {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }];
        if released.is_some() {
            lines.push(JournalEntry::BlobRemove {
                hash: old.hash.clone(),
            });
        }
        let token = match self.metadata.log_named_in_flight(&lines) {
            Ok(token) => token,
            Err(e) => {
                if let Some(hash) = &released {
                    objects.keep_blob(hash);
                }
                return Err(journal_error(e));
            }
        };
        self.make_durable().await?;
        let (old, release) = objects.publish(bucket, key, None);
        self.finish_release(io, release, token).await;
        Ok(old)
    }

    /// Step 2 of a put that found the hash absent: places its blob; the `blob_place`
    /// intent stays in flight until the object line is durable.
    async fn place_object_blob(
        &self,
        io: &CoreIo,
        hash: &Hash,
        source: &ObjectSource<'_>,
    ) -> Result<InFlight, ObjectError> {
        let hex = blake3::Hash::from_bytes(*hash).to_hex();
        // The native file of the same bytes, hard-linked: the disk holds them once (O4).
        let native = self.metadata.index.get(hash).and_then(|file| {
            let tmp = self.blobs.next_tmp_path();
            match self.blobs.link_into_tmp(&file.path(), &tmp) {
                Ok(size) if size == file.size => Some(tmp),
                Ok(_) => {
                    let _ = std::fs::remove_file(&tmp);
                    None
                }
                Err(_) => None,
            }
        });
        let mut written = None;
        let tmp = match (&native, source) {
            (Some(linked), _) => linked.as_path(),
            (None, ObjectSource::Tmp(path)) => path,
            (None, ObjectSource::Memory(chunks)) => {
                let path = self.blobs.next_tmp_path();
                if let Err(e) = self.blobs.write_tmp(io, &path, chunks).await {
                    let _ = std::fs::remove_file(&path);
                    return Err(ObjectError::Store(StoreError {
                        context: "cannot write tmp file",
                        error: e,
                    }));
                }
                written.insert(path).as_path()
            }
            (None, ObjectSource::Stored) => return Err(ObjectError::NoSuchKey),
        };
        let intent = JournalEntry::BlobPlace {
            hash: hex.to_string(),
        };
        let token = self
            .metadata
            .log_named_in_flight(std::slice::from_ref(&intent))
            .map_err(journal_error)?;
        let placed = match self.make_durable().await {
            Ok(()) => self.blobs.place_object(io, tmp, hex.as_str()).await,
            Err(e) => Err(e.into()),
        };
        match placed {
            Ok(_) => {
                self.metadata.objects.placed(hash);
                Ok(token)
            }
            Err(e) => {
                for own in native.iter().chain(written.iter()) {
                    let _ = std::fs::remove_file(own);
                }
                // The rename did not happen (or the next start finds the blob through
                // the intent): nothing placed stays.
                self.metadata.keep_in_flight(token);
                Err(ObjectError::Store(StoreError {
                    context: "cannot move the object into place",
                    error: e,
                }))
            }
        }
    }

    /// A put failed after its reservation: gives it back, removing the blob when nothing
    /// else names it (the put's own `blob_place` intent covers that removal; without one,
    /// a `blob_remove` is made durable first).
    async fn give_back(&self, io: &CoreIo, hash: &Hash, placed_intent: Option<InFlight>) {
        let objects = &self.metadata.objects;
        if !objects.unreserve(hash) {
            // Another put holds the blob now and logged no intent of its own: ours stays
            // in flight, so a crash before that put commits still removes the blob.
            if let Some(intent) = placed_intent {
                self.metadata.keep_in_flight(intent);
            }
            return;
        }
        match placed_intent {
            Some(intent) => {
                let removed = self.blobs.remove(io, &object_path(&hex(hash))).await;
                objects.removed(hash);
                match removed {
                    Ok(()) => self.metadata.resolve(intent),
                    Err(_) => self.metadata.keep_in_flight(intent),
                }
            }
            None => self.drop_orphan(io, hash).await,
        }
    }

    /// After a publish: removes the blob whose last reference went (O3) and resolves the
    /// operation's line.
    async fn finish_release(&self, io: &CoreIo, release: Option<(Hash, Release)>, token: InFlight) {
        match release {
            None => self.metadata.resolve(token),
            Some((hash, Release::Prepared)) => {
                let removed = self.blobs.remove(io, &object_path(&hex(&hash))).await;
                self.metadata.objects.removed(&hash);
                match removed {
                    Ok(()) => self.metadata.resolve(token),
                    Err(_) => self.metadata.keep_in_flight(token),
                }
            }
            Some((hash, Release::Orphaned)) => {
                self.metadata.resolve(token);
                self.drop_orphan(io, &hash).await;
            }
        }
    }

    /// Removes the blob of `hash` (marked `Removing`, no reference left) after a durable
    /// `blob_remove` line of its own.
    async fn drop_orphan(&self, io: &CoreIo, hash: &Hash) {
        let objects = &self.metadata.objects;
        let line = JournalEntry::BlobRemove { hash: hex(hash) };
        let token = match self
            .metadata
            .log_named_in_flight(std::slice::from_ref(&line))
        {
            Ok(token) => token,
            Err(_) => {
                // Cannot log its removal: the blob stays (harmless: no key names it, and
                // a later put of the same bytes places it anew).
                objects.removed(hash);
                return;
            }
        };
        let removed = match self.make_durable().await {
            Ok(()) => self.blobs.remove(io, &object_path(&hex(hash))).await,
            Err(e) => Err(e.into()),
        };
        objects.removed(hash);
        match removed {
            Ok(()) => self.metadata.resolve(token),
            Err(_) => self.metadata.keep_in_flight(token),
        }
    }
}

fn hex(hash: &Hash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}
