//! Multipart uploads in progress: in memory, their parts as files in `storage/.tmp/`.
//!
//! - UploadPart streams a part to its own tmp file (O(1) memory: the ingest path), in any
//!   order and in parallel; a part number sent again replaces the earlier part.
//! - Complete takes the upload out of the registry, then assembles the listed parts into
//!   one tmp file on a thread of its own, in one pass: each part is read once, its bytes
//!   BLAKE3-hashed and written (`copy_file_range` would save the copy into user space
//!   but not the read that hashing needs). Cost for a 5 GiB object: 5 GiB read (mostly
//!   from the page cache, the parts were just written) and 5 GiB written, at the disk's
//!   sequential rate, plus one BLAKE3 pass (several GB/s). The ETag is the MD5 of the
//!   part MD5s (kept per part), so it costs nothing.
//! - Abort removes the part files. Uploads do not survive a restart: start-up empties
//!   `.tmp`, which is where the parts are (S3 clients then get NoSuchUpload and restart
//!   the upload).
//!
//! Bounded: at most [`UPLOADS_MAX`] uploads in progress and [`PARTS_MAX`] parts each.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use blake3::hazmat::{ChainingValue, HasherExt};
use s3s::crypto::{Checksum as _, Md5};

use super::tree_hash;
use s3s::{S3Result, s3_error};

pub const UPLOADS_MAX: usize = 10_000;
pub const PARTS_MAX: i32 = 10_000;
/// S3's smallest part but the last.
pub const PART_BYTES_MIN: u64 = 5 * 1024 * 1024;

#[derive(Debug)]
pub struct Part {
    pub tmp: PathBuf,
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
}

#[derive(Debug)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub content_type: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub initiated: SystemTime,
    pub parts: BTreeMap<i32, Part>,
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

    /// Adds a received part; the part it replaces, or the file of this one when the
    /// upload is gone (the caller removes that file).
    pub fn add_part(&self, id: &str, number: i32, part: Part) -> Result<Option<Part>, PathBuf> {
        match self.lock().get_mut(id) {
            Some(upload) => Ok(upload.parts.insert(number, part)),
            None => Err(part.tmp),
        }
    }

    /// Removes the upload; its part files are the caller's to remove.
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

/// How Complete gets the object's BLAKE3.
enum Hashing {
    /// One part, hashed when it arrived.
    Whole([u8; 32]),
    /// Parts of one power-of-two size: merge their values (the last part's is computed
    /// from its file when it was not a whole subtree on arrival).
    Tree {
        part_size: u64,
        values: Vec<ChainingValue>,
        last: Option<ChainingValue>,
        last_offset: u64,
        total: u64,
    },
    /// Anything else: hash the bytes as they are copied.
    Copying,
}

/// What Complete does with the chosen parts.
pub struct Plan {
    paths: Vec<PathBuf>,
    hashing: Hashing,
    head: Vec<u8>,
}

impl Plan {
    /// `parts` as [`chosen_parts`] returned them for `listed`.
    pub fn of(parts: &[&Part], listed: &[(i32, String)]) -> Plan {
        let paths = parts.iter().map(|p| p.tmp.clone()).collect();
        let numbered_from_one = listed
            .iter()
            .enumerate()
            .all(|(i, (n, _))| *n == i as i32 + 1);
        let head = parts.first().map(|p| p.head.clone()).unwrap_or_default();
        let hashing = if !numbered_from_one || parts.is_empty() {
            Hashing::Copying
        } else if parts.len() == 1 {
            Hashing::Whole(parts[0].hash)
        } else {
            tree_of(parts).unwrap_or(Hashing::Copying)
        };
        Plan {
            paths,
            hashing,
            head,
        }
    }

    /// Assembles the parts into the new file `tmp` (blocking: run on a thread of its
    /// own): their BLAKE3, size and first bytes.
    pub fn assemble(self, tmp: &std::path::Path) -> std::io::Result<([u8; 32], u64, Vec<u8>)> {
        let (part_size, values, last, last_offset, total) = match self.hashing {
            Hashing::Copying => {
                return assemble(&self.paths, tmp, crate::ingest::sniff::SNIFF_BYTES);
            }
            Hashing::Whole(hash) => {
                let size = copy_parts(&self.paths, tmp)?;
                return Ok((hash, size, self.head));
            }
            Hashing::Tree {
                part_size,
                values,
                last,
                last_offset,
                total,
            } => (part_size, values, last, last_offset, total),
        };
        let size = copy_parts(&self.paths, tmp)?;
        if size != total {
            return Err(std::io::Error::other(
                "a part changed size while completing",
            ));
        }
        let last = match last {
            Some(value) => value,
            None => {
                let path = self.paths.last().expect("two parts or more");
                let mut hasher = blake3::Hasher::new();
                hasher.set_input_offset(last_offset);
                hasher.update_reader(std::fs::File::open(path)?)?;
                tree_hash::subtree_value(&hasher)
            }
        };
        let mut all = values;
        all.push(last);
        Ok((
            *tree_hash::combine(&all, part_size, total).as_bytes(),
            size,
            self.head,
        ))
    }
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

/// Concatenates the parts into the new file `tmp` by `copy_file_range` (what `io::copy`
/// does between files on Linux: no copy through user space, a reflink where the file
/// system shares extents); the bytes copied.
fn copy_parts(parts: &[PathBuf], tmp: &std::path::Path) -> std::io::Result<u64> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let mut size = 0;
    for part in parts {
        size += std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
    }
    Ok(size)
}

/// Assembles `parts` into the new file `tmp` in one pass (blocking: run on a thread of
/// its own), hashing as it goes; keeps the first `head_bytes` for sniffing.
pub fn assemble(
    parts: &[PathBuf],
    tmp: &std::path::Path,
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
        let mut file = std::fs::File::open(part)?;
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
            tmp: PathBuf::new(),
            size,
            md5: [md5; 16],
            hash: [0; 32],
            subtree: None,
            head: Vec::new(),
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn upload() -> Upload {
        let mut parts = BTreeMap::new();
        parts.insert(1, part(PART_BYTES_MIN, 1));
        parts.insert(2, part(PART_BYTES_MIN - 1, 2));
        parts.insert(3, part(10, 3));
        Upload {
            bucket: "b".into(),
            key: "k".into(),
            content_type: None,
            meta: BTreeMap::new(),
            initiated: SystemTime::UNIX_EPOCH,
            parts,
        }
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

    /// Parts hashed on arrival as subtrees give the whole object's hash at Complete,
    /// whether the last part is whole or short; other shapes fall back to copying.
    #[test]
    fn planned_assembly_gives_the_hash_of_the_whole() {
        let dir = std::env::temp_dir().join(format!("rhinobox-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let size = 4096u64;
        for (sizes, fast) in [
            (vec![size, size, 100], true),
            (vec![size, size, size], true),
            (vec![size, 3000, 100], false),
            (vec![5000, 5000, 7], false),
            (vec![size], true),
        ] {
            let mut whole = Vec::new();
            let mut parts = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8 * 17)).collect();
                let path = dir.join(format!("p{i}"));
                std::fs::write(&path, &data).unwrap();
                let subtree = tree_hash::part_hasher(i as i32 + 1, len).map(|(offset, mut h)| {
                    h.update(&data);
                    (offset, tree_hash::subtree_value(&h))
                });
                parts.push(Part {
                    tmp: path,
                    size: len,
                    md5: [0; 16],
                    hash: *blake3::hash(&data).as_bytes(),
                    subtree,
                    head: data[..data.len().min(16)].to_vec(),
                    last_modified: SystemTime::UNIX_EPOCH,
                });
                whole.extend_from_slice(&data);
            }
            let refs: Vec<&Part> = parts.iter().collect();
            let listed: Vec<(i32, String)> = (1..=parts.len() as i32)
                .map(|n| (n, String::new()))
                .collect();
            let plan = Plan::of(&refs, &listed);
            assert_eq!(!matches!(plan.hashing, Hashing::Copying), fast, "{sizes:?}");
            let out = dir.join("out");
            let _ = std::fs::remove_file(&out);
            let (hash, total, _) = plan.assemble(&out).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), whole);
            assert_eq!(total as usize, whole.len());
            assert_eq!(&hash, blake3::hash(&whole).as_bytes(), "{sizes:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn assembly_hashes_what_it_writes() {
        let dir = std::env::temp_dir().join(format!("rhinobox-assemble-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p1, p2) = (dir.join("1"), dir.join("2"));
        std::fs::write(&p1, vec![7u8; 5_000_000]).unwrap();
        std::fs::write(&p2, b"tail").unwrap();
        let out = dir.join("out");
        let (hash, size, head) = assemble(&[p1, p2], &out, 16).unwrap();
        let whole = std::fs::read(&out).unwrap();
        assert_eq!(size as usize, whole.len());
        assert_eq!(&hash, blake3::hash(&whole).as_bytes());
        assert_eq!(head, vec![7u8; 16]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
