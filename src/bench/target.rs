//! What the harness talks to: a base URL, or a daemon it starts on a fresh data dir.
//!
//! A started daemon writes its stderr (the ready line and the access log) to a file next
//! to its data dir, which the harness polls for `rhinobox: listening on ADDR`; a pipe
//! would need a reader thread competing with the daemon for the CPU. The daemon's memory
//! and CPU time are read from `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat`
//! (utime + stime, all threads); the peak is reset between runs through
//! `/proc/<pid>/clear_refs` so each run reports its own VmHWM.

use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::sigv4::Credentials;

/// Longest wait for a started daemon's listening line (a million-record journal replays
/// in seconds; this bounds a hung start).
const READY_WAIT_MAX: Duration = Duration::from_secs(300);
/// Longest wait for a clean exit after SIGTERM before SIGKILL.
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);

/// How requests are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `POST <path>` with a multipart/form-data body (default path `/ingest/media`).
    Post,
    /// `PUT <prefix><name>` with the raw file as body, one file per request.
    Put,
    /// S3 PutObject: `PUT /<bucket>/<name>`, SigV4-signed, one object per request.
    #[serde(rename = "s3-put")]
    S3Put,
    /// S3 GetObject: `GET /<bucket>/<name>`, SigV4-signed, the body checked.
    #[serde(rename = "s3-get")]
    S3Get,
}

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// POST: the request path. PUT and S3: the prefix the file name is appended to (ends
    /// in `/`; for S3 `/<bucket>/`).
    pub path: String,
    pub mode: Mode,
    /// The key pair S3 requests are signed with (S3 modes only).
    pub credentials: Option<Credentials>,
}

impl Endpoint {
    /// Parses `http://HOST:PORT[/PATH]`; an empty path means the daemon's ingest path.
    pub fn parse(url: &str, mode: Mode) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("{url:?}: cannot resolve {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: {authority:?} resolves to nothing"))?;
        Ok(Endpoint::new(addr, path, mode))
    }

    /// An endpoint at `addr`; `path` as in [`Endpoint::parse`].
    pub fn new(addr: SocketAddr, path: &str, mode: Mode) -> Endpoint {
        let path = match (mode, path.trim_end_matches('/')) {
            (Mode::Post, "") => "/ingest/media".to_string(),
            (Mode::Put, "") => "/ingest/media/".to_string(),
            (Mode::Post, path) => path.to_string(),
            (_, path) => format!("{path}/"),
        };
        Endpoint {
            addr,
            path,
            mode,
            credentials: None,
        }
    }

    /// An S3 endpoint: objects of `bucket` at `addr`, requests signed with `credentials`.
    pub fn s3(addr: SocketAddr, bucket: &str, credentials: Credentials, mode: Mode) -> Endpoint {
        assert!(
            matches!(mode, Mode::S3Put | Mode::S3Get),
            "{mode:?} is not an S3 mode"
        );
        Endpoint {
            credentials: Some(credentials),
            ..Endpoint::new(addr, &format!("/{bucket}"), mode)
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// How to start the daemon: binary and the flags passed through.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonSpec {
    pub bin: PathBuf,
    pub durability: String,
    pub workers: usize,
    pub io_engine: String,
    /// Further flags, passed as they are (e.g. `--queue-capacity 20000`).
    pub extra_args: Vec<String>,
}

/// A daemon started by the harness; killed on drop if still running.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// From spawn to the listening line.
    pub ready_after: Duration,
}

impl Daemon {
    /// Starts the daemon on `data_dir` (created by the daemon), logging to `log_path`.
    pub fn start(spec: &DaemonSpec, data_dir: &Path, log_path: &Path) -> Result<Daemon, String> {
        let log = File::create(log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let started = Instant::now();
        let mut child = Command::new(&spec.bin)
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--durability")
            .arg(&spec.durability)
            .arg("--workers")
            .arg(spec.workers.to_string())
            .arg("--io-engine")
            .arg(&spec.io_engine)
            .args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.bin.display()))?;
        let addr = match wait_listening(&mut child, log_path) {
            Ok(addr) => addr,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
        };
        Ok(Daemon {
            pid: child.id(),
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            ready_after: started.elapsed(),
        })
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `STOP_WAIT_MAX`).
    pub fn stop(mut self) -> Result<(), String> {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WAIT_MAX;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("daemon exited with {status}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("daemon did not stop within 60 s of SIGTERM".into());
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_listening(child: &mut Child, log_path: &Path) -> Result<SocketAddr, String> {
    const MARK: &str = "rhinobox: listening on ";
    let deadline = Instant::now() + READY_WAIT_MAX;
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if let Some(line) = log.lines().find_map(|l| l.strip_prefix(MARK)) {
            return line
                .trim()
                .parse()
                .map_err(|e| format!("bad listening line {line:?}: {e}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "daemon exited with {status} before listening: {log}"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("daemon not listening after {READY_WAIT_MAX:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Memory and CPU time of a process at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// Peak resident set since start or the last [`reset_peak`].
    pub hwm_kib: u64,
    /// User + system CPU time of all its threads.
    pub cpu_s: f64,
}

/// Samples `/proc/<pid>`; `None` when the process is gone or not readable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ProcSample {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        cpu_s: ticks as f64 / clock_ticks_per_s(),
    })
}

/// The system's load average as `/proc/loadavg` has it (1, 5, 15 min, runnable/total,
/// last pid), recorded with every figure: the hosts this runs on are shared.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false when not permitted.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU time (user + system) of this process so far, all threads.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// URLs map to the ingest path by default and keep an explicit path.
    #[test]
    fn endpoint_paths() {
        let post = Endpoint::parse("http://127.0.0.1:8090", Mode::Post).unwrap();
        assert_eq!(post.path, "/ingest/media");
        let put = Endpoint::parse("http://127.0.0.1:8080/dav", Mode::Put).unwrap();
        assert_eq!(put.path, "/dav/");
        assert!(Endpoint::parse("https://x:1", Mode::Post).is_err());
    }

    /// This process can be sampled and its CPU time only grows.
    #[test]
    fn samples_itself() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert!(self_cpu_s() >= 0.0);
    }
}
