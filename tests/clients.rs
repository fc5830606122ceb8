//! Compatibility with real clients: curl and Python `requests` (a Chromium form submit is
//! in tests/browser.rs, with the web page). Each checks the `original_name` the daemon stored, since
//! every client encodes file names in multipart differently. A missing tool skips the
//! test with a printed reason, except under `CI`, where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rhinobox::client::{MediaKind, blake3_hex, payload};
use serde_json::Value;

fn curl_available() -> bool {
    tool_available("curl", Command::new("curl").arg("--version"))
}

/// Writes a payload of `kind` into `dir` under `name`; returns its path and bytes.
fn write_file(dir: &Path, name: &str, kind: MediaKind, seed: u64) -> (PathBuf, Vec<u8>) {
    let bytes = payload(kind, 3000 + seed, seed);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Runs curl with `args` against the daemon, fails on a non-zero exit, parses the JSON.
fn curl(args: &[&str]) -> Value {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("curl {args:?} got non-JSON ({e}): {stdout}"))
}

fn only_entry(reply: &Value) -> &Value {
    let stored = reply["stored"]
        .as_array()
        .unwrap_or_else(|| panic!("no stored: {reply}"));
    assert_eq!(stored.len(), 1, "{reply}");
    &stored[0]
}

/// curl `-F file=@path` (with category and comment after it): the name is the file's
/// base name, hash and type are right, category and comment applied.
#[test]
fn curl_form_upload() {
    if !curl_available() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = write_file(dir.path(), "photo.jpg", MediaKind::Jpeg, 1);
    let url = format!("http://{}/ingest/media", daemon.addr);
    let reply = curl(&[
        "-F",
        &format!("file=@{}", path.display()),
        "-F",
        "category=holiday",
        "-F",
        "comment=from curl",
        &url,
    ]);
    let entry = only_entry(&reply);
    assert_eq!(entry["original_name"], "photo.jpg");
    assert_eq!(entry["hash"], blake3_hex(&bytes).as_str());
    assert_eq!(entry["category"], "images/jpg/holiday");
    assert_eq!(entry["comment"], "from curl");
}

/// curl `-F 'file=@path;filename=custom name.jpg'`, a UTF-8 name (`café ünï.jpg`) and a
/// name with a double quote: each is reported exactly as the user named it.
#[test]
fn curl_names_are_decoded() {
    if !curl_available() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/ingest/media", daemon.addr);
    let (path, _) = write_file(dir.path(), "plain.jpg", MediaKind::Jpeg, 2);
    let custom = format!("file=@{};filename=custom name.jpg", path.display());
    assert_eq!(
        only_entry(&curl(&["-F", &custom, &url]))["original_name"],
        "custom name.jpg"
    );
    let (utf8, _) = write_file(dir.path(), "café ünï.jpg", MediaKind::Jpeg, 3);
    let reply = curl(&["-F", &format!("file=@{}", utf8.display()), &url]);
    assert_eq!(only_entry(&reply)["original_name"], "café ünï.jpg");
    let (quoted, _) = write_file(dir.path(), "say \"hi\".png", MediaKind::Png, 4);
    // Inside -F, a double-quoted filename= lets curl take the name literally.
    let form = format!(
        "file=@\"{}\"",
        quoted.display().to_string().replace('"', "\\\"")
    );
    let reply = curl(&["-F", &form, &url]);
    assert_eq!(only_entry(&reply)["original_name"], "say \"hi\".png");
}

/// curl `-T path` PUT to /ingest/media/{name}: stored with the name from the URL.
#[test]
fn curl_put_upload() {
    if !curl_available() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = write_file(dir.path(), "track.mp3", MediaKind::Mp3, 5);
    let url = format!("http://{}/ingest/media/track.mp3?comment=put", daemon.addr);
    let reply = curl(&["-T", path.to_str().unwrap(), &url]);
    let entry = only_entry(&reply);
    assert_eq!(entry["original_name"], "track.mp3");
    assert_eq!(entry["hash"], blake3_hex(&bytes).as_str());
    assert_eq!(entry["media_type"], "audio");
    assert_eq!(entry["comment"], "put");
}

/// curl with `-H 'Transfer-Encoding: chunked'` and two `-F` files: both stored.
#[test]
fn curl_chunked_form_upload() {
    if !curl_available() {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, a_bytes) = write_file(dir.path(), "a.webm", MediaKind::Webm, 6);
    let (b, b_bytes) = write_file(dir.path(), "b.pdf", MediaKind::Pdf, 7);
    let url = format!("http://{}/ingest/media", daemon.addr);
    let reply = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "-F",
        &format!("file=@{}", a.display()),
        "-F",
        &format!("file=@{}", b.display()),
        &url,
    ]);
    let stored = reply["stored"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(stored.len(), 2, "{reply}");
    assert_eq!(stored[0]["hash"], blake3_hex(&a_bytes).as_str());
    assert_eq!(stored[1]["hash"], blake3_hex(&b_bytes).as_str());
    assert_eq!(stored[0]["media_type"], "videos");
    assert_eq!(stored[1]["media_type"], "documents");
}

const PYTHON_UPLOAD: &str = r#"
import json, sys, requests
url, *paths = sys.argv[1:]
files = [("file", (p.rsplit("/", 1)[1], open(p, "rb"), "application/octet-stream")) for p in paths]
reply = requests.post(url, files=files, data={"comment": "from python"}, timeout=60)
reply.raise_for_status()
print(json.dumps(reply.json()))
"#;

/// Python `requests` with `files=[...]` (two files, one with a UTF-8 name and one with a
/// double quote) and a comment: both stored, names as given, sniffed types.
#[test]
fn python_requests_upload() {
    let mut probe = Command::new("python3");
    probe.args(["-c", "import requests"]);
    if !tool_available("python3 with requests", &mut probe) {
        return;
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, a_bytes) = write_file(dir.path(), "naïve été.png", MediaKind::Png, 8);
    let (b, b_bytes) = write_file(dir.path(), "q\"uote.wav", MediaKind::Wav, 9);
    let url = format!("http://{}/ingest/media", daemon.addr);
    let output = Command::new("python3")
        .args([
            "-c",
            PYTHON_UPLOAD,
            &url,
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value = serde_json::from_str(&stdout).unwrap();
    let stored = reply["stored"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(stored.len(), 2, "{reply}");
    assert_eq!(stored[0]["original_name"], "naïve été.png");
    assert_eq!(stored[0]["hash"], blake3_hex(&a_bytes).as_str());
    assert_eq!(stored[0]["mime_type"], "image/png");
    assert_eq!(stored[1]["original_name"], "q\"uote.wav");
    assert_eq!(stored[1]["hash"], blake3_hex(&b_bytes).as_str());
    assert_eq!(stored[1]["mime_type"], "audio/x-wav");
    assert_eq!(stored[1]["comment"], "from python");
}
