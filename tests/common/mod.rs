//! Shared harness of the integration tests: a [`Daemon`] guard that runs the real
//! `rhinobox` binary on an ephemeral loopback port with a temporary data dir, and helpers
//! that speak HTTP to it through `rhinobox::client` and check what landed on disk.
//!
//! The daemon prints `rhinobox: listening on <addr>` on stderr once it serves; the guard
//! waits for that line (bounded), collects every stdout/stderr line in the background so a
//! test can assert on the access log, echoes them to the test's output (shown when a test
//! fails) and kills the process on drop. The io engine follows the test target: every
//! engine-dependent suite has a twin target `tests/<suite>_threads.rs` that includes it:
//! `<suite>` runs the daemon with `--io-engine uring`, `<suite>_threads` with `--io-engine
//! threads`, so one `cargo test --release` covers both engines. `RHINOBOX_TEST_BIN=PATH`
//! runs every suite against another daemon binary (an older build, to show that a
//! regression test fails on it). [`failpoints_binary`] is the daemon built with the
//! `failpoints` feature (failure injection), built on first use.
//! [`s3`] holds the S3 side: the listener's flags and address, the outside S3 clients
//! and a signed-request client of our own.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod s3;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rhinobox::client::{Connection, MediaKind, Multipart, Response, blake3_hex, payload};
use serde_json::Value;
use tempfile::TempDir;

/// How long a daemon may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM or a start-up error.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The line prefix that says the daemon is serving.
const READY_PREFIX: &str = "rhinobox: listening on ";

/// Every environment variable the daemon reads; cleared so the host's cannot leak in.
const DAEMON_ENV: &[&str] = &[
    "RHINOBOX_ADDR",
    "RHINOBOX_DATA_DIR",
    "RHINOBOX_MAX_UPLOAD_MB",
    "RHINOBOX_WORKERS",
    "RHINOBOX_QUEUE_CAPACITY",
    "RHINOBOX_DURABILITY",
    "RHINOBOX_API_TOKEN",
    "RHINOBOX_API_TOKEN_FILE",
    "RHINOBOX_IO_ENGINE",
    "RHINOBOX_SHUTDOWN_TIMEOUT_S",
    "RHINOBOX_MAX_CONNECTIONS",
    "RHINOBOX_MAX_PARTS",
    "RHINOBOX_DIRECT_IO_MIN_KB",
    "RHINOBOX_S3_ADDR",
    "RHINOBOX_S3_ACCESS_KEY",
    "RHINOBOX_S3_SECRET_KEY",
    "RHINOBOX_S3_SECRET_KEY_FILE",
    "RHINOBOX_S3_REGION",
    "RHINOBOX_METADATA_URL",
    "RHINOBOX_METADATA_URL_FILE",
    "RHINOBOX_BLOB_URL",
    "RHINOBOX_BLOB_ACCESS_KEY",
    "RHINOBOX_BLOB_SECRET_KEY",
    "RHINOBOX_BLOB_SECRET_KEY_FILE",
    "RHINOBOX_RECLAIM_GRACE_S",
    "RHINOBOX_RECLAIM_INTERVAL_S",
];

/// The io engine this test target runs the daemon under: `threads` for the `*_threads`
/// twins, `uring` otherwise.
pub fn io_engine() -> String {
    let engine = if env!("CARGO_CRATE_NAME").ends_with("_threads") {
        "threads"
    } else {
        "uring"
    };
    engine.to_string()
}

/// Names a daemon binary to test instead of the one cargo built (another build, e.g. an
/// older release to show that a regression test fails on it).
pub const TEST_BIN_ENV: &str = "RHINOBOX_TEST_BIN";

/// Path of the daemon binary under test: `$RHINOBOX_TEST_BIN` when set and not empty, else
/// the one cargo built for these tests.
pub fn binary() -> String {
    match std::env::var(TEST_BIN_ENV) {
        Ok(path) if !path.is_empty() => path,
        _ => env!("CARGO_BIN_EXE_rhinobox").to_string(),
    }
}

/// Names a daemon binary built with the `failpoints` feature, used instead of building one.
pub const FAILPOINTS_BIN_ENV: &str = "RHINOBOX_FAILPOINTS_BIN";

/// Path of a daemon binary built with the `failpoints` feature (`RHINOBOX_FAILPOINTS`
/// injects errors and crashes, see `src/store/failpoint.rs`): `$RHINOBOX_FAILPOINTS_BIN`
/// when set and not empty, else `target/failpoints/release/rhinobox`, which the first call
/// in a test process builds (or brings up to date) with
/// `cargo build --release --features failpoints --target-dir target/failpoints --bin rhinobox`.
/// Its own target dir keeps this build off the locks of the `cargo test` that runs us, and
/// cargo's lock on that dir serializes test processes that build at once; within a process
/// the other tests wait for the first one's build. `.ci/run` builds it up front, so there
/// the call finds it fresh. Panics (in every caller) when the build fails.
pub fn failpoints_binary() -> String {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    if let Ok(path) = std::env::var(FAILPOINTS_BIN_ENV)
        && !path.is_empty()
    {
        return path;
    }
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        eprintln!("building the failpoints daemon (target/failpoints) for this test");
        let output = Command::new(cargo)
            .current_dir(root)
            .args(["build", "--release", "--features", "failpoints"])
            .args(["--target-dir", "target/failpoints", "--bin", "rhinobox"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo to build the failpoints daemon: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "building the failpoints daemon failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let path = root.join("target/failpoints/release/rhinobox");
        Ok(path.to_string_lossy().into_owned())
    });
    built.clone().unwrap_or_else(|message| panic!("{message}"))
}

/// What to start: extra flags, environment, data dir, an optional command prefix, another
/// binary, and what becomes of the daemon's stderr.
pub struct DaemonBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    prefix: Vec<String>,
    binary: Option<String>,
    close_stderr_after_ready: bool,
}

impl DaemonBuilder {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Uses this data dir instead of a fresh temporary one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Runs the daemon through these commands, which must `exec` it in the end so the pid
    /// stays the daemon's (`setpriv ...`, `prlimit ...`): `prefix... rhinobox flags...`.
    pub fn prefix(mut self, prefix: &[&str]) -> Self {
        self.prefix = prefix.iter().map(|word| word.to_string()).collect();
        self
    }

    /// Runs this daemon binary instead of [`binary`] (e.g. [`failpoints_binary`]).
    pub fn binary(mut self, path: &str) -> Self {
        self.binary = Some(path.to_string());
        self
    }

    /// Closes the read end of the daemon's stderr pipe once its ready line arrived: every
    /// later write to stderr fails (EPIPE), a stderr that cannot be written.
    pub fn close_stderr_after_ready(mut self) -> Self {
        self.close_stderr_after_ready = true;
        self
    }

    /// Starts the daemon and waits for its ready line; panics with its log otherwise.
    pub fn start(self) -> Daemon {
        self.try_start()
            .unwrap_or_else(|message| panic!("{message}"))
    }

    /// Starts the daemon and waits for its ready line; on failure returns what happened
    /// with the daemon's log, for a test that goes on to check more cases.
    pub fn try_start(self) -> Result<Daemon, String> {
        let (temp, data_dir) = match self.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("rhinobox-test")
                    .tempdir()
                    .unwrap();
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let mut daemon = Daemon {
            child: None,
            addr: "0.0.0.0:0".parse().unwrap(),
            data_dir,
            _temp: temp,
            args: self.args,
            env: self.env,
            prefix: self.prefix,
            binary: self.binary,
            close_stderr_after_ready: self.close_stderr_after_ready,
            log: Arc::new(Mutex::new(Vec::new())),
            run_log_start: 0,
        };
        daemon.try_spawn_and_wait_ready()?;
        Ok(daemon)
    }
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _temp: Option<TempDir>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    prefix: Vec<String>,
    binary: Option<String>,
    close_stderr_after_ready: bool,
    log: Arc<Mutex<Vec<String>>>,
    run_log_start: usize,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            args: Vec::new(),
            env: Vec::new(),
            data_dir: None,
            prefix: Vec::new(),
            binary: None,
            close_stderr_after_ready: false,
        }
    }

    /// A daemon with default settings.
    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    /// The daemon binary this guard runs.
    fn program(&self) -> String {
        self.binary.clone().unwrap_or_else(binary)
    }

    fn command(&self) -> Command {
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(self.program());
                command
            }
            None => Command::new(self.program()),
        };
        for name in DAEMON_ENV {
            command.env_remove(name);
        }
        let has = |flag: &str| {
            self.args
                .iter()
                .any(|arg| arg.split('=').next() == Some(flag))
        };
        if !has("--addr") {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        if !has("--data-dir") {
            command.arg("--data-dir").arg(&self.data_dir);
        }
        if !has("--io-engine") {
            command.args(["--io-engine", &io_engine()]);
        }
        command.args(&self.args);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn spawn_and_wait_ready(&mut self) {
        self.try_spawn_and_wait_ready()
            .unwrap_or_else(|message| panic!("{message}"));
    }

    fn try_spawn_and_wait_ready(&mut self) -> Result<(), String> {
        self.run_log_start = self.log.lock().unwrap().len();
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| format!("cannot spawn the rhinobox binary {}: {e}", self.program()))?;
        collect_lines(child.stdout.take().unwrap(), "stdout", self.log.clone());
        let stderr = child.stderr.take().unwrap();
        if self.close_stderr_after_ready {
            collect_lines_until_ready(stderr, self.log.clone());
        } else {
            collect_lines(stderr, "stderr", self.log.clone());
        }
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(addr) = self.ready_addr() {
                self.addr = addr;
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                thread::sleep(Duration::from_millis(100)); // let the log threads finish
                return Err(format!(
                    "daemon exited with {status} before ready; log:\n{}",
                    self.log_text()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "daemon not ready after {READY_TIMEOUT:?}; log:\n{}",
                    self.log_text()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn ready_addr(&self) -> Option<SocketAddr> {
        let log = self.log.lock().unwrap();
        log[self.run_log_start..].iter().find_map(|line| {
            let rest = line.strip_prefix("stderr: ")?.strip_prefix(READY_PREFIX)?;
            Some(
                rest.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad ready line {line:?}")),
            )
        })
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Every line the daemon printed (all runs), each prefixed `stdout: ` or `stderr: `.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Lines printed on stderr, without the prefix.
    pub fn stderr_lines(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|line| line.strip_prefix("stderr: ").map(str::to_string))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a printed line satisfies `predicate`; returns it, or None on timeout.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|line| predicate(line)) {
                return Some(line.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Sends a signal to the running daemon.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the daemon to exit; None (after killing it) when it is still running
    /// after `timeout`.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(100)); // let the log threads finish
                return Some(status);
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the daemon to exit; panics (after killing it) when it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(100)); // let the log threads finish
                return status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                panic!(
                    "daemon still running after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon with SIGTERM (must exit 0) and starts it again on the same data
    /// dir with the same flags; the port changes.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.sigterm();
            assert!(
                status.success(),
                "exit on SIGTERM: {status}; log:\n{}",
                self.log_text()
            );
        }
        self.spawn_and_wait_ready();
    }

    /// Starts the daemon again after it exited or was killed.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn_and_wait_ready();
    }

    /// Starts the same command again and waits for it to exit (a start that must fail).
    pub fn start_expecting_exit(&mut self) -> ExitStatus {
        assert!(self.child.is_none(), "daemon still running");
        self.run_log_start = self.log.lock().unwrap().len();
        let mut child = self.command().spawn().expect("spawn the rhinobox binary");
        collect_lines(child.stdout.take().unwrap(), "stdout", self.log.clone());
        collect_lines(child.stderr.take().unwrap(), "stderr", self.log.clone());
        self.child = Some(child);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Like [`Daemon::start_expecting_exit`], but a daemon still running after `timeout`
    /// (it started when it should not have) is killed and gives `None`.
    pub fn try_start_expecting_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        assert!(self.child.is_none(), "daemon still running");
        self.run_log_start = self.log.lock().unwrap().len();
        let mut child = self.command().spawn().expect("spawn the rhinobox binary");
        collect_lines(child.stdout.take().unwrap(), "stdout", self.log.clone());
        collect_lines(child.stderr.take().unwrap(), "stderr", self.log.clone());
        self.child = Some(child);
        self.try_wait_exit(timeout)
    }

    /// Lines printed by the latest run.
    pub fn current_run_lines(&self) -> Vec<String> {
        self.log.lock().unwrap()[self.run_log_start..].to_vec()
    }

    pub fn conn(&self) -> Connection {
        Connection::connect(self.addr).expect("connect to the daemon")
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.conn()
            .request(method, path, headers, body)
            .expect("request")
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// POSTs a multipart body to /ingest/media.
    pub fn post_multipart(&self, form: Multipart) -> Response {
        let (content_type, body) = form.finish();
        self.request(
            "POST",
            "/ingest/media",
            &[("Content-Type", &content_type)],
            &body,
        )
    }

    /// Uploads files in one request (field `file`, each with its kind's Content-Type).
    pub fn upload(&self, files: &[TestFile]) -> Response {
        self.post_multipart(form_of(files))
    }

    /// Uploads files in one request on a fresh connection; an error when the connection
    /// fails or closes before a complete response (the daemon died).
    pub fn try_upload(&self, files: &[TestFile]) -> std::io::Result<Response> {
        let (content_type, body) = form_of(files).finish();
        let headers = [("Content-Type", content_type.as_str())];
        Connection::connect(self.addr)?.request("POST", "/ingest/media", &headers, &body)
    }

    /// Uploads files in one request, asserts 200 and one entry per file, returns them.
    pub fn upload_ok(&self, files: &[TestFile]) -> Vec<Value> {
        stored_entries(&self.upload(files), files.len())
    }

    /// Absolute path on disk of a `path` from a stored record.
    pub fn disk_path(&self, stored_path: &str) -> PathBuf {
        self.data_dir.join(stored_path)
    }

    /// The journal files under `metadata/`.
    pub fn journal_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = files_under(&self.data_dir.join("metadata"))
            .into_iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn collect_lines(
    stream: impl Read + Send + 'static,
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if ECHO_DAEMON_OUTPUT.load(std::sync::atomic::Ordering::Relaxed) {
                eprintln!("[daemon {tag}] {line}");
            }
            log.lock().unwrap().push(format!("{tag}: {line}"));
        }
    });
}

/// Whether the daemon's output lines are echoed to stderr as they come (libtest captures
/// them and shows them for a failing test; a suite with its own harness turns this off).
pub static ECHO_DAEMON_OUTPUT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Like [`collect_lines`] for stderr, but stops reading after the ready line and closes
/// the pipe, so the daemon's later writes to stderr fail.
fn collect_lines_until_ready(stream: impl Read + Send + 'static, log: Arc<Mutex<Vec<String>>>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[daemon stderr] {line}");
            let ready = line.starts_with(READY_PREFIX);
            log.lock().unwrap().push(format!("stderr: {line}"));
            if ready {
                eprintln!("[daemon stderr] (closed by the test: later writes fail)");
                break;
            }
        }
    });
}

/// Runs the daemon with exactly these flags and env (the io engine is not added) and
/// waits for it to exit; a daemon still running after the timeout fails the test.
pub fn run_until_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, Vec<String>) {
    let mut command = Command::new(binary());
    for name in DAEMON_ENV {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn the rhinobox binary");
    let log = Arc::new(Mutex::new(Vec::new()));
    collect_lines(child.stdout.take().unwrap(), "stdout", log.clone());
    collect_lines(child.stderr.take().unwrap(), "stderr", log.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            thread::sleep(Duration::from_millis(100));
            let lines = log.lock().unwrap().clone();
            return (status, lines);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "daemon {args:?} kept running; log:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`run_until_exit`], but a daemon still running after `timeout` (it started when
/// it should have refused) is killed and gives `None`, so a test can go on to more cases.
pub fn run_until_exit_or_kill(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Option<ExitStatus>, Vec<String>) {
    let mut command = Command::new(binary());
    for name in DAEMON_ENV {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn the rhinobox binary");
    let log = Arc::new(Mutex::new(Vec::new()));
    collect_lines(child.stdout.take().unwrap(), "stdout", log.clone());
    collect_lines(child.stderr.take().unwrap(), "stderr", log.clone());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(100)); // let the log threads finish
    let lines = log.lock().unwrap().clone();
    (status, lines)
}

/// A file to upload: its name as sent, its kind and its bytes.
#[derive(Clone)]
pub struct TestFile {
    pub name: String,
    pub kind: MediaKind,
    pub bytes: Vec<u8>,
}

impl TestFile {
    /// A payload of `kind` named `f<seed>.<ext>`.
    pub fn new(kind: MediaKind, size: u64, seed: u64) -> TestFile {
        TestFile::named(
            &format!("f{seed}.{}", kind.expected_ext()),
            kind,
            size,
            seed,
        )
    }

    pub fn named(name: &str, kind: MediaKind, size: u64, seed: u64) -> TestFile {
        TestFile {
            name: name.to_string(),
            kind,
            bytes: payload(kind, size, seed),
        }
    }

    pub fn hash(&self) -> String {
        blake3_hex(&self.bytes)
    }
}

/// `count` distinct small files cycling over every media kind; `seed_base` makes sets
/// from different calls distinct.
pub fn mixed_files(count: usize, seed_base: u64) -> Vec<TestFile> {
    (0..count)
        .map(|i| {
            let kind = MediaKind::ALL[i % MediaKind::ALL.len()];
            let size = kind.min_size().max(300 + (i as u64 * 37) % 4000);
            TestFile::new(kind, size, seed_base + i as u64)
        })
        .collect()
}

/// A multipart form with one `file` part per file.
pub fn form_of(files: &[TestFile]) -> Multipart {
    files.iter().fold(Multipart::new(), |form, file| {
        form.file("file", &file.name, file.kind.expected_mime(), &file.bytes)
    })
}

/// Asserts a 200 with a `stored` array of `count` entries and returns them.
pub fn stored_entries(response: &Response, count: usize) -> Vec<Value> {
    assert_eq!(response.status, 200, "upload failed: {}", response.text());
    let body = response.json();
    let stored = body["stored"]
        .as_array()
        .unwrap_or_else(|| panic!("no stored array: {body}"));
    assert_eq!(stored.len(), count, "entries in {body}");
    stored.clone()
}

/// The parts of a stored path `storage/<media_type>/<subtype>[/<category...>]/<hash12>_<name>.<ext>`.
#[derive(Debug, PartialEq)]
pub struct StoredPath {
    pub media_type: String,
    pub subtype: String,
    pub category: Vec<String>,
    pub hash12: String,
    pub name: String,
    pub ext: String,
}

/// Splits and checks a stored path: every segment sanitized (`[a-z0-9_-]`, no `..`),
/// the leaf `<12 hex>_<name>.<ext>`.
pub fn parse_stored_path(path: &str) -> StoredPath {
    let segments: Vec<&str> = path.split('/').collect();
    assert!(segments.len() >= 4, "too few segments in {path:?}");
    assert_eq!(segments[0], "storage", "path {path:?} outside storage/");
    let sanitized = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let leaf = segments[segments.len() - 1];
    for segment in &segments[1..segments.len() - 1] {
        assert!(
            sanitized(segment),
            "segment {segment:?} of {path:?} not sanitized"
        );
    }
    let (stem, ext) = leaf
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("no extension in {path:?}"));
    let (hash12, name) = stem
        .split_once('_')
        .unwrap_or_else(|| panic!("no hash_ in {path:?}"));
    assert!(
        hash12.len() == 12 && hash12.bytes().all(|b| b.is_ascii_hexdigit()),
        "{path:?}"
    );
    assert!(sanitized(name), "name {name:?} of {path:?} not sanitized");
    assert!(sanitized(ext), "ext {ext:?} of {path:?} not sanitized");
    assert!(
        leaf.len() <= 255,
        "leaf of {path:?} too long for a file system"
    );
    StoredPath {
        media_type: segments[1].to_string(),
        subtype: segments[2].to_string(),
        category: segments[3..segments.len() - 1]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        hash12: hash12.to_string(),
        name: name.to_string(),
        ext: ext.to_string(),
    }
}

/// Checks one entry against the file sent: hash, size, type, path shape, the bytes on
/// disk, and `duplicate` present.
pub fn assert_entry_matches(daemon: &Daemon, entry: &Value, file: &TestFile) {
    let hash = file.hash();
    assert_eq!(
        entry["hash"],
        hash.as_str(),
        "hash of {} in {entry}",
        file.name
    );
    assert_eq!(entry["size"], file.bytes.len() as u64, "size in {entry}");
    assert_eq!(
        entry["mime_type"],
        file.kind.expected_mime(),
        "mime in {entry}"
    );
    assert_eq!(
        entry["media_type"],
        file.kind.expected_media_type(),
        "media_type in {entry}"
    );
    assert!(
        entry["duplicate"].is_boolean(),
        "duplicate missing in {entry}"
    );
    let path = entry["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no path in {entry}"));
    let parts = parse_stored_path(path);
    assert_eq!(parts.media_type, file.kind.expected_media_type(), "{path}");
    assert_eq!(parts.subtype, file.kind.expected_ext(), "{path}");
    assert_eq!(parts.ext, file.kind.expected_ext(), "{path}");
    assert_eq!(parts.hash12, hash[..12], "{path}");
    let on_disk = std::fs::read(daemon.disk_path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        on_disk == file.bytes,
        "bytes on disk differ from those sent for {path}"
    );
}

/// Every regular file below `dir` (recursively); empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Stored files: everything under `storage/` except `storage/.tmp/`.
pub fn stored_files(data_dir: &Path) -> Vec<PathBuf> {
    let tmp = data_dir.join("storage").join(".tmp");
    files_under(&data_dir.join("storage"))
        .into_iter()
        .filter(|p| !p.starts_with(&tmp))
        .collect()
}

/// Files left in `storage/.tmp/`.
pub fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    files_under(&data_dir.join("storage").join(".tmp"))
}

/// Every stored file's name starts with the first 12 hex digits of its content's BLAKE3:
/// nothing torn or half-written sits in the tree.
pub fn assert_stored_tree_consistent(data_dir: &Path) {
    for path in stored_files(data_dir) {
        let bytes = std::fs::read(&path).unwrap();
        let leaf = path.file_name().unwrap().to_string_lossy().to_string();
        let hash = blake3_hex(&bytes);
        assert!(
            leaf.starts_with(&hash[..12]),
            "{} holds content hashing {hash}",
            path.display()
        );
    }
}

/// Whether an external tool can be used. When it is missing: under `CI` the test fails
/// (the CI image must provide it); elsewhere it is skipped with a printed reason.
pub fn tool_available(tool: &str, probe: &mut Command) -> bool {
    let works = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is required under CI but is not usable (probe failed)");
    }
    eprintln!("SKIPPED: {tool} is not installed (set CI=1 to make this a failure)");
    false
}

/// Asserts an error response: the status, a JSON `{"error": "..."}` body, and (when
/// given) that the message contains `needle`.
pub fn assert_json_error(response: &Response, status: u16, needle: Option<&str>) {
    assert_eq!(response.status, status, "body: {}", response.text());
    let body = response
        .try_json()
        .unwrap_or_else(|e| panic!("error body not JSON ({e}): {}", response.text()));
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"));
    if let Some(needle) = needle {
        assert!(
            message.contains(needle),
            "error {message:?} lacks {needle:?}"
        );
    }
}
