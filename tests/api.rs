//! The read and manage API against the real daemon ("Reading and managing":
//! /statistics, /metrics, bearer-token auth): download and stream with ranges and
//! preconditions, path checks, metadata, delete, listing, search, statistics, metrics
//! counters under concurrency, wrong methods, and the auth matrix on every endpoint.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use rhinobox::client::{MediaKind, PayloadReader, Response, blake3_hex};
use serde_json::Value;

/// Uploads one file (optionally with a category) and returns its entry.
fn upload_one(daemon: &Daemon, file: &TestFile, category: Option<&str>) -> Value {
    let mut form = form_of(std::slice::from_ref(file));
    if let Some(category) = category {
        form = form.text("category", category);
    }
    stored_entries(&daemon.post_multipart(form), 1).remove(0)
}

/// A GET (or other method) with extra headers on a fresh connection.
fn call(daemon: &Daemon, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    daemon.request(method, path, headers, b"")
}

fn hash_of(entry: &Value) -> String {
    entry["hash"].as_str().unwrap().to_string()
}

fn path_of(entry: &Value) -> String {
    entry["path"].as_str().unwrap().to_string()
}

/// Percent-encodes everything but unreserved characters, for query values.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an unlabelled metric line `name value`.
fn metric(daemon: &Daemon, name: &str) -> u64 {
    let text = daemon.get("/metrics").text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// The hashes of a `files` array, in order.
fn hashes(body: &Value) -> Vec<String> {
    body["files"]
        .as_array()
        .unwrap_or_else(|| panic!("no files array in {body}"))
        .iter()
        .map(hash_of)
        .collect()
}

/// A download by hash returns the exact bytes with every header a download carries.
#[test]
fn download_by_hash_has_bytes_and_headers() {
    let daemon = Daemon::start();
    let file = TestFile::named("holiday photo.png", MediaKind::Png, 70_000, 1);
    let entry = upload_one(&daemon, &file, None);
    let hash = hash_of(&entry);
    let response = daemon.get(&format!("/files/download?hash={hash}"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.body == file.bytes, "downloaded bytes differ");
    assert_eq!(response.header("content-type"), Some("image/png"));
    assert_eq!(response.header("content-length"), Some("70000"));
    assert_eq!(
        response.header("etag"),
        Some(format!("\"{hash}\"").as_str())
    );
    assert_eq!(response.header("x-file-hash"), Some(hash.as_str()));
    assert_eq!(response.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        response.header("content-disposition"),
        Some("attachment; filename=\"holiday photo.png\"")
    );
    let uploaded = humantime::parse_rfc3339(entry["uploaded_at"].as_str().unwrap()).unwrap();
    let last_modified = httpdate::parse_http_date(response.header("last-modified").unwrap());
    assert_eq!(last_modified.unwrap(), uploaded);
    // Uppercase hex names the same file.
    let upper = daemon.get(&format!("/files/download?hash={}", hash.to_uppercase()));
    assert_eq!(upper.status, 200);
}

/// By path (plain and fully percent-encoded) the same bytes come back; `stream` says
/// `inline` where `download` says `attachment`.
#[test]
fn download_and_stream_by_path() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Pdf, 5000, 2);
    let entry = upload_one(&daemon, &file, Some("work/reports"));
    let path = path_of(&entry);
    for query in [path.clone(), encode(&path)] {
        let download = daemon.get(&format!("/files/download?path={query}"));
        assert_eq!(download.status, 200, "{}", download.text());
        assert!(download.body == file.bytes);
        let stream = daemon.get(&format!("/files/stream?path={query}"));
        assert_eq!(stream.status, 200, "{}", stream.text());
        assert!(stream.body == file.bytes);
        let disposition = stream.header("content-disposition").unwrap();
        assert!(disposition.starts_with("inline; "), "{disposition}");
    }
}

/// HEAD answers the headers of a GET (Content-Length of the whole file) and no body; the
/// keep-alive connection stays usable afterwards.
#[test]
fn head_has_headers_and_no_body() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Jpeg, 12_345, 3);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    let mut conn = daemon.conn();
    for endpoint in ["download", "stream"] {
        let target = format!("/files/{endpoint}?hash={hash}");
        let head = conn.request("HEAD", &target, &[], b"").unwrap();
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "HEAD carried a body");
        assert_eq!(head.header("content-length"), Some("12345"));
        assert_eq!(head.header("etag"), Some(format!("\"{hash}\"").as_str()));
        let get = conn.request("GET", &target, &[], b"").unwrap();
        assert!(get.body == file.bytes, "GET after HEAD on one connection");
    }
}

/// Names that need care: quotes and backslashes are escaped, a non-ASCII name gets an
/// ASCII fallback and the exact name in `filename*=UTF-8''...`.
#[test]
fn content_disposition_quotes_and_encodes_names() {
    let daemon = Daemon::start();
    let cases = [
        (
            "a \"quoted\" na\\me.txt",
            "attachment; filename=\"a \\\"quoted\\\" na\\\\me.txt\"",
        ),
        (
            "résumé.txt",
            "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt",
        ),
    ];
    for (seed, (name, expected)) in cases.iter().enumerate() {
        let bytes = format!("text file number {seed} with some words in it");
        let target = format!("/ingest/media/{}", encode(name));
        let put = daemon.request("PUT", &target, &[], bytes.as_bytes());
        let entry = stored_entries(&put, 1).remove(0);
        assert_eq!(entry["original_name"], *name);
        let response = daemon.get(&format!("/files/download?hash={}", hash_of(&entry)));
        assert_eq!(response.header("content-disposition"), Some(*expected));
    }
}

/// Single ranges per RFC 9110: first byte, last byte, open end, suffix, suffix longer
/// than the file, end past the file, start past the end (416 with `bytes */size`), and
/// forms that are ignored (reversed, several ranges, another unit) giving 200.
#[test]
fn range_edge_cases() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Zip, 1000, 4);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    let partial = [
        ("bytes=0-0", 0, 0),
        ("bytes=999-999", 999, 999),
        ("bytes=0-", 0, 999),
        ("bytes=500-", 500, 999),
        ("bytes=-1", 999, 999),
        ("bytes=-100", 900, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=990-5000", 990, 999),
        ("bytes=10-19", 10, 19),
    ];
    for endpoint in ["stream", "download"] {
        let target = format!("/files/{endpoint}?hash={hash}");
        for (range, start, end) in partial {
            let response = call(&daemon, "GET", &target, &[("Range", range)]);
            assert_eq!(response.status, 206, "{range}: {}", response.text());
            let content_range = format!("bytes {start}-{end}/1000");
            assert_eq!(
                response.header("content-range"),
                Some(content_range.as_str())
            );
            let length = (end - start + 1).to_string();
            assert_eq!(response.header("content-length"), Some(length.as_str()));
            assert!(response.body == file.bytes[start..=end], "{range} bytes");
        }
        for range in [
            "bytes=1000-",
            "bytes=1000-1005",
            "bytes=5000-6000",
            "bytes=-0",
        ] {
            let response = call(&daemon, "GET", &target, &[("Range", range)]);
            assert_json_error(&response, 416, None);
            assert_eq!(
                response.header("content-range"),
                Some("bytes */1000"),
                "{range}"
            );
        }
        for range in ["bytes=5-3", "bytes=0-1,5-6", "items=0-5", "bytes=x-y"] {
            let response = call(&daemon, "GET", &target, &[("Range", range)]);
            assert_eq!(response.status, 200, "{range} must be ignored");
            assert!(response.body == file.bytes);
        }
    }
    // Range is defined for GET only: HEAD ignores it.
    let head = call(
        &daemon,
        "HEAD",
        &format!("/files/stream?hash={hash}"),
        &[("Range", "bytes=0-9")],
    );
    assert_eq!(head.status, 200);
}

/// A zero-byte file downloads as an empty 200; any range of it is unsatisfiable.
#[test]
fn zero_length_file_download_and_ranges() {
    let daemon = Daemon::start();
    let put = daemon.request("PUT", "/ingest/media/empty.bin", &[], b"");
    let entry = stored_entries(&put, 1).remove(0);
    let target = format!("/files/stream?hash={}", hash_of(&entry));
    let response = daemon.get(&target);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("0"));
    assert!(response.body.is_empty());
    for range in ["bytes=0-", "bytes=0-0", "bytes=-1"] {
        let response = call(&daemon, "GET", &target, &[("Range", range)]);
        assert_json_error(&response, 416, None);
        assert_eq!(response.header("content-range"), Some("bytes */0"));
    }
}

/// If-None-Match (the ETag, a weak copy of it, `*`) and If-Modified-Since (not older than
/// Last-Modified) give 304 without a body; If-None-Match wins over If-Modified-Since.
#[test]
fn conditional_requests_give_304() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Gif, 3000, 5);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    let target = format!("/files/stream?hash={hash}");
    let first = daemon.get(&target);
    let etag = first.header("etag").unwrap().to_string();
    let last_modified = first.header("last-modified").unwrap().to_string();
    let weak = format!("W/{etag}");
    let listed = format!("\"nope\", {etag}");
    for (name, value) in [
        ("If-None-Match", etag.as_str()),
        ("If-None-Match", weak.as_str()),
        ("If-None-Match", "*"),
        ("If-None-Match", listed.as_str()),
        ("If-Modified-Since", last_modified.as_str()),
        ("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT"),
    ] {
        let response = call(&daemon, "GET", &target, &[(name, value)]);
        assert_eq!(response.status, 304, "{name}: {value}");
        assert!(response.body.is_empty());
        assert_eq!(response.header("etag"), Some(etag.as_str()));
    }
    for (name, value) in [
        ("If-None-Match", "\"other\""),
        ("If-Modified-Since", "Thu, 01 Jan 1970 00:00:01 GMT"),
        ("If-Modified-Since", "not a date"),
    ] {
        let response = call(&daemon, "GET", &target, &[(name, value)]);
        assert_eq!(response.status, 200, "{name}: {value}");
        assert!(response.body == file.bytes);
    }
    let both = [
        ("If-None-Match", "\"other\""),
        ("If-Modified-Since", last_modified.as_str()),
    ];
    assert_eq!(call(&daemon, "GET", &target, &both).status, 200);
}

/// If-Range with the ETag or the exact Last-Modified keeps the range (206); another tag,
/// a weak tag or another date sends the whole file (200).
#[test]
fn if_range_keeps_or_drops_the_range() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Mp3, 4000, 6);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    let target = format!("/files/stream?hash={hash}");
    let first = daemon.get(&target);
    let etag = first.header("etag").unwrap().to_string();
    let last_modified = first.header("last-modified").unwrap().to_string();
    let weak = format!("W/{etag}");
    for (if_range, status) in [
        (etag.as_str(), 206),
        (last_modified.as_str(), 206),
        ("\"other\"", 200),
        (weak.as_str(), 200),
        ("Thu, 01 Jan 1970 00:00:01 GMT", 200),
    ] {
        let headers = [("Range", "bytes=100-199"), ("If-Range", if_range)];
        let response = call(&daemon, "GET", &target, &headers);
        assert_eq!(response.status, status, "If-Range {if_range}");
        let expected: &[u8] = if status == 206 {
            &file.bytes[100..200]
        } else {
            &file.bytes
        };
        assert!(response.body == expected, "If-Range {if_range}: body");
    }
}

/// `path=` that is absolute, climbs with `..` (plain or `%2e%2e`), has empty or `.`
/// segments or leaves `storage/` is 400 JSON on both endpoints; a well-formed path that is
/// not stored is 404.
#[test]
fn path_traversal_is_rejected() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Png, 2000, 7);
    let stored = path_of(&upload_one(&daemon, &file, None));
    let bad = [
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "storage/../metadata/journal.ndjson",
        "storage/%2e%2e/metadata/journal.ndjson",
        "storage/%2E%2E/%2E%2E/etc/passwd",
        "storage%2F..%2F..%2Fetc%2Fpasswd",
        "storage/./images",
        "storage//images",
        "metadata/journal.ndjson",
        "..%2Fstorage",
        "storage",
        "",
    ];
    for endpoint in ["download", "stream"] {
        for path in bad {
            let response = daemon.get(&format!("/files/{endpoint}?path={path}"));
            assert_json_error(&response, 400, None);
        }
        let missing = format!("/files/{endpoint}?path=storage/images/png/000000000000_x.png");
        assert_json_error(&daemon.get(&missing), 404, None);
        let ok = daemon.get(&format!("/files/{endpoint}?path={stored}"));
        assert_eq!(ok.status, 200);
    }
}

/// Symbolic links planted in the storage tree (a file link and a directory link pointing
/// outside, and a stored file replaced by a link) are never followed: 400, and the
/// outside content never appears in a response.
#[test]
fn symlinks_planted_in_the_tree_are_not_followed() {
    let daemon = Daemon::start();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "TOP SECRET CONTENT").unwrap();
    let file = TestFile::new(MediaKind::Png, 2000, 8);
    let entry = upload_one(&daemon, &file, None);
    let storage = daemon.data_dir.join("storage");
    std::os::unix::fs::symlink(&secret, storage.join("images/png/evil.png")).unwrap();
    std::os::unix::fs::symlink(outside.path(), storage.join("images/escape")).unwrap();
    for path in [
        "storage/images/png/evil.png",
        "storage/images/escape/secret.txt",
    ] {
        for endpoint in ["download", "stream"] {
            let response = daemon.get(&format!("/files/{endpoint}?path={path}"));
            assert_json_error(&response, 400, Some("symbolic link"));
        }
    }
    // The stored file itself swapped for a link: by path 400, by hash never the secret.
    let on_disk = daemon.disk_path(&path_of(&entry));
    std::fs::remove_file(&on_disk).unwrap();
    std::os::unix::fs::symlink(&secret, &on_disk).unwrap();
    let by_path = daemon.get(&format!("/files/download?path={}", path_of(&entry)));
    assert_json_error(&by_path, 400, None);
    let by_hash = daemon.get(&format!("/files/download?hash={}", hash_of(&entry)));
    assert_ne!(by_hash.status, 200);
    assert!(!by_hash.text().contains("TOP SECRET"), "{}", by_hash.text());
}

/// Bytes of `len` that no upload of these tests holds: what a planted link points to.
fn decoy_bytes(len: usize) -> Vec<u8> {
    b"DECOY-".iter().cycle().take(len).copied().collect()
}

/// A stored file reached through a planted link is never served: by hash (both endpoints)
/// 404 with a message naming the link and a warning on stderr, by path 400.
fn assert_link_not_followed(daemon: &Daemon, entry: &Value, decoy: &[u8]) {
    for endpoint in ["download", "stream"] {
        let response = daemon.get(&format!("/files/{endpoint}?hash={}", hash_of(entry)));
        assert!(
            response.body != decoy,
            "{endpoint} by hash served the bytes behind the link"
        );
        assert_json_error(&response, 404, Some("symbolic link"));
    }
    let by_path = daemon.get(&format!("/files/download?path={}", path_of(entry)));
    assert_json_error(&by_path, 400, Some("symbolic link"));
    let warning = daemon.wait_for_line(Duration::from_secs(5), |line| {
        line.starts_with("stderr: ") && line.contains("symbolic link")
    });
    assert!(
        warning.is_some(),
        "no warning on stderr:\n{}",
        daemon.log_text()
    );
}

/// `?hash=` through a planted directory link: the category directory of a stored
/// file is replaced by a symbolic link to a directory outside the data dir that holds a
/// file of the same name and size but other bytes. A download by hash must not serve them.
#[test]
fn hash_download_does_not_follow_a_symlinked_category_directory() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Png, 3000, 31);
    let entry = upload_one(&daemon, &file, Some("vacation"));
    let on_disk = daemon.disk_path(&path_of(&entry));
    let category_dir = on_disk.parent().unwrap();
    assert!(
        category_dir.ends_with("storage/images/png/vacation"),
        "{on_disk:?}"
    );
    let outside = tempfile::tempdir().unwrap();
    let decoy = decoy_bytes(file.bytes.len());
    std::fs::write(outside.path().join(on_disk.file_name().unwrap()), &decoy).unwrap();
    std::fs::remove_dir_all(category_dir).unwrap();
    std::os::unix::fs::symlink(outside.path(), category_dir).unwrap();
    assert_link_not_followed(&daemon, &entry, &decoy);
}

/// The stored file itself replaced by a symbolic link to a file of the same size
/// outside the data dir: never served by hash (404) or by path (400).
#[test]
fn hash_download_does_not_follow_a_stored_file_replaced_by_a_symlink() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Png, 3000, 32);
    let entry = upload_one(&daemon, &file, None);
    let on_disk = daemon.disk_path(&path_of(&entry));
    let outside = tempfile::tempdir().unwrap();
    let decoy = decoy_bytes(file.bytes.len());
    let target = outside.path().join("decoy.png");
    std::fs::write(&target, &decoy).unwrap();
    std::fs::remove_file(&on_disk).unwrap();
    std::os::unix::fs::symlink(&target, &on_disk).unwrap();
    assert_link_not_followed(&daemon, &entry, &decoy);
}

/// Missing, doubled or malformed parameters are 400; an unknown hash is 404.
#[test]
fn download_parameter_errors() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Png, 2000, 9);
    let entry = upload_one(&daemon, &file, None);
    let (hash, path) = (hash_of(&entry), path_of(&entry));
    for endpoint in ["download", "stream"] {
        let base = format!("/files/{endpoint}");
        assert_json_error(&daemon.get(&base), 400, None);
        assert_json_error(&daemon.get(&format!("{base}?hash=xyz")), 400, Some("hash"));
        let long = "g".repeat(64);
        assert_json_error(&daemon.get(&format!("{base}?hash={long}")), 400, None);
        let both = format!("{base}?hash={hash}&path={path}");
        assert_json_error(&daemon.get(&both), 400, None);
        let unknown = format!("{base}?hash={}", "ab".repeat(32));
        assert_json_error(&daemon.get(&unknown), 404, None);
    }
}

/// /files/metadata returns the stored record (the upload entry without `duplicate`), by
/// hash or by path; unknown is 404, malformed or missing is 400.
#[test]
fn metadata_returns_the_record() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Wav, 3000, 10);
    let mut entry = upload_one(&daemon, &file, Some("interviews"));
    entry.as_object_mut().unwrap().remove("duplicate");
    let by_hash = daemon.get(&format!("/files/metadata?hash={}", hash_of(&entry)));
    assert_eq!(by_hash.status, 200);
    assert_eq!(by_hash.json(), entry);
    let by_path = daemon.get(&format!("/files/metadata?path={}", path_of(&entry)));
    assert_eq!(by_path.json(), entry);
    let unknown = format!("/files/metadata?hash={}", "cd".repeat(32));
    assert_json_error(&daemon.get(&unknown), 404, None);
    assert_json_error(&daemon.get("/files/metadata?hash=123"), 400, None);
    assert_json_error(&daemon.get("/files/metadata"), 400, None);
    assert_json_error(&daemon.get("/files/metadata?path=../x"), 400, None);
}

/// DELETE removes the file from disk and the index and journals it: download and
/// metadata are 404 after, a second delete is 404, the listing and statistics drop it,
/// and all of it holds after a restart (journal replay); the other file is untouched.
#[test]
fn delete_removes_file_and_survives_restart() {
    let mut daemon = Daemon::start();
    let keep = TestFile::new(MediaKind::Jpeg, 4000, 11);
    let gone = TestFile::new(MediaKind::Mp4, 5000, 12);
    let keep_entry = upload_one(&daemon, &keep, None);
    let gone_entry = upload_one(&daemon, &gone, None);
    let (hash, path) = (hash_of(&gone_entry), path_of(&gone_entry));
    assert!(daemon.disk_path(&path).exists());
    let response = call(&daemon, "DELETE", &format!("/files/{hash}"), &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        serde_json::json!({"deleted": hash, "path": path})
    );
    assert!(!daemon.disk_path(&path).exists(), "file still on disk");
    let check_gone = |daemon: &Daemon| {
        for target in [
            format!("/files/download?hash={hash}"),
            format!("/files/stream?hash={hash}"),
            format!("/files/download?path={path}"),
            format!("/files/metadata?hash={hash}"),
        ] {
            assert_json_error(&daemon.get(&target), 404, None);
        }
        let listed = daemon.get("/files").json();
        assert_eq!(hashes(&listed), vec![hash_of(&keep_entry)]);
        let stats = daemon.get("/statistics").json();
        assert_eq!(stats["files"], 1);
        assert_eq!(stats["bytes"], 4000);
        assert!(stats["by_media_type"].get("videos").is_none(), "{stats}");
        let kept = daemon.get(&format!("/files/download?hash={}", hash_of(&keep_entry)));
        assert!(kept.body == keep.bytes);
    };
    check_gone(&daemon);
    assert_json_error(
        &call(&daemon, "DELETE", &format!("/files/{hash}"), &[]),
        404,
        None,
    );
    let journal: String = daemon
        .journal_files()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(journal.contains("\"op\":\"delete\""), "no delete record");
    daemon.restart();
    check_gone(&daemon);
}

/// A delete acknowledged under `--durability batch` survives kill -9 right after.
#[test]
fn delete_survives_kill_9() {
    let mut daemon = Daemon::builder().args(&["--durability", "batch"]).start();
    let file = TestFile::new(MediaKind::Flac, 3000, 13);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    assert_eq!(
        call(&daemon, "DELETE", &format!("/files/{hash}"), &[]).status,
        200
    );
    daemon.kill9();
    daemon.start_again();
    assert_json_error(
        &daemon.get(&format!("/files/metadata?hash={hash}")),
        404,
        None,
    );
    assert_eq!(daemon.get("/statistics").json()["files"], 0);
}

/// After a delete the same content uploads as new (not a duplicate) and is served again.
#[test]
fn reupload_after_delete_stores_again() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Ogg, 3000, 14);
    let entry = upload_one(&daemon, &file, None);
    let hash = hash_of(&entry);
    assert_eq!(
        call(&daemon, "DELETE", &format!("/files/{hash}"), &[]).status,
        200
    );
    let again = upload_one(&daemon, &file, None);
    assert_eq!(again["duplicate"], false);
    assert!(daemon.disk_path(&path_of(&again)).exists());
    let response = daemon.get(&format!("/files/download?hash={hash}"));
    assert!(response.body == file.bytes);
}

/// A malformed hash in DELETE is 400; an empty one is 400 too.
#[test]
fn delete_with_bad_hash_is_400() {
    let daemon = Daemon::start();
    assert_json_error(
        &call(&daemon, "DELETE", "/files/not-a-hash", &[]),
        400,
        None,
    );
    assert_json_error(&call(&daemon, "DELETE", "/files/", &[]), 400, None);
}

/// The listing is newest first; pages of `limit` cover every file exactly once; past the
/// end is an empty page with the right total; `limit` is capped at 1000 and defaults to
/// 50; page or limit 0 or garbage is 400.
#[test]
fn list_orders_newest_first_and_paginates() {
    let daemon = Daemon::start();
    let mut uploaded = Vec::new();
    for file in mixed_files(7, 100) {
        uploaded.push(hash_of(&upload_one(&daemon, &file, None)));
    }
    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();
    let all = daemon.get("/files").json();
    assert_eq!(all["page"], 1);
    assert_eq!(all["limit"], 50);
    assert_eq!(all["total"], 7);
    assert_eq!(hashes(&all), newest_first);
    let mut paged = Vec::new();
    for page in 1..=3 {
        let body = daemon.get(&format!("/files?page={page}&limit=3")).json();
        assert_eq!(body["total"], 7);
        assert_eq!(body["page"], page);
        assert_eq!(body["limit"], 3);
        let expected = if page == 3 { 1 } else { 3 };
        assert_eq!(hashes(&body).len(), expected, "page {page}");
        paged.extend(hashes(&body));
    }
    assert_eq!(paged, newest_first);
    let beyond = daemon.get("/files?page=4&limit=3").json();
    assert_eq!(hashes(&beyond).len(), 0);
    assert_eq!(beyond["total"], 7);
    let exact = daemon.get("/files?page=1&limit=7").json();
    assert_eq!(hashes(&exact), newest_first);
    assert_eq!(daemon.get("/files?limit=5000").json()["limit"], 1000);
    let huge_page = daemon.get("/files?page=99999999999999999999999").json();
    assert_eq!(hashes(&huge_page).len(), 0);
    for query in [
        "page=0", "page=abc", "page=-1", "limit=0", "limit=x", "page=1.5",
    ] {
        assert_json_error(&daemon.get(&format!("/files?{query}")), 400, None);
    }
}

/// `media_type` filters exactly; `category` matches the whole category or a prefix at a
/// `/` boundary only; filters combine; `total` counts the matches.
#[test]
fn list_filters_by_media_type_and_category() {
    let daemon = Daemon::start();
    let jpg_vacation = upload_one(
        &daemon,
        &TestFile::new(MediaKind::Jpeg, 900, 20),
        Some("vacation"),
    );
    let jpg_plain = upload_one(&daemon, &TestFile::new(MediaKind::Jpeg, 900, 21), None);
    let png = upload_one(
        &daemon,
        &TestFile::new(MediaKind::Png, 900, 22),
        Some("vacation"),
    );
    let video = upload_one(&daemon, &TestFile::new(MediaKind::Mp4, 900, 23), None);
    assert_eq!(jpg_vacation["category"], "images/jpg/vacation");
    let query = |q: &str| {
        let body = daemon.get(&format!("/files?{q}")).json();
        assert_eq!(body["total"], hashes(&body).len(), "{q}: {body}");
        hashes(&body)
    };
    let h = hash_of;
    assert_eq!(
        query("media_type=images"),
        vec![h(&png), h(&jpg_plain), h(&jpg_vacation)]
    );
    assert_eq!(query("media_type=videos"), vec![h(&video)]);
    assert_eq!(query("media_type=nothing"), Vec::<String>::new());
    assert_eq!(
        query("category=images/jpg"),
        vec![h(&jpg_plain), h(&jpg_vacation)]
    );
    assert_eq!(
        query("category=images/jpg/vacation"),
        vec![h(&jpg_vacation)]
    );
    assert_eq!(query("category=images/jp"), Vec::<String>::new());
    assert_eq!(
        query("category=images/jpg/"),
        vec![h(&jpg_plain), h(&jpg_vacation)]
    );
    assert_eq!(
        query("category=images&media_type=videos"),
        Vec::<String>::new()
    );
    let page = daemon.get("/files?media_type=images&limit=1&page=2").json();
    assert_eq!(hashes(&page), vec![h(&jpg_plain)]);
    assert_eq!(page["total"], 3);
}

/// Search: `name` is a case-insensitive substring of the original name, `ext` matches with
/// or without the dot, `media_type` exactly, `from`/`to` are inclusive RFC 3339 instants
/// or whole days; filters combine; an unparsable date is 400.
#[test]
fn search_filters_combine() {
    let daemon = Daemon::start();
    let beach = upload_one(
        &daemon,
        &TestFile::named("Beach-Sunset.JPG", MediaKind::Jpeg, 900, 30),
        None,
    );
    let beach_png = upload_one(
        &daemon,
        &TestFile::named("beach map.png", MediaKind::Png, 900, 31),
        None,
    );
    let report = upload_one(
        &daemon,
        &TestFile::named("Report 2024.pdf", MediaKind::Pdf, 900, 32),
        None,
    );
    let h = hash_of;
    let search = |q: &str| {
        let response = daemon.get(&format!("/files/search?{q}"));
        assert_eq!(response.status, 200, "{q}: {}", response.text());
        let body = response.json();
        assert_eq!(body["total"], hashes(&body).len(), "{q}");
        let mut found = hashes(&body);
        found.sort();
        found
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(search("name=BEACH"), sorted(vec![h(&beach), h(&beach_png)]));
    assert_eq!(search("name=sunset"), vec![h(&beach)]);
    assert_eq!(search("name=beach&ext=png"), vec![h(&beach_png)]);
    assert_eq!(search("name=beach&ext=.jpg"), vec![h(&beach)]);
    assert_eq!(search("ext=JPG"), vec![h(&beach)]);
    assert_eq!(search("media_type=documents"), vec![h(&report)]);
    assert_eq!(
        search("media_type=documents&name=beach"),
        Vec::<String>::new()
    );
    assert_eq!(search("name=report%202024"), vec![h(&report)]);
    assert_eq!(
        search(""),
        sorted(vec![h(&beach), h(&beach_png), h(&report)])
    );

    let uploaded_at = report["uploaded_at"].as_str().unwrap();
    let at = humantime::parse_rfc3339(uploaded_at).unwrap();
    let day = &uploaded_at[..10];
    let fmt = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let later = fmt(at + Duration::from_secs(3600));
    assert!(search(&format!("from={day}&to={day}&name=report")) == vec![h(&report)]);
    assert_eq!(
        search(&format!("from={uploaded_at}&to={uploaded_at}&name=report")),
        vec![h(&report)]
    );
    assert_eq!(search(&format!("from={later}")), Vec::<String>::new());
    assert_eq!(search("to=2000-01-01"), Vec::<String>::new());
    let earlier = fmt(at - Duration::from_secs(86_400 * 2));
    assert_eq!(search(&format!("from={earlier}&ext=pdf")), vec![h(&report)]);
    // An offset that names the same instant.
    let shifted = fmt(at + Duration::from_secs(2 * 3600)).replace('Z', "%2B02:00");
    assert_eq!(
        search(&format!("from={shifted}&to={shifted}&name=report")),
        vec![h(&report)]
    );
    for bad in [
        "from=yesterday",
        "to=2024-13-45",
        "from=2024-01-01T10:00:00",
        "to=12",
    ] {
        assert_json_error(&daemon.get(&format!("/files/search?{bad}")), 400, None);
    }
}

/// /statistics: files and bytes are what is stored now (per media type, only types with
/// files), duplicates and their bytes count since start; deletes are subtracted.
#[test]
fn statistics_follow_uploads_duplicates_and_deletes() {
    let daemon = Daemon::start();
    let empty = daemon.get("/statistics").json();
    assert_eq!(
        empty,
        serde_json::json!({"files": 0, "bytes": 0, "duplicates": 0, "bytes_deduplicated": 0,
                           "by_media_type": {}})
    );
    let jpg = TestFile::new(MediaKind::Jpeg, 1000, 40);
    let png = TestFile::new(MediaKind::Png, 2000, 41);
    let pdf = TestFile::new(MediaKind::Pdf, 3000, 42);
    daemon.upload_ok(&[jpg.clone(), png.clone(), pdf.clone()]);
    daemon.upload_ok(&[jpg.clone(), jpg.clone()]);
    let stats = daemon.get("/statistics").json();
    assert_eq!(stats["files"], 3);
    assert_eq!(stats["bytes"], 6000);
    assert_eq!(stats["duplicates"], 2);
    assert_eq!(stats["bytes_deduplicated"], 2000);
    assert_eq!(
        stats["by_media_type"]["images"],
        serde_json::json!({"files": 2, "bytes": 3000})
    );
    assert_eq!(
        stats["by_media_type"]["documents"],
        serde_json::json!({"files": 1, "bytes": 3000})
    );
    assert_eq!(stats["by_media_type"].as_object().unwrap().len(), 2);
    let deleted = call(&daemon, "DELETE", &format!("/files/{}", pdf.hash()), &[]);
    assert_eq!(deleted.status, 200);
    let stats = daemon.get("/statistics").json();
    assert_eq!(stats["files"], 2);
    assert_eq!(stats["bytes"], 3000);
    assert!(stats["by_media_type"].get("documents").is_none(), "{stats}");
}

/// The gauges of /metrics beside the counters: `rhinobox_stored_files` and
/// `rhinobox_stored_bytes` follow what is stored (as /statistics: duplicates add nothing,
/// a delete subtracts), `rhinobox_free_bytes{dir="storage"|"metadata"}` is the room on
/// each data file system (non-zero, at most its size), and `rhinobox_build_info` names
/// the version, io engine and durability with the value 1. Each has # HELP and # TYPE.
#[test]
fn metrics_have_store_gauges_free_space_and_build_info() {
    let daemon = Daemon::start();
    assert_eq!(metric(&daemon, "rhinobox_stored_files"), 0);
    let jpg = TestFile::new(MediaKind::Jpeg, 1000, 43);
    let pdf = TestFile::new(MediaKind::Pdf, 3000, 44);
    daemon.upload_ok(&[jpg.clone(), pdf.clone(), jpg.clone()]);
    assert_eq!(metric(&daemon, "rhinobox_stored_files"), 2);
    assert_eq!(metric(&daemon, "rhinobox_stored_bytes"), 4000);
    let text = daemon.get("/metrics").text();
    for name in [
        "rhinobox_stored_files",
        "rhinobox_stored_bytes",
        "rhinobox_free_bytes",
        "rhinobox_build_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP of {name}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} gauge\n")),
            "no TYPE of {name}:\n{text}"
        );
    }
    let disk_bytes = {
        let stats = file_system_size(&daemon.data_dir);
        stats.0 * stats.1
    };
    for dir in ["storage", "metadata"] {
        let prefix = format!("rhinobox_free_bytes{{dir=\"{dir}\"}} ");
        let free: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}in:\n{text}"));
        assert!(
            free > 0 && free <= disk_bytes,
            "{prefix}{free} of {disk_bytes}"
        );
    }
    let build = format!(
        "rhinobox_build_info{{version=\"{}\",io_engine=\"{}\",durability=\"batch\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        io_engine()
    );
    assert!(text.contains(&build), "no {build:?} in:\n{text}");
    let deleted = call(&daemon, "DELETE", &format!("/files/{}", pdf.hash()), &[]);
    assert_eq!(deleted.status, 200);
    assert_eq!(metric(&daemon, "rhinobox_stored_files"), 1);
    assert_eq!(metric(&daemon, "rhinobox_stored_bytes"), 1000);
}

/// (f_blocks, f_frsize) of the file system holding `path`: its size is their product.
// The casts are no-ops here but not on 32-bit targets, whose counts are 32-bit.
#[allow(clippy::unnecessary_cast)]
fn file_system_size(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path that outlives the call and room for one statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stats = unsafe { stats.assume_init() };
    (stats.f_blocks as u64, stats.f_frsize as u64)
}

/// Metrics under concurrency: N parallel uploads of distinct files raise
/// `files_ingested_total` by exactly N and `bytes_ingested_total` by their bytes; the same
/// N again raise only `duplicates_total`, by N; per-core queue depth is exposed.
#[test]
fn metrics_count_concurrent_uploads_exactly() {
    const CLIENTS: usize = 16;
    let daemon = Daemon::start();
    let files: Vec<TestFile> = (0..CLIENTS as u64)
        .map(|i| TestFile::new(MediaKind::ALL[i as usize % 18], 5000 + i * 10, 500 + i))
        .collect();
    let bytes: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
    let upload_all = || {
        std::thread::scope(|scope| {
            for file in &files {
                let daemon = &daemon;
                scope.spawn(move || {
                    let response = daemon.upload(std::slice::from_ref(file));
                    assert_eq!(response.status, 200, "{}", response.text());
                });
            }
        });
    };
    let files_before = metric(&daemon, "rhinobox_files_ingested_total");
    let bytes_before = metric(&daemon, "rhinobox_bytes_ingested_total");
    let duplicates_before = metric(&daemon, "rhinobox_duplicates_total");
    upload_all();
    assert_eq!(
        metric(&daemon, "rhinobox_files_ingested_total") - files_before,
        CLIENTS as u64
    );
    assert_eq!(
        metric(&daemon, "rhinobox_bytes_ingested_total") - bytes_before,
        bytes
    );
    assert_eq!(
        metric(&daemon, "rhinobox_duplicates_total"),
        duplicates_before
    );
    upload_all();
    assert_eq!(
        metric(&daemon, "rhinobox_files_ingested_total") - files_before,
        CLIENTS as u64
    );
    assert_eq!(
        metric(&daemon, "rhinobox_duplicates_total") - duplicates_before,
        CLIENTS as u64
    );
    let text = daemon.get("/metrics").text();
    assert!(text.contains("rhinobox_queue_depth{core=\"0\"}"), "{text}");
    assert!(
        text.contains("rhinobox_http_requests_total{code=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("rhinobox_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("rhinobox_fsync_batches_total"), "{text}");
}

/// Wrong methods on every endpoint are 405 JSON with an Allow header that lists the
/// methods the route takes (regression: `GET /ingest/media`, `/healthz`, `/stats`,
/// `/metrics` and `/ingest/media/{name}` answered 405 without `Allow`).
#[test]
fn wrong_methods_are_405() {
    let daemon = Daemon::start();
    let hash = "ab".repeat(32);
    for (method, target, allow) in [
        ("GET", "/ingest/media".to_string(), "POST"),
        ("PUT", "/ingest/media".to_string(), "POST"),
        ("GET", "/ingest/media/x.txt".to_string(), "PUT"),
        ("POST", "/ingest/media/x.txt".to_string(), "PUT"),
        ("POST", "/healthz".to_string(), "GET, HEAD"),
        ("POST", "/stats".to_string(), "GET"),
        ("DELETE", "/metrics".to_string(), "GET"),
        ("POST", "/files/download?hash=x".to_string(), "GET, HEAD"),
        ("DELETE", "/files/stream".to_string(), "GET, HEAD"),
        ("PUT", "/files/metadata".to_string(), "GET"),
        ("POST", "/files".to_string(), "GET"),
        ("DELETE", "/files/search".to_string(), "GET"),
        ("POST", "/statistics".to_string(), "GET"),
        ("GET", format!("/files/{hash}"), "DELETE"),
        ("PUT", format!("/files/{hash}"), "DELETE"),
    ] {
        let response = daemon.request(method, &target, &[], b"");
        assert_json_error(&response, 405, None);
        assert_eq!(response.header("allow"), Some(allow), "{method} {target}");
    }
}

/// Bearer-token auth on every endpoint: without a token or with a wrong one 401 JSON
/// with `WWW-Authenticate: Bearer realm="rhinobox"`, with the right one the endpoint's own
/// answer; /healthz is open; the token (given by flag or by env var) never appears in the
/// daemon's output.
#[test]
fn auth_matrix_on_every_endpoint() {
    const TOKEN: &str = "tok-3f9a1c-very-secret";
    for by_env in [false, true] {
        let builder = Daemon::builder();
        let daemon = if by_env {
            builder.env("RHINOBOX_API_TOKEN", TOKEN).start()
        } else {
            builder.args(&["--api-token", TOKEN]).start()
        };
        let right = format!("Bearer {TOKEN}");
        let file = TestFile::new(MediaKind::Jpeg, 1000, 60);
        let (content_type, body) = form_of(std::slice::from_ref(&file)).finish();
        let upload = daemon.request(
            "POST",
            "/ingest/media",
            &[("Content-Type", &content_type), ("Authorization", &right)],
            &body,
        );
        let hash = hash_of(&stored_entries(&upload, 1)[0]);
        let other = "ef".repeat(32);
        let endpoints: Vec<(&str, String, u16)> = vec![
            ("GET", format!("/files/download?hash={hash}"), 200),
            ("HEAD", format!("/files/download?hash={hash}"), 200),
            ("GET", format!("/files/stream?hash={hash}"), 200),
            ("GET", format!("/files/metadata?hash={hash}"), 200),
            ("GET", "/files?page=1".to_string(), 200),
            ("GET", "/files/search?name=f".to_string(), 200),
            ("GET", "/statistics".to_string(), 200),
            ("GET", "/metrics".to_string(), 200),
            ("GET", "/stats".to_string(), 200),
            ("DELETE", format!("/files/{other}"), 404),
            ("PUT", "/ingest/media/x.txt".to_string(), 200),
            ("POST", "/ingest/media".to_string(), 400),
        ];
        for (method, target, expected) in &endpoints {
            let body: &[u8] = if matches!(*method, "PUT" | "POST") {
                b"some text body"
            } else {
                b""
            };
            for auth in [None, Some("Bearer wrong"), Some(TOKEN), Some("bearer x")] {
                let headers: Vec<(&str, &str)> =
                    auth.map(|a| ("Authorization", a)).into_iter().collect();
                let response = daemon.request(method, target, &headers, body);
                assert_eq!(response.status, 401, "{method} {target} with {auth:?}");
                assert_eq!(
                    response.header("www-authenticate"),
                    Some("Bearer realm=\"rhinobox\""),
                    "{method} {target}: a 401 names the Bearer scheme"
                );
                if *method != "HEAD" {
                    assert_json_error(&response, 401, None);
                }
            }
            let response = daemon.request(method, target, &[("Authorization", &right)], body);
            assert_eq!(
                response.status,
                *expected,
                "{method} {target}: {}",
                response.text()
            );
        }
        let deleted = call(
            &daemon,
            "DELETE",
            &format!("/files/{hash}"),
            &[("Authorization", &right)],
        );
        assert_eq!(deleted.status, 200);
        assert_eq!(daemon.get("/healthz").status, 200);
        // Let the access-log thread write what it has.
        std::thread::sleep(Duration::from_millis(200));
        let output = daemon.log_text();
        assert!(
            output.contains("\"GET /files/download\""),
            "no access log lines"
        );
        assert!(
            !output.contains(TOKEN),
            "the token leaked into the daemon's output"
        );
    }
}

/// The access log has one line per download with the bytes sent (the whole file, the
/// range, nothing for HEAD).
#[test]
fn access_log_counts_download_bytes() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Png, 54_321, 70);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    daemon.get(&format!("/files/download?hash={hash}"));
    call(
        &daemon,
        "GET",
        &format!("/files/stream?hash={hash}"),
        &[("Range", "bytes=0-99")],
    );
    call(
        &daemon,
        "HEAD",
        &format!("/files/download?hash={hash}"),
        &[],
    );
    for (wanted, query) in [
        ("\"GET /files/download\" - 200 54321B in ", "GET"),
        ("\"GET /files/stream\" - 206 100B in ", "GET"),
        ("\"HEAD /files/download\" - 200 0B in ", "HEAD"),
    ] {
        let found = daemon.wait_for_line(Duration::from_secs(5), |line| {
            line.contains(wanted) && line.starts_with("stderr: 127.0.0.1:")
        });
        let line = found.unwrap_or_else(|| panic!("no line with {wanted:?} ({query})"));
        assert!(
            line.ends_with(&format!("ms query=\"hash={hash}\"")),
            "the query is not logged: {line}"
        );
    }
}

/// What the client chose is logged escaped and bounded: a path holding a quote (which
/// hyper lets through in paths), a query holding a backslash and non-ASCII bytes, and a
/// query of 4,000 bytes each give one line whose fields cannot be forged, and the long one
/// is cut with `…`.
#[test]
fn access_log_escapes_and_bounds_the_query() {
    let daemon = Daemon::start();
    for head in [
        "GET /no\"such HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /healthz?x=a\\b\u{e9} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let mut raw = TcpStream::connect(daemon.addr).unwrap();
        raw.write_all(head.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let _ = raw.read_to_end(&mut reply);
    }
    let quoted = daemon.wait_for_line(Duration::from_secs(5), |line| line.contains("/no\\\""));
    let quoted = quoted.unwrap_or_else(|| panic!("no line for the quoted path"));
    assert!(
        quoted.contains(r#" "GET /no\"such" - 404 "#),
        "quote not escaped: {quoted}"
    );
    let escaped = daemon.wait_for_line(Duration::from_secs(5), |line| {
        line.contains("\"GET /healthz\"") && line.contains("query=")
    });
    let escaped = escaped.unwrap_or_else(|| panic!("no line for the escaped query"));
    assert!(
        escaped.ends_with(r#"query="x=a\\b\xc3\xa9""#),
        "query not escaped: {escaped}"
    );
    let long = format!("/files/search?name={}", "a".repeat(4000));
    assert_eq!(daemon.get(&long).status, 200);
    let line = daemon
        .wait_for_line(Duration::from_secs(5), |line| {
            line.contains("\"GET /files/search\"")
        })
        .unwrap_or_else(|| panic!("no line for the long query"));
    assert!(
        line.ends_with("…\""),
        "long query not marked as cut: {line}"
    );
    assert!(
        line.len() < 1000,
        "long query not bounded: {} bytes",
        line.len()
    );
}

/// A raw GET whose body is read slowly, piece by piece: returns the status, the headers
/// and a reader positioned at the start of the body.
fn raw_get(daemon: &Daemon, target: &str) -> (u16, Vec<(String, String)>, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    (status, headers, reader)
}

/// Resident memory of a process in KiB (Linux /proc).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 256 MiB download read by a slow client streams with bounded memory (the daemon's
/// RSS grows by far less than the file), arrives intact, and survives a delete of the
/// file in the middle (the open descriptor keeps the bytes).
#[test]
fn large_download_streams_with_bounded_memory_and_survives_delete() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let daemon = Daemon::builder()
        .args(&["--durability", "none", "--max-upload-mb", "512"])
        .start();
    let reader = PayloadReader::new(MediaKind::Mp4, SIZE, 77);
    let upload = daemon
        .conn()
        .request_streaming("PUT", "/ingest/media/big.mp4", &[], reader, SIZE)
        .unwrap();
    let entry = stored_entries(&upload, 1).remove(0);
    let hash = hash_of(&entry);
    let rss_before = rss_kib(daemon.pid());
    let (status, headers, mut body) = raw_get(&daemon, &format!("/files/download?hash={hash}"));
    assert_eq!(status, 200);
    let length = headers.iter().find(|(k, _)| k == "content-length").unwrap();
    assert_eq!(length.1, SIZE.to_string());
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut received = 0u64;
    let mut rss_peak = rss_before;
    let started = Instant::now();
    let mut deleted = false;
    while received < SIZE {
        let n = body.read(&mut buffer).unwrap();
        assert!(n > 0, "connection closed after {received} bytes");
        hasher.update(&buffer[..n]);
        received += n as u64;
        if received < 8 * 1024 * 1024 {
            // A slow start: a server that reads ahead without bound would fill up now.
            std::thread::sleep(Duration::from_millis(20));
            rss_peak = rss_peak.max(rss_kib(daemon.pid()));
        } else if !deleted {
            let response = call(&daemon, "DELETE", &format!("/files/{hash}"), &[]);
            assert_eq!(response.status, 200);
            deleted = true;
        }
    }
    assert_eq!(hasher.finalize().to_hex().to_string(), hash, "bytes differ");
    let grown_mib = rss_peak.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "daemon RSS grew by {grown_mib} MiB during a slow download"
    );
    eprintln!(
        "256 MiB slow download in {:.2}s, RSS growth {grown_mib} MiB",
        started.elapsed().as_secs_f64()
    );
    assert!(!daemon.disk_path(&path_of(&entry)).exists());
}

/// Many concurrent range requests on one file all get their exact slices (the per-core
/// readers and the chunk pump do not mix responses up).
#[test]
fn concurrent_ranges_get_their_slices() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Webm, 3 * 1024 * 1024 + 7, 80);
    let hash = hash_of(&upload_one(&daemon, &file, None));
    let size = file.bytes.len();
    std::thread::scope(|scope| {
        for i in 0..16usize {
            let (daemon, file, hash) = (&daemon, &file, &hash);
            scope.spawn(move || {
                let start = (i * 197_003) % size;
                let end = (start + 700_001 * (i + 1)).min(size - 1);
                let range = format!("bytes={start}-{end}");
                let target = format!("/files/stream?hash={hash}");
                let response = call(daemon, "GET", &target, &[("Range", &range)]);
                assert_eq!(response.status, 206);
                assert!(response.body == file.bytes[start..=end], "{range}");
            });
        }
    });
    let whole = daemon.get(&format!("/files/download?hash={hash}"));
    assert_eq!(blake3_hex(&whole.body), hash);
}

/// The web page at `/` and its assets: served without the token even when one is set
/// (a browser cannot send it on navigation), each with its type, a Content-Security-Policy
/// that keeps every request on this host, and an ETag that revalidates to 304; HEAD has
/// the headers only; another method is 405 with `Allow`; the API beside it still wants
/// the token.
#[test]
fn web_page_is_served_without_token() {
    let daemon = Daemon::builder()
        .args(&["--api-token", "page-secret"])
        .start();
    let assets = [
        ("/", "text/html"),
        ("/index.html", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/icon.svg", "image/svg+xml"),
    ];
    for (path, content_type) in assets {
        let response = daemon.get(path);
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response
                .header("content-type")
                .unwrap()
                .starts_with(content_type),
            "{path}: {:?}",
            response.header("content-type")
        );
        let csp = response.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        assert!(!response.body.is_empty());
        let etag = response.header("etag").unwrap().to_string();
        let again = daemon.request("GET", path, &[("If-None-Match", &etag)], b"");
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        let head = daemon.request("HEAD", path, &[], b"");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
    }
    let page = daemon.get("/").text();
    assert!(page.contains("<input id=\"file-input\" type=\"file\" multiple"));
    assert!(page.contains("type=\"password\""), "the token prompt");
    let post = daemon.request("POST", "/", &[], b"");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(daemon.get("/statistics").status, 401);
    assert_eq!(
        daemon.get("/assets/nope.js").status,
        401,
        "only the page is open"
    );
}
