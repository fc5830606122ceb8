//! The crash disk: a FUSE file system that serves one image file (`disk`) through a volatile
//! write cache, and a control file (`ctl`).
//!
//! Writes to `disk` land in an in-memory map of 4 KiB blocks; reads see the cache over the
//! durable image. An FSYNC of `disk` (what the loop driver sends for a block-layer flush, and
//! for the post-flush of a FUA write, since the loop queue reports `fua = 0`) applies every
//! cached block to the durable image file, like a disk emptying its write cache. FLUSH
//! (sent by close(2)) is counted and ignored: it is no durability barrier.
//!
//! Commands written to `ctl` (one line each):
//! - `cut` — power cut: every unflushed block is dropped.
//! - `cut-random SEED PERMILLE` — power cut where each unflushed block independently
//!   survives with probability PERMILLE/1000 (a write-back cache that persisted some writes
//!   in any order), chosen by SEED so a failure replays.
//! - `arm N SEED PERMILLE` — power cut *at* the N-th FSYNC from now: instead of applying
//!   the cache, that FSYNC drops it (keeping the seeded subset) and is never answered, as
//!   a disk that loses power in the middle of a cache flush. Every FSYNC after it is held
//!   too, so no sync the daemon waits on can succeed after the cut: every 200 it sent was
//!   made durable by an FSYNC that completed before. The cut lands when the cache is at
//!   its fullest, at a flush boundary the file system chose.
//! - `release` — answer the held FSYNCs with EIO (after the daemon is killed, so that its
//!   threads blocked in syncfs can exit); later FSYNCs of the dead disk are answered at
//!   once, so that unmounting can finish.
//! - `latency WRITE_US FLUSH_US` — make each WRITE and each FSYNC take that long, as a
//!   real disk does (this one is memory-speed): syncs take longer, so more requests land
//!   inside another request's sync, which is where ordering bugs show.
//! - `reset` — zero the counters.
//!
//! After a cut the disk is dead: writes are accepted and discarded, flushes do nothing,
//! reads see the durable image only. Reading `ctl` returns the counters as `key value` lines.
//!
//! Invariant: the durable image changes only in `apply` (at FSYNC) and in a cut's surviving
//! subset; nothing else writes it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};

use crate::rng::Rng;

/// Cache granularity; the loop device is set up with `-b 4096`, so every request is whole
/// blocks, but partial writes are handled by read-modify-write all the same.
pub const BLOCK_BYTES: u64 = 4096;
/// Reported size of `ctl`: the counters text is padded to this, so a plain `cat` reads it.
const CTL_BYTES: u64 = 4096;
const INO_ROOT: u64 = 1;
const INO_DISK: u64 = 2;
const INO_CTL: u64 = 3;
const TTL: Duration = Duration::from_secs(1);

/// Operation counters, reported by reading `ctl`.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub writes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub fsyncs: u64,
    pub fdatasyncs: u64,
    pub flushes: u64,
    pub fallocates: u64,
    pub applied_blocks: u64,
    pub cuts: u64,
    pub dropped_blocks: u64,
    pub survived_blocks: u64,
}

enum Block {
    Zero,
    Data(Box<[u8]>),
}

struct State {
    image: File,
    image_bytes: u64,
    cache: HashMap<u64, Block>,
    dead: bool,
    /// `arm`: (FSYNCs left before the cut, seed, permille).
    armed: Option<(u64, u64, u64)>,
    /// FSYNCs held unanswered since the cut (answered EIO by `release` or at unmount).
    held: Vec<ReplyEmpty>,
    /// After `release`, a dead disk answers FSYNC at once again (so unmount can finish).
    released: bool,
    /// `latency`: added to each WRITE and each FSYNC of a live disk.
    write_latency: Duration,
    flush_latency: Duration,
    counters: Counters,
}

pub struct CrashDisk {
    state: Mutex<State>,
}

impl CrashDisk {
    pub fn new(image: File) -> std::io::Result<CrashDisk> {
        let image_bytes = image.metadata()?.len();
        assert!(
            image_bytes % BLOCK_BYTES == 0,
            "image size must be whole 4 KiB blocks"
        );
        Ok(CrashDisk {
            state: Mutex::new(State {
                image,
                image_bytes,
                cache: HashMap::new(),
                dead: false,
                armed: None,
                held: Vec::new(),
                released: false,
                write_latency: Duration::ZERO,
                flush_latency: Duration::ZERO,
                counters: Counters::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn read_block(&self, block: u64, out: &mut [u8]) -> std::io::Result<()> {
        match self.cache.get(&block) {
            Some(Block::Zero) => out.fill(0),
            Some(Block::Data(data)) => out.copy_from_slice(data),
            None => self.image.read_exact_at(out, block * BLOCK_BYTES)?,
        }
        Ok(())
    }

    fn read(&self, offset: u64, size: u64) -> std::io::Result<Vec<u8>> {
        let end = (offset + size).min(self.image_bytes);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut block_buf = vec![0u8; BLOCK_BYTES as usize];
        let mut at = offset;
        while at < end {
            let block = at / BLOCK_BYTES;
            let within = (at % BLOCK_BYTES) as usize;
            let take = ((BLOCK_BYTES as usize) - within).min((end - at) as usize);
            self.read_block(block, &mut block_buf)?;
            out.extend_from_slice(&block_buf[within..within + take]);
            at += take as u64;
        }
        Ok(out)
    }

    /// Puts `data` (or zeros, when `data` is None) at `offset` into the cache.
    fn write(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> std::io::Result<()> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK_BYTES;
            let within = (at % BLOCK_BYTES) as usize;
            let take = ((BLOCK_BYTES as usize) - within).min((end - at) as usize);
            let whole = within == 0 && take == BLOCK_BYTES as usize;
            let entry = match (data, whole) {
                (None, true) => Block::Zero,
                (Some(d), true) => {
                    let from = (at - offset) as usize;
                    Block::Data(d[from..from + take].into())
                }
                (_, false) => {
                    let mut buf = vec![0u8; BLOCK_BYTES as usize];
                    self.read_block(block, &mut buf)?;
                    match data {
                        Some(d) => {
                            let from = (at - offset) as usize;
                            buf[within..within + take].copy_from_slice(&d[from..from + take]);
                        }
                        None => buf[within..within + take].fill(0),
                    }
                    Block::Data(buf.into())
                }
            };
            self.cache.insert(block, entry);
            at += take as u64;
        }
        Ok(())
    }

    fn write_through(&self, block: u64, entry: &Block) -> std::io::Result<()> {
        let zeros;
        let bytes: &[u8] = match entry {
            Block::Zero => {
                zeros = vec![0u8; BLOCK_BYTES as usize];
                &zeros
            }
            Block::Data(d) => d,
        };
        self.image.write_all_at(bytes, block * BLOCK_BYTES)
    }

    /// The disk empties its write cache onto the medium (a FLUSH command).
    fn apply(&mut self) -> std::io::Result<()> {
        let mut blocks: Vec<u64> = self.cache.keys().copied().collect();
        blocks.sort_unstable();
        for block in &blocks {
            self.write_through(*block, &self.cache[block])?;
        }
        self.counters.applied_blocks += blocks.len() as u64;
        self.cache.clear();
        Ok(())
    }

    /// Power cut: each cached block survives with probability `permille`/1000.
    fn cut(&mut self, seed: u64, permille: u64) -> std::io::Result<()> {
        let mut blocks: Vec<u64> = self.cache.keys().copied().collect();
        // Sorted so that the subset depends on the seed only, not on hash-map order.
        blocks.sort_unstable();
        let mut rng = Rng::new(seed);
        for block in blocks {
            let entry = self.cache.remove(&block).expect("key taken from the map");
            if permille > 0 && rng.below(1000) < permille {
                self.write_through(block, &entry)?;
                self.counters.survived_blocks += 1;
            } else {
                self.counters.dropped_blocks += 1;
            }
        }
        self.dead = true;
        self.counters.cuts += 1;
        Ok(())
    }

    /// True when the cut came from `arm` (mid-flush): then FSYNCs are held until `release`.
    fn cuts_held(&self) -> bool {
        !self.held.is_empty()
    }

    fn counters_text(&self) -> String {
        let c = &self.counters;
        format!(
            "writes {}\nwrite_bytes {}\nreads {}\nfsyncs {}\nfdatasyncs {}\nflushes {}\n\
             fallocates {}\napplied_blocks {}\ncached_blocks {}\ncuts {}\ndropped_blocks {}\n\
             survived_blocks {}\ndead {}\nheld {}\n",
            c.writes,
            c.write_bytes,
            c.reads,
            c.fsyncs,
            c.fdatasyncs,
            c.flushes,
            c.fallocates,
            c.applied_blocks,
            self.cache.len(),
            c.cuts,
            c.dropped_blocks,
            c.survived_blocks,
            self.dead as u8,
            self.held.len(),
        )
    }

    fn command(&mut self, line: &str) -> Result<(), Errno> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Result<u64, Errno> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or(Errno::EINVAL)
        };
        let result = match words.as_slice() {
            ["cut"] if self.dead => Ok(()),
            ["cut"] => self.cut(0, 0),
            ["cut-random", _, _] => {
                let (seed, permille) = (number(1)?, number(2)?);
                if permille > 1000 {
                    return Err(Errno::EINVAL);
                }
                self.cut(seed, permille)
            }
            ["arm", _, _, _] => {
                let (count, seed, permille) = (number(1)?, number(2)?, number(3)?);
                if count == 0 || permille > 1000 {
                    return Err(Errno::EINVAL);
                }
                self.armed = Some((count, seed, permille));
                Ok(())
            }
            ["release"] => {
                for reply in self.held.drain(..) {
                    reply.error(Errno::EIO);
                }
                self.released = true;
                Ok(())
            }
            ["latency", _, _] => {
                // Bounded: a typo must not turn the disk into a hang.
                let (write_us, flush_us) = (number(1)?.min(100_000), number(2)?.min(1_000_000));
                self.write_latency = Duration::from_micros(write_us);
                self.flush_latency = Duration::from_micros(flush_us);
                Ok(())
            }
            ["reset"] => {
                self.counters = Counters::default();
                Ok(())
            }
            [] => Ok(()),
            _ => return Err(Errno::EINVAL),
        };
        result.map_err(|_| Errno::EIO)
    }
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let (kind, perm, nlink) = match ino {
        INO_ROOT => (FileType::Directory, 0o755, 2),
        _ => (FileType::RegularFile, 0o644, 1),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_BYTES as u32,
        flags: 0,
    }
}

impl CrashDisk {
    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        match ino {
            INO_ROOT => Some(attr(INO_ROOT, 0)),
            INO_DISK => Some(attr(INO_DISK, self.lock().image_bytes)),
            INO_CTL => Some(attr(INO_CTL, CTL_BYTES)),
            _ => None,
        }
    }
}

impl Filesystem for CrashDisk {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.to_str()) {
            (INO_ROOT, Some("disk")) => INO_DISK,
            (INO_ROOT, Some("ctl")) => INO_CTL,
            _ => return reply.error(Errno::ENOENT),
        };
        let attr = self.attr_of(ino).expect("known inode");
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The disk has a fixed size; `ctl` is written with O_TRUNC by `echo >`.
        let Some(attr) = self.attr_of(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match size {
            Some(s) if ino.0 == INO_DISK && s != attr.size => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &attr),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            // Direct I/O: no page cache of the FUSE file between loop and this cache, so
            // nothing the kernel remembers can hide a dropped block.
            INO_DISK | INO_CTL => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            _ => reply.error(Errno::EISDIR),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.lock();
        state.counters.reads += 1;
        if ino.0 == INO_CTL {
            let mut text = state.counters_text().into_bytes();
            text.resize(CTL_BYTES as usize, b' ');
            let from = (offset as usize).min(text.len());
            let to = (from + size as usize).min(text.len());
            return reply.data(&text[from..to]);
        }
        match state.read(offset, u64::from(size)) {
            Ok(data) => reply.data(&data),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.lock();
        if ino.0 == INO_CTL {
            let text = String::from_utf8_lossy(data).to_string();
            for line in text.lines() {
                if let Err(e) = state.command(line) {
                    return reply.error(e);
                }
            }
            return reply.written(data.len() as u32);
        }
        state.counters.writes += 1;
        state.counters.write_bytes += data.len() as u64;
        if offset + data.len() as u64 > state.image_bytes {
            return reply.error(Errno::ENOSPC);
        }
        if state.dead {
            return reply.written(data.len() as u32);
        }
        std::thread::sleep(state.write_latency);
        match state.write(offset, data.len() as u64, Some(data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if ino.0 == INO_DISK {
            self.lock().counters.flushes += 1;
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        if ino.0 != INO_DISK {
            return reply.ok();
        }
        if datasync {
            state.counters.fdatasyncs += 1;
        } else {
            state.counters.fsyncs += 1;
        }
        if state.dead && state.released {
            return reply.ok();
        }
        if state.dead && state.cuts_held() {
            // A disk that died mid-flush answers nothing; `release` fails these later.
            state.held.push(reply);
            return;
        }
        if state.dead {
            return reply.ok();
        }
        if let Some((left, seed, permille)) = state.armed {
            if left > 1 {
                state.armed = Some((left - 1, seed, permille));
            } else {
                state.armed = None;
                if state.cut(seed, permille).is_err() {
                    return reply.error(Errno::EIO);
                }
                state.held.push(reply);
                return;
            }
        }
        std::thread::sleep(state.flush_latency);
        match state.apply() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        state.counters.fallocates += 1;
        let zeroing = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if ino.0 != INO_DISK || mode & zeroing == 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if offset + length > state.image_bytes {
            return reply.error(Errno::EINVAL);
        }
        if state.dead {
            return reply.ok();
        }
        // Discard and write-zeroes: cached like any write, lost on a cut like any write.
        match state.write(offset, length, None) {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != INO_ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INO_ROOT, FileType::Directory, "."),
            (INO_ROOT, FileType::Directory, ".."),
            (INO_DISK, FileType::RegularFile, "disk"),
            (INO_CTL, FileType::RegularFile, "ctl"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// `crashdisk serve IMAGE MOUNTPOINT`: serves until unmounted (`umount MOUNTPOINT`).
pub fn serve(image: &str, mountpoint: &str) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)?;
    let disk = CrashDisk::new(file)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("crashdisk".into())];
    config.acl = fuser::SessionACL::All;
    eprintln!("crashdisk: serving {image} at {mountpoint}");
    fuser::mount(disk, mountpoint, &config)
}
