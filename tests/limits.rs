//! Hostile input and limits: names that try to escape `storage/`, missing or malformed
//! multipart, truncated bodies, the upload size limit, a tiny job queue, JSON errors.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rhinobox::client::{MediaKind, Multipart, PayloadReader, payload};

/// Waits (bounded) for `storage/.tmp` to be empty, then asserts that nothing is stored:
/// a failed request leaves nothing behind.
fn assert_nothing_left(data_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tmp_files(data_dir).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        tmp_files(data_dir),
        Vec::<std::path::PathBuf>::new(),
        "left in storage/.tmp"
    );
    assert_eq!(
        stored_files(data_dir),
        Vec::<std::path::PathBuf>::new(),
        "stored anyway"
    );
}

/// Names and a category hint built to escape or break the tree (`../../etc/passwd`,
/// separators, control characters, a 1000-character name, an empty name): every file is
/// stored under `storage/` with sanitized segments, an empty name becomes `file`, the
/// original name is reported as sent, and nothing appears outside the data dir.
#[test]
fn hostile_names_never_leave_storage() {
    let daemon = Daemon::start();
    let long_name = format!("{}.jpg", "a".repeat(1000));
    // (name as written in the multipart header, name the daemon must report)
    let names: Vec<(String, String)> = vec![
        ("../../etc/passwd".into(), "../../etc/passwd".into()),
        ("a/b\\\\c.jpg".into(), "a/b\\c.jpg".into()),
        ("/abs/olute.jpg".into(), "/abs/olute.jpg".into()),
        (
            "ctl%01%07\tname%0D%0A.jpg".into(),
            "ctl\u{1}\u{7}\tname\r\n.jpg".into(),
        ),
        ("..".into(), "..".into()),
        (long_name.clone(), long_name),
        ("".into(), "".into()),
    ];
    let mut form = Multipart::new();
    for (i, (wire_name, _)) in names.iter().enumerate() {
        let bytes = payload(MediaKind::Jpeg, 600, 4000 + i as u64);
        let headers = format!(
            "Content-Disposition: form-data; name=\"file\"; filename=\"{wire_name}\"\r\n\
Content-Type: image/jpeg"
        );
        form = form.raw_part(&headers, &bytes);
    }
    let form = form.text("category", "../../etc/x\\y");
    let entries = stored_entries(&daemon.post_multipart(form), names.len());
    for (entry, (_, reported)) in entries.iter().zip(&names) {
        let path = entry["path"].as_str().unwrap();
        let parts = parse_stored_path(path);
        assert_eq!(entry["original_name"], reported.as_str(), "{entry}");
        assert!(!parts.category.iter().any(|s| s == ".."), "{path}");
        assert!(daemon.disk_path(path).is_file(), "{path} not on disk");
    }
    let empty = parse_stored_path(entries[entries.len() - 1]["path"].as_str().unwrap());
    assert_eq!(empty.name, "file", "an empty name is stored as `file`");
    // Outside storage/ and metadata/ only the daemon's own dot-files at the top of the
    // data dir (its lock file) may exist.
    let outside: Vec<_> = files_under(daemon.data_dir.parent().unwrap())
        .into_iter()
        .filter(|p| {
            let own_dot_file = p.parent() == Some(daemon.data_dir.as_path())
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            !p.starts_with(daemon.data_dir.join("storage"))
                && !p.starts_with(daemon.data_dir.join("metadata"))
                && !own_dot_file
        })
        .collect();
    assert!(
        outside.is_empty(),
        "files outside storage/ and metadata/: {outside:?}"
    );
}

/// A multipart body with only text fields → 400 `no files provided`, nothing stored.
#[test]
fn no_file_part_is_400() {
    let daemon = Daemon::start();
    let form = Multipart::new().text("category", "x").text("comment", "y");
    assert_json_error(&daemon.post_multipart(form), 400, Some("no files provided"));
    assert_nothing_left(&daemon.data_dir);
}

/// Malformed bodies (no boundary parameter, garbage, a file part with no closing
/// boundary, part headers that never end, a non-multipart Content-Type) each get a 400
/// JSON error, and nothing is stored or left in `storage/.tmp`.
#[test]
fn malformed_bodies_are_400_and_store_nothing() {
    let daemon = Daemon::start();
    let file = payload(MediaKind::Jpeg, 50_000, 1);
    let valid = Multipart::with_boundary("BND").file("file", "a.jpg", "image/jpeg", &file);
    let (_, full) = valid.finish();
    let unterminated = full[..full.len() - "--BND--\r\n".len()].to_vec();
    let mut headless =
        b"--BND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n".to_vec();
    headless.extend_from_slice(&file);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("no boundary", "multipart/form-data", full.clone()),
        (
            "garbage",
            "multipart/form-data; boundary=BND",
            b"this is not multipart at all".to_vec(),
        ),
        (
            "unterminated",
            "multipart/form-data; boundary=BND",
            unterminated,
        ),
        (
            "headless part",
            "multipart/form-data; boundary=BND",
            headless,
        ),
        (
            "not multipart",
            "application/json",
            b"{\"file\": 1}".to_vec(),
        ),
    ];
    for (what, content_type, body) in cases {
        let response = daemon.request(
            "POST",
            "/ingest/media",
            &[("Content-Type", content_type)],
            &body,
        );
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        assert_json_error(&response, 400, None);
        assert_nothing_left(&daemon.data_dir);
    }
}

/// A body cut off mid-file (Content-Length promises more, the client stops sending and
/// half-closes): 400, nothing stored, `storage/.tmp` empty; the daemon keeps serving.
#[test]
fn truncated_body_is_400_and_stores_nothing() {
    let daemon = Daemon::start();
    let files = [
        TestFile::new(MediaKind::Png, 2000, 1),
        TestFile::new(MediaKind::Mp4, 400_000, 2),
    ];
    let (content_type, body) = form_of(&files).finish();
    let mut conn = daemon.conn();
    let head = format!(
        "POST /ingest/media HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_raw(head.as_bytes()).unwrap();
    conn.write_raw(&body[..body.len() / 2]).unwrap();
    conn.shutdown_write().unwrap();
    let response = conn
        .read_response("POST")
        .expect("a reply to the truncated body");
    assert_json_error(&response, 400, None);
    assert_nothing_left(&daemon.data_dir);
    assert_eq!(daemon.get("/healthz").status, 200);
}

/// With `--max-upload-mb 1`: a 2 MiB body gets 413 (JSON) and stores nothing, the same
/// sent chunked (no Content-Length to check up front) too, and a body just under 1 MiB
/// is accepted.
#[test]
fn body_over_max_upload_is_413() {
    let daemon = Daemon::builder().args(&["--max-upload-mb", "1"]).start();
    let big = TestFile::new(MediaKind::Mp4, 2 * 1024 * 1024, 1);
    assert_json_error(&daemon.upload(std::slice::from_ref(&big)), 413, None);
    assert_nothing_left(&daemon.data_dir);
    let (content_type, length, body) = Multipart::new().finish_streaming(
        "file",
        "big.mp4",
        "video/mp4",
        PayloadReader::new(MediaKind::Mp4, 3 * 1024 * 1024, 2),
        3 * 1024 * 1024,
    );
    let response = daemon
        .conn()
        .request_chunked(
            "POST",
            "/ingest/media",
            &[("Content-Type", &content_type)],
            body,
        )
        .expect("a 413 reply to the chunked body");
    assert!(length > 1024 * 1024);
    assert_json_error(&response, 413, None);
    assert_nothing_left(&daemon.data_dir);
    let fits = TestFile::new(MediaKind::Mp4, 1024 * 1024 - 4096, 3);
    let entries = daemon.upload_ok(std::slice::from_ref(&fits));
    assert_entry_matches(&daemon, &entries[0], &fits);
}

/// With `--queue-capacity 2` a 100-file batch still completes: reading pauses while the
/// two slots are busy, and every file is stored in order.
#[test]
fn tiny_queue_still_completes_a_large_batch() {
    let daemon = Daemon::builder().args(&["--queue-capacity", "2"]).start();
    let files = mixed_files(100, 7000);
    let entries = daemon.upload_ok(&files);
    for (entry, file) in entries.iter().zip(&files) {
        assert_entry_matches(&daemon, entry, file);
    }
}

/// Errors are JSON `{"error": ...}`: unknown route 404, wrong method on an upload route
/// 405, unknown hash 404.
#[test]
fn errors_are_json() {
    let daemon = Daemon::start();
    assert_json_error(&daemon.get("/no/such/route"), 404, None);
    assert_json_error(&daemon.get("/ingest/media"), 405, None);
    let unknown = format!("/files/metadata?hash={}", "0".repeat(64));
    assert_json_error(&daemon.get(&unknown), 404, None);
}

/// Back-pressure: with `--queue-capacity 1`, a client that stalls mid-file holds
/// the only job slot; a second upload (12 MiB, sent whole before its reply is read) waits
/// for a slot, and after 5 s gets 503 with `Retry-After` and a JSON error — not a reset —
/// storing nothing. Once the stalled client goes away the
/// slot frees and uploads succeed again.
#[test]
fn full_queue_answers_503_with_retry_after() {
    let daemon = Daemon::builder().args(&["--queue-capacity", "1"]).start();
    let stalled = TestFile::new(MediaKind::Mp4, 200_000, 7);
    let (content_type, body) = form_of(std::slice::from_ref(&stalled)).finish();
    let mut holder = daemon.conn();
    let head = format!(
        "POST /ingest/media HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
Content-Length: {}\r\n\r\n",
        body.len()
    );
    holder.write_raw(head.as_bytes()).unwrap();
    holder.write_raw(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let started = std::time::Instant::now();
    // Larger than the socket buffers: the client is still sending when the daemon decides
    // on 503, and must still read the 503 rather than a connection reset.
    let waiting = TestFile::new(MediaKind::Png, 12 * 1024 * 1024, 8);
    let response = daemon.upload(std::slice::from_ref(&waiting));
    let waited = started.elapsed();
    assert_json_error(&response, 503, None);
    assert!(
        response.header("retry-after").is_some(),
        "503 without Retry-After: {:?}",
        response.headers
    );
    assert!(
        waited >= std::time::Duration::from_secs(4),
        "503 came after {waited:?}, before the 5 s slot wait"
    );
    assert!(stored_files(&daemon.data_dir).is_empty());

    drop(holder);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = daemon.upload(std::slice::from_ref(&waiting));
        if response.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(stored_files(&daemon.data_dir).len(), 1);
}
