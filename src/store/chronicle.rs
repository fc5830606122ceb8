//! Every stored file in journal order, readable newest first without stalling writers.
//!
//! The listing and search views read the whole index in order; publish and delete must
//! never wait for such a pass (reads of the in-memory indexes never stall
//! ingest). So the order is kept in fixed-size segments, each behind its own lock: a
//! reader locks one segment at a time ([`SEGMENT_SLOTS`] entries, microseconds), a writer
//! locks only the segment of the sequence number it changes. No lock is ever held across
//! the whole pass, and no lock is held across an `.await` (all of this is synchronous).
//!
//! Slot `s` of segment `k` holds the file with sequence `k * SEGMENT_SLOTS + s + 1`
//! (sequences start at 1 and only grow). A removed file leaves an empty slot; a segment
//! whose files are all gone gives its slots back, so memory follows the files stored now
//! plus one word per file of the segments still partly in use.

use std::sync::{Arc, RwLock};

use super::stored::StoredFile;

/// Files per segment: a reader holds a segment's lock for one pass over this many.
pub const SEGMENT_SLOTS: usize = 4096;

#[derive(Default)]
struct Segment {
    /// Empty once every file of the segment is gone (and before its first file).
    slots: Vec<Option<Arc<StoredFile>>>,
    live: usize,
}

/// The ordered view.
#[derive(Default)]
pub struct Chronicle {
    segments: RwLock<Vec<Arc<RwLock<Segment>>>>,
}

fn position(sequence: u64) -> (usize, usize) {
    let index = (sequence.max(1) - 1) as usize;
    (index / SEGMENT_SLOTS, index % SEGMENT_SLOTS)
}

impl Chronicle {
    fn segment(&self, index: usize) -> Arc<RwLock<Segment>> {
        {
            let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
            if let Some(segment) = segments.get(index) {
                return segment.clone();
            }
        }
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        while segments.len() <= index {
            segments.push(Arc::default());
        }
        segments[index].clone()
    }

    /// Puts `file` at its sequence (a new file, or one whose delete was cancelled).
    pub fn insert(&self, file: &Arc<StoredFile>) {
        let (index, slot) = position(file.sequence);
        let segment = self.segment(index);
        let mut segment = segment.write().unwrap_or_else(|p| p.into_inner());
        if segment.slots.is_empty() {
            segment.slots = vec![None; SEGMENT_SLOTS];
        }
        if segment.slots[slot].replace(file.clone()).is_none() {
            segment.live += 1;
        }
    }

    /// Takes the file with `sequence` out.
    pub fn remove(&self, sequence: u64) {
        let (index, slot) = position(sequence);
        let segment = {
            let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
            match segments.get(index) {
                Some(segment) => segment.clone(),
                None => return,
            }
        };
        let mut segment = segment.write().unwrap_or_else(|p| p.into_inner());
        if segment.slots.get_mut(slot).and_then(Option::take).is_some() {
            segment.live -= 1;
            if segment.live == 0 {
                segment.slots = Vec::new();
            }
        }
    }

    /// Calls `visit` with every file, oldest first (journal compaction).
    pub fn oldest_first(&self, mut visit: impl FnMut(&Arc<StoredFile>)) {
        let segments: Vec<_> = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for segment in &segments {
            let segment = segment.read().unwrap_or_else(|p| p.into_inner());
            segment.slots.iter().flatten().for_each(&mut visit);
        }
    }

    /// Calls `visit` with every file, newest first, until it returns `false`. Segments
    /// with fewer files than `skip` are passed over whole; `skip` files are not visited.
    pub fn newest_first(&self, mut skip: usize, mut visit: impl FnMut(&Arc<StoredFile>) -> bool) {
        let segments: Vec<_> = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for segment in segments.iter().rev() {
            let segment = segment.read().unwrap_or_else(|p| p.into_inner());
            if skip >= segment.live {
                skip -= segment.live;
                continue;
            }
            for file in segment.slots.iter().rev().flatten() {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if !visit(file) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::{FileRecord, RecordView};
    use crate::store::stored::Interner;

    fn file(sequence: u64) -> Arc<StoredFile> {
        let record = FileRecord {
            path: format!("storage/other/bin/{sequence:012}_f.bin"),
            mime_type: "application/octet-stream".into(),
            media_type: "other".into(),
            category: "other/bin".into(),
            hash: "00".repeat(32),
            size: sequence,
            original_name: "f.bin".into(),
            comment: String::new(),
            uploaded_at: "2026-01-01T00:00:00Z".into(),
        };
        let view = RecordView::of(&record);
        Arc::new(StoredFile::from_view(sequence, [0; 32], &view, &Interner::default()).unwrap())
    }

    fn sequences(chronicle: &Chronicle, skip: usize) -> Vec<u64> {
        let mut out = Vec::new();
        chronicle.newest_first(skip, |f| {
            out.push(f.sequence);
            true
        });
        out
    }

    /// Newest first across segments, with skips, removals and re-inserts; a segment
    /// whose files are all gone gives its slots back.
    #[test]
    fn order_skip_remove_and_free() {
        let chronicle = Chronicle::default();
        let count = (SEGMENT_SLOTS * 2 + 10) as u64;
        for sequence in 1..=count {
            chronicle.insert(&file(sequence));
        }
        let all = sequences(&chronicle, 0);
        assert_eq!(all.len() as u64, count);
        assert!(all.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(sequences(&chronicle, 15)[0], count - 15);
        assert_eq!(
            sequences(&chronicle, SEGMENT_SLOTS + 20)[0],
            count - SEGMENT_SLOTS as u64 - 20
        );
        for sequence in 1..=SEGMENT_SLOTS as u64 {
            chronicle.remove(sequence);
        }
        let first = chronicle.segments.read().unwrap()[0].clone();
        assert!(
            first.read().unwrap().slots.is_empty(),
            "an empty segment keeps no slots"
        );
        chronicle.insert(&file(7));
        assert_eq!(*sequences(&chronicle, 0).last().unwrap(), 7);
        assert_eq!(
            sequences(&chronicle, 0).len() as u64,
            count - SEGMENT_SLOTS as u64 + 1
        );
        chronicle.remove(count + 100);
    }
}
