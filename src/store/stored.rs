//! The in-memory form of a stored file, compact because the index holds one per file.
//!
//! A [`FileRecord`] (the journal and API form) has nine strings, about 0.9 KB per file in
//! the index once the read views are counted. [`StoredFile`] keeps the same facts in about
//! a third of that: the hash as 32 bytes, the upload time as seconds, the media type as a
//! static string, MIME type and category interned (a few distinct values shared by every
//! file), the comment shared by the files of one request, and of the path only the last
//! component (the rest is `storage/<category>/`). [`StoredFile::record`] rebuilds the
//! record exactly.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::journal::{FileRecord, RecordView};
use crate::ingest::sniff::MEDIA_TYPES;

pub type Hash = [u8; 32];

/// A stored file as the index keeps it.
#[derive(Debug)]
pub struct StoredFile {
    /// Journal order; newest-first listings follow it.
    pub sequence: u64,
    pub size: u64,
    pub hash: Hash,
    /// Seconds since the Unix epoch.
    uploaded_at_s: i64,
    media_type: &'static str,
    mime_type: Arc<str>,
    category: Arc<str>,
    /// The path after `storage/<category>/`, or the whole path when it has another shape.
    path_tail: Box<str>,
    path_is_full: bool,
    original_name: Box<str>,
    comment: Arc<str>,
}

/// Shares equal strings (MIME types, categories, comments) between stored files.
#[derive(Default)]
pub struct Interner {
    strings: Mutex<HashSet<Arc<str>>>,
    /// The last comment seen: consecutive files of one request share it.
    last_comment: Mutex<Option<Arc<str>>>,
}

impl Interner {
    /// One shared copy of `value`. Bounded by the distinct values stored (categories are
    /// also directories on disk).
    pub fn intern(&self, value: &str) -> Arc<str> {
        let mut strings = self.strings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = strings.get(value) {
            return existing.clone();
        }
        let shared: Arc<str> = Arc::from(value);
        strings.insert(shared.clone());
        shared
    }

    /// Comments are free text: share only runs of equal ones, never keep a set of them.
    pub fn comment(&self, value: &str) -> Arc<str> {
        let mut last = self.last_comment.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some(previous) if &**previous == value => previous.clone(),
            _ => {
                let shared: Arc<str> = Arc::from(value);
                *last = Some(shared.clone());
                shared
            }
        }
    }
}

fn static_media_type(value: &str) -> &'static str {
    MEDIA_TYPES
        .iter()
        .find(|m| **m == value)
        .copied()
        .unwrap_or("other")
}

impl StoredFile {
    /// Compacts a record; `None` when its hash or time cannot be read back.
    pub fn from_record(
        sequence: u64,
        record: &FileRecord,
        interner: &Interner,
    ) -> Option<StoredFile> {
        let hash = super::index::parse_hash(&record.hash)?;
        StoredFile::from_view(sequence, hash, &RecordView::of(record), interner)
    }

    /// Compacts a record borrowed from a journal line, its hash already parsed; `None`
    /// when its upload time cannot be read back.
    pub fn from_view(
        sequence: u64,
        hash: Hash,
        record: &RecordView<'_>,
        interner: &Interner,
    ) -> Option<StoredFile> {
        let uploaded = humantime::parse_rfc3339_weak(&record.uploaded_at).ok()?;
        let uploaded_at_s = uploaded.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
        let prefix_len = "storage/".len() + record.category.len() + 1;
        let shaped = record.path.len() > prefix_len
            && record.path.starts_with("storage/")
            && record.path[8..].starts_with(record.category.as_ref())
            && record.path.as_bytes()[prefix_len - 1] == b'/';
        let path_tail: Box<str> = if shaped {
            record.path[prefix_len..].into()
        } else {
            record.path.as_ref().into()
        };
        Some(StoredFile {
            sequence,
            size: record.size,
            hash,
            uploaded_at_s,
            media_type: static_media_type(&record.media_type),
            mime_type: interner.intern(&record.mime_type),
            category: interner.intern(&record.category),
            path_tail,
            path_is_full: !shaped,
            original_name: record.original_name.as_ref().into(),
            comment: interner.comment(&record.comment),
        })
    }

    /// The full record, as the journal and the API show it.
    pub fn record(&self) -> FileRecord {
        FileRecord {
            path: self.path(),
            mime_type: self.mime_type.to_string(),
            media_type: self.media_type.to_string(),
            category: self.category.to_string(),
            hash: self.hash_hex(),
            size: self.size,
            original_name: self.original_name.to_string(),
            comment: self.comment.to_string(),
            uploaded_at: self.uploaded_at(),
        }
    }

    /// The path in pieces that join to [`StoredFile::path`] (no allocation).
    pub fn path_pieces(&self) -> [&str; 4] {
        if self.path_is_full {
            [&self.path_tail, "", "", ""]
        } else {
            ["storage/", &self.category, "/", &self.path_tail]
        }
    }

    /// `storage/...`, relative to the data dir.
    pub fn path(&self) -> String {
        if self.path_is_full {
            self.path_tail.to_string()
        } else {
            format!("storage/{}/{}", self.category, self.path_tail)
        }
    }

    pub fn hash_hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }

    pub fn media_type(&self) -> &'static str {
        self.media_type
    }

    pub fn mime_type(&self) -> &str {
        &self.mime_type
    }

    pub fn category(&self) -> &str {
        &self.category
    }

    pub fn original_name(&self) -> &str {
        &self.original_name
    }

    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// The stored extension (after the last dot of the file name), lowercase.
    pub fn ext(&self) -> &str {
        self.path_tail.rsplit_once('.').map_or("", |(_, e)| e)
    }

    pub fn uploaded_at_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.uploaded_at_s.max(0) as u64)
    }

    /// RFC 3339, seconds precision, UTC.
    pub fn uploaded_at(&self) -> String {
        humantime::format_rfc3339_seconds(self.uploaded_at_time()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, category: &str) -> FileRecord {
        FileRecord {
            path: path.into(),
            mime_type: "image/jpeg".into(),
            media_type: "images".into(),
            category: category.into(),
            hash: "ab".repeat(32),
            size: 42,
            original_name: "Photo 1.JPG".into(),
            comment: "summer".into(),
            uploaded_at: "2026-01-15T10:30:00Z".into(),
        }
    }

    /// Compacting and rebuilding gives the record back exactly, for both path shapes.
    #[test]
    fn record_round_trip() {
        let interner = Interner::default();
        for (path, category) in [
            (
                "storage/images/jpg/vacation/abababababab_photo_1.jpg",
                "images/jpg/vacation",
            ),
            ("storage/elsewhere/x.jpg", "images/jpg"),
        ] {
            let original = record(path, category);
            let stored = StoredFile::from_record(1, &original, &interner).unwrap();
            assert_eq!(stored.record(), original);
        }
    }

    /// Equal categories and comments share one allocation.
    #[test]
    fn interning_shares() {
        let interner = Interner::default();
        let a = record("storage/images/jpg/abababababab_a.jpg", "images/jpg");
        let x = StoredFile::from_record(1, &a, &interner).unwrap();
        let y = StoredFile::from_record(2, &a, &interner).unwrap();
        assert!(Arc::ptr_eq(&x.category, &y.category));
        assert!(Arc::ptr_eq(&x.comment, &y.comment));
    }
}
