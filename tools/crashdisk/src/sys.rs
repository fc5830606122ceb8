//! Processes, mounts and loop devices, each with a time limit, and a cleanup stack that
//! undoes every mount, loop device, FUSE server and daemon in reverse order on every exit
//! path (error, panic unwinding, SIGINT/SIGTERM).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

/// Set by SIGINT/SIGTERM; every loop of the harness checks it and unwinds through cleanup.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the
        // handler has the `extern "C" fn(c_int)` shape signal(2) expects.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    Ok(())
}

/// Waits for `child` up to `limit`; kills it (SIGKILL) when the limit passes.
pub fn wait_limited(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// Runs a command to completion within `limit`; returns (success, stdout+stderr text).
pub fn run_capture(program: &str, args: &[&str], limit: Duration) -> Result<(bool, String)> {
    let log = tempfile_path("cmd");
    let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let status = wait_limited(&mut child, limit).map_err(|e| format!("{program} {args:?}: {e}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    Ok((status.success(), text))
}

/// Runs a command that must succeed.
pub fn run(program: &str, args: &[&str], limit: Duration) -> Result<String> {
    let (ok, text) = run_capture(program, args, limit)?;
    if !ok {
        return Err(format!("{program} {args:?} failed: {}", text.trim()));
    }
    Ok(text)
}

fn tempfile_path(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("crashdisk-{}-{tag}-{n}.log", std::process::id()))
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !condition() {
        check_interrupted()?;
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let wanted = canonical.to_string_lossy().to_string();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(wanted.as_str()))
}

/// One thing to undo.
enum Undo {
    Unmount(PathBuf),
    DetachLoop(String),
    /// A child process to SIGKILL and reap (the daemon, the FUSE server).
    Kill(Child),
}

/// Undo actions, run last-in first-out on drop (also when unwinding from a panic).
#[derive(Default)]
pub struct Cleanup {
    stack: Vec<Undo>,
}

const UNDO_LIMIT: Duration = Duration::from_secs(30);

impl Cleanup {
    pub fn mounted(&mut self, path: &Path) {
        self.stack.push(Undo::Unmount(path.to_path_buf()));
    }

    pub fn looped(&mut self, device: &str) {
        self.stack.push(Undo::DetachLoop(device.to_string()));
    }

    pub fn spawned(&mut self, child: Child) -> usize {
        self.stack.push(Undo::Kill(child));
        self.stack.len() - 1
    }

    /// The child registered at `slot`, if still there.
    pub fn child(&mut self, slot: usize) -> Option<&mut Child> {
        match self.stack.get_mut(slot) {
            Some(Undo::Kill(child)) => Some(child),
            _ => None,
        }
    }

    /// Undoes everything from the top of the stack down to (and including) `depth`.
    pub fn unwind_to(&mut self, depth: usize) -> Result<()> {
        let mut first_error = None;
        while self.stack.len() > depth {
            let undo = self.stack.pop().expect("len > depth");
            if let Err(e) = undo_one(undo) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn undo_one(undo: Undo) -> Result<()> {
    match undo {
        Undo::Unmount(path) => unmount(&path),
        Undo::DetachLoop(device) => detach_loop(&device),
        Undo::Kill(mut child) => {
            let _ = child.kill();
            wait_limited(&mut child, UNDO_LIMIT).map(|_| ())
        }
    }
}

pub fn unmount(path: &Path) -> Result<()> {
    if !is_mountpoint(path) {
        return Ok(());
    }
    let p = path.to_string_lossy().to_string();
    for _ in 0..50 {
        let (ok, text) = run_capture("umount", &[&p], UNDO_LIMIT)?;
        if ok || !is_mountpoint(path) {
            return Ok(());
        }
        if !text.contains("busy") {
            return Err(format!("umount {p}: {}", text.trim()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Last resort so nothing stays mounted after the harness exits.
    run("umount", &["-l", &p], UNDO_LIMIT).map(|_| ())
}

pub fn detach_loop(device: &str) -> Result<()> {
    let (ok, text) = run_capture("losetup", &["-d", device], UNDO_LIMIT)?;
    if ok || text.contains("No such device") {
        return Ok(());
    }
    Err(format!("losetup -d {device}: {}", text.trim()))
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.unwind_to(0) {
            eprintln!("crashdisk: cleanup: {e}");
        }
    }
}

/// Sends SIGKILL to a child and reaps it.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = wait_limited(child, UNDO_LIMIT);
}

/// Sends SIGTERM and waits up to `limit`, then SIGKILL.
pub fn terminate(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: kill(2) with a pid we spawned and have not reaped (try_wait said it runs),
    // so the pid cannot have been reused by another process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    wait_limited(child, limit).ok()
}
