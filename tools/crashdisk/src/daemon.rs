//! Starting the rhinobox daemon under test and waiting until it listens (and, with the
//! S3 load, until its S3 API listens too, on a port of its own).

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sys::{self, Cleanup, Result};

/// Start-up replays the journal; a few thousand records take well under a second.
const READY_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Spec {
    pub binary: PathBuf,
    pub engine: String,
    pub durability: String,
    /// Start the S3 API (`--s3-addr`, the harness's key pair).
    pub s3: bool,
}

pub struct Running {
    pub addr: SocketAddr,
    pub s3_addr: Option<SocketAddr>,
    /// Where the child sits in the cleanup stack.
    pub slot: usize,
    pub log: PathBuf,
}

impl Running {
    pub fn addrs(&self) -> crate::load::Addrs {
        crate::load::Addrs {
            native: self.addr,
            s3: self.s3_addr,
        }
    }
}

/// Two free loopback ports (both held while the second is chosen, so they differ).
fn free_ports() -> Result<(SocketAddr, SocketAddr)> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"));
    let (a, b) = (bind()?, bind()?);
    let addr = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    Ok((addr(&a)?, addr(&b)?))
}

pub fn read_log(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// Starts the daemon on `data_dir`, logging to `log`; fails with the log when it exits or
/// does not listen within `READY_LIMIT`.
pub fn start(spec: &Spec, data_dir: &Path, log: &Path, cleanup: &mut Cleanup) -> Result<Running> {
    let (addr, s3_addr) = free_ports()?;
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(&spec.binary);
    // Flags only: an inherited RHINOBOX_* variable must not change what is tested.
    for (key, _) in std::env::vars() {
        if key.starts_with("RHINOBOX_") {
            command.env_remove(key);
        }
    }
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--durability")
        .arg(&spec.durability)
        .arg("--io-engine")
        .arg(&spec.engine);
    if spec.s3 {
        command
            .arg("--s3-addr")
            .arg(s3_addr.to_string())
            .arg("--s3-access-key")
            .arg(crate::s3::ACCESS_KEY)
            .arg("--s3-secret-key")
            .arg(crate::s3::SECRET_KEY);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{}: {e}", spec.binary.display()))?;
    let slot = cleanup.spawned(child);
    let mut exited = None;
    let ready = sys::wait_for("the daemon to listen", READY_LIMIT, || {
        let text = read_log(log);
        if text.contains("rhinobox: listening on")
            && (!spec.s3 || text.contains("rhinobox: S3 API listening on"))
        {
            return true;
        }
        if let Some(child) = cleanup.child(slot)
            && let Ok(Some(status)) = child.try_wait()
        {
            exited = Some(status);
            return true;
        }
        false
    });
    if let Some(status) = exited {
        return Err(format!(
            "daemon exited at start ({status}); log:\n{}",
            tail(&read_log(log), 2000)
        ));
    }
    ready.map_err(|e| format!("{e}; log:\n{}", tail(&read_log(log), 2000)))?;
    Ok(Running {
        addr,
        s3_addr: spec.s3.then_some(s3_addr),
        slot,
        log: log.to_path_buf(),
    })
}

pub fn tail(text: &str, bytes: usize) -> &str {
    let mut from = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// What `rhinobox verify` printed and how it ended.
pub struct VerifyRun {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `BIN verify --data-dir DIR` (the daemon must be stopped: verify takes the data dir
/// lock) within `limit`; Err when it cannot be spawned or runs past the limit (then killed).
pub fn verify(
    binary: &Path,
    data_dir: &Path,
    scratch: &Path,
    limit: Duration,
) -> Result<VerifyRun> {
    let (out_path, err_path) = (
        scratch.with_extension("verify.out"),
        scratch.with_extension("verify.err"),
    );
    let out = File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    let err = File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("RHINOBOX_") {
            command.env_remove(key);
        }
    }
    let started = std::time::Instant::now();
    let mut child = command
        .arg("verify")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{} verify: {e}", binary.display()))?;
    let status = sys::wait_limited(&mut child, limit);
    let elapsed = started.elapsed();
    let run = VerifyRun {
        code: status.as_ref().ok().and_then(|s| s.code()),
        stdout: read_log(&out_path),
        stderr: read_log(&err_path),
        elapsed,
    };
    status.map_err(|e| {
        format!(
            "rhinobox verify: {e}; stdout:\n{}\nstderr:\n{}",
            tail(&run.stdout, 1000),
            tail(&run.stderr, 1000)
        )
    })?;
    Ok(run)
}
