//! The cluster-mode fixture itself (scripts/cluster-fixture.sh through
//! tests/common/cluster.rs), checked before any daemon relies on it, with one fixture:
//! PostgreSQL accepts a TCP connection on the port of its URL and `psql` with that URL
//! answers `select 1`; RGW answers a ListBuckets signed by rhinobox's own signer
//! (`rhinobox::client::sigv4` over `rhinobox::client::Connection`) naming the fixture's
//! bucket, and the same request signed with another secret is a 403; with one OSD killed a
//! signed ListObjects of the bucket still answers 200, and the OSD comes back; `pg_stop`
//! makes connections fail, `pg_start` brings them back; after drop (`down`) its directory
//! and every daemon are gone. Skips with a SKIPPED line when the fixture's packages are
//! missing, except under `CI`.

#[path = "common/cluster.rs"]
mod cluster;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use cluster::Cluster;
use rhinobox::client::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};
use rhinobox::client::{Connection, Response};

/// A signed GET of `path` (already encoded) with `query` (canonical) on the fixture's RGW.
fn s3_get(cluster: &Cluster, credentials: &Credentials, path: &str, query: &str) -> Response {
    let host = cluster.s3_addr.to_string();
    let amz_date = sigv4::amz_date(std::time::SystemTime::now());
    let signed = sigv4::sign(
        credentials,
        &Signing {
            method: "GET",
            path,
            query,
            host: &host,
            extra_headers: &[],
            payload_hash: UNSIGNED_PAYLOAD,
            amz_date: &amz_date,
        },
    );
    let headers: Vec<(&str, &str)> = signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let mut connection = Connection::connect(cluster.s3_addr).expect("RGW accepts");
    connection
        .request("GET", &target, &headers, b"")
        .expect("RGW answers")
}

/// `psql` with the fixture's URL running `select 1`: whether it answered `1`, and its output.
fn psql_select_1(cluster: &Cluster) -> (bool, String) {
    let output = Command::new("psql")
        .args(["-X", "-At", "-c", "select 1", &cluster.pg_url])
        .output()
        .expect("psql runs (the fixture's check found it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && text.trim() == "1", text)
}

#[test]
fn fixture_serves_postgresql_and_rgw_and_survives_its_failures() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    TcpStream::connect_timeout(&cluster.pg_addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("PostgreSQL at {} refuses TCP: {e}", cluster.pg_addr));
    let (ok, text) = psql_select_1(&cluster);
    assert!(ok, "psql select 1: {text}");

    let response = s3_get(&cluster, &cluster.s3_credentials, "/", "");
    assert_eq!(response.status, 200, "ListBuckets: {}", response.text());
    let bucket_name = format!("<Name>{}</Name>", cluster.bucket);
    assert!(
        response.text().contains(&bucket_name),
        "ListBuckets does not name {}: {}",
        cluster.bucket,
        response.text()
    );
    let wrong = Credentials {
        secret_key: "not-the-secret".into(),
        ..cluster.s3_credentials.clone()
    };
    let response = s3_get(&cluster, &wrong, "/", "");
    assert_eq!(response.status, 403, "wrong secret: {}", response.text());

    cluster.kill_osd(1);
    let bucket_path = format!("/{}", sigv4::encode_segment(&cluster.bucket));
    let response = s3_get(
        &cluster,
        &cluster.s3_credentials,
        &bucket_path,
        "list-type=2",
    );
    assert_eq!(
        response.status,
        200,
        "ListObjects, osd.1 down: {}",
        response.text()
    );
    cluster.start_osd(1);

    cluster.pg_stop();
    let (ok, text) = psql_select_1(&cluster);
    assert!(!ok, "psql answered with PostgreSQL stopped: {text}");
    assert!(
        TcpStream::connect_timeout(&cluster.pg_addr, Duration::from_secs(5)).is_err(),
        "PostgreSQL's port accepts while stopped"
    );
    cluster.pg_start();
    let (ok, text) = psql_select_1(&cluster);
    assert!(ok, "psql select 1 after pg_start: {text}");

    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "down left {}", dir.display());
    let left = processes_naming(&dir.to_string_lossy());
    assert!(left.is_empty(), "down left processes: {left:?}");
}

/// The command lines of running processes that name `needle` (the fixture's directory is
/// in every one of its daemons' command lines).
fn processes_naming(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|line| line.contains(needle))
        .collect()
}
