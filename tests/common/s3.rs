//! The S3 side of the harness: a daemon with the S3 listener on an ephemeral port, the
//! outside clients (aws-cli, boto3, rclone, s3cmd) run against it with a clean
//! environment and no config file, a small signed-request client of our own
//! (`rhinobox::client::sigv4`) for the tests that need no outside tool, and what
//! compares trees and counts disk usage.
//!
//! A client that is not installed skips its test with a printed reason, except under
//! `CI`, where it fails ([`tool_available`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rhinobox::client::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};
use rhinobox::client::{Connection, MediaKind, Response, blake3_hex};

use super::{Daemon, DaemonBuilder, TestFile, files_under, tool_available};

pub const ACCESS_KEY: &str = "rhinobox-test";
pub const SECRET_KEY: &str = "s3-secret-for-tests";
/// The region every client signs for (the daemon's default).
pub const REGION: &str = "us-east-1";
/// How long the daemon may take to announce its S3 listener after it is ready.
const S3_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// The line prefix that announces the S3 listener.
const S3_LINE_PREFIX: &str = "rhinobox: S3 API listening on ";

/// The flags that turn the S3 listener on, on an ephemeral loopback port.
pub const S3_FLAGS: &[&str] = &[
    "--s3-addr",
    "127.0.0.1:0",
    "--s3-access-key",
    ACCESS_KEY,
    "--s3-secret-key",
    SECRET_KEY,
];

/// A daemon with the S3 API on an ephemeral port; returns it and the S3 address.
pub fn start_with_s3() -> (Daemon, SocketAddr) {
    start_with_s3_from(Daemon::builder())
}

/// Like [`start_with_s3`] from a builder with more settings (a data dir, flags).
pub fn start_with_s3_from(builder: DaemonBuilder) -> (Daemon, SocketAddr) {
    let daemon = builder.args(S3_FLAGS).start();
    let addr = s3_addr(&daemon);
    (daemon, addr)
}

/// The S3 address of the daemon's latest run (it changes on each restart).
pub fn s3_addr(daemon: &Daemon) -> SocketAddr {
    let deadline = Instant::now() + S3_LINE_TIMEOUT;
    loop {
        let lines = daemon.current_run_lines();
        let announced = lines.iter().rev().find_map(|line| {
            let rest = line
                .strip_prefix("stderr: ")?
                .strip_prefix(S3_LINE_PREFIX)?;
            Some(rest.trim().to_string())
        });
        if let Some(text) = announced {
            return text
                .parse()
                .unwrap_or_else(|_| panic!("bad S3 listener line {text:?}"));
        }
        assert!(
            Instant::now() < deadline,
            "the S3 listener is not announced; log:\n{}",
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn aws_available() -> bool {
    tool_available(
        "aws (pip install awscli)",
        Command::new("aws").arg("--version"),
    )
}

pub fn boto3_available() -> bool {
    tool_available(
        "python3 with boto3 (pip install boto3)",
        Command::new("python3").args(["-c", "import boto3"]),
    )
}

pub fn rclone_available() -> bool {
    tool_available(
        "rclone (apt-get install rclone)",
        Command::new("rclone").arg("version"),
    )
}

pub fn s3cmd_available() -> bool {
    tool_available(
        "s3cmd (apt-get install s3cmd)",
        Command::new("s3cmd").arg("--version"),
    )
}

/// Runs a prepared client command; returns (success, stdout, stderr).
fn run(command: &mut Command) -> (bool, String, String) {
    let output = command.output().expect("the client runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// aws-cli on the S3 address with the test key pair, no profile and no config file.
pub fn aws_command(addr: SocketAddr) -> Command {
    let mut command = Command::new("aws");
    command
        .args(["--endpoint-url", &format!("http://{addr}")])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", REGION)
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    command
}

/// Runs aws-cli against the S3 address; returns (success, stdout, stderr).
pub fn aws(addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    run(aws_command(addr).args(args))
}

/// Runs rclone with a remote `rb:` on the S3 address (configured through the
/// environment, no config file); returns (success, stdout + stderr).
pub fn rclone(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let (ok, mut text, stderr) = run(Command::new("rclone")
        .args(args)
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_RB_TYPE", "s3")
        .env("RCLONE_CONFIG_RB_PROVIDER", "Other")
        .env("RCLONE_CONFIG_RB_ENDPOINT", format!("http://{addr}"))
        .env("RCLONE_CONFIG_RB_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_RB_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_RB_REGION", REGION)
        // Set on some hosts for the system's CA bundle; rclone refuses a bad one.
        .env_remove("AWS_CA_BUNDLE"));
    text.push_str(&stderr);
    (ok, text)
}

/// Runs s3cmd on the S3 address (path-style, no config file); returns (success,
/// stdout + stderr).
pub fn s3cmd(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let host = addr.to_string();
    let (ok, mut text, stderr) = run(Command::new("s3cmd")
        .args(["--config", "/dev/null", "--no-ssl", "--host", &host])
        .args(["--host-bucket", &host, "--access_key", ACCESS_KEY])
        .args(["--secret_key", SECRET_KEY, "--region", REGION])
        .args(args));
    text.push_str(&stderr);
    (ok, text)
}

/// Runs a python script of `tests/s3/` with these arguments (no AWS config files);
/// returns (success and a last line `OK`, stdout + stderr).
pub fn python_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/s3")
        .join(script);
    let (ok, stdout, stderr) = run(Command::new("python3")
        .arg(path)
        .args(args)
        .envs(env.iter().copied())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"));
    let passed = ok && stdout.trim_end().ends_with("OK");
    (passed, format!("{stdout}\n{stderr}"))
}

/// Stores `count` files of mixed kinds (some under a category) through the native API;
/// returns key (path without `storage/`) → BLAKE3 hex.
pub fn store_files(daemon: &Daemon, count: u64) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    let mut seed = 0;
    while seed < count {
        let batch: Vec<TestFile> = (seed..count.min(seed + 200))
            .map(|i| {
                let kind = MediaKind::ALL[(i as usize) % MediaKind::ALL.len()];
                TestFile::new(kind, 2000 + i, i)
            })
            .collect();
        seed += batch.len() as u64;
        for stored in daemon.upload_ok(&batch) {
            let path = stored["path"].as_str().unwrap();
            let key = path.strip_prefix("storage/").unwrap().to_string();
            expected.insert(key, stored["hash"].as_str().unwrap().to_string());
        }
    }
    expected
}

/// Every regular file under `root`, by path relative to it → BLAKE3 hex.
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    files_under(root)
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            (relative, blake3_hex(&std::fs::read(&path).unwrap()))
        })
        .collect()
}

/// Bytes allocated on disk by the stored content: st_blocks × 512 summed over the
/// distinct inodes of the regular files under `<data>/storage`, `storage/.tmp` left out,
/// so that a file reachable by several hard links counts once.
pub fn stored_bytes_on_disk(data_dir: &Path) -> u64 {
    let tmp = data_dir.join("storage").join(".tmp");
    let mut inodes: HashMap<(u64, u64), u64> = HashMap::new();
    for path in files_under(&data_dir.join("storage")) {
        if path.starts_with(&tmp) {
            continue;
        }
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        if metadata.file_type().is_file() {
            inodes.insert((metadata.dev(), metadata.ino()), metadata.blocks() * 512);
        }
    }
    inodes.values().sum()
}

/// `len` bytes that look random (BLAKE3 in XOF mode over `seed`): incompressible, and
/// different for every seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rhinobox test bytes");
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut bytes);
    bytes
}

/// A request signed with the harness's own SigV4 signer (`UNSIGNED-PAYLOAD`), for the
/// tests that need no outside client.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Bucket and key, not encoded: `photos/trip/a b.jpg` (`""` for the service).
    pub target: &'a str,
    /// The canonical query (sorted, encoded), e.g. `uploads=` or `list-type=2`.
    pub query: &'a str,
    /// Headers to send and sign: lowercase names (`content-type`, `x-amz-meta-...`).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    /// Sends the request to the S3 address on a fresh connection.
    pub fn send(&self, addr: SocketAddr) -> Response {
        self.try_send(addr).expect("S3 request")
    }

    /// [`SignedRequest::send`], with a broken connection (a daemon that died) as `Err`.
    pub fn try_send(&self, addr: SocketAddr) -> std::io::Result<Response> {
        let path = format!(
            "/{}",
            self.target
                .split('/')
                .map(sigv4::encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        );
        let host = addr.to_string();
        let mut signed_headers: Vec<(&str, &str)> = self.headers.to_vec();
        signed_headers.sort_by(|a, b| a.0.cmp(b.0));
        let credentials = Credentials {
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: REGION.into(),
        };
        let amz_date = sigv4::amz_date(std::time::SystemTime::now());
        let signature = sigv4::sign(
            &credentials,
            &Signing {
                method: self.method,
                path: &path,
                query: self.query,
                host: &host,
                extra_headers: &signed_headers,
                payload_hash: UNSIGNED_PAYLOAD,
                amz_date: &amz_date,
            },
        );
        let mut headers: Vec<(&str, &str)> = signed_headers;
        headers.extend(signature.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let uri = if self.query.is_empty() {
            path
        } else {
            format!("{path}?{}", self.query)
        };
        Connection::connect(addr)?.request(self.method, &uri, &headers, self.body)
    }
}

/// A signed request with no query and no body.
pub fn s3_request(addr: SocketAddr, method: &str, target: &str) -> Response {
    SignedRequest {
        method,
        target,
        query: "",
        headers: &[],
        body: b"",
    }
    .send(addr)
}

/// A signed PutObject; asserts 200 and returns the response.
pub fn s3_put(addr: SocketAddr, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let response = SignedRequest {
        method: "PUT",
        target,
        query: "",
        headers,
        body,
    }
    .send(addr);
    assert_eq!(response.status, 200, "PUT /{target}: {}", response.text());
    response
}
