//! POST /ingest/media and PUT /ingest/media/{name} against the real daemon: records,
//! order, hashes, type detection, placement on disk, large streamed bodies.

mod common;

use common::*;
use rhinobox::client::{MediaKind, Multipart, PayloadReader, blake3_hex, payload};

/// One JPEG in one request: a 200 whose single entry has the BLAKE3 of the bytes, the
/// size, image/jpeg, `duplicate: false`, the original name, an empty comment, a
/// timestamp, a path `storage/images/jpg/<hash12>_photo1.jpg` and those exact bytes on
/// disk.
#[test]
fn single_upload_is_stored_with_its_record() {
    let daemon = Daemon::start();
    let file = TestFile::named("photo1.jpg", MediaKind::Jpeg, 245_680, 1);
    let entries = daemon.upload_ok(std::slice::from_ref(&file));
    let entry = &entries[0];
    assert_entry_matches(&daemon, entry, &file);
    assert_eq!(entry["duplicate"], false);
    assert_eq!(entry["original_name"], "photo1.jpg");
    assert_eq!(entry["comment"], "", "comment when none was sent");
    assert!(
        entry["uploaded_at"].as_str().is_some_and(|t| t.len() >= 20),
        "{entry}"
    );
    let expected_path = format!("storage/images/jpg/{}_photo1.jpg", &file.hash()[..12]);
    assert_eq!(entry["path"], expected_path.as_str());
    assert!(
        tmp_files(&daemon.data_dir).is_empty(),
        "storage/.tmp not emptied"
    );
}

fn batch_keeps_order_and_hashes(count: usize) {
    let daemon = Daemon::start();
    let files = mixed_files(count, count as u64 * 1000);
    let entries = daemon.upload_ok(&files);
    for (entry, file) in entries.iter().zip(&files) {
        assert_eq!(entry["original_name"], file.name.as_str(), "order broken");
        assert_entry_matches(&daemon, entry, file);
        assert_eq!(entry["duplicate"], false);
    }
    assert_eq!(stored_files(&daemon.data_dir).len(), count);
}

/// A batch of 10 mixed files: entries in the order of the parts, every hash the BLAKE3
/// of the bytes sent, every file on disk.
#[test]
fn batch_of_10_keeps_order() {
    batch_keeps_order_and_hashes(10);
}

/// As above with 100 files.
#[test]
fn batch_of_100_keeps_order() {
    batch_keeps_order_and_hashes(100);
}

/// As above with 500 files.
#[test]
fn batch_of_500_keeps_order() {
    batch_keeps_order_and_hashes(500);
}

/// As above with 1000 files.
#[test]
fn batch_of_1000_keeps_order() {
    batch_keeps_order_and_hashes(1000);
}

/// One file of every media kind in one request: each gets the expected MIME type,
/// media_type and canonical extension, and lands at
/// `storage/<media_type>/<ext>/<hash12>_<name>.<ext>` with its exact bytes.
#[test]
fn every_media_kind_is_classified_and_placed() {
    let daemon = Daemon::start();
    let files: Vec<TestFile> = MediaKind::ALL
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let name = format!("sample{i}.{}", kind.expected_ext());
            TestFile::named(&name, *kind, 4096 + i as u64, 77 + i as u64)
        })
        .collect();
    let entries = daemon.upload_ok(&files);
    for (i, (entry, file)) in entries.iter().zip(&files).enumerate() {
        assert_entry_matches(&daemon, entry, file);
        let ext = file.kind.expected_ext();
        let expected = format!(
            "storage/{}/{ext}/{}_sample{i}.{ext}",
            file.kind.expected_media_type(),
            &file.hash()[..12]
        );
        assert_eq!(entry["path"], expected.as_str(), "{:?}", file.kind);
    }
}

/// A PNG sent as `x.jpg` with Content-Type image/jpeg: sniffing wins, it is stored as
/// `storage/images/png/<hash12>_x.png` with mime image/png.
#[test]
fn sniffed_type_wins_over_misleading_name() {
    let daemon = Daemon::start();
    let bytes = payload(MediaKind::Png, 2000, 5);
    let form = Multipart::new().file("file", "x.jpg", "image/jpeg", &bytes);
    let entries = stored_entries(&daemon.post_multipart(form), 1);
    let expected = format!("storage/images/png/{}_x.png", &blake3_hex(&bytes)[..12]);
    assert_eq!(entries[0]["path"], expected.as_str());
    assert_eq!(entries[0]["mime_type"], "image/png");
    assert_eq!(entries[0]["original_name"], "x.jpg");
}

/// A zero-byte file is a valid file: stored, size 0, the hash of nothing, an empty
/// file on disk.
#[test]
fn zero_byte_file_is_stored() {
    let daemon = Daemon::start();
    let form = Multipart::new().file("file", "empty.txt", "text/plain", b"");
    let entries = stored_entries(&daemon.post_multipart(form), 1);
    assert_eq!(entries[0]["size"], 0);
    assert_eq!(entries[0]["hash"], blake3_hex(b"").as_str());
    let path = entries[0]["path"].as_str().unwrap();
    parse_stored_path(path);
    assert_eq!(std::fs::read(daemon.disk_path(path)).unwrap().len(), 0);
}

/// `category` and `comment` sent after the files (as curl does when they are written
/// last) still apply to every file of the request: category `<media_type>/<ext>/vacation`
/// and the path under it.
#[test]
fn category_and_comment_after_files_apply_to_all() {
    let daemon = Daemon::start();
    let files = [
        TestFile::new(MediaKind::Jpeg, 3000, 11),
        TestFile::new(MediaKind::Mp4, 3000, 12),
    ];
    let form = form_of(&files)
        .text("category", "Vacation")
        .text("comment", "summer 2024");
    let entries = stored_entries(&daemon.post_multipart(form), 2);
    for (entry, file) in entries.iter().zip(&files) {
        let ext = file.kind.expected_ext();
        let media_type = file.kind.expected_media_type();
        assert_eq!(entry["comment"], "summer 2024", "{entry}");
        assert_eq!(
            entry["category"],
            format!("{media_type}/{ext}/vacation").as_str()
        );
        let parts = parse_stored_path(entry["path"].as_str().unwrap());
        assert_eq!(parts.category, vec!["vacation".to_string()], "{entry}");
        assert_entry_matches(&daemon, entry, file);
    }
}

/// The field name `files` is accepted as well as `file`.
#[test]
fn files_field_name_is_accepted() {
    let daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Gif, 500, 21);
    let form = Multipart::new().file("files", &file.name, "image/gif", &file.bytes);
    let entries = stored_entries(&daemon.post_multipart(form), 1);
    assert_entry_matches(&daemon, &entries[0], &file);
}

/// PUT /ingest/media/{name}?category=&comment= with the raw bytes as body: one entry,
/// the name from the URL (percent-decoded), category and comment from the query.
#[test]
fn put_raw_body_is_stored() {
    let daemon = Daemon::start();
    let file = TestFile::named("clip one.mp4", MediaKind::Mp4, 10_000, 31);
    let path = "/ingest/media/clip%20one.mp4?category=trips&comment=first%20take";
    let response = daemon.request("PUT", path, &[("Content-Type", "video/mp4")], &file.bytes);
    let entries = stored_entries(&response, 1);
    assert_entry_matches(&daemon, &entries[0], &file);
    assert_eq!(entries[0]["original_name"], "clip one.mp4");
    assert_eq!(entries[0]["comment"], "first take");
    assert_eq!(entries[0]["category"], "videos/mp4/trips");
}

/// A multipart body sent with `Transfer-Encoding: chunked` (no Content-Length) is
/// accepted like any other.
#[test]
fn chunked_request_body_is_accepted() {
    let daemon = Daemon::start();
    let files = mixed_files(5, 555);
    let (content_type, body) = form_of(&files).finish();
    let response = daemon
        .conn()
        .request_chunked(
            "POST",
            "/ingest/media",
            &[("Content-Type", &content_type)],
            &body[..],
        )
        .unwrap();
    for (entry, file) in stored_entries(&response, 5).iter().zip(&files) {
        assert_entry_matches(&daemon, entry, file);
    }
}

/// Several requests on one keep-alive connection all succeed.
#[test]
fn keep_alive_connection_serves_many_uploads() {
    let daemon = Daemon::start();
    let mut conn = daemon.conn();
    for i in 0..20u64 {
        let file = TestFile::new(MediaKind::Webp, 1000, 900 + i);
        let (content_type, body) = form_of(std::slice::from_ref(&file)).finish();
        let response = conn
            .request(
                "POST",
                "/ingest/media",
                &[("Content-Type", &content_type)],
                &body,
            )
            .unwrap();
        assert_entry_matches(&daemon, &stored_entries(&response, 1)[0], &file);
    }
}

fn upload_streamed(daemon: &Daemon, kind: MediaKind, size: u64, seed: u64) {
    let name = format!("big.{}", kind.expected_ext());
    let (content_type, length, body) = Multipart::new().finish_streaming(
        "file",
        &name,
        kind.expected_mime(),
        PayloadReader::new(kind, size, seed),
        size,
    );
    let mut conn = daemon.conn();
    let headers = [("Content-Type", content_type.as_str())];
    let response = conn
        .request_streaming("POST", "/ingest/media", &headers, body, length)
        .unwrap();
    let entries = stored_entries(&response, 1);
    let entry = &entries[0];
    let expected_hash = hash_reader(PayloadReader::new(kind, size, seed));
    assert_eq!(entry["hash"], expected_hash.as_str());
    assert_eq!(entry["size"], size);
    assert_eq!(entry["mime_type"], kind.expected_mime());
    let on_disk = std::fs::File::open(daemon.disk_path(entry["path"].as_str().unwrap())).unwrap();
    assert_eq!(hash_reader(on_disk), expected_hash, "bytes on disk differ");
    assert!(
        tmp_files(&daemon.data_dir).is_empty(),
        "storage/.tmp not emptied"
    );
}

fn hash_reader(mut reader: impl std::io::Read) -> String {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut reader, &mut hasher).unwrap();
    hasher.finalize().to_hex().to_string()
}

/// A 5 MiB MP4 plus an unaligned tail: the hash in the reply and of the bytes on disk is
/// the BLAKE3 of what was sent.
#[test]
fn five_mib_file_is_stored_exactly() {
    let daemon = Daemon::start();
    upload_streamed(&daemon, MediaKind::Mp4, 5 * 1024 * 1024 + 7, 5);
}

/// A 300 MiB + 123 byte MKV, generated while it is sent (never in memory): the reply's
/// hash and the on-disk bytes' hash equal the BLAKE3 of the generated stream.
#[test]
fn large_300_mib_file_is_streamed_and_stored_exactly() {
    let daemon = Daemon::start();
    upload_streamed(&daemon, MediaKind::Mkv, 300 * 1024 * 1024 + 123, 300);
}
