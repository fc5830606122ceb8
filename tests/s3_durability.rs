//! Crash points of the S3 object protocol (`store::object_protocol`), against the real
//! binary: the failpoints daemon SIGKILLs itself at an exact step of a PutObject or a
//! DeleteObject, and the daemon under test, restarted on the data dir, must leave no stray
//! content file, keep every acknowledged object and pass `rhinobox verify`.
//!
//! Failpoint counts: a PutObject of new content appends twice (the `blob_place` intent,
//! then the `object` line) and renames once (the content file); a DeleteObject or an
//! overwrite that drops a content's last key unlinks once, after its line is synced.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::s3::{S3_FLAGS, SignedRequest, s3_addr};
use common::*;
use rhinobox::client::{Response, blake3_hex};

/// One signed S3 request; `Err` when the connection broke (the daemon died).
fn s3(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    SignedRequest {
        method,
        target: path.trim_start_matches('/'),
        query: "",
        headers: &[],
        body,
    }
    .try_send(addr)
}

fn ok(response: std::io::Result<Response>) -> Response {
    let response = response.expect("the daemon answers");
    assert!(
        (200..300).contains(&response.status),
        "{}: {}",
        response.status,
        response.text()
    );
    response
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix("rhinobox-s3-durability")
        .tempdir()
        .unwrap();
    let data = root.path().join("data");
    (root, data)
}

/// Content files of S3 objects (`storage/.objects/`).
fn object_files(data: &Path) -> Vec<PathBuf> {
    stored_files(data)
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == ".objects"))
        .collect()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed >> 1))
        .collect()
}

/// A daemon under test with the S3 listener and the bucket `crash`, stopped cleanly.
fn prepared(data: &Path, objects: &[(&str, &[u8])]) {
    let mut daemon = Daemon::builder().data_dir(data).args(S3_FLAGS).start();
    let addr = s3_addr(&daemon);
    ok(s3(addr, "PUT", "/crash", b""));
    for (key, body) in objects {
        ok(s3(addr, "PUT", &format!("/crash/{key}"), body));
    }
    assert!(daemon.sigterm().success());
}

/// The failpoints daemon with the S3 listener runs `request` and must die by SIGKILL
/// without acknowledging it.
fn crash_during(
    data: &Path,
    spec: &str,
    request: impl FnOnce(SocketAddr) -> std::io::Result<Response>,
) {
    let mut crashing = Daemon::builder()
        .binary(&failpoints_binary())
        .env("RHINOBOX_FAILPOINTS", spec)
        .data_dir(data)
        .args(S3_FLAGS)
        .start();
    let addr = s3_addr(&crashing);
    if let Ok(response) = request(addr) {
        assert!(
            response.status >= 500,
            "acknowledged with {}: {}",
            response.status,
            response.text()
        );
    }
    let status = crashing.wait_exit(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{}",
        crashing.log_text()
    );
}

fn restarted(data: &Path) -> (Daemon, SocketAddr) {
    let daemon = Daemon::builder().data_dir(data).args(S3_FLAGS).start();
    let addr = s3_addr(&daemon);
    (daemon, addr)
}

fn assert_verify_clean(data: &Path, daemon: &mut Daemon) {
    assert!(daemon.sigterm().success());
    let out = Command::new(binary())
        .args(["verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Crash after the content file was renamed into place and before the `object` line:
/// the next start removes the content through its `blob_place` intent; the key never
/// existed; the same PUT then works.
#[test]
fn crash_between_content_rename_and_object_line_leaves_no_stray() {
    let (_root, data) = scratch();
    prepared(&data, &[]);
    let body = bytes(5000, 7);
    crash_during(&data, "journal-append=KILL@2", |addr| {
        s3(addr, "PUT", "/crash/new.bin", &body)
    });
    assert_eq!(
        object_files(&data).len(),
        1,
        "the crash was meant to come after the rename"
    );
    let (mut daemon, addr) = restarted(&data);
    assert!(object_files(&data).is_empty(), "{:?}", object_files(&data));
    assert!(
        daemon
            .stderr_lines()
            .iter()
            .any(|l| l.contains("removed stray object content")),
        "{}",
        daemon.log_text()
    );
    assert_eq!(s3(addr, "GET", "/crash/new.bin", b"").unwrap().status, 404);
    ok(s3(addr, "PUT", "/crash/new.bin", &body));
    let got = ok(s3(addr, "GET", "/crash/new.bin", b""));
    assert_eq!(blake3_hex(&got.body), blake3_hex(&body));
    assert_verify_clean(&data, &mut daemon);
}

/// Crash after a DeleteObject's line was synced and before the unlink: the next start
/// removes the content through the `blob_remove` line; the key stays deleted.
#[test]
fn crash_between_object_delete_and_unlink_removes_the_content() {
    let (_root, data) = scratch();
    let body = bytes(6000, 11);
    prepared(&data, &[("gone.bin", &body)]);
    assert_eq!(object_files(&data).len(), 1);
    crash_during(&data, "unlink=KILL@1", |addr| {
        s3(addr, "DELETE", "/crash/gone.bin", b"")
    });
    assert_eq!(
        object_files(&data).len(),
        1,
        "the crash was meant to come before the unlink"
    );
    let (mut daemon, addr) = restarted(&data);
    assert!(object_files(&data).is_empty(), "{:?}", object_files(&data));
    assert_eq!(s3(addr, "GET", "/crash/gone.bin", b"").unwrap().status, 404);
    assert_verify_clean(&data, &mut daemon);
}

/// An overwrite whose old content loses its last key: crash before that content's unlink.
/// The new object stands, the old content goes; content another key still names stays.
#[test]
fn crash_in_an_overwrite_keeps_the_new_object_and_shared_content() {
    let (_root, data) = scratch();
    let (old, shared, new) = (bytes(4000, 3), bytes(4500, 5), bytes(5000, 9));
    prepared(&data, &[("k", &old), ("a", &shared), ("b", &shared)]);
    assert_eq!(object_files(&data).len(), 2);
    crash_during(&data, "unlink=KILL@1", |addr| {
        s3(addr, "PUT", "/crash/k", &new)
    });
    let (mut daemon, addr) = restarted(&data);
    let got = ok(s3(addr, "GET", "/crash/k", b""));
    assert_eq!(
        blake3_hex(&got.body),
        blake3_hex(&new),
        "the overwrite was synced"
    );
    assert_eq!(
        object_files(&data).len(),
        2,
        "old content left: {:?}",
        object_files(&data)
    );
    // Deleting one of two keys of shared content leaves the other readable.
    ok(s3(addr, "DELETE", "/crash/a", b""));
    let got = ok(s3(addr, "GET", "/crash/b", b""));
    assert_eq!(blake3_hex(&got.body), blake3_hex(&shared));
    assert_eq!(object_files(&data).len(), 2);
    ok(s3(addr, "DELETE", "/crash/b", b""));
    assert_eq!(object_files(&data).len(), 1, "{:?}", object_files(&data));
    assert_verify_clean(&data, &mut daemon);
}
