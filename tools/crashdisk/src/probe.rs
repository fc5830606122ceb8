//! What reaches the disk: FUSE WRITE / FSYNC / FLUSH counts per syscall (fdatasync, fsync of
//! a directory, syncfs, O_DIRECT write) and per daemon operation, on ext4 and XFS over the
//! crash disk. Each figure is the counter delta over one operation on an otherwise idle file
//! system (a background journal commit can land inside a window; run twice to be sure).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use crate::daemon::{self, Spec};
use crate::http;
use crate::scenario::{Fs, Options};
use crate::sys::{self, Cleanup, Result};

fn counters(ctl: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(ctl).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn measure(ctl: &Path, what: &str, op: impl FnOnce() -> Result<()>) -> Result<()> {
    std::fs::write(ctl, "reset\n").map_err(|e| e.to_string())?;
    op()?;
    let c = counters(ctl);
    let get = |k: &str| c.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    println!(
        "  {what:<48} WRITE {:>4} ({:>8} B)  FSYNC {:>2}  FDATASYNC {:>2}  FLUSH {:>2}  \
         FALLOCATE {:>2}  still cached {:>4} blocks",
        get("writes"),
        get("write_bytes"),
        get("fsyncs"),
        get("fdatasyncs"),
        get("flushes"),
        get("fallocates"),
        get("cached_blocks"),
    );
    Ok(())
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn sync_call(what: &str, rc: libc::c_int) -> Result<()> {
    if rc != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn fdatasync(f: &File) -> Result<()> {
    // SAFETY: fdatasync(2) on a descriptor we own and keep open for the call.
    sync_call("fdatasync", unsafe { libc::fdatasync(f.as_raw_fd()) })
}

fn syncfs(f: &File) -> Result<()> {
    // SAFETY: syncfs(2) on a descriptor we own and keep open for the call.
    sync_call("syncfs", unsafe { libc::syncfs(f.as_raw_fd()) })
}

fn syscalls(ctl: &Path, dir: &Path) -> Result<()> {
    let block = vec![0x5au8; 4096];
    measure(ctl, "write 4 KiB (buffered), no sync", || {
        File::create(dir.join("a"))
            .and_then(|mut f| f.write_all(&block))
            .map_err(io)
    })?;
    measure(ctl, "fdatasync of that file", || {
        fdatasync(&File::open(dir.join("a")).map_err(io)?)
    })?;
    measure(ctl, "write 4 KiB + fdatasync (new file)", || {
        let mut f = File::create(dir.join("b")).map_err(io)?;
        f.write_all(&block).map_err(io)?;
        fdatasync(&f)
    })?;
    measure(ctl, "rename + fsync of the directory", || {
        std::fs::rename(dir.join("b"), dir.join("c")).map_err(io)?;
        File::open(dir).map_err(io)?.sync_all().map_err(io)
    })?;
    measure(ctl, "write 4 KiB (buffered) + syncfs", || {
        let mut f = File::create(dir.join("d")).map_err(io)?;
        f.write_all(&block).map_err(io)?;
        syncfs(&f)
    })?;
    measure(ctl, "syncfs with nothing dirty", || {
        syncfs(&File::open(dir).map_err(io)?)
    })?;
    let big = AlignedMiB::new();
    measure(ctl, "O_DIRECT write 1 MiB, no sync", || {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("e"))
            .map_err(io)?;
        f.write_all(big.bytes()).map_err(io)
    })?;
    measure(ctl, "fdatasync after that O_DIRECT write", || {
        fdatasync(&File::open(dir.join("e")).map_err(io)?)
    })?;
    measure(ctl, "O_DIRECT overwrite 1 MiB in place + syncfs", || {
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("e"))
            .map_err(io)?;
        f.write_all(big.bytes()).map_err(io)?;
        syncfs(&f)
    })?;
    measure(ctl, "O_DIRECT overwrite 1 MiB in place + fdatasync", || {
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("e"))
            .map_err(io)?;
        f.write_all(big.bytes()).map_err(io)?;
        fdatasync(&f)
    })?;
    Ok(())
}

/// 1 MiB, 4096-aligned (O_DIRECT needs aligned memory): a Vec over-allocated and offset.
struct AlignedMiB {
    buf: Vec<u8>,
    start: usize,
}

impl AlignedMiB {
    fn new() -> AlignedMiB {
        let buf = vec![0xa5u8; (1 << 20) + 4096];
        let start = (4096 - (buf.as_ptr() as usize % 4096)) % 4096;
        AlignedMiB { buf, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + (1 << 20)]
    }
}

fn daemon_ops(ctl: &Path, spec: &Spec, data_dir: &Path, log: &Path) -> Result<()> {
    let mut cleanup = Cleanup::default();
    let running = daemon::start(spec, data_dir, log, &mut cleanup)?;
    std::thread::sleep(Duration::from_millis(300));
    let addr = running.addr;
    let put = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let r = http::request(addr, "PUT", &format!("/ingest/media/{name}"), None, &bytes)
            .map_err(io)?;
        if r.status != 200 {
            return Err(format!("PUT {name}: HTTP {}", r.status));
        }
        Ok(())
    };
    let noise = |n: usize, seed: u64| {
        let mut v = vec![0u8; n];
        crate::rng::Rng::new(seed).fill(&mut v);
        v
    };
    let e = &spec.engine;
    measure(ctl, &format!("[{e}] PUT 4 KiB (new content)"), || {
        put("p1.bin", noise(4096, 1))
    })?;
    measure(ctl, &format!("[{e}] PUT 4 KiB (duplicate)"), || {
        put("p2.bin", noise(4096, 1))
    })?;
    measure(ctl, &format!("[{e}] PUT 100 KiB"), || {
        put("p3.bin", noise(100 << 10, 3))
    })?;
    measure(ctl, &format!("[{e}] PUT 3 MiB"), || {
        put("p4.bin", noise(3 << 20, 4))
    })?;
    measure(ctl, &format!("[{e}] multipart POST 10 × 4 KiB"), || {
        let parts: Vec<(String, Vec<u8>)> = (0..10)
            .map(|i| (format!("m{i}.bin"), noise(4096, 100 + i)))
            .collect();
        let body = http::multipart("probeb0undary", &parts);
        let r = http::request(
            addr,
            "POST",
            "/ingest/media",
            Some("multipart/form-data; boundary=probeb0undary"),
            &body,
        )
        .map_err(io)?;
        if r.status != 200 {
            return Err(format!("multipart: HTTP {}", r.status));
        }
        Ok(())
    })?;
    let hash = blake3::hash(&noise(4096, 1)).to_hex().to_string();
    measure(ctl, &format!("[{e}] DELETE"), || {
        let r = http::request(addr, "DELETE", &format!("/files/{hash}"), None, &[]).map_err(io)?;
        if r.status != 200 {
            return Err(format!("DELETE: HTTP {}", r.status));
        }
        Ok(())
    })?;
    if let Some(child) = cleanup.child(running.slot) {
        sys::terminate(child, Duration::from_secs(20));
    }
    Ok(())
}

pub fn probe(opts: &Options, fs: Fs) -> Result<()> {
    let dir = opts.work.join(format!("probe-{}", fs.name()));
    let (fuse_dir, mnt) = (dir.join("fuse"), dir.join("mnt"));
    std::fs::create_dir_all(&fuse_dir).map_err(io)?;
    std::fs::create_dir_all(&mnt).map_err(io)?;
    let image = dir.join("disk.img");
    crate::scenario::fresh_image(fs, &opts.work, &image)?;
    let mut cleanup = Cleanup::default();
    crate::scenario::attach(&image, &fuse_dir, &mnt, &mut cleanup)?;
    let ctl = fuse_dir.join("ctl");
    println!("probe {} (loop -b 4096 over the crash disk):", fs.name());
    let scratch = mnt.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(io)?;
    syscalls(&ctl, &scratch)?;
    for spec in &opts.daemons {
        let data_dir = mnt.join(format!("data-{}", spec.engine));
        std::fs::create_dir_all(&data_dir).map_err(io)?;
        daemon_ops(
            &ctl,
            spec,
            &data_dir,
            &dir.join(format!("daemon-{}.log", spec.engine)),
        )?;
    }
    cleanup.unwind_to(0)?;
    let _ = std::fs::remove_file(&image);
    Ok(())
}
