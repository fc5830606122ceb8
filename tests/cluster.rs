//! Cluster mode (SPEC §8) end to end: two real rhinobox nodes on one real PostgreSQL and
//! one real Ceph cluster (3 memstore OSDs, RGW), all on loopback
//! (`scripts/cluster-fixture.sh` through tests/common/cluster.rs). One fixture, one test
//! per failure that changes it; each step says what it checks:
//! - an upload through node A is read by hash and by path through node B, with the same
//!   record (metadata, listing, search, statistics from PostgreSQL);
//! - small files go into packs: 200 files uploaded by 8 clients make far fewer cluster
//!   objects than files; a 70 MiB file (multipart to the cluster) round-trips by hash;
//! - the same bytes sent through both nodes at once are stored once: exactly one reply
//!   says `duplicate: false`;
//! - a delete through A is a 404 through both; reclaim (grace 3 s) removes the emptied
//!   pack from the bucket;
//! - kill -9 of node A under load: every upload A acknowledged reads back through B;
//! - one OSD killed: both nodes still store and serve;
//! - PostgreSQL stopped: uploads and reads answer 503 with Retry-After and nothing is
//!   acknowledged; started again: the same nodes serve again without a restart.
//!
//! Skips (SKIPPED line) when the fixture's packages are missing, except under `CI`.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cluster::Cluster;
use common::*;
use rhinobox::client::{Connection, MediaKind, Response};
use rhinobox::cluster::blob_client::{BlobClient, BlobSettings};
use serde_json::Value;

/// An acknowledged upload: its hash and bytes.
type Uploaded = (String, Vec<u8>);

/// A node of the fixture's cluster, one core (two nodes share this machine's cores).
fn node(cluster: &Cluster) -> Daemon {
    let blob_url = format!(
        "s3://{}?endpoint={}&region={}",
        cluster.bucket, cluster.s3_url, cluster.s3_credentials.region
    );
    Daemon::builder()
        .args(&[
            "--workers",
            "1",
            "--metadata-url",
            &cluster.pg_url,
            "--blob-url",
            &blob_url,
            "--blob-access-key",
            &cluster.s3_credentials.access_key,
            "--blob-secret-key",
            &cluster.s3_credentials.secret_key,
            "--reclaim-grace-s",
            "3",
            "--reclaim-interval-s",
            "1",
        ])
        .start()
}

/// The keys in the fixture's bucket under `prefix`, through rhinobox's own blob client.
fn bucket_keys(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let client = BlobClient::new(BlobSettings {
        bucket: cluster.bucket.clone(),
        endpoint: cluster.s3_url.clone(),
        host: cluster.s3_addr.to_string(),
        addr: cluster.s3_addr,
        credentials: cluster.s3_credentials.clone(),
        connections_max: 2,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = client
                .list(prefix, after.as_deref(), 1000)
                .await
                .expect("list the bucket");
            keys.extend(page.keys.into_iter().map(|listed| listed.key));
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return keys,
            }
        }
    })
}

fn get_by_hash(daemon: &Daemon, hash: &str) -> Response {
    daemon.get(&format!("/files/download?hash={hash}"))
}

fn get_by_path(daemon: &Daemon, path: &str) -> Response {
    let encoded: String = url_encode(path);
    daemon.get(&format!("/files/download?path={encoded}"))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `condition` holds, at most `timeout`; panics with `what` otherwise.
fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Uploads, reads, dedup, delete and reclaim across two nodes.
#[test]
fn two_nodes_are_one_store() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let a = node(&cluster);
    let b = node(&cluster);

    // An upload through A, read through B by hash and by path.
    let file = TestFile::named("holiday photo.png", MediaKind::Png, 40_000, 1);
    let entry = a.upload_ok(std::slice::from_ref(&file)).remove(0);
    assert_eq!(entry["duplicate"], false);
    assert_eq!(entry["hash"], file.hash());
    let path = entry["path"].as_str().unwrap().to_string();
    for response in [get_by_hash(&b, &file.hash()), get_by_path(&b, &path)] {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(
            response.body, file.bytes,
            "the bytes read back through node B"
        );
        assert_eq!(response.header("content-type"), Some("image/png"));
    }
    let range = b.request(
        "GET",
        &format!("/files/stream?hash={}", file.hash()),
        &[("Range", "bytes=100-199")],
        b"",
    );
    assert_eq!(range.status, 206);
    assert_eq!(range.body, file.bytes[100..200]);
    let metadata = b
        .get(&format!("/files/metadata?hash={}", file.hash()))
        .json();
    assert_eq!(metadata["path"], path.as_str());
    assert_eq!(metadata["original_name"], "holiday photo.png");
    let listed = b.get("/files?media_type=images").json();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["files"][0]["hash"], file.hash());
    let found = b.get("/files/search?name=HOLIDAY&ext=png").json();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(b.get("/files/search?name=nothing").json()["total"], 0);
    let statistics = b.get("/statistics").json();
    assert_eq!(statistics["files"], 1, "{statistics}");
    assert_eq!(statistics["bytes"], 40_000);
    assert_eq!(statistics["by_media_type"]["images"]["files"], 1);

    // A second upload of the same bytes through B is a duplicate naming A's record.
    let again = b.upload_ok(std::slice::from_ref(&file)).remove(0);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["path"], path.as_str());

    // Small files from 8 clients through both nodes: packs, far fewer objects than files.
    let packs_before = bucket_keys(&cluster, "packs/").len();
    let files_per_client = 25;
    let nodes = [a.addr, b.addr];
    let uploaded: Vec<(String, Vec<u8>)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..8u64)
            .map(|client| {
                scope.spawn(move || {
                    let mut connection = Connection::connect(nodes[client as usize % 2]).unwrap();
                    (0..files_per_client)
                        .map(|i| {
                            let seed = 1000 + client * 100 + i;
                            let file = TestFile::new(MediaKind::Text, 4096, seed);
                            let target = format!("/ingest/media/{}", file.name);
                            let response = connection
                                .request("PUT", &target, &[], &file.bytes)
                                .expect("PUT");
                            assert_eq!(response.status, 200, "{}", response.text());
                            (file.hash(), file.bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let packs_made = bucket_keys(&cluster, "packs/").len() - packs_before;
    eprintln!("{} small files in {packs_made} packs", uploaded.len());
    assert!(
        packs_made < uploaded.len(),
        "{} files made {packs_made} packs: small files are not grouped",
        uploaded.len()
    );
    for (i, (hash, bytes)) in uploaded.iter().enumerate() {
        let reader = if i % 2 == 0 { &a } else { &b };
        let response = get_by_hash(reader, hash);
        assert_eq!(response.status, 200);
        assert_eq!(&response.body, bytes, "file {hash} read back");
    }

    // A 70 MiB file: an object of its own, written with a multipart upload.
    let large = TestFile::new(MediaKind::Mp4, 70 * 1024 * 1024, 7);
    let response = a.request("PUT", "/ingest/media/large.mp4", &[], &large.bytes);
    assert_eq!(response.status, 200, "{}", response.text());
    let response = get_by_hash(&b, &large.hash());
    assert_eq!(response.status, 200);
    assert!(response.body == large.bytes, "the 70 MiB file read back");
    assert_eq!(bucket_keys(&cluster, "files/").len(), 1);

    // The same bytes through both nodes at the same moment: one stored copy.
    for round in 0..5u64 {
        let same = TestFile::new(MediaKind::Jpeg, 8192, 5000 + round);
        let barrier = Arc::new(Barrier::new(2));
        let replies: Vec<Value> = thread::scope(|scope| {
            let handles: Vec<_> = [a.addr, b.addr]
                .into_iter()
                .map(|addr| {
                    let barrier = barrier.clone();
                    let same = &same;
                    scope.spawn(move || {
                        let mut connection = Connection::connect(addr).unwrap();
                        let (content_type, body) = form_of(std::slice::from_ref(same)).finish();
                        barrier.wait();
                        let response = connection
                            .request(
                                "POST",
                                "/ingest/media",
                                &[("Content-Type", &content_type)],
                                &body,
                            )
                            .unwrap();
                        stored_entries(&response, 1).remove(0)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let new_copies = replies.iter().filter(|r| r["duplicate"] == false).count();
        assert_eq!(new_copies, 1, "round {round}: {replies:?}");
        assert_eq!(replies[0]["path"], replies[1]["path"]);
    }

    // A delete through A: 404 through both; reclaim empties the pack after the grace.
    let lone = TestFile::new(MediaKind::Pdf, 10_000, 77);
    let lone_entry = a.upload_ok(std::slice::from_ref(&lone)).remove(0);
    assert_eq!(lone_entry["duplicate"], false);
    let packs_with_lone = bucket_keys(&cluster, "packs/");
    let deleted = a.request("DELETE", &format!("/files/{}", lone.hash()), &[], b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["path"], lone_entry["path"]);
    for node in [&a, &b] {
        assert_eq!(get_by_hash(node, &lone.hash()).status, 404);
    }
    assert_eq!(
        b.request("DELETE", &format!("/files/{}", lone.hash()), &[], b"")
            .status,
        404
    );
    wait_until(
        "reclaim removes the emptied pack",
        Duration::from_secs(30),
        || bucket_keys(&cluster, "packs/").len() < packs_with_lone.len(),
    );
    // Everything still stored reads back after reclaim ran.
    assert_eq!(get_by_hash(&b, &file.hash()).body, file.bytes);
    let statistics = a.get("/statistics").json();
    assert_eq!(
        statistics["files"].as_u64().unwrap() as usize,
        2 + uploaded.len() + 5,
        "{statistics}"
    );
}

/// kill -9 of a node under load loses nothing it acknowledged; an OSD down changes
/// nothing for clients; PostgreSQL down is 503 without acknowledgement, and back is
/// service again without a restart.
#[test]
fn failures_answer_and_never_lie() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let mut a = node(&cluster);
    let b = node(&cluster);

    // kill -9 of A while 4 clients upload through it.
    let acknowledged: Arc<Mutex<Vec<Uploaded>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = a.addr;
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut seed = 10_000 + client * 100_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seed += 1;
                    let file = TestFile::new(MediaKind::Png, 3000 + seed % 5000, seed);
                    let Ok(mut connection) = Connection::connect(addr) else {
                        return;
                    };
                    let form = form_of(std::slice::from_ref(&file));
                    let (content_type, body) = form.finish();
                    let headers = [("Content-Type", content_type.as_str())];
                    match connection.request("POST", "/ingest/media", &headers, &body) {
                        Ok(response) if response.status == 200 => {
                            acknowledged.lock().unwrap().push((file.hash(), file.bytes));
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    wait_until("uploads are acknowledged", Duration::from_secs(30), || {
        acknowledged.lock().unwrap().len() >= 40
    });
    a.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!("{} uploads acknowledged before kill -9", acknowledged.len());
    for (hash, bytes) in &acknowledged {
        let response = get_by_hash(&b, hash);
        assert_eq!(
            response.status,
            200,
            "acknowledged {hash} lost: {}",
            response.text()
        );
        assert_eq!(&response.body, bytes);
    }

    // One OSD down: B still stores and serves.
    cluster.kill_osd(1);
    let during = TestFile::new(MediaKind::Gif, 20_000, 42);
    let entry = b.upload_ok(std::slice::from_ref(&during)).remove(0);
    assert_eq!(entry["duplicate"], false);
    assert_eq!(get_by_hash(&b, &during.hash()).body, during.bytes);
    assert_eq!(get_by_hash(&b, &acknowledged[0].0).body, acknowledged[0].1);
    cluster.start_osd(1);

    // PostgreSQL down: 503 with Retry-After, nothing acknowledged.
    cluster.pg_stop();
    let refused = TestFile::new(MediaKind::Wav, 9000, 43);
    let response = b.upload(std::slice::from_ref(&refused));
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header("retry-after").is_some());
    assert!(response.try_json().unwrap()["error"].is_string());
    let response = get_by_hash(&b, &during.hash());
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header("retry-after").is_some());
    assert_eq!(b.get("/statistics").status, 503);

    // Back: the same node serves again; the refused upload was never stored.
    cluster.pg_start();
    wait_until("node B serves again", Duration::from_secs(30), || {
        get_by_hash(&b, &during.hash()).status == 200
    });
    assert_eq!(get_by_hash(&b, &refused.hash()).status, 404);
    let entry = b.upload_ok(std::slice::from_ref(&refused)).remove(0);
    assert_eq!(entry["duplicate"], false);
    // A restarted node serves the same store at once.
    a.start_again();
    assert_eq!(get_by_hash(&a, &refused.hash()).body, refused.bytes);
}
