//! The blob side of the store, local backend: the bytes of stored content, as files in
//! the categorized tree under `storage/`, and the files being received in `storage/.tmp/`.
//!
//! What the protocols ([`super::protocol`]) ask of a blob side, and nothing more:
//! - stage: a new tmp path, write chunks into a new tmp file, remove a tmp file;
//! - place: turn a complete tmp file into the blob at a record path, never replacing
//!   another blob (a taken name gets a longer hash prefix) — returns the path used;
//! - check: is the blob at a path present and of the recorded size (dedup trusts no stale
//!   copy);
//! - remove: delete the blob at a record path (gone already is fine).
//!
//! Every path a caller gives or gets is a record path (`storage/...`, relative to the data
//! dir); nothing outside this module builds an absolute path into the tree. Blobs are
//! opened and removed beneath `storage/` ([`super::beneath`]), following no link below it.
//!
//! Durability is not this side's business: [`super::Store::make_durable`] syncs every
//! file system of the data dir with the journal, so the protocols order their steps
//! around one barrier for both sides. A cluster backend (an S3-compatible engine) keeps
//! the same operations: staging stays local, placing is an idempotent content-addressed
//! PUT, the check a HEAD, removal a DELETE.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashSet;

use super::index::Hash;
use super::io::CoreIo;

/// Hash prefix lengths a final name may carry, tried in order on a name collision.
pub const NAME_PREFIX_HEX_LENGTHS: [usize; 5] = [12, 16, 24, 32, 64];

/// `path` (`.../<hex12>_<name>`) with the first `len` hex digits of `hash_hex` as prefix.
pub fn with_prefix(path: &str, hash_hex: &str, len: usize) -> String {
    let leaf_at = path.rfind('/').map(|i| i + 1).unwrap_or(0);
    let leaf = &path[leaf_at..];
    let rest = leaf.get(12..).unwrap_or("");
    format!("{}{}{}", &path[..leaf_at], &hash_hex[..len], rest)
}

/// Where the content of S3 objects lives, below `storage/`: one file per content hash,
/// named by it (content-addressed; shared by every key that names the hash, and by a
/// hard link with the native file of the same bytes when there is one).
pub const OBJECTS_DIR: &str = ".objects";

/// The record path of the content blob of `hash_hex`: `storage/.objects/<hh>/<hash>`.
pub fn object_path(hash_hex: &str) -> String {
    format!("storage/{OBJECTS_DIR}/{}/{hash_hex}", &hash_hex[..2])
}

/// The part of a record path after `storage/` (record paths always start with it).
pub fn below_storage(path: &str) -> PathBuf {
    PathBuf::from(path.strip_prefix("storage/").unwrap_or(path))
}

/// The local tree of blobs.
pub struct Blobs {
    data_dir: PathBuf,
    pub storage_dir: PathBuf,
    pub tmp_dir: PathBuf,
    /// `storage/` opened once as a directory: blobs are opened beneath it. It is
    /// `storage/` and not the data dir so that an operator may make `storage` itself a
    /// link to another disk; links below it are refused ([`super::beneath`]).
    root: Arc<File>,
    /// Directories known to exist under storage/ (saves a mkdir per file).
    known_dirs: DashSet<PathBuf>,
    tmp_sequence: AtomicU64,
}

impl Blobs {
    pub fn new(data_dir: &Path, storage_dir: PathBuf, tmp_dir: PathBuf, root: File) -> Blobs {
        Blobs {
            data_dir: data_dir.to_path_buf(),
            storage_dir,
            tmp_dir,
            root: Arc::new(root),
            known_dirs: DashSet::new(),
            tmp_sequence: AtomicU64::new(0),
        }
    }

    /// Absolute path of a record path (`storage/...`, relative to the data dir).
    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.data_dir.join(relative)
    }

    /// `storage/`, open as a directory: the root for [`super::beneath::open_beneath`] of
    /// the part of a record path after `storage/`. Shared, so a blocking pool can hold it.
    pub fn root(&self) -> &Arc<File> {
        &self.root
    }

    /// A tmp path unique within this process.
    pub fn next_tmp_path(&self) -> PathBuf {
        let n = self.tmp_sequence.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir.join(format!("{n}.part"))
    }

    /// Writes `chunks` into a new tmp file at `path` (O_EXCL).
    pub async fn write_tmp(&self, io: &CoreIo, path: &Path, chunks: &[Bytes]) -> io::Result<()> {
        let mut writer = io.create_new(path.to_path_buf());
        for chunk in chunks {
            writer.write(chunk).await?;
        }
        writer.finish().await.map(|_| ())
    }

    /// Removes a tmp file; one already gone is fine.
    pub async fn remove_tmp(&self, io: &CoreIo, path: &Path) -> io::Result<()> {
        match io.remove_file(path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// A blob is usable for dedup when it is a regular file of the recorded size.
    /// One `lstat` (the inode is cached for recently stored files); a blocking call on the
    /// core, as for renames. A plain `lstat`, not an `openat2` beneath `storage/` (open,
    /// fstat, close: three syscalls per duplicate on the hot path): a link planted
    /// on the way can at worst make a missing copy look present, and reads of it refuse the
    /// link anyway.
    pub fn is_intact(&self, path: &str, size: u64) -> bool {
        match std::fs::symlink_metadata(self.absolute(path)) {
            Ok(meta) => meta.file_type().is_file() && meta.len() == size,
            Err(_) => false,
        }
    }

    /// Places the complete tmp file `tmp` as the blob of `hash` at record path `path`, or
    /// at the same name with a longer hash prefix when a blob already has it (a final name
    /// never replaces). Creates the directory when missing — also when it vanished since
    /// this process created it (an operator removed it). Returns the record path used.
    pub async fn place(
        &self,
        io: &CoreIo,
        tmp: &Path,
        path: &str,
        hash: &Hash,
    ) -> io::Result<String> {
        if let Some(parent) = self.absolute(path).parent() {
            self.ensure_dir(io, parent).await?;
        }
        let hex = blake3::Hash::from_bytes(*hash).to_hex();
        let mut last_error = None;
        for len in NAME_PREFIX_HEX_LENGTHS {
            let candidate = with_prefix(path, hex.as_str(), len);
            let target = self.absolute(&candidate);
            let result = match io.rename_noreplace(tmp, &target).await {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tmp.exists() => {
                    let parent = target.parent().expect("stored paths have a parent");
                    self.known_dirs.remove(parent);
                    self.ensure_dir(io, parent).await?;
                    io.rename_noreplace(tmp, &target).await
                }
                other => other,
            };
            match result {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
    }

    /// Places the complete tmp file `tmp` as the content blob of `hash_hex` (see
    /// [`object_path`]). Content-addressed: a file already at that name is a leftover
    /// of no object (the caller found the hash absent), removed first; the rename itself
    /// never replaces. Returns the record path.
    pub async fn place_object(
        &self,
        io: &CoreIo,
        tmp: &Path,
        hash_hex: &str,
    ) -> io::Result<String> {
        let path = object_path(hash_hex);
        let target = self.absolute(&path);
        let parent = target.parent().expect("object paths have a parent");
        self.ensure_dir(io, parent).await?;
        let mut result = io.rename_noreplace(tmp, &target).await;
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) && tmp.exists() {
            self.known_dirs.remove(parent);
            self.ensure_dir(io, parent).await?;
            result = io.rename_noreplace(tmp, &target).await;
        }
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
            self.remove(io, &path).await?;
            result = io.rename_noreplace(tmp, &target).await;
        }
        result.map(|()| path)
    }

    /// Hard-links the stored blob at record path `path` to the new tmp path `tmp` and
    /// returns its size: the same bytes under a second name without writing them again.
    /// Blocking (one `link`, one `lstat`), as renames are on the core.
    pub fn link_into_tmp(&self, path: &str, tmp: &Path) -> io::Result<u64> {
        std::fs::hard_link(self.absolute(path), tmp)?;
        let meta = std::fs::symlink_metadata(tmp)?;
        if !meta.file_type().is_file() {
            let _ = std::fs::remove_file(tmp);
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(meta.len())
    }

    /// Removes the blob at record path `path` without following a link on the way; a blob
    /// already gone is fine.
    pub async fn remove(&self, io: &CoreIo, path: &str) -> io::Result<()> {
        super::failpoint::check("unlink")?;
        let relative = below_storage(path);
        let root = self.root.clone();
        let result = match io {
            // A direct syscall on the core, as for renames (see `store::io`).
            CoreIo::Uring(_) => super::beneath::remove_beneath(&root, &relative),
            CoreIo::Threads(threads) => {
                threads
                    .pool
                    .run(move || super::beneath::remove_beneath(&root, &relative))
                    .await
            }
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Removes what a failed put had placed, synchronously (from a drop); true when every
    /// blob is gone.
    pub fn remove_placed_now(&self, paths: &[String]) -> bool {
        let mut removed_all = true;
        for path in paths {
            match std::fs::remove_file(self.absolute(path)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => removed_all = false,
            }
        }
        removed_all
    }

    /// Creates `dir` unless this process already did.
    async fn ensure_dir(&self, io: &CoreIo, dir: &Path) -> io::Result<()> {
        if !self.known_dirs.contains(dir) {
            io.create_dir_all(dir).await?;
            // Bounded in practice by the number of categories in use.
            self.known_dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A longer prefix replaces exactly the 12 hex digits of the leaf.
    #[test]
    fn prefixes_lengthen_the_leaf_only() {
        let hex = "0123456789abcdef".repeat(4);
        let path = "storage/images/jpg/0123456789ab_cat.jpg";
        assert_eq!(with_prefix(path, &hex, 12), path);
        assert_eq!(
            with_prefix(path, &hex, 16),
            "storage/images/jpg/0123456789abcdef_cat.jpg"
        );
        assert_eq!(
            with_prefix(path, &hex, 64),
            format!("storage/images/jpg/{hex}_cat.jpg")
        );
    }
}
