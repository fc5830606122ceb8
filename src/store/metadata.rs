//! The metadata side of the store, local backend: the [`Index`] in memory (what is stored,
//! claims, leases, listings) and the [`Journal`] on disk that rebuilds it at start.
//!
//! What the protocols ([`super::protocol`]) ask of a metadata side:
//! - decide dedup: claim a hash (one winner among concurrent uploads of the same bytes),
//!   or lease the stored content so a delete waits until the duplicate has answered;
//! - log intents before blobs are placed or removed (`place`, `delete` lines), kept in
//!   flight until their effects were issued, so start-up knows exactly which paths to
//!   re-check after a crash;
//! - log the records — the commit point of a put;
//! - publish what was committed (listings, dedup), or abandon a claim.
//!
//! A shared backend (PostgreSQL, for many nodes) keeps the same steps: a claim is an
//! insert that conflicts on the content hash, the intents and records are rows written in
//! one transaction each, and publication is the commit. Named objects (S3 bucket/key →
//! content by hash) become a second kind of record on this side; the content they share
//! with native files is counted here, never inferred from the blob side.
//!
//! Durability is shared with the blob side: [`super::Store::make_durable`] is one barrier
//! that syncs the journal and every file system of the data dir.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use super::index::{Index, StoredFile};
use super::journal::{FileRecord, InFlight, Journal, JournalEntry, encode_line};
use super::objects::Objects;

pub struct Metadata {
    pub index: Index,
    /// Named objects (S3): buckets, keys, and the content they reference.
    pub objects: Objects,
    journal: Arc<Journal>,
}

impl Metadata {
    pub fn new(index: Index, objects: Objects, journal: Arc<Journal>) -> Metadata {
        Metadata {
            index,
            objects,
            journal,
        }
    }

    /// Logs S3 lines in one append (a bucket, a bucket delete).
    pub fn log_named(&self, entries: &[JournalEntry]) -> io::Result<()> {
        let lines = encode_all(entries);
        super::failpoint::check("journal-append")?;
        self.journal.append(&lines)
    }

    /// Logs S3 lines in one append, in flight until resolved (an object line with the
    /// `blob_remove` it implies, a `blob_place` intent).
    pub fn log_named_in_flight(&self, entries: &[JournalEntry]) -> io::Result<InFlight> {
        let lines = encode_all(entries);
        self.append_in_flight(&lines)
    }

    /// The journal, for the group commit and the final sync at exit.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Logs, in flight, the `delete` lines of damaged copies about to be replaced and the
    /// `place` intents of new records about to be placed; `None` when there is neither.
    pub fn log_intents(
        &self,
        places: &[&FileRecord],
        damaged: &[Arc<StoredFile>],
    ) -> io::Result<Option<InFlight>> {
        if places.is_empty() && damaged.is_empty() {
            return Ok(None);
        }
        let mut lines = Vec::with_capacity((places.len() + damaged.len()) * 160);
        let now = now_rfc3339();
        for file in damaged {
            let entry = JournalEntry::Delete {
                hash: file.hash_hex(),
                path: file.path(),
                deleted_at: now.clone(),
            };
            encode_line(&entry, &mut lines);
        }
        for record in places {
            let entry = JournalEntry::Place {
                hash: record.hash.clone(),
                path: record.path.clone(),
            };
            encode_line(&entry, &mut lines);
        }
        self.append_in_flight(&lines).map(Some)
    }

    /// Logs the `put` records of a put: its commit point.
    pub fn log_records(&self, records: &[&FileRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(records.len() * 400);
        for record in records {
            encode_line(&JournalEntry::Put((*record).clone()), &mut lines);
        }
        super::failpoint::check("journal-append")?;
        self.journal.append(&lines)
    }

    /// Logs, in flight, the `delete` line of `record`: the commit point of a delete.
    pub fn log_delete(&self, record: &FileRecord) -> io::Result<InFlight> {
        let entry = JournalEntry::Delete {
            hash: record.hash.clone(),
            path: record.path.clone(),
            deleted_at: now_rfc3339(),
        };
        let mut line = Vec::with_capacity(256);
        encode_line(&entry, &mut line);
        self.append_in_flight(&line)
    }

    /// The effects of the logged operation were issued: start-up need not re-check them.
    pub fn resolve(&self, token: InFlight) {
        self.journal.resolve(token);
    }

    /// The effects of the logged operation could not all be issued: the next start
    /// re-checks them.
    pub fn keep_in_flight(&self, token: InFlight) {
        self.journal.keep_in_flight(token);
    }

    fn append_in_flight(&self, lines: &[u8]) -> io::Result<InFlight> {
        super::failpoint::check("journal-append")?;
        self.journal.append_in_flight(lines)
    }
}

fn encode_all(entries: &[JournalEntry]) -> Vec<u8> {
    let mut lines = Vec::with_capacity(entries.len() * 320);
    for entry in entries {
        encode_line(entry, &mut lines);
    }
    lines
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
