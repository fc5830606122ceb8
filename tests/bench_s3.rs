//! The harness's S3 client (`rhinobox::bench::s3`, the code behind `rhinobox-bench
//! --scenarios s3`) against the real daemon's S3 listener: GetObject of files stored
//! through `/ingest/media`, read from the read-only bucket `media`, checked by BLAKE3
//! the way the load driver checks them, and a large body streamed into a sink.
//! Until PutObject exists on the daemon, the write shapes are validated against s3s-fs
//! (benches/results/2026-12-02-s3-baseline) instead.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rhinobox::bench::s3;
use rhinobox::bench::target::{Endpoint, Mode};
use rhinobox::client::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};
use rhinobox::client::{Connection, MediaKind, blake3_hex};

const ACCESS_KEY: &str = "rhinobox-bench-test";
const SECRET_KEY: &str = "bench-secret-for-tests";

fn start_with_s3() -> (Daemon, SocketAddr) {
    let daemon = Daemon::builder()
        .args(&[
            "--s3-addr",
            "127.0.0.1:0",
            "--s3-access-key",
            ACCESS_KEY,
            "--s3-secret-key",
            SECRET_KEY,
        ])
        .start();
    let line = daemon
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("rhinobox: S3 API listening on ")
        })
        .expect("the S3 listener is announced");
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad S3 line {line:?}"));
    (daemon, addr)
}

fn credentials(secret: &str) -> Credentials {
    Credentials {
        access_key: ACCESS_KEY.into(),
        secret_key: secret.into(),
        region: "us-east-1".into(),
    }
}

/// Stores one file natively; returns its key in bucket `media` and its BLAKE3.
fn store(daemon: &Daemon, kind: MediaKind, size: u64, seed: u64) -> (String, String) {
    let stored = daemon.upload_ok(&[TestFile::new(kind, size, seed)]);
    let path = stored[0]["path"].as_str().unwrap();
    let key = path.strip_prefix("storage/").unwrap().to_string();
    (key, stored[0]["hash"].as_str().unwrap().to_string())
}

/// The load driver's GetObject request and check: a stored file comes back verified
/// (BLAKE3 equal), a wrong expected hash and a wrong secret are failures, not passes.
#[test]
fn harness_get_object_reads_and_checks_media() {
    let (daemon, addr) = start_with_s3();
    let (key, hash) = store(&daemon, MediaKind::Jpeg, 4096, 1);
    let endpoint = Endpoint::s3(addr, "media", credentials(SECRET_KEY), Mode::S3Get);
    let mut connection = Connection::connect(addr).unwrap();
    let response = s3::get_object(&mut connection, &endpoint, &key).unwrap();
    assert_eq!(s3::check(Mode::S3Get, &response, &hash), Ok(true));
    let other = blake3_hex(b"not what was stored");
    let mismatch = s3::check(Mode::S3Get, &response, &other).unwrap_err();
    assert!(mismatch.contains("BLAKE3"), "{mismatch}");
    let wrong = Endpoint::s3(addr, "media", credentials("not-the-secret"), Mode::S3Get);
    let response = s3::get_object(&mut connection, &wrong, &key).unwrap();
    let refused = s3::check(Mode::S3Get, &response, &hash).unwrap_err();
    assert!(refused.contains("403"), "{refused}");
    assert!(refused.contains("SignatureDoesNotMatch"), "{refused}");
}

/// A 3 MiB object read through `Connection::request_into` arrives whole and equal in
/// the sink (the path `s3:get-large` takes), and the connection stays usable after it.
#[test]
fn large_get_streams_into_a_sink() {
    let (daemon, addr) = start_with_s3();
    let (key, hash) = store(&daemon, MediaKind::Mp4, 3 << 20, 2);
    let path = format!(
        "/media/{}",
        key.split('/')
            .map(sigv4::encode_segment)
            .collect::<Vec<_>>()
            .join("/")
    );
    let mut connection = Connection::connect(addr).unwrap();
    for _ in 0..2 {
        let amz_date = sigv4::amz_date(std::time::SystemTime::now());
        let host = addr.to_string();
        let signed = sigv4::sign(
            &credentials(SECRET_KEY),
            &Signing {
                method: "GET",
                path: &path,
                query: "",
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
        let mut sink = Vec::new();
        let response = connection
            .request_into("GET", &path, &headers, &mut sink)
            .unwrap();
        assert_eq!(response.status, 200);
        assert!(response.body.is_empty(), "the body went to the sink");
        assert_eq!(sink.len(), 3 << 20);
        assert_eq!(blake3_hex(&sink), hash);
        assert!(!connection.is_closed());
    }
}
