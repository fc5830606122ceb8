//! The S3 API with real clients: aws-cli, boto3, rclone and s3cmd against the real binary on loopback.
//! Today the bucket `media`, read-only, over the native store: files stored through
//! `/ingest/media` are listed, downloaded and synced with byte-for-byte equal content
//! (BLAKE3 compared), and every write into it is refused. A missing client skips the
//! test with a printed reason, except under `CI`, where it fails.

mod common;

use std::path::Path;
use std::process::Command;

use common::s3::*;
use rhinobox::client::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};
use rhinobox::client::{Connection, blake3_hex};

/// aws-cli: `s3 ls` shows `media`; a recursive listing names every stored file with its
/// size; `s3 sync` of the bucket to a local dir (a backup) gives every file with the
/// stored bytes, and a second sync copies nothing; `s3 cp` and `s3 rm` into the bucket
/// fail with AccessDenied and change nothing; each request has its access-log line.
#[test]
fn aws_cli_backs_up_the_media_bucket() {
    if !aws_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let expected = store_files(&daemon, 40);

    let (ok, buckets, err) = aws(addr, &["s3", "ls"]);
    assert!(ok && buckets.trim().ends_with(" media"), "{buckets} {err}");
    let (ok, listing, err) = aws(addr, &["s3", "ls", "--recursive", "s3://media"]);
    assert!(ok, "{err}");
    let listed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    let expected_keys: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(listed, expected_keys, "listing:\n{listing}");

    let backup = tempfile::tempdir().unwrap();
    let target = backup.path().to_str().unwrap();
    let (ok, _, err) = aws(addr, &["s3", "sync", "s3://media", target]);
    assert!(ok, "sync failed: {err}");
    assert_eq!(
        tree_hashes(backup.path()),
        expected,
        "backup differs from the store"
    );
    let (ok, again, err) = aws(addr, &["s3", "sync", "s3://media", target]);
    assert!(
        ok && !again.contains("download:"),
        "second sync copied: {again} {err}"
    );

    let some = expected.keys().next().unwrap();
    let local = backup.path().join(some);
    let (ok, _, err) = aws(
        addr,
        &["s3", "cp", local.to_str().unwrap(), "s3://media/new.bin"],
    );
    assert!(!ok && err.contains("AccessDenied"), "cp into media: {err}");
    let (ok, _, err) = aws(addr, &["s3", "rm", &format!("s3://media/{some}")]);
    assert!(!ok && err.contains("AccessDenied"), "rm in media: {err}");
    let hash = &expected[some];
    let response = daemon.get(&format!("/files/download?hash={hash}"));
    assert_eq!(response.status, 200, "the native file is still served");
    // S3 requests are in the access log like native ones, refusals included.
    let log = daemon.log_text();
    let get_line = format!("\"GET /media/{some}\" - 200");
    assert!(
        log.contains(&get_line),
        "no {get_line:?} in the log:\n{log}"
    );
    assert!(
        log.contains("\"PUT /media/new.bin\" - 403"),
        "no refused PUT in:\n{log}"
    );
}

/// boto3 (tests/s3/media_boto3.py): ListObjectsV2 pagination over 1,100 keys in byte
/// order and ListObjects v1 with Marker, delimiter and prefix, HeadObject with
/// `x-rhinobox-hash`, GetObject with Range, If-None-Match (304) and If-Match (412),
/// NoSuchKey, writes refused, and the auth failures: presigned v4 URL used with plain
/// HTTP, the same URL tampered (403) and expired (403), a wrong secret, an unsigned GET.
#[test]
fn boto3_reads_the_media_bucket_and_auth_holds() {
    if !boto3_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let expected = store_files(&daemon, 1100);
    assert_eq!(expected.len(), 1100, "every file stored once");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/media_boto3.py");
    let output = Command::new("python3")
        .arg(script)
        .env("S3_URL", format!("http://{addr}"))
        .env("S3_ACCESS_KEY", ACCESS_KEY)
        .env("S3_SECRET_KEY", SECRET_KEY)
        .env("EXPECTED", serde_json::to_string(&expected).unwrap())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("OK"),
        "boto3 checks failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
        daemon.log_text()
    );
}

/// rclone: `sync` of the bucket `media` to a local dir (a backup) gives every stored
/// file with its bytes (BLAKE3 compared), `check --download` finds no difference, and a
/// second `sync` transfers nothing; `copyto` into the bucket is refused.
#[test]
fn rclone_backs_up_the_media_bucket() {
    if !rclone_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let expected = store_files(&daemon, 30);
    let backup = tempfile::tempdir().unwrap();
    let target = backup.path().to_str().unwrap();
    let (ok, out) = rclone(addr, &["sync", "rb:media", target]);
    assert!(ok, "rclone sync failed:\n{out}");
    assert_eq!(
        tree_hashes(backup.path()),
        expected,
        "backup differs from the store"
    );
    let (ok, out) = rclone(addr, &["check", "--download", "rb:media", target]);
    assert!(
        ok && out.contains("0 differences found"),
        "rclone check:\n{out}"
    );
    let (ok, out) = rclone(addr, &["sync", "-v", "rb:media", target]);
    assert!(ok && !out.contains("Copied"), "second sync copied:\n{out}");
    let some = backup.path().join(expected.keys().next().unwrap());
    let (ok, out) = rclone(
        addr,
        &["copyto", some.to_str().unwrap(), "rb:media/new.bin"],
    );
    assert!(
        !ok && out.contains("AccessDenied"),
        "copyto into media:\n{out}"
    );
}

/// s3cmd: `ls` of the bucket, `get` of a file (bytes compared), `put` and `del` refused.
#[test]
fn s3cmd_reads_the_media_bucket() {
    if !s3cmd_available() {
        return;
    }
    let (daemon, addr) = start_with_s3();
    let expected = store_files(&daemon, 10);
    let s3cmd = |args: &[&str]| s3cmd(addr, args);
    let (ok, listing) = s3cmd(&["ls", "--recursive", "s3://media"]);
    assert!(ok, "s3cmd ls:\n{listing}");
    for key in expected.keys() {
        assert!(
            listing.contains(&format!("s3://media/{key}")),
            "{key} not in:\n{listing}"
        );
    }
    let (key, hash) = expected.iter().next().unwrap();
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("got");
    let (ok, out) = s3cmd(&["get", &format!("s3://media/{key}"), file.to_str().unwrap()]);
    assert!(ok, "s3cmd get:\n{out}");
    assert_eq!(&blake3_hex(&std::fs::read(&file).unwrap()), hash);
    let (ok, out) = s3cmd(&["put", file.to_str().unwrap(), "s3://media/new.bin"]);
    assert!(!ok && out.contains("AccessDenied"), "s3cmd put:\n{out}");
    let (ok, out) = s3cmd(&["del", &format!("s3://media/{key}")]);
    assert!(!ok && out.contains("AccessDenied"), "s3cmd del:\n{out}");
}

/// The harness's own SigV4 signer (`rhinobox::client::sigv4`) against the S3 listener: a
/// signed GetObject answers the stored bytes; the same request signed with another secret,
/// or dated years ago, is a 403. Needs no outside client.
#[test]
fn own_sigv4_client_gets_objects() {
    let (daemon, addr) = start_with_s3();
    let expected = store_files(&daemon, 3);
    let (key, hash) = expected.iter().next().unwrap();
    let path = format!(
        "/media/{}",
        key.split('/')
            .map(sigv4::encode_segment)
            .collect::<Vec<_>>()
            .join("/")
    );
    let host = addr.to_string();
    let get = |secret: &str, amz_date: &str| {
        let credentials = Credentials {
            access_key: ACCESS_KEY.into(),
            secret_key: secret.into(),
            region: "us-east-1".into(),
        };
        let signed = sigv4::sign(
            &credentials,
            &Signing {
                method: "GET",
                path: &path,
                query: "",
                host: &host,
                extra_headers: &[],
                payload_hash: UNSIGNED_PAYLOAD,
                amz_date,
            },
        );
        let headers: Vec<(&str, &str)> = signed
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut connection = Connection::connect(addr).unwrap();
        connection.request("GET", &path, &headers, b"").unwrap()
    };
    let now = sigv4::amz_date(std::time::SystemTime::now());
    let response = get(SECRET_KEY, &now);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(&blake3_hex(&response.body), hash);
    assert_eq!(response.header("x-rhinobox-hash"), Some(hash.as_str()));
    let response = get("not-the-secret", &now);
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("SignatureDoesNotMatch"),
        "{}",
        response.text()
    );
    let response = get(SECRET_KEY, "20130524T000000Z");
    assert_eq!(
        response.status,
        403,
        "a request dated 2013: {}",
        response.text()
    );
}
