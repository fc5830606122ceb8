//! The dedup index: BLAKE3 hash → stored file, sharded (DashMap) and shared by all cores.
//!
//! A hash is either `Stored` (committed and durable per the durability mode) or `Pending`
//! (claimed by one request that is committing it). A request claims every new hash it
//! holds, in ascending hash order, so two requests never wait on each other in a cycle.
//! A request that meets a `Pending` hash waits until the owner publishes or abandons it,
//! then looks again: two identical files uploaded at once end as one stored copy.
//!
//! DashMap guards are only held inside short synchronous blocks, never across `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Semaphore;

use super::journal::FileRecord;

pub type Hash = [u8; 32];

/// A stored file as the index keeps it.
#[derive(Debug)]
pub struct StoredFile {
    /// Journal order; newest-first listings sort by it.
    pub sequence: u64,
    pub record: FileRecord,
}

enum Slot {
    Stored(Arc<StoredFile>),
    /// Closed when the owner publishes or abandons the claim.
    Pending(Arc<Semaphore>),
}

/// The outcome of [`Index::claim`].
pub enum Claim {
    /// This request owns the hash now and must publish or abandon it.
    Claimed,
    /// Already stored: the request's file is a duplicate of this one.
    Existing(Arc<StoredFile>),
}

/// Totals per media type of what is stored now.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

pub struct Index {
    slots: DashMap<Hash, Slot>,
    next_sequence: AtomicU64,
    totals: Mutex<HashMap<String, Totals>>,
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
            next_sequence: AtomicU64::new(1),
            totals: Mutex::new(HashMap::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Looks a hash up; pending claims count as absent.
    pub fn get(&self, hash: &Hash) -> Option<Arc<StoredFile>> {
        match self.slots.get(hash)?.value() {
            Slot::Stored(file) => Some(file.clone()),
            Slot::Pending(_) => None,
        }
    }

    /// Claims `hash` for the caller, or returns the stored file; waits out other claims.
    pub async fn claim(&self, hash: &Hash) -> Claim {
        loop {
            let pending = match self.slots.entry(*hash) {
                Entry::Occupied(slot) => match slot.get() {
                    Slot::Stored(file) => return Claim::Existing(file.clone()),
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
    pub fn publish(&self, hash: &Hash, record: FileRecord) -> Arc<StoredFile> {
        self.insert_stored(hash, record)
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

    /// Inserts a stored file (journal replay and publish); returns it.
    pub fn insert_stored(&self, hash: &Hash, record: FileRecord) -> Arc<StoredFile> {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let media_type = record.media_type.clone();
        let size = record.size;
        let file = Arc::new(StoredFile { sequence, record });
        let previous = self.slots.insert(*hash, Slot::Stored(file.clone()));
        match previous {
            Some(Slot::Pending(gate)) => gate.close(),
            Some(Slot::Stored(old)) => self.account(&old.record.media_type, old.record.size, false),
            None => {}
        }
        self.account(&media_type, size, true);
        file
    }

    /// Removes a stored file; returns it when it was stored.
    pub fn remove(&self, hash: &Hash) -> Option<Arc<StoredFile>> {
        let (_, slot) = self
            .slots
            .remove_if(hash, |_, slot| matches!(slot, Slot::Stored(_)))?;
        match slot {
            Slot::Stored(file) => {
                self.account(&file.record.media_type, file.record.size, false);
                Some(file)
            }
            Slot::Pending(_) => None,
        }
    }

    fn account(&self, media_type: &str, size: u64, add: bool) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let entry = totals.entry(media_type.to_string()).or_default();
        if add {
            entry.files += 1;
            entry.bytes += size;
        } else {
            entry.files = entry.files.saturating_sub(1);
            entry.bytes = entry.bytes.saturating_sub(size);
        }
    }

    /// Files and bytes stored now, per media type (types with no files left out).
    pub fn totals(&self) -> Vec<(String, Totals)> {
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = totals
            .iter()
            .filter(|(_, t)| t.files > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every stored file (for listings and search); pending claims are left out.
    pub fn stored_files(&self) -> Vec<Arc<StoredFile>> {
        let mut out = Vec::with_capacity(self.slots.len());
        for slot in self.slots.iter() {
            if let Slot::Stored(file) = slot.value() {
                out.push(file.clone());
            }
        }
        out
    }
}

/// Parses 64 lowercase or uppercase hex digits into a hash.
pub fn parse_hash(hex: &str) -> Option<Hash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second claimer waits for the first and then sees the stored file.
    #[test]
    fn concurrent_claims_resolve_to_one_owner() {
        let index = Arc::new(Index::new());
        let hash = [7u8; 32];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(index.claim(&hash).await, Claim::Claimed));
            let waiter = {
                let index = index.clone();
                tokio::spawn(async move { index.claim(&hash).await })
            };
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            let record = FileRecord {
                path: "storage/x".into(),
                mime_type: "a/b".into(),
                media_type: "other".into(),
                category: "other/bin".into(),
                hash: "00".into(),
                size: 3,
                original_name: "x".into(),
                comment: String::new(),
                uploaded_at: "2026-01-01T00:00:00Z".into(),
            };
            index.publish(&hash, record);
            match waiter.await.unwrap() {
                Claim::Existing(file) => assert_eq!(file.record.size, 3),
                Claim::Claimed => panic!("second claimer must see the stored file"),
            }
        });
        assert_eq!(index.totals()[0].1.files, 1);
    }

    /// An abandoned claim lets the waiter claim the hash itself.
    #[test]
    fn abandoned_claim_passes_to_waiter() {
        let index = Arc::new(Index::new());
        let hash = [9u8; 32];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
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

    #[test]
    fn hash_hex_parsing() {
        assert_eq!(parse_hash(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_hash("abc"), None);
        assert_eq!(parse_hash(&"zz".repeat(32)), None);
    }
}
