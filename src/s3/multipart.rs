//! Multipart uploads in progress: in memory, their parts in files in `storage/.tmp/`.
//!
//! - UploadPart streams a part in (O(1) memory: the ingest path), in any order and in
//!   parallel; a part number sent again replaces the earlier part once it is received.
//! - **Parts at their place.** The first part whose declared size `S` is at least
//!   [`PART_BYTES_MIN`] fixes the upload's layout: an *assembly* file (one per upload,
//!   [`Assembly`]) where part `n` of size `S` is written at `(n-1)·S` as it arrives
//!   (`CoreIo::write_at`). A part of another size (the short last one, anything else), or
//!   one whose range is taken — a registered part there, or another request writing it —
//!   goes to a tmp file of its own. A part written at its place that fails leaves garbage
//!   in its own range only and is not registered; a retry writes the range again.
//! - Complete takes the upload out of the registry. When the chosen parts are 1..N, parts
//!   1..N-1 at their place with size `S`, the last at its place or in its own file (size ≤
//!   `S`, copied into place: at most one part is copied), no other part registered at a
//!   place past N and no request writing into the file, the assembly file is cut to the
//!   object's size and *is* the object: hard-linked as the put's tmp file, nothing copied
//!   and nothing read (BLAKE3 from the parts' subtree values when `S` is a power of two,
//!   see `s3::tree_hash`; otherwise the file is read once to hash it). Any other shape
//!   copies the parts into a new file as before: `copy_file_range` of each part's range
//!   when the hash is known, or one pass that reads, hashes and writes. The ETag is the
//!   MD5 of the part MD5s (kept per part), so it costs nothing either way.
//! - The link keeps a refused Complete repeatable: whatever the put did with its tmp
//!   name, the assembly file still holds every registered part (the copied last part
//!   and the cut touch no registered part's range).
//! - Abort drops the upload: the part files are removed, and the assembly file once the
//!   last request writing into it is done ([`Assembly`]'s drop). Uploads do not survive a
//!   restart: start-up empties `.tmp`, which is where the parts are (S3 clients then get
//!   NoSuchUpload and restart the upload).
//!
//! Bounded: at most [`UPLOADS_MAX`] uploads in progress and [`PARTS_MAX`] parts each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blake3::hazmat::{ChainingValue, HasherExt};
use s3s::crypto::{Checksum as _, Md5};

use super::tree_hash;
use s3s::{S3Result, s3_error};

pub const UPLOADS_MAX: usize = 10_000;
pub const PARTS_MAX: i32 = 10_000;
/// S3's smallest part but the last.
pub const PART_BYTES_MIN: u64 = 5 * 1024 * 1024;

/// Where a registered part's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A tmp file of its own.
    Own(PathBuf),
    /// The upload's assembly file, from `(n-1)·S` on.
    Assembly,
}

#[derive(Debug)]
pub struct Part {
    pub place: Place,
    pub size: u64,
    pub md5: [u8; 16],
    /// BLAKE3 of the part alone (the object's hash when it is the only part).
    pub hash: [u8; 32],
    /// Its chaining value as a subtree at this input offset (see `s3::tree_hash`).
    pub subtree: Option<(u64, ChainingValue)>,
    /// The first bytes of part 1 (the object's sniff); empty for other parts.
    pub head: Vec<u8>,
    pub last_modified: SystemTime,
}

impl Part {
    pub fn etag(&self) -> String {
        hex(&self.md5)
    }

    /// The part's own file, if it has one (the caller removes it with the part).
    pub fn own_file(&self) -> Option<&Path> {
        match &self.place {
            Place::Own(path) => Some(path),
            Place::Assembly => None,
        }
    }
}

/// The file of one upload where parts of its layout size are written at their place.
///
/// Shared (`Arc`) by the upload and the requests writing into it; the last to let go
/// removes the file, so an Abort never pulls it from under a write in progress (a
/// writer opens the path with O_CREAT on its first write, and would create it again).
/// After a Complete in place the object is a second name (a hard link) of the same bytes:
/// the removal unlinks this name only, once no request can write through it any more.
#[derive(Debug)]
pub struct Assembly {
    pub path: PathBuf,
    /// `S`: part `n` of this size is at `(n-1)·S`.
    pub part_bytes: u64,
    /// Part numbers being written now, each by one request (the range is reserved).
    writing: Mutex<BTreeSet<i32>>,
}

impl Assembly {
    /// Where part `number` starts.
    pub fn offset_of(&self, number: i32) -> u64 {
        debug_assert!(number >= 1);
        (number as u64 - 1) * self.part_bytes
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no request is writing into the file (none can start while the upload is
    /// out of the registry, so this stays true once seen then).
    fn idle(&self) -> bool {
        self.writing().is_empty()
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A part's range of the assembly file, reserved for one request while it writes there.
pub struct Reserved {
    pub assembly: Arc<Assembly>,
    pub number: i32,
}

impl Reserved {
    pub fn offset(&self) -> u64 {
        self.assembly.offset_of(self.number)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.assembly.writing().remove(&self.number);
    }
}

/// Where UploadPart writes a part (a pure decision; see the module docs).
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// At its place in the assembly file (created now when the upload has none).
    InPlace,
    /// In a tmp file of its own.
    Own,
}

/// Where part `number` of `declared_bytes` goes, given the upload's layout part size
/// (`None`: no assembly file yet) and whether its range is taken (a registered part
/// there, or a request writing it).
pub fn placement(
    declared_bytes: Option<u64>,
    layout_part_bytes: Option<u64>,
    range_taken: bool,
) -> Placement {
    let Some(declared) = declared_bytes else {
        return Placement::Own;
    };
    if declared < PART_BYTES_MIN || range_taken {
        return Placement::Own;
    }
    match layout_part_bytes {
        None => Placement::InPlace,
        Some(layout) if layout == declared => Placement::InPlace,
        Some(_) => Placement::Own,
    }
}

#[derive(Debug)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub content_type: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub initiated: SystemTime,
    pub parts: BTreeMap<i32, Part>,
    /// Made by the first part that fits the layout (see the module docs).
    pub assembly: Option<Arc<Assembly>>,
}

impl Upload {
    /// Where part `number` starts and how long it is, in whichever file holds it.
    fn source_of(&self, number: i32, part: &Part) -> Source {
        match (&part.place, &self.assembly) {
            (Place::Own(path), _) => Source {
                path: path.clone(),
                offset: 0,
                len: part.size,
            },
            (Place::Assembly, Some(assembly)) => Source {
                path: assembly.path.clone(),
                offset: assembly.offset_of(number),
                len: part.size,
            },
            (Place::Assembly, None) => unreachable!("a part at its place has an assembly file"),
        }
    }
}

/// The uploads in progress of this process.
#[derive(Default)]
pub struct Uploads {
    uploads: Mutex<HashMap<String, Upload>>,
    sequence: AtomicU64,
}

/// One upload as listed.
pub struct Listed {
    pub upload_id: String,
    pub key: String,
    pub initiated: SystemTime,
}

/// What Complete assembled.
pub struct Assembled {
    pub tmp: PathBuf,
    pub hash: [u8; 32],
    pub size: u64,
    pub head: Vec<u8>,
    pub etag: String,
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new upload; its id.
    pub fn create(&self, upload: Upload) -> S3Result<String> {
        let mut uploads = self.lock();
        if uploads.len() >= UPLOADS_MAX {
            return Err(s3_error!(
                SlowDown,
                "too many multipart uploads in progress; complete or abort some"
            ));
        }
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!("{n}:{nanos}:{}:{}", upload.bucket, upload.key);
        let id = blake3::hash(seed.as_bytes()).to_hex()[..32].to_string();
        uploads.insert(id.clone(), upload);
        Ok(id)
    }

    /// Checks that `id` is an upload of `bucket`/`key`.
    pub fn check(&self, id: &str, bucket: &str, key: &str) -> S3Result<()> {
        match self.lock().get(id) {
            Some(u) if u.bucket == bucket && u.key == key => Ok(()),
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// Reserves part `number`'s range of the upload's assembly file (making the file,
    /// at `new_path()`, when this is the first part that fits), or `None`: the part goes
    /// to a file of its own ([`placement`]).
    pub fn reserve(
        &self,
        id: &str,
        number: i32,
        declared_bytes: Option<u64>,
        new_path: impl FnOnce() -> PathBuf,
    ) -> S3Result<Option<Reserved>> {
        let mut uploads = self.lock();
        let Some(upload) = uploads.get_mut(id) else {
            return Err(s3_error!(NoSuchUpload));
        };
        let registered_there = upload
            .parts
            .get(&number)
            .is_some_and(|p| p.place == Place::Assembly);
        let layout = upload.assembly.as_ref().map(|a| a.part_bytes);
        let writing = upload
            .assembly
            .as_ref()
            .is_some_and(|a| a.writing().contains(&number));
        if placement(declared_bytes, layout, registered_there || writing) == Placement::Own {
            return Ok(None);
        }
        let assembly = upload
            .assembly
            .get_or_insert_with(|| {
                Arc::new(Assembly {
                    path: new_path(),
                    part_bytes: declared_bytes.expect("placed in place"),
                    writing: Mutex::new(BTreeSet::new()),
                })
            })
            .clone();
        assembly.writing().insert(number);
        Ok(Some(Reserved { assembly, number }))
    }

    /// Adds a received part; the part it replaces, or this one's place when the upload
    /// is gone (the caller removes their own files).
    pub fn add_part(&self, id: &str, number: i32, part: Part) -> Result<Option<Part>, Place> {
        match self.lock().get_mut(id) {
            Some(upload) => Ok(upload.parts.insert(number, part)),
            None => Err(part.place),
        }
    }

    /// Removes the upload; its own part files are the caller's to remove (its assembly
    /// file goes with the last reference to it).
    pub fn take(&self, id: &str, bucket: &str, key: &str) -> S3Result<Upload> {
        let mut uploads = self.lock();
        match uploads.get(id) {
            Some(u) if u.bucket == bucket && u.key == key => {}
            _ => return Err(s3_error!(NoSuchUpload)),
        }
        Ok(uploads.remove(id).expect("just seen"))
    }

    /// Puts back an upload whose Complete was refused.
    pub fn put_back(&self, id: String, upload: Upload) {
        self.lock().insert(id, upload);
    }

    /// The parts of an upload: (number, size, etag, time), in order.
    pub fn parts(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
    ) -> S3Result<Vec<(i32, u64, String, SystemTime)>> {
        match self.lock().get(id) {
            Some(u) if u.bucket == bucket && u.key == key => Ok(u
                .parts
                .iter()
                .map(|(n, p)| (*n, p.size, p.etag(), p.last_modified))
                .collect()),
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// The uploads of `bucket` under `prefix`, by key then id.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Listed> {
        let mut listed: Vec<Listed> = self
            .lock()
            .iter()
            .filter(|(_, u)| u.bucket == bucket && u.key.starts_with(prefix))
            .map(|(id, u)| Listed {
                upload_id: id.clone(),
                key: u.key.clone(),
                initiated: u.initiated,
            })
            .collect();
        listed.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        listed
    }
}

/// Checks a Complete's part list against the upload: ascending numbers, each uploaded
/// with that ETag, each but the last at least [`PART_BYTES_MIN`]. The parts in order.
pub fn chosen_parts<'u>(upload: &'u Upload, listed: &[(i32, String)]) -> S3Result<Vec<&'u Part>> {
    if listed.is_empty() {
        return Err(s3_error!(MalformedXML, "the part list is empty"));
    }
    if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(s3_error!(InvalidPartOrder));
    }
    let mut chosen = Vec::with_capacity(listed.len());
    for (i, (number, etag)) in listed.iter().enumerate() {
        let Some(part) = upload.parts.get(number) else {
            return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
        };
        if etag.trim_matches('"') != part.etag() {
            return Err(s3_error!(InvalidPart, "part {number} has another ETag"));
        }
        if i + 1 < listed.len() && part.size < PART_BYTES_MIN {
            return Err(s3_error!(
                EntityTooSmall,
                "part {number} is smaller than 5 MiB and not the last"
            ));
        }
        chosen.push(part);
    }
    Ok(chosen)
}

/// The ETag of a multipart object: MD5 of the part MD5s, `-N`.
pub fn multipart_etag(parts: &[&Part]) -> String {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(&part.md5);
    }
    format!("{}-{}", hex(&md5.finalize()), parts.len())
}

/// A part's bytes: a range of a file (its own, or the assembly file).
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl Source {
    fn reader(&self) -> std::io::Result<std::io::Take<std::fs::File>> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        Ok(file.take(self.len))
    }
}

/// How Complete gets the object's BLAKE3.
enum Hashing {
    /// One part, hashed when it arrived.
    Whole([u8; 32]),
    /// Parts of one power-of-two size: merge their values (the last part's is computed
    /// from its bytes when it was not a whole subtree on arrival).
    Tree {
        part_size: u64,
        values: Vec<ChainingValue>,
        last: Option<ChainingValue>,
        last_offset: u64,
        total: u64,
    },
    /// Anything else: hash the bytes (as they are copied, or the assembled file once).
    Reading,
}

/// How Complete makes the object's file from the chosen parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The assembly file is the object; the last part is copied into place first when
    /// it is in a file of its own.
    InPlace { copy_last: bool },
    /// The parts are copied into a new file.
    Copied,
}

/// The shape Complete can take for `parts` (as [`chosen_parts`] returned them for
/// `listed`) of `upload`; see the module docs for the conditions.
pub fn shape(upload: &Upload, parts: &[&Part], listed: &[(i32, String)]) -> Shape {
    let Some(assembly) = &upload.assembly else {
        return Shape::Copied;
    };
    let numbered_from_one = listed
        .iter()
        .enumerate()
        .all(|(i, (n, _))| *n == i as i32 + 1);
    let Some((last, whole)) = parts.split_last() else {
        return Shape::Copied;
    };
    let at_place = |p: &Part| p.place == Place::Assembly;
    let whole_in_place = whole
        .iter()
        .all(|p| at_place(p) && p.size == assembly.part_bytes);
    // A part at its place past the end would be cut off: a refused Complete must leave
    // every registered part whole.
    let beyond_end = upload
        .parts
        .range(parts.len() as i32 + 1..)
        .any(|(_, p)| at_place(p));
    if !numbered_from_one
        || !whole_in_place
        || last.size > assembly.part_bytes
        || beyond_end
        || !assembly.idle()
    {
        return Shape::Copied;
    }
    Shape::InPlace {
        copy_last: !at_place(last),
    }
}

/// What Complete does with the chosen parts.
pub struct Plan {
    sources: Vec<Source>,
    hashing: Hashing,
    head: Vec<u8>,
    in_place: Option<InPlace>,
}

/// The assembly file as the object.
struct InPlace {
    path: PathBuf,
    /// `(N-1)·S`: where the last part starts.
    last_offset: u64,
    /// The last part's own file, copied into place.
    copy_last: Option<Source>,
    total: u64,
}

impl Plan {
    /// `parts` as [`chosen_parts`] returned them for `listed`, of `upload`.
    pub fn of(upload: &Upload, parts: &[&Part], listed: &[(i32, String)]) -> Plan {
        let sources: Vec<Source> = parts
            .iter()
            .zip(listed)
            .map(|(part, (number, _))| upload.source_of(*number, part))
            .collect();
        let numbered_from_one = listed
            .iter()
            .enumerate()
            .all(|(i, (n, _))| *n == i as i32 + 1);
        let head = parts.first().map(|p| p.head.clone()).unwrap_or_default();
        let hashing = if !numbered_from_one || parts.is_empty() {
            Hashing::Reading
        } else if parts.len() == 1 {
            Hashing::Whole(parts[0].hash)
        } else {
            tree_of(parts).unwrap_or(Hashing::Reading)
        };
        let in_place = match (shape(upload, parts, listed), &upload.assembly) {
            (Shape::InPlace { copy_last }, Some(assembly)) => {
                let last_offset = assembly.offset_of(parts.len() as i32);
                let last = sources.last().expect("one part or more");
                Some(InPlace {
                    path: assembly.path.clone(),
                    last_offset,
                    copy_last: copy_last.then(|| last.clone()),
                    total: last_offset + last.len,
                })
            }
            _ => None,
        };
        Plan {
            sources,
            hashing,
            head,
            in_place,
        }
    }

    /// The shape this plan takes.
    pub fn shape(&self) -> Shape {
        match &self.in_place {
            Some(p) => Shape::InPlace {
                copy_last: p.copy_last.is_some(),
            },
            None => Shape::Copied,
        }
    }

    /// Makes the object's file: the new file `tmp` (blocking: run on a thread of its
    /// own); its BLAKE3, size and first bytes.
    pub fn assemble(self, tmp: &Path) -> std::io::Result<([u8; 32], u64, Vec<u8>)> {
        let total = match &self.in_place {
            Some(in_place) => lay_out(in_place, tmp)?,
            None => match &self.hashing {
                Hashing::Reading => {
                    return assemble(&self.sources, tmp, crate::ingest::sniff::SNIFF_BYTES);
                }
                _ => copy_parts(&self.sources, tmp)?,
            },
        };
        let hash = match self.hashing {
            Hashing::Whole(hash) => hash,
            Hashing::Tree {
                part_size,
                values,
                last,
                last_offset,
                total: tree_total,
            } => {
                if tree_total != total {
                    return Err(std::io::Error::other(
                        "a part changed size while completing",
                    ));
                }
                let last = match last {
                    Some(value) => value,
                    None => {
                        let source = self.sources.last().expect("two parts or more");
                        let mut hasher = blake3::Hasher::new();
                        hasher.set_input_offset(last_offset);
                        hasher.update_reader(source.reader()?)?;
                        tree_hash::subtree_value(&hasher)
                    }
                };
                let mut all = values;
                all.push(last);
                *tree_hash::combine(&all, part_size, total).as_bytes()
            }
            // In place with a part size that is not a power of two: read the object once.
            Hashing::Reading => {
                let whole = Source {
                    path: tmp.to_path_buf(),
                    offset: 0,
                    len: total,
                };
                let mut hasher = blake3::Hasher::new();
                let read = std::io::copy(&mut whole.reader()?, &mut hasher)?;
                if read != total {
                    return Err(std::io::Error::other("the assembled file is short"));
                }
                *hasher.finalize().as_bytes()
            }
        };
        Ok((hash, total, self.head))
    }
}

/// The assembly file made the object: the last part copied into place when it has a file
/// of its own, the file cut to the object's size, linked as `tmp` (a new name of the same
/// bytes: the put may rename or drop `tmp`, the upload keeps its file whatever happens).
fn lay_out(in_place: &InPlace, tmp: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&in_place.path)?;
    if let Some(last) = &in_place.copy_last {
        file.seek(SeekFrom::Start(in_place.last_offset))?;
        let copied = std::io::copy(&mut last.reader()?, &mut file)?;
        if copied != last.len {
            return Err(std::io::Error::other(
                "a part changed size while completing",
            ));
        }
    }
    let on_disk = file.metadata()?.len();
    // Invariant: every part but the last is at its place, so the file reaches the last.
    if on_disk < in_place.last_offset {
        return Err(std::io::Error::other("the assembly file is short"));
    }
    file.set_len(in_place.total)?;
    drop(file);
    std::fs::hard_link(&in_place.path, tmp)?;
    Ok(in_place.total)
}

fn tree_of(parts: &[&Part]) -> Option<Hashing> {
    let part_size = parts[0].size;
    if !tree_hash::is_subtree_size(part_size) {
        return None;
    }
    let (last, whole) = parts.split_last()?;
    let mut values = Vec::with_capacity(whole.len());
    for (i, part) in whole.iter().enumerate() {
        match part.subtree {
            Some((offset, value)) if part.size == part_size && offset == i as u64 * part_size => {
                values.push(value)
            }
            _ => return None,
        }
    }
    if last.size == 0 || last.size > part_size {
        return None;
    }
    let last_offset = whole.len() as u64 * part_size;
    let last_value = match last.subtree {
        Some((offset, value)) if offset == last_offset && last.size == part_size => Some(value),
        _ => None,
    };
    Some(Hashing::Tree {
        part_size,
        values,
        last: last_value,
        last_offset,
        total: last_offset + last.size,
    })
}

/// Concatenates the parts' ranges into the new file `tmp` by `copy_file_range` (what
/// `io::copy` does between files on Linux, `Take` included: no copy through user space, a
/// reflink where the file system shares extents); the bytes copied.
fn copy_parts(parts: &[Source], tmp: &Path) -> std::io::Result<u64> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let mut size = 0;
    for part in parts {
        let copied = std::io::copy(&mut part.reader()?, &mut out)?;
        if copied != part.len {
            return Err(std::io::Error::other(
                "a part changed size while completing",
            ));
        }
        size += copied;
    }
    Ok(size)
}

/// Assembles `parts` into the new file `tmp` in one pass (blocking: run on a thread of
/// its own), hashing as it goes; keeps the first `head_bytes` for sniffing.
fn assemble(
    parts: &[Source],
    tmp: &Path,
    head_bytes: usize,
) -> std::io::Result<([u8; 32], u64, Vec<u8>)> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let mut hasher = blake3::Hasher::new();
    let mut head = Vec::with_capacity(head_bytes);
    let mut buffer = vec![0u8; 4 << 20];
    let mut size = 0u64;
    for part in parts {
        let mut file = part.reader()?;
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let chunk = &buffer[..n];
            hasher.update(chunk);
            if head.len() < head_bytes {
                let take = (head_bytes - head.len()).min(n);
                head.extend_from_slice(&chunk[..take]);
            }
            out.write_all(chunk)?;
            size += n as u64;
        }
    }
    out.flush()?;
    Ok((*hasher.finalize().as_bytes(), size, head))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(size: u64, md5: u8) -> Part {
        Part {
            place: Place::Own(PathBuf::new()),
            size,
            md5: [md5; 16],
            hash: [0; 32],
            subtree: None,
            head: Vec::new(),
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn upload_of(parts: BTreeMap<i32, Part>, assembly: Option<Arc<Assembly>>) -> Upload {
        Upload {
            bucket: "b".into(),
            key: "k".into(),
            content_type: None,
            meta: BTreeMap::new(),
            initiated: SystemTime::UNIX_EPOCH,
            parts,
            assembly,
        }
    }

    fn upload() -> Upload {
        let mut parts = BTreeMap::new();
        parts.insert(1, part(PART_BYTES_MIN, 1));
        parts.insert(2, part(PART_BYTES_MIN - 1, 2));
        parts.insert(3, part(10, 3));
        upload_of(parts, None)
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rhinobox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn assembly(path: PathBuf, part_bytes: u64) -> Arc<Assembly> {
        Arc::new(Assembly {
            path,
            part_bytes,
            writing: Mutex::new(BTreeSet::new()),
        })
    }

    fn listed(n: usize) -> Vec<(i32, String)> {
        (1..=n as i32).map(|n| (n, String::new())).collect()
    }

    #[test]
    fn complete_checks_order_etags_and_sizes() {
        let u = upload();
        let e = |n: u8| format!("\"{}\"", hex(&[n; 16]));
        assert_eq!(chosen_parts(&u, &[(1, e(1)), (3, e(3))]).unwrap().len(), 2);
        let code = |r: S3Result<Vec<&Part>>| r.err().map(|e| e.code().as_str().to_string());
        assert_eq!(
            code(chosen_parts(&u, &[(3, e(3)), (1, e(1))])).as_deref(),
            Some("InvalidPartOrder")
        );
        assert_eq!(
            code(chosen_parts(&u, &[(1, e(2))])).as_deref(),
            Some("InvalidPart")
        );
        assert_eq!(
            code(chosen_parts(&u, &[(4, e(1))])).as_deref(),
            Some("InvalidPart")
        );
        assert_eq!(
            code(chosen_parts(&u, &[(2, e(2)), (3, e(3))])).as_deref(),
            Some("EntityTooSmall")
        );
    }

    /// The ETag S3 gives: MD5 over the binary part MD5s, then `-N`.
    #[test]
    fn multipart_etag_is_md5_of_md5s() {
        let a = part(1, 0xaa);
        let b = part(1, 0xbb);
        let mut md5 = Md5::new();
        md5.update(&[0xaa; 16]);
        md5.update(&[0xbb; 16]);
        assert_eq!(
            multipart_etag(&[&a, &b]),
            format!("{}-2", hex(&md5.finalize()))
        );
    }

    /// Parts of at least 5 MiB go in place when they match the layout (or make it), never
    /// when their size is unknown, small, another size, or their range is taken.
    #[test]
    fn which_parts_go_in_place() {
        let min = PART_BYTES_MIN;
        let fifteen = 15 << 20;
        assert_eq!(placement(Some(min), None, false), Placement::InPlace);
        assert_eq!(placement(Some(fifteen), None, false), Placement::InPlace);
        assert_eq!(
            placement(Some(fifteen), Some(fifteen), false),
            Placement::InPlace
        );
        assert_eq!(
            placement(Some(fifteen), Some(fifteen), true),
            Placement::Own
        );
        assert_eq!(placement(Some(min - 1), None, false), Placement::Own);
        assert_eq!(placement(Some(100), Some(fifteen), false), Placement::Own);
        assert_eq!(placement(Some(min), Some(fifteen), false), Placement::Own);
        assert_eq!(placement(None, Some(fifteen), false), Placement::Own);
    }

    /// The registry reserves a range for one request at a time, makes the assembly file's
    /// layout from the first part that fits, sends a range with a registered part or a
    /// writer to a file of its own, and frees the range when the request ends.
    #[test]
    fn reservations_keep_ranges_to_one_writer() {
        let uploads = Uploads::default();
        let id = uploads.create(upload_of(BTreeMap::new(), None)).unwrap();
        let path = || PathBuf::from("/nonexistent/assembly");
        let s = 6 << 20;
        assert!(uploads.reserve(&id, 1, Some(100), path).unwrap().is_none());
        let first = uploads.reserve(&id, 2, Some(s), path).unwrap().unwrap();
        assert_eq!(first.offset(), s);
        assert!(
            uploads.reserve(&id, 2, Some(s), path).unwrap().is_none(),
            "being written"
        );
        assert!(
            uploads
                .reserve(&id, 3, Some(s + 1), path)
                .unwrap()
                .is_none(),
            "layout"
        );
        drop(first);
        let again = uploads.reserve(&id, 2, Some(s), path).unwrap().unwrap();
        let mut registered = part(s, 2);
        registered.place = Place::Assembly;
        uploads.add_part(&id, 2, registered).unwrap();
        drop(again);
        assert!(
            uploads.reserve(&id, 2, Some(s), path).unwrap().is_none(),
            "registered"
        );
        assert!(uploads.reserve("nope", 2, Some(s), path).is_err());
    }

    /// Complete's shape for each layout of the chosen parts.
    #[test]
    fn what_complete_does_for_each_shape() {
        let s = PART_BYTES_MIN;
        let at = |size: u64| Part {
            place: Place::Assembly,
            ..part(size, 0)
        };
        let shape_of = |parts: Vec<(i32, Part)>, chosen: usize, with_assembly: bool| {
            let file = assembly(PathBuf::from("/nonexistent/assembly"), s);
            let upload = upload_of(parts.into_iter().collect(), with_assembly.then_some(file));
            let chosen: Vec<&Part> = upload.parts.values().take(chosen).collect();
            shape(&upload, &chosen, &listed(chosen.len()))
        };
        let in_place = Shape::InPlace { copy_last: false };
        let copy_last = Shape::InPlace { copy_last: true };
        assert_eq!(shape_of(vec![(1, at(s)), (2, at(s))], 2, true), in_place);
        assert_eq!(shape_of(vec![(1, at(s)), (2, at(7))], 2, true), in_place);
        assert_eq!(
            shape_of(vec![(1, at(s)), (2, part(7, 0))], 2, true),
            copy_last
        );
        assert_eq!(
            shape_of(vec![(1, at(s)), (2, part(s, 0))], 2, true),
            copy_last
        );
        assert_eq!(shape_of(vec![(1, at(s))], 1, true), in_place);
        // A middle part in a file of its own, a last part too large, no assembly file,
        // a registered part at its place past the end: copied.
        let middle_own = vec![(1, at(s)), (2, part(s, 0)), (3, at(7))];
        assert_eq!(shape_of(middle_own, 3, true), Shape::Copied);
        assert_eq!(
            shape_of(vec![(1, at(s)), (2, part(s + 1, 0))], 2, true),
            Shape::Copied
        );
        assert_eq!(
            shape_of(vec![(1, part(s, 0)), (2, part(7, 0))], 2, false),
            Shape::Copied
        );
        assert_eq!(
            shape_of(vec![(1, at(s)), (2, at(s)), (3, at(s))], 2, true),
            Shape::Copied
        );
        // Not numbered from 1.
        let file = assembly(PathBuf::from("/nonexistent/assembly"), s);
        let u = upload_of(
            [(2, at(s)), (3, at(s))].into_iter().collect(),
            Some(file.clone()),
        );
        let chosen: Vec<&Part> = u.parts.values().collect();
        let numbers = vec![(2, String::new()), (3, String::new())];
        assert_eq!(shape(&u, &chosen, &numbers), Shape::Copied);
        // A request writing into the file.
        let u = upload_of(
            [(1, at(s)), (2, at(s))].into_iter().collect(),
            Some(file.clone()),
        );
        file.writing().insert(3);
        let chosen: Vec<&Part> = u.parts.values().collect();
        assert_eq!(shape(&u, &chosen, &listed(2)), Shape::Copied);
    }

    /// Builds parts of `sizes` (part n at its place when `in_place[n]`), completes them
    /// through [`Plan`] and checks the shape taken, the bytes, the size and the hash of
    /// the object; a second run of the same plan (a refused Complete retried) gives the
    /// same object.
    fn complete_and_check(
        dir: &Path,
        layout: u64,
        sizes: &[u64],
        in_place: &[bool],
    ) -> (Shape, bool) {
        let file = assembly(dir.join("assembly"), layout);
        let mut whole = Vec::new();
        let mut parts = BTreeMap::new();
        for (i, &len) in sizes.iter().enumerate() {
            let number = i as i32 + 1;
            let data: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8 * 17)).collect();
            let place = if in_place[i] {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&file.path)
                    .unwrap();
                out.seek(SeekFrom::Start(file.offset_of(number))).unwrap();
                out.write_all(&data).unwrap();
                Place::Assembly
            } else {
                let path = dir.join(format!("p{i}"));
                std::fs::write(&path, &data).unwrap();
                Place::Own(path)
            };
            let subtree = tree_hash::part_hasher(number, len).map(|(offset, mut h)| {
                h.update(&data);
                (offset, tree_hash::subtree_value(&h))
            });
            let part = Part {
                place,
                size: len,
                md5: [0; 16],
                hash: *blake3::hash(&data).as_bytes(),
                subtree,
                head: data[..data.len().min(16)].to_vec(),
                last_modified: SystemTime::UNIX_EPOCH,
            };
            parts.insert(number, part);
            whole.extend_from_slice(&data);
        }
        let any_in_place = in_place.iter().any(|&p| p);
        let upload = upload_of(parts, any_in_place.then_some(file));
        let refs: Vec<&Part> = upload.parts.values().collect();
        let mut shapes = Vec::new();
        for round in 0..2 {
            let plan = Plan::of(&upload, &refs, &listed(refs.len()));
            let merged = !matches!(plan.hashing, Hashing::Reading);
            shapes.push((plan.shape(), merged));
            let out = dir.join(format!("out{round}"));
            let (hash, total, head) = plan.assemble(&out).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), whole, "{sizes:?}");
            assert_eq!(total as usize, whole.len());
            assert_eq!(
                &hash,
                blake3::hash(&whole).as_bytes(),
                "{sizes:?} {in_place:?}"
            );
            // Part 1's head, or the sniff's worth read while copying: a prefix either way.
            assert!(head.len() >= whole.len().min(16) && whole.starts_with(&head));
        }
        assert_eq!(shapes[0], shapes[1]);
        shapes.remove(0)
    }

    /// Parts hashed on arrival as subtrees give the whole object's hash at Complete,
    /// whether the last part is whole or short; other shapes fall back to copying.
    #[test]
    fn planned_assembly_gives_the_hash_of_the_whole() {
        let dir = test_dir("plan");
        let size = 4096u64;
        for (sizes, fast) in [
            (vec![size, size, 100], true),
            (vec![size, size, size], true),
            (vec![size, 3000, 100], false),
            (vec![5000, 5000, 7], false),
            (vec![size], true),
        ] {
            let own = vec![false; sizes.len()];
            let plan_dir = dir.join(format!("{sizes:?}"));
            std::fs::create_dir_all(&plan_dir).unwrap();
            let shape = complete_and_check(&plan_dir, size, &sizes, &own);
            assert_eq!(shape, (Shape::Copied, fast), "{sizes:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Parts at their place make the object in the assembly file itself, with the last
    /// part at its place or copied there, for power-of-two part sizes (hash merged) and
    /// others (hash read); a middle part in a file of its own falls back to copying,
    /// reading the other parts' ranges out of the assembly file.
    #[test]
    fn parts_at_their_place_become_the_object() {
        let dir = test_dir("in-place");
        let pow2 = 8192u64;
        let odd = 5000u64;
        let copy_last = Shape::InPlace { copy_last: true };
        let all_there = Shape::InPlace { copy_last: false };
        let (yes, no) = (true, false);
        // (layout S, part sizes, which parts at their place, shape, hash merged)
        type Case = (u64, Vec<u64>, Vec<bool>, Shape, bool);
        let cases: Vec<Case> = vec![
            (
                pow2,
                vec![pow2, pow2, 100],
                vec![yes, yes, no],
                copy_last,
                true,
            ),
            (
                pow2,
                vec![pow2, pow2, pow2],
                vec![yes, yes, yes],
                all_there,
                true,
            ),
            (
                pow2,
                vec![pow2, pow2, 77],
                vec![yes, yes, yes],
                all_there,
                true,
            ),
            (
                odd,
                vec![odd, odd, 10],
                vec![yes, yes, no],
                copy_last,
                false,
            ),
            (
                odd,
                vec![odd, odd, odd],
                vec![yes, yes, yes],
                all_there,
                false,
            ),
            (odd, vec![odd], vec![yes], all_there, true),
            (
                pow2,
                vec![pow2, pow2, 100],
                vec![yes, no, no],
                Shape::Copied,
                true,
            ),
            (
                odd,
                vec![odd, odd, 10],
                vec![no, yes, yes],
                Shape::Copied,
                false,
            ),
        ];
        for (i, (layout, sizes, in_place, expected, merged)) in cases.into_iter().enumerate() {
            let case_dir = dir.join(i.to_string());
            std::fs::create_dir_all(&case_dir).unwrap();
            let shape = complete_and_check(&case_dir, layout, &sizes, &in_place);
            assert_eq!(shape, (expected, merged), "{sizes:?} {in_place:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn assembly_hashes_what_it_writes() {
        let dir = test_dir("assemble");
        let (p1, p2) = (dir.join("1"), dir.join("2"));
        std::fs::write(&p1, vec![7u8; 5_000_000]).unwrap();
        std::fs::write(&p2, b"xxtailxx").unwrap();
        let sources = [
            Source {
                path: p1,
                offset: 0,
                len: 5_000_000,
            },
            Source {
                path: p2,
                offset: 2,
                len: 4,
            },
        ];
        let out = dir.join("out");
        let (hash, size, head) = assemble(&sources, &out, 16).unwrap();
        let whole = std::fs::read(&out).unwrap();
        assert_eq!(size as usize, whole.len());
        assert_eq!(&whole[5_000_000..], b"tail");
        assert_eq!(&hash, blake3::hash(&whole).as_bytes());
        assert_eq!(head, vec![7u8; 16]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
