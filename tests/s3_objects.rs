//! Writable S3 buckets (SPEC §7, issue 11) with real clients against the real binary on
//! loopback: boto3 through every operation, aws-cli, rclone and s3cmd round trips with the
//! bytes compared by BLAKE3, the same content under several keys and a native file stored
//! once, and buckets, objects and their metadata kept across a restart with `rhinobox
//! verify` clean. A missing client skips its test with a printed reason, except under
//! `CI`, where it fails; the dedup and restart tests use the harness's own SigV4 client and
//! need no outside tool.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::*;
use common::*;
use rhinobox::client::{Response, blake3_hex};

const MIB: usize = 1024 * 1024;

/// A local tree to sync: nested dirs, a name with a space, random bytes, and an empty
/// file (the `Expect: 100-continue` trap of issue 11).
fn make_tree(root: &Path) {
    let files: [(&str, Vec<u8>); 5] = [
        ("a.txt", b"alpha\n".to_vec()),
        ("empty.txt", Vec::new()),
        ("nested/deep/b.bin", random_bytes(100_000, 1)),
        ("with space/c d.txt", b"spaced out\n".to_vec()),
        ("nested/d.bin", random_bytes(1_000_003, 2)),
    ];
    for (name, bytes) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Writes `len` random bytes to `dir/name`; returns the path as a string.
fn write_random(dir: &Path, name: &str, len: usize, seed: u64) -> String {
    let path = dir.join(name);
    std::fs::write(&path, random_bytes(len, seed)).unwrap();
    path.to_str().unwrap().to_string()
}

fn file_hash(path: &str) -> String {
    blake3_hex(&std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// boto3 (tests/s3/objects_boto3.py): every operation of §7 on fresh buckets, with the
/// results asserted: buckets (create twice, head, list with `media`, location, delete of
/// a non-empty and of an empty one), PutObject with type and user metadata read back as
/// sent, ETag = MD5, Content-MD5 and x-amz-checksum-crc32/sha256 right and wrong (a refused
/// write changes nothing), an aws-chunked body with a CRC32 trailer right and wrong, an
/// empty PUT with `Expect: 100-continue` followed by a request on the same connection,
/// Range and the GetObject preconditions (304/412), `x-rhinobox-hash` = BLAKE3, last write
/// wins, `If-None-Match: *` on PutObject and CompleteMultipartUpload (412 / 200),
/// CopyObject (COPY, REPLACE, onto itself, to another bucket), DeleteObject(s), ListObjects
/// v1 and v2 over 1,100+ keys (pages, prefix, delimiter, max-keys, markers), multipart
/// (parts out of order and in parallel, ListParts, ListMultipartUploads, Complete ETag,
/// InvalidPart, Abort then NoSuchUpload), upload_file/download_file of 20 MiB in 8 MiB
/// parts, presigned GET and PUT with plain HTTP (tampered, expired), a wrong secret, an
/// unknown key, unsigned requests, and every write into `media` refused.
#[test]
fn boto3_every_operation_on_writable_buckets() {
    if !boto3_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let endpoint = format!("http://{addr}");
    let mut env = Vec::new();
    if std::env::var_os("CI").is_some() {
        env.push(("REQUIRE_BLAKE3", "1"));
    }
    let (ok, output) = python_script(
        "objects_boto3.py",
        &[&endpoint, ACCESS_KEY, SECRET_KEY],
        &env,
    );
    assert!(
        ok,
        "boto3 checks failed:\n{output}\ndaemon log:\n{}",
        daemon.log_text()
    );
}

/// aws-cli: `s3 mb`; `s3 cp` of a small file and of a 20 MiB one (a 3-part multipart
/// upload, its ETag ends in `-3`) up and back down, bytes compared; `s3 ls` shows both with
/// their sizes; `s3 sync` of a local tree holding an empty file up (no retry, short read
/// timeout: a stalled connection fails) and down into another dir, trees equal; a second
/// sync uploads nothing; `s3api put-object` with type and metadata and `head-object`
/// reading them back; `s3 rm --recursive` empties the prefix; `s3 rb --force` removes the
/// bucket.
#[test]
fn aws_cli_copies_syncs_and_removes_objects() {
    if !aws_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let aws_ok = |args: &[&str]| {
        let (ok, stdout, stderr) = aws(addr, args);
        assert!(
            ok,
            "aws {args:?} failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
            daemon.log_text()
        );
        stdout
    };
    aws_ok(&["s3", "mb", "s3://awsbucket"]);
    let small = write_random(dir, "small.bin", 10_000, 3);
    let big = write_random(dir, "big.bin", 20 * MIB, 4);
    aws_ok(&["s3", "cp", &small, "s3://awsbucket/small.bin"]);
    aws_ok(&["s3", "cp", &big, "s3://awsbucket/big/big.bin"]);
    let head = aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "awsbucket",
        "--key",
        "big/big.bin",
    ]);
    let head: serde_json::Value = serde_json::from_str(&head).unwrap();
    assert_eq!(head["ContentLength"], 20 * MIB as u64, "{head}");
    assert!(
        head["ETag"].as_str().unwrap().ends_with("-3\""),
        "20 MiB in 8 MiB parts: {head}"
    );
    let small_back = dir.join("small.back").to_str().unwrap().to_string();
    let big_back = dir.join("big.back").to_str().unwrap().to_string();
    aws_ok(&["s3", "cp", "s3://awsbucket/small.bin", &small_back]);
    aws_ok(&["s3", "cp", "s3://awsbucket/big/big.bin", &big_back]);
    assert_eq!(
        file_hash(&small_back),
        file_hash(&small),
        "small file round trip"
    );
    assert_eq!(
        file_hash(&big_back),
        file_hash(&big),
        "20 MiB file round trip"
    );
    let listing = aws_ok(&["s3", "ls", "--recursive", "s3://awsbucket"]);
    assert!(
        listing.contains(" 10000 small.bin") && listing.contains(" 20971520 big/big.bin"),
        "{listing}"
    );

    let tree = dir.join("tree");
    make_tree(&tree);
    let started = Instant::now();
    let (ok, stdout, stderr) = aws_with_one_attempt(addr)
        .args(["s3", "sync", tree.to_str().unwrap(), "s3://awsbucket/tree"])
        .output()
        .map(|o| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (o.status.success(), text(&o.stdout), text(&o.stderr))
        })
        .unwrap();
    assert!(
        ok,
        "sync up (a stall here is the Expect trap):\n{stdout}\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "sync up of 5 small files took {:?}",
        started.elapsed()
    );
    let down = dir.join("down");
    aws_ok(&["s3", "sync", "s3://awsbucket/tree", down.to_str().unwrap()]);
    assert_eq!(
        tree_hashes(&down),
        tree_hashes(&tree),
        "tree after sync up and down"
    );
    let again = aws_ok(&["s3", "sync", tree.to_str().unwrap(), "s3://awsbucket/tree"]);
    assert!(!again.contains("upload:"), "second sync uploaded: {again}");

    aws_ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "awsbucket",
        "--key",
        "meta.txt",
        "--body",
        &small,
        "--content-type",
        "text/plain",
        "--metadata",
        "owner=ada,trip=alps",
    ]);
    let head = aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "awsbucket",
        "--key",
        "meta.txt",
    ]);
    let head: serde_json::Value = serde_json::from_str(&head).unwrap();
    assert_eq!(head["ContentType"], "text/plain", "{head}");
    assert_eq!(
        head["Metadata"],
        serde_json::json!({"owner": "ada", "trip": "alps"}),
        "{head}"
    );
    let listed = aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "awsbucket",
        "--prefix",
        "tree/",
        "--query",
        "Contents[].Key",
        "--output",
        "json",
    ]);
    let listed: Vec<String> = serde_json::from_str(&listed).unwrap();
    let expected: Vec<String> = tree_hashes(&tree)
        .keys()
        .map(|k| format!("tree/{k}"))
        .collect();
    assert_eq!(listed, expected, "keys after sync");

    aws_ok(&["s3", "rm", "--recursive", "s3://awsbucket/tree"]);
    let left = aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "awsbucket",
        "--prefix",
        "tree/",
        "--output",
        "json",
    ]);
    let left: serde_json::Value = serde_json::from_str(&left).unwrap();
    assert!(left["Contents"].is_null(), "after rm --recursive: {left}");
    aws_ok(&["s3", "rb", "--force", "s3://awsbucket"]);
    let buckets = aws_ok(&["s3", "ls"]);
    assert!(!buckets.contains("awsbucket"), "bucket left: {buckets}");
}

/// aws-cli with no retry and a 20 s read timeout: a request stalled on a kept-alive
/// connection fails the command instead of being retried on a new one.
fn aws_with_one_attempt(addr: SocketAddr) -> std::process::Command {
    let mut command = aws_command(addr);
    command
        .args(["--cli-read-timeout", "20"])
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_RETRY_MODE", "standard");
    command
}

/// rclone: `copy` of a local tree (an empty file in it) into a new bucket and `check`
/// against it (size and MD5: 0 differences); `sync` of the bucket `media` to a local dir
/// (a backup), `sync` of that backup back into another bucket, `check --download` of
/// `media` against that bucket and a `sync` of it to a third dir give the stored bytes
/// (BLAKE3 compared); `purge` removes the copy.
#[test]
fn rclone_copies_checks_and_restores_a_backup() {
    if !rclone_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let expected = store_files(&daemon, 30);
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name).to_str().unwrap().to_string();
    let rclone_ok = |args: &[&str]| {
        let (ok, out) = rclone(addr, args);
        assert!(
            ok,
            "rclone {args:?} failed:\n{out}\ndaemon log:\n{}",
            daemon.log_text()
        );
        out
    };
    make_tree(Path::new(&path("tree")));
    rclone_ok(&["mkdir", "rb:copies"]);
    rclone_ok(&["copy", &path("tree"), "rb:copies/tree"]);
    let out = rclone_ok(&["check", &path("tree"), "rb:copies/tree"]);
    assert!(
        out.contains("0 differences found"),
        "check of the copy:\n{out}"
    );
    let out = rclone_ok(&["check", "--download", &path("tree"), "rb:copies/tree"]);
    assert!(
        out.contains("0 differences found"),
        "check --download:\n{out}"
    );

    rclone_ok(&["sync", "rb:media", &path("backup")]);
    assert_eq!(
        tree_hashes(Path::new(&path("backup"))),
        expected,
        "backup of media"
    );
    rclone_ok(&["sync", &path("backup"), "rb:restored"]);
    let out = rclone_ok(&["check", &path("backup"), "rb:restored"]);
    assert!(
        out.contains("0 differences found"),
        "check of the restore:\n{out}"
    );
    let out = rclone_ok(&["check", "--download", "rb:media", "rb:restored"]);
    assert!(
        out.contains("0 differences found"),
        "media against restored:\n{out}"
    );
    rclone_ok(&["sync", "rb:restored", &path("again")]);
    assert_eq!(
        tree_hashes(Path::new(&path("again"))),
        expected,
        "restored bucket"
    );
    let out = rclone_ok(&["sync", "-v", &path("backup"), "rb:restored"]);
    assert!(!out.contains("Copied"), "second sync copied:\n{out}");

    rclone_ok(&["purge", "rb:copies"]);
    let out = rclone_ok(&["lsd", "rb:"]);
    assert!(
        !out.contains("copies") && out.contains("restored"),
        "buckets:\n{out}"
    );
}

/// s3cmd: `mb`, `put` of a small file and of a 20 MiB one (multipart, 15 MiB parts), `ls`
/// showing both, `get` of both (bytes compared), `del` (gone from `ls`), `rb`.
#[test]
fn s3cmd_makes_puts_gets_and_deletes() {
    if !s3cmd_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let s3cmd_ok = |args: &[&str]| {
        let (ok, out) = s3cmd(addr, args);
        assert!(
            ok,
            "s3cmd {args:?} failed:\n{out}\ndaemon log:\n{}",
            daemon.log_text()
        );
        out
    };
    s3cmd_ok(&["mb", "s3://s3cmd-bucket"]);
    let small = write_random(dir, "small.bin", 33_333, 5);
    let big = write_random(dir, "big.bin", 20 * MIB, 6);
    s3cmd_ok(&["put", &small, "s3://s3cmd-bucket/dir/small.bin"]);
    s3cmd_ok(&["put", &big, "s3://s3cmd-bucket/big.bin"]);
    let listing = s3cmd_ok(&["ls", "--recursive", "s3://s3cmd-bucket"]);
    assert!(
        listing.contains("s3://s3cmd-bucket/dir/small.bin")
            && listing.contains("s3://s3cmd-bucket/big.bin"),
        "{listing}"
    );
    for (key, local) in [("dir/small.bin", &small), ("big.bin", &big)] {
        let back = dir.join("back").to_str().unwrap().to_string();
        s3cmd_ok(&["get", "--force", &format!("s3://s3cmd-bucket/{key}"), &back]);
        assert_eq!(file_hash(&back), file_hash(local), "{key} round trip");
    }
    s3cmd_ok(&["del", "s3://s3cmd-bucket/dir/small.bin"]);
    let listing = s3cmd_ok(&["ls", "--recursive", "s3://s3cmd-bucket"]);
    assert!(
        !listing.contains("small.bin") && listing.contains("big.bin"),
        "{listing}"
    );
    s3cmd_ok(&["del", "s3://s3cmd-bucket/big.bin"]);
    s3cmd_ok(&["rb", "s3://s3cmd-bucket"]);
    let buckets = s3cmd_ok(&["ls"]);
    assert!(!buckets.contains("s3cmd-bucket"), "{buckets}");
}

/// Asserts the status of a signed request's response, showing its body otherwise.
fn expect_status(response: &Response, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
}

/// GetObject through the own client; asserts 200 and the bytes' BLAKE3.
fn assert_object(addr: SocketAddr, target: &str, hash: &str) {
    let response = s3_request(addr, "GET", target);
    expect_status(&response, 200, target);
    assert_eq!(blake3_hex(&response.body), hash, "bytes of {target}");
}

/// Dedup on disk: 8 MiB of random bytes put under three keys (two buckets) and once
/// through the native `PUT /ingest/media/<name>` occupy the disk once (st_blocks over the
/// distinct inodes under `storage/`, `.tmp` left out, under 1.5 × 8 MiB), and
/// `x-rhinobox-hash` names their BLAKE3. Deleting two keys leaves the third and the native
/// file readable with the same bytes; deleting the native file leaves the last key
/// readable; deleting that frees the space. Uses the own SigV4 client.
#[test]
fn same_bytes_under_three_keys_and_a_native_file_are_stored_once() {
    let (daemon, addr) = start_with_s3();
    let bytes = random_bytes(8 * MIB, 7);
    let hash = blake3_hex(&bytes);
    expect_status(&s3_request(addr, "PUT", "dedup"), 200, "CreateBucket dedup");
    expect_status(&s3_request(addr, "PUT", "other"), 200, "CreateBucket other");
    s3_put(addr, "dedup/one.bin", &[], &bytes);
    let native = daemon.request("PUT", "/ingest/media/same.bin", &[], &bytes);
    let entry = &stored_entries(&native, 1)[0];
    assert_eq!(entry["hash"], hash.as_str(), "{entry}");
    s3_put(
        addr,
        "dedup/two/two.bin",
        &[("content-type", "video/mp4")],
        &bytes,
    );
    s3_put(addr, "other/three.bin", &[], &bytes);
    for target in ["dedup/one.bin", "dedup/two/two.bin", "other/three.bin"] {
        let head = s3_request(addr, "HEAD", target);
        expect_status(&head, 200, target);
        assert_eq!(
            head.header("x-rhinobox-hash"),
            Some(hash.as_str()),
            "{target}"
        );
    }
    let on_disk = stored_bytes_on_disk(&daemon.data_dir);
    assert!(
        on_disk >= (8 * MIB) as u64 && on_disk < (12 * MIB) as u64,
        "8 MiB under three keys and a native file take {on_disk} bytes on disk; files:\n{:#?}",
        stored_files(&daemon.data_dir)
    );

    expect_status(
        &s3_request(addr, "DELETE", "dedup/one.bin"),
        204,
        "DeleteObject one",
    );
    expect_status(
        &s3_request(addr, "DELETE", "dedup/two/two.bin"),
        204,
        "DeleteObject two",
    );
    expect_status(
        &s3_request(addr, "GET", "dedup/one.bin"),
        404,
        "deleted key",
    );
    assert_object(addr, "other/three.bin", &hash);
    let download = daemon.get(&format!("/files/download?hash={hash}"));
    assert_eq!(download.status, 200, "native file after two keys deleted");
    assert_eq!(blake3_hex(&download.body), hash, "native bytes");

    let deleted = daemon.request("DELETE", &format!("/files/{hash}"), &[], b"");
    assert_eq!(deleted.status, 200, "native delete: {}", deleted.text());
    assert_object(addr, "other/three.bin", &hash);
    let on_disk = stored_bytes_on_disk(&daemon.data_dir);
    assert!(
        on_disk >= (8 * MIB) as u64,
        "the last key's content is on disk: {on_disk}"
    );

    expect_status(
        &s3_request(addr, "DELETE", "other/three.bin"),
        204,
        "DeleteObject three",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_bytes_on_disk(&daemon.data_dir) >= MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "the content of no key and no native file still takes {} bytes; files:\n{:#?}",
            stored_bytes_on_disk(&daemon.data_dir),
            stored_files(&daemon.data_dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One object as HeadObject describes it: what must survive a restart.
#[derive(Debug, PartialEq)]
struct Described {
    etag: Option<String>,
    content_type: Option<String>,
    owner: Option<String>,
    length: Option<String>,
    hash: Option<String>,
    last_modified: Option<String>,
}

fn describe(addr: SocketAddr, target: &str) -> Described {
    let head = s3_request(addr, "HEAD", target);
    expect_status(&head, 200, target);
    let header = |name: &str| head.header(name).map(str::to_string);
    Described {
        etag: header("etag"),
        content_type: header("content-type"),
        owner: header("x-amz-meta-owner"),
        length: header("content-length"),
        hash: header("x-rhinobox-hash"),
        last_modified: header("last-modified"),
    }
}

/// The text between `<tag>` and `</tag>` of the first occurrence in an XML body.
fn xml_field(body: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = body
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in {body}"))
        + open.len();
    let end = body[start..].find(&format!("</{tag}>")).unwrap() + start;
    body[start..end].to_string()
}

/// A two-part multipart upload through the own client (5 MiB + 1 KiB); returns the bytes.
fn multipart_put(addr: SocketAddr, target: &str) -> Vec<u8> {
    let create = SignedRequest {
        method: "POST",
        target,
        query: "uploads=",
        headers: &[("x-amz-meta-owner", "multi")],
        body: b"",
    }
    .send(addr);
    expect_status(&create, 200, "CreateMultipartUpload");
    let upload_id = xml_field(&create.text(), "UploadId");
    let encoded_id = rhinobox::client::sigv4::encode_segment(&upload_id);
    let parts = [random_bytes(5 * MIB, 8), random_bytes(1024, 9)];
    let mut complete = String::from("<CompleteMultipartUpload>");
    for (index, part) in parts.iter().enumerate() {
        let number = index + 1;
        let query = format!("partNumber={number}&uploadId={encoded_id}");
        let response = SignedRequest {
            method: "PUT",
            target,
            query: &query,
            headers: &[],
            body: part,
        }
        .send(addr);
        expect_status(&response, 200, "UploadPart");
        let etag = response.header("etag").expect("part ETag").to_string();
        complete.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    complete.push_str("</CompleteMultipartUpload>");
    let response = SignedRequest {
        method: "POST",
        target,
        query: &format!("uploadId={encoded_id}"),
        headers: &[],
        body: complete.as_bytes(),
    }
    .send(addr);
    expect_status(&response, 200, "CompleteMultipartUpload");
    assert!(
        xml_field(&response.text(), "ETag").ends_with("-2&quot;")
            || xml_field(&response.text(), "ETag").ends_with("-2\""),
        "multipart ETag: {}",
        response.text()
    );
    parts.concat()
}

/// Restart: two buckets (one empty), objects with type and user metadata, an empty object,
/// an overwritten key, a deleted key and a multipart object are all as they were after a
/// SIGTERM and a start on the same data dir (HeadObject headers equal, bytes equal, the
/// deleted key still 404, listings equal); then, the daemon stopped, `rhinobox verify`
/// exits 0 with those objects stored, and 1 once the bytes of an object's content file are
/// flipped. Uses the own SigV4 client.
#[test]
fn buckets_objects_and_metadata_survive_a_restart_and_verify_is_clean() {
    let (mut daemon, addr) = start_with_s3();
    expect_status(&s3_request(addr, "PUT", "keep"), 200, "CreateBucket keep");
    expect_status(
        &s3_request(addr, "PUT", "empty-bucket"),
        200,
        "CreateBucket empty",
    );
    let b_bytes = random_bytes(100_000, 10);
    let text = [("content-type", "text/plain"), ("x-amz-meta-owner", "ada")];
    s3_put(addr, "keep/a.txt", &text, b"first version");
    s3_put(addr, "keep/a.txt", &text, b"second version");
    let binary = [
        ("content-type", "application/x-test"),
        ("x-amz-meta-owner", "bob"),
    ];
    s3_put(addr, "keep/dir/b.bin", &binary, &b_bytes);
    s3_put(addr, "keep/empty", &[], b"");
    s3_put(addr, "keep/gone.txt", &[], b"soon deleted");
    expect_status(
        &s3_request(addr, "DELETE", "keep/gone.txt"),
        204,
        "DeleteObject",
    );
    let multi = multipart_put(addr, "keep/multi.bin");
    let objects: [(&str, Vec<u8>); 4] = [
        ("keep/a.txt", b"second version".to_vec()),
        ("keep/dir/b.bin", b_bytes.clone()),
        ("keep/empty", Vec::new()),
        ("keep/multi.bin", multi),
    ];
    let before: Vec<Described> = objects.iter().map(|(t, _)| describe(addr, t)).collect();
    let list = |addr: SocketAddr| {
        let response = SignedRequest {
            method: "GET",
            target: "keep",
            query: "list-type=2",
            headers: &[],
            body: b"",
        }
        .send(addr);
        expect_status(&response, 200, "ListObjectsV2");
        let text = response.text();
        let keys: Vec<String> = text
            .split("<Key>")
            .skip(1)
            .map(|rest| rest.split("</Key>").next().unwrap().to_string())
            .collect();
        keys
    };
    assert_eq!(list(addr), ["a.txt", "dir/b.bin", "empty", "multi.bin"]);

    daemon.restart();
    let addr = s3_addr(&daemon);
    let buckets = s3_request(addr, "GET", "");
    expect_status(&buckets, 200, "ListBuckets");
    for name in ["keep", "empty-bucket", "media"] {
        assert!(
            buckets.text().contains(&format!("<Name>{name}</Name>")),
            "{name} after restart: {}",
            buckets.text()
        );
    }
    expect_status(
        &s3_request(addr, "HEAD", "empty-bucket"),
        200,
        "HeadBucket empty",
    );
    let after: Vec<Described> = objects.iter().map(|(t, _)| describe(addr, t)).collect();
    assert_eq!(after, before, "HeadObject before and after the restart");
    for (target, bytes) in &objects {
        assert_object(addr, target, &blake3_hex(bytes));
    }
    expect_status(
        &s3_request(addr, "GET", "keep/gone.txt"),
        404,
        "deleted key",
    );
    assert_eq!(list(addr), ["a.txt", "dir/b.bin", "empty", "multi.bin"]);

    let status = daemon.sigterm();
    assert!(status.success(), "SIGTERM: {status}");
    let data_dir = daemon.data_dir.to_str().unwrap().to_string();
    let (status, lines) = run_until_exit(&["verify", "--data-dir", &data_dir], &[]);
    assert!(
        status.success(),
        "verify of a clean store: {status}\n{}",
        lines.join("\n")
    );

    // verify covers the objects' content: flip a byte of the file holding b.bin's bytes.
    let holder = stored_files(&daemon.data_dir)
        .into_iter()
        .find(|path| std::fs::read(path).unwrap() == b_bytes)
        .expect("a file under storage/ holds the object's bytes");
    let mut damaged = b_bytes.clone();
    damaged[500] ^= 0xff;
    std::fs::write(&holder, &damaged).unwrap();
    let (status, lines) = run_until_exit(&["verify", "--data-dir", &data_dir], &[]);
    assert_eq!(
        status.code(),
        Some(1),
        "verify after damaging {}:\n{}",
        holder.display(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("summary: 1 problem") && l.contains(" 1 damaged")),
        "the summary counts the damaged content:\n{}",
        lines.join("\n")
    );
}

/// A listed object's LastModified is not before the moment its PutObject was sent:
/// `aws s3 sync` uploads a local file again when its mtime is later than the listed time,
/// so a time cut to the second made every file written in the same second look newer
/// (the second sync of `aws_cli_copies_syncs_and_removes_objects` uploaded again).
#[test]
fn listed_time_is_not_before_the_put() {
    let (_daemon, addr) = start_with_s3();
    expect_status(&s3_request(addr, "PUT", "times"), 200, "CreateBucket");
    for n in 0..5 {
        // Away from a whole second, where a cut time would still compare equal.
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
            < 100
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = std::time::SystemTime::now();
        let key = format!("times/k{n}");
        s3_put(addr, &key, &[], b"x");
        let listed = SignedRequest {
            method: "GET",
            target: "times",
            query: &format!("list-type=2&prefix=k{n}"),
            headers: &[],
            body: b"",
        }
        .send(addr);
        expect_status(&listed, 200, "ListObjectsV2");
        let text = xml_field(&listed.text(), "LastModified");
        let time = humantime::parse_rfc3339_weak(&text)
            .unwrap_or_else(|e| panic!("LastModified {text:?}: {e}"));
        let before_ms = before
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let listed_ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert!(
            listed_ms >= before_ms,
            "{key} listed at {text}, put sent {before_ms} ms after the epoch"
        );
    }
}
