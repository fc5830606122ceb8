//! The ground cluster mode (SPEC §8) is tested on, from a test: [`Cluster`] runs
//! `scripts/cluster-fixture.sh up` into a temporary directory (a throwaway PostgreSQL, and a
//! Ceph cluster of 1 mon, 1 mgr, 3 memstore OSDs in a pool of size 3 and 1 RGW with an S3
//! user and a bucket, all on 127.0.0.1 on free ports the script picks), reads the
//! `cluster.env` the script writes, exposes the URLs and keys, and runs `down` on drop, a
//! failing test's unwinding included. [`Cluster::kill_osd`] / [`Cluster::start_osd`] and
//! [`Cluster::pg_stop`] / [`Cluster::pg_start`] are the failures the cluster tests inject;
//! each returns once the cluster has noticed (the OSD marked down or up in the map,
//! PostgreSQL refusing or accepting connections).
//!
//! The fixture needs packages (`scripts/cluster-fixture.sh install`). [`Cluster::start`]
//! answers `None` with a `SKIPPED:` line when they are missing, except under `CI`, where it
//! panics: the rule tests/s3.rs applies to its outside clients. `RHINOBOX_CLUSTER_FIXTURE=skip`
//! skips even under `CI` (.ci/run sets it until cluster mode's CI installs the packages).
//!
//! A test includes it with `#[path = "common/cluster.rs"] mod cluster;`; it needs nothing
//! from `common`.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rhinobox::client::sigv4::Credentials;
use tempfile::TempDir;

/// The environment variable that skips the cluster tests even under `CI`.
const SKIP_VARIABLE: &str = "RHINOBOX_CLUSTER_FIXTURE";

/// A running fixture; stopped and its directory removed on drop.
pub struct Cluster {
    dir: TempDir,
    env: BTreeMap<String, String>,
    /// `postgres://rhinobox:PASSWORD@127.0.0.1:PORT/rhinobox`: the role owns the database.
    pub pg_url: String,
    pub pg_addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, RGW's S3 endpoint (path-style requests).
    pub s3_url: String,
    pub s3_addr: SocketAddr,
    /// The S3 user's keys and the region requests are signed for.
    pub s3_credentials: Credentials,
    /// A bucket the fixture made, empty at start.
    pub bucket: String,
    /// For `ceph -c` / `radosgw-admin -c`, to look inside.
    pub ceph_conf: PathBuf,
}

impl Cluster {
    /// Starts a fixture, or answers `None` after printing why it skipped (see the module
    /// doc); panics with the script's output when starting fails.
    pub fn start() -> Option<Cluster> {
        if !fixture_available() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("rhinobox-cluster-")
            .tempdir()
            .expect("a temporary directory for the fixture");
        let output = run_script(&["up", path_str(dir.path())]);
        if !output.status.success() {
            // `up` stopped what it started; the drop of `dir` removes its logs, so they
            // are shown here (the script's error names the service and its log).
            let _ = run_script(&["down", path_str(dir.path())]);
            panic!("cluster-fixture up failed:\n{}", output_text(&output));
        }
        let text =
            std::fs::read_to_string(dir.path().join("cluster.env")).expect("up writes cluster.env");
        let env = parse_env(&text);
        let get = |key: &str| {
            env.get(key)
                .unwrap_or_else(|| panic!("{key} missing from cluster.env:\n{text}"))
                .clone()
        };
        let pg_url = get("RHINOBOX_PG_URL");
        let s3_url = get("RHINOBOX_S3_CLUSTER_URL");
        let cluster = Cluster {
            pg_addr: url_addr(&pg_url),
            s3_addr: url_addr(&s3_url),
            s3_credentials: Credentials {
                access_key: get("RHINOBOX_S3_CLUSTER_ACCESS_KEY"),
                secret_key: get("RHINOBOX_S3_CLUSTER_SECRET_KEY"),
                region: get("RHINOBOX_S3_CLUSTER_REGION"),
            },
            bucket: get("RHINOBOX_S3_CLUSTER_BUCKET"),
            ceph_conf: PathBuf::from(get("RHINOBOX_CEPH_CONF")),
            pg_url,
            s3_url,
            env,
            dir,
        };
        eprintln!("cluster fixture up in {}", cluster.dir().display());
        Some(cluster)
    }

    /// The fixture's directory (state, logs under `log/`, `cluster.env`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every variable of `cluster.env`, to hand to a daemon (`Command::envs`).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// kill -9 of OSD `n` (0..3); returns once the monitor marks it down.
    pub fn kill_osd(&self, n: u32) {
        self.command(&["kill-osd", path_str(self.dir()), &n.to_string()]);
    }

    /// OSD `n` back (empty: memstore keeps nothing over a kill, it backfills); returns
    /// once the monitor marks it up.
    pub fn start_osd(&self, n: u32) {
        self.command(&["start-osd", path_str(self.dir()), &n.to_string()]);
    }

    /// Stops PostgreSQL (fast shutdown): its port refuses connections afterwards.
    pub fn pg_stop(&self) {
        self.command(&["pg-stop", path_str(self.dir())]);
    }

    /// Starts PostgreSQL again on the same port; returns once it accepts connections.
    pub fn pg_start(&self) {
        self.command(&["pg-start", path_str(self.dir())]);
    }

    fn command(&self, args: &[&str]) {
        let output = run_script(args);
        assert!(
            output.status.success(),
            "cluster-fixture {} failed:\n{}",
            args.join(" "),
            output_text(&output)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let output = run_script(&["down", path_str(self.dir())]);
        if !output.status.success() {
            eprintln!("cluster-fixture down failed:\n{}", output_text(&output));
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster-fixture.sh")
}

/// Runs the script to its end (it bounds its own waits); the daemons it starts write to
/// files, so the captured pipes close when the script exits.
fn run_script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/cluster-fixture.sh")
}

/// Whether the tests may start a fixture (see the module doc for the rule).
fn fixture_available() -> bool {
    if std::env::var(SKIP_VARIABLE).as_deref() == Ok("skip") {
        eprintln!("SKIPPED: the cluster fixture ({SKIP_VARIABLE}=skip)");
        return false;
    }
    let check = run_script(&["check"]);
    if check.status.success() {
        return true;
    }
    let why = output_text(&check);
    if std::env::var_os("CI").is_some() {
        panic!("the cluster fixture is required under CI but is not installed: {why}");
    }
    eprintln!(
        "SKIPPED: the cluster fixture is not installed (scripts/cluster-fixture.sh install; \
         set CI=1 to make this a failure): {why}"
    );
    false
}

/// `KEY=value` lines; blank lines and `#` comments skipped.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The `host:port` of `scheme://[userinfo@]host:port[/path]`.
fn url_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("no address in {url:?}: {e}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
