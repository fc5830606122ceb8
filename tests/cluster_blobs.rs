//! Cluster mode's blob client (`rhinobox::cluster::blob_client`) against the real Ceph RGW
//! of the fixture (tests/common/cluster.rs), on a multi-thread tokio runtime as in the
//! daemon: the bucket checks out; small bytes go up and come back whole and as a middle
//! range; a missing key is NotFound; a 1 MiB file (one PUT) and a 100 MiB file (multipart,
//! 7 parts) come back equal by BLAKE3, whole and across a part boundary; a listing under a
//! prefix pages 2 keys at a time over 5; a deleted key is NotFound and deleting it again
//! succeeds; 8 concurrent PUTs through a pool of 2 never open more than 2 connections; a
//! wrong secret is Rejected 403, and an endpoint with nothing listening is Unavailable.
//! Skips with a SKIPPED line when the fixture's packages are missing, except under `CI`.

#[path = "common/cluster.rs"]
mod cluster;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::Cluster;
use http_body_util::BodyExt;
use rhinobox::client::sigv4::Credentials;
use rhinobox::cluster::blob_client::{BlobBody, BlobClient, BlobError, BlobSettings};

const MIB: u64 = 1 << 20;

fn client(addr: SocketAddr, bucket: &str, credentials: Credentials, max: usize) -> BlobClient {
    BlobClient::new(BlobSettings {
        bucket: bucket.into(),
        endpoint: format!("http://{addr}"),
        host: addr.to_string(),
        addr,
        credentials,
        connections_max: max,
    })
}

/// A body read to its end, or its error.
async fn collect(body: BlobBody) -> std::io::Result<Bytes> {
    Ok(body.collect().await?.to_bytes())
}

/// A body read to its end through BLAKE3, and its length.
async fn hash_body(mut body: BlobBody) -> (blake3::Hash, u64) {
    let mut hasher = blake3::Hasher::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the body streams").into_data() {
            hasher.update(&data);
        }
    }
    (hasher.finalize(), hasher.count())
}

/// A file of `size` pseudo-random bytes (BLAKE3's XOF of `seed`) and its BLAKE3.
fn random_file(dir: &std::path::Path, seed: &str, size: u64) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(seed);
    let mut file = std::fs::File::create(&path).expect("a file in the temp dir");
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut chunk = vec![0; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        xof.fill(&mut chunk[..n]);
        file.write_all(&chunk[..n])
            .expect("the temp dir takes the file");
        left -= n as u64;
    }
    let bytes = std::fs::read(&path).expect("the file reads back");
    (path, bytes)
}

/// ESTABLISHED TCP connections to `port` in this network namespace (ours: nothing else
/// talks to the fixture's RGW during the test).
fn connections_to(port: u16) -> usize {
    let port = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && format!("{} ", fields[2]).ends_with(&port) && fields[3] == "01"
        })
        .count()
}

#[test]
fn blob_client_against_rgw() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    runtime.block_on(exercise(&cluster));
    eprintln!("blob client checks took {:?}", started.elapsed());
}

async fn exercise(cluster: &Cluster) {
    let credentials = cluster.s3_credentials.clone();
    let blobs = client(cluster.s3_addr, &cluster.bucket, credentials.clone(), 4);
    blobs
        .check_bucket()
        .await
        .expect("the fixture's bucket checks out");

    // Small bytes: whole, a middle range, a key with characters that need encoding.
    let key = "small/a b+c&d.txt";
    let text = Bytes::from_static(b"0123456789abcdefghij");
    blobs.put(key, text.clone()).await.expect("put");
    let whole = collect(blobs.get(key, 0, 20).await.expect("get")).await;
    assert_eq!(whole.expect("the whole body"), text);
    let middle = collect(blobs.get(key, 5, 7).await.expect("get a range")).await;
    assert_eq!(&middle.expect("the range")[..], b"56789ab");
    let empty = collect(blobs.get(key, 3, 0).await.expect("get nothing")).await;
    assert!(empty.expect("an empty body").is_empty());
    // More than the object holds: refused before the body, or an error frame, never short.
    match blobs.get(key, 10, 20).await {
        Err(BlobError::Rejected { message, .. }) => eprintln!("past the end: {message}"),
        Err(other) => panic!("a range past the end: {other}"),
        Ok(body) => {
            let error = collect(body).await.expect_err("a short body passed");
            eprintln!("past the end: {error}");
        }
    }
    match blobs.get("small/missing", 0, 1).await {
        Err(BlobError::NotFound) => {}
        Err(other) => panic!("a missing key: {other}"),
        Ok(_) => panic!("a missing key answered"),
    }

    // Files: one PUT, and multipart (100 MiB: 6 parts of 16 MiB and one of 4).
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, size) in [("file-1m", MIB), ("file-100m", 100 * MIB)] {
        let (path, bytes) = random_file(dir.path(), name, size);
        let put = Instant::now();
        blobs.put_file(name, &path, size).await.expect("put_file");
        let elapsed = put.elapsed();
        let (hash, length) = hash_body(blobs.get(name, 0, size).await.expect("get")).await;
        eprintln!("{name}: put_file {elapsed:?}, read back {length} bytes");
        assert_eq!(
            (hash, length),
            (blake3::hash(&bytes), size),
            "{name} differs"
        );
        // Across the first part boundary of the large one.
        let (offset, length) = ((16 * MIB - 100).min(size / 2), 300);
        let range = collect(blobs.get(name, offset, length).await.expect("get")).await;
        let expected = &bytes[offset as usize..(offset + length) as usize];
        assert_eq!(&range.expect("a range")[..], expected, "{name}: a range");
    }

    // A listing under a prefix, 2 keys a page over 5.
    let names: Vec<String> = (0..5).map(|i| format!("list/k{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        blobs
            .put(name, Bytes::from(vec![b'x'; i]))
            .await
            .expect("put");
    }
    blobs.put("listless", Bytes::new()).await.expect("put");
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    for _page in 0..4 {
        let page = blobs
            .list("list/", after.as_deref(), 2)
            .await
            .expect("list");
        assert!(page.keys.len() <= 2, "a page of {}", page.keys.len());
        listed.extend(page.keys);
        after = page.next_start_after;
        if after.is_none() {
            break;
        }
    }
    assert!(after.is_none(), "the listing did not end in 3 pages");
    let keys: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        listed.iter().map(|l| l.size).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    let age = listed[0].last_modified.elapsed().unwrap_or_default();
    assert!(age < Duration::from_secs(600), "last modified {age:?} ago");

    // Delete, then NotFound; a second delete is fine.
    blobs.delete(key).await.expect("delete");
    assert!(matches!(
        blobs.get(key, 0, 1).await,
        Err(BlobError::NotFound)
    ));
    blobs.delete(key).await.expect("delete of a missing key");

    // 8 PUTs at once through a pool of 2: never more than 2 connections.
    let pooled = client(cluster.s3_addr, &cluster.bucket, credentials.clone(), 2);
    let port = cluster.s3_addr.port();
    let before = connections_to(port);
    let puts: Vec<_> = (0..8)
        .map(|i| {
            let pooled = pooled.clone();
            tokio::spawn(async move {
                let body = Bytes::from(vec![i as u8; 4 * MIB as usize]);
                pooled.put(&format!("pool/{i}"), body).await
            })
        })
        .collect();
    let mut most = 0;
    while !puts.iter().all(|put| put.is_finished()) {
        most = most.max(connections_to(port).saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for put in puts {
        put.await.expect("the task").expect("a pooled put");
    }
    assert!(
        (1..=2).contains(&most),
        "{most} connections through a pool of 2"
    );

    // A wrong secret, and nothing listening.
    let wrong = Credentials {
        secret_key: "not-the-secret".into(),
        ..credentials.clone()
    };
    let refused = client(cluster.s3_addr, &cluster.bucket, wrong, 1);
    match refused.put("wrong/secret", Bytes::from_static(b"x")).await {
        Err(BlobError::Rejected {
            status: 403,
            message,
        }) => eprintln!("wrong secret: {message}"),
        other => panic!("a wrong secret: {:?}", other.err()),
    }
    match refused.check_bucket().await {
        Err(BlobError::Rejected { status: 403, .. }) => {}
        other => panic!("check_bucket with a wrong secret: {:?}", other.err()),
    }
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let nowhere = free.local_addr().expect("its address");
    drop(free);
    let down = client(nowhere, &cluster.bucket, credentials, 1);
    match down.get("any", 0, 1).await {
        Err(BlobError::Unavailable(why)) => {
            assert!(why.contains(&nowhere.to_string()), "{why}");
            eprintln!("nothing listening: {why}");
        }
        Err(other) => panic!("nothing listening: {other}"),
        Ok(_) => panic!("nothing listening answered"),
    }
}
