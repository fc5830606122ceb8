//! Lifecycle: restarts keep the index, the journal survives a torn tail and refuses real
//! corruption, SIGTERM drains, kill -9 loses nothing acknowledged, one daemon per data
//! dir, and every request is logged.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use rhinobox::client::{Connection, MediaKind, blake3_hex};

/// Uploads 3 files, restarts (SIGTERM, exit 0, start again): re-uploading them gives
/// `duplicate: true` with the original paths, and their metadata is served.
#[test]
fn restart_keeps_the_index() {
    let mut daemon = Daemon::start();
    let files = mixed_files(3, 100);
    let first = daemon.upload_ok(&files);
    daemon.restart();
    let again = daemon.upload_ok(&files);
    for (before, after) in first.iter().zip(&again) {
        assert_eq!(after["duplicate"], true, "{after}");
        assert_eq!(after["path"], before["path"]);
        let metadata = daemon.get(&format!(
            "/files/metadata?hash={}",
            before["hash"].as_str().unwrap()
        ));
        assert_eq!(metadata.status, 200, "{}", metadata.text());
    }
    assert_eq!(stored_files(&daemon.data_dir).len(), 3);
}

/// Appends half a record (no newline) to the journal while the daemon is stopped, as a
/// crash mid-append would: the daemon starts, prints a warning, still knows the earlier
/// files (duplicates on re-upload) and stores new ones.
#[test]
fn torn_journal_tail_is_skipped_with_a_warning() {
    let mut daemon = Daemon::start();
    let files = mixed_files(2, 200);
    daemon.upload_ok(&files);
    assert!(daemon.sigterm().success());
    let journal = daemon
        .journal_files()
        .pop()
        .expect("a journal file under metadata/");
    let mut handle = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    handle
        .write_all(b"{\"hash\":\"0123456789abcdef\",\"path\":\"storage/ima")
        .unwrap();
    drop(handle);
    daemon.start_again();
    let warned = daemon
        .current_run_lines()
        .iter()
        .any(|line| line.to_lowercase().contains("warn"));
    assert!(
        warned,
        "no warning about the torn tail:\n{}",
        daemon.current_run_lines().join("\n")
    );
    for entry in daemon.upload_ok(&files) {
        assert_eq!(entry["duplicate"], true, "{entry}");
    }
    let new = TestFile::new(MediaKind::Flac, 1000, 201);
    assert_entry_matches(
        &daemon,
        &daemon.upload_ok(std::slice::from_ref(&new))[0],
        &new,
    );
}

/// Overwrites the middle of the second of three journal records (same length, newline
/// kept) while stopped: that is corruption, not a torn tail, so the daemon refuses to
/// start with exit code 2 and a `rhinobox: error:` line.
#[test]
fn corruption_inside_the_journal_stops_the_start() {
    let mut daemon = Daemon::start();
    for seed in 300..303 {
        daemon.upload_ok(&[TestFile::new(MediaKind::Gif, 800, seed)]);
    }
    assert!(daemon.sigterm().success());
    let journal = daemon
        .journal_files()
        .pop()
        .expect("a journal file under metadata/");
    let mut text = std::fs::read(&journal).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            text.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|start| *start < text.len())
        .collect();
    assert!(
        line_starts.len() >= 3,
        "expected 3 journal records, got {}",
        line_starts.len()
    );
    let (start, end) = (line_starts[1], line_starts[2] - 1);
    for byte in &mut text[start + (end - start) / 3..start + 2 * (end - start) / 3] {
        *byte = b'#';
    }
    std::fs::write(&journal, &text).unwrap();
    let status = daemon.start_expecting_exit();
    assert_eq!(
        status.code(),
        Some(2),
        "log:\n{}",
        daemon.current_run_lines().join("\n")
    );
    let errored = daemon
        .current_run_lines()
        .iter()
        .any(|l| l.starts_with("stderr: rhinobox: error:"));
    assert!(
        errored,
        "no `rhinobox: error:` line:\n{}",
        daemon.current_run_lines().join("\n")
    );
}

/// Record of one acknowledged file: where it is and what its bytes hash to.
#[derive(Clone)]
struct Acknowledged {
    path: String,
    hash: String,
    file: TestFile,
}

/// Client threads uploading until stopped, with what they saw.
struct Load {
    handles: Vec<thread::JoinHandle<()>>,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Load {
    /// Joins the clients; returns the acknowledged files and the unexpected replies.
    fn finish(self) -> (Vec<Acknowledged>, Vec<String>) {
        for handle in self.handles {
            handle.join().unwrap();
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (acknowledged, failures)
    }
}

/// Runs `clients` threads that upload batches of 8 distinct files in a loop until a
/// request fails or `stop` is set. A reply other than 200 or 503 is recorded as a failure.
fn upload_load(daemon: &Daemon, clients: usize, stop: Arc<AtomicBool>) -> Load {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seed = Arc::new(AtomicU64::new(1_000_000));
    let addr = daemon.addr;
    let handles = (0..clients)
        .map(|_| {
            let (acknowledged, failures, stop, seed) = (
                acknowledged.clone(),
                failures.clone(),
                stop.clone(),
                seed.clone(),
            );
            thread::spawn(move || {
                let Ok(mut conn) = Connection::connect(addr) else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let base = seed.fetch_add(8, Ordering::Relaxed);
                    let files = mixed_files(8, base);
                    let (content_type, body) = form_of(&files).finish();
                    let headers = [("Content-Type", content_type.as_str())];
                    let Ok(response) = conn.request("POST", "/ingest/media", &headers, &body)
                    else {
                        return; // connection refused or reset: the daemon went away
                    };
                    if response.status == 503 {
                        return;
                    }
                    if response.status != 200 {
                        failures.lock().unwrap().push(format!(
                            "{}: {}",
                            response.status,
                            response.text()
                        ));
                        return;
                    }
                    let body = response.json();
                    let mut acknowledged = acknowledged.lock().unwrap();
                    for (entry, file) in body["stored"].as_array().unwrap().iter().zip(&files) {
                        assert_eq!(entry["hash"], file.hash().as_str());
                        acknowledged.push(Acknowledged {
                            path: entry["path"].as_str().unwrap().to_string(),
                            hash: file.hash(),
                            file: file.clone(),
                        });
                    }
                    if conn.is_closed() {
                        return;
                    }
                }
            })
        })
        .collect();
    Load {
        handles,
        acknowledged,
        failures,
    }
}

/// Every acknowledged file is on disk with the bytes it was acknowledged for.
fn assert_acknowledged_intact(daemon: &Daemon, acknowledged: &[Acknowledged]) {
    for ack in acknowledged {
        let bytes = std::fs::read(daemon.disk_path(&ack.path))
            .unwrap_or_else(|e| panic!("acknowledged {} missing: {e}", ack.path));
        assert_eq!(
            blake3_hex(&bytes),
            ack.hash,
            "acknowledged {} corrupt",
            ack.path
        );
    }
}

/// SIGTERM while 4 clients upload: the daemon exits 0 (bounded), in-flight requests
/// get 200 or 503 (never another error), every acknowledged file is intact on disk,
/// `storage/.tmp` holds nothing, and every stored file's name matches its content hash.
#[test]
fn sigterm_during_uploads_drains_and_exits_zero() {
    let mut daemon = Daemon::start();
    let stop = Arc::new(AtomicBool::new(false));
    let load = upload_load(&daemon, 4, stop.clone());
    thread::sleep(Duration::from_millis(800));
    let status = daemon.sigterm();
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, failures) = load.finish();
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        !acknowledged.is_empty(),
        "no upload was acknowledged before SIGTERM"
    );
    assert_acknowledged_intact(&daemon, &acknowledged);
    assert!(
        tmp_files(&daemon.data_dir).is_empty(),
        "{:?}",
        tmp_files(&daemon.data_dir)
    );
    assert_stored_tree_consistent(&daemon.data_dir);
}

/// kill -9 while 4 clients upload, three times at different moments: after each
/// restart every file acknowledged so far is on disk with the right hash and known to
/// the index (metadata 200, re-upload is a duplicate), `storage/.tmp` is empty and
/// every stored file's name matches its content hash.
#[test]
fn kill_9_during_uploads_loses_nothing_acknowledged() {
    let mut daemon = Daemon::start();
    let mut all_acknowledged: Vec<Acknowledged> = Vec::new();
    for delay_ms in [300u64, 700, 1100] {
        let stop = Arc::new(AtomicBool::new(false));
        let load = upload_load(&daemon, 4, stop.clone());
        thread::sleep(Duration::from_millis(delay_ms));
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        let (acknowledged, failures) = load.finish();
        assert!(failures.is_empty(), "{failures:?}");
        all_acknowledged.extend(acknowledged);
        daemon.start_again();
        assert!(
            tmp_files(&daemon.data_dir).is_empty(),
            "storage/.tmp not emptied at start"
        );
        assert_acknowledged_intact(&daemon, &all_acknowledged);
        for ack in all_acknowledged.iter().step_by(7) {
            let again = daemon.upload_ok(std::slice::from_ref(&ack.file)).remove(0);
            assert_eq!(again["duplicate"], true, "index lost {}: {again}", ack.path);
            assert_eq!(again["path"], ack.path.as_str());
            let metadata = daemon.get(&format!("/files/metadata?hash={}", ack.hash));
            assert_eq!(
                metadata.status,
                200,
                "index lost {}: {}",
                ack.path,
                metadata.text()
            );
        }
        assert_stored_tree_consistent(&daemon.data_dir);
    }
    assert!(!all_acknowledged.is_empty(), "no upload was acknowledged");
}

/// A second daemon on a data dir in use exits with code 2 and a `rhinobox: error:`
/// line, and the first keeps serving.
#[test]
fn second_daemon_on_same_data_dir_is_refused() {
    let daemon = Daemon::start();
    let data_dir = daemon.data_dir.to_str().unwrap().to_string();
    let engine = io_engine();
    let args = [
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--io-engine",
        &engine,
    ];
    let (status, lines) = run_until_exit(&args, &[]);
    assert_eq!(status.code(), Some(2), "log:\n{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stderr: rhinobox: error:")),
        "{lines:?}"
    );
    assert_eq!(daemon.get("/healthz").status, 200);
}

/// Every request is logged in one line `ADDR "METHOD PATH" - STATUS <N>B in <x>ms`, with
/// ` query="..."` after it when the request had a query: ADDR is the client's address
/// and port as the daemon saw them (regression: no address and no query were logged).
#[test]
fn access_log_line_format() {
    let daemon = Daemon::start();
    daemon.upload_ok(&mixed_files(2, 400));
    let line = daemon
        .wait_for_line(Duration::from_secs(5), |l| {
            l.contains("\"POST /ingest/media\" - 200 ")
        })
        .unwrap_or_else(|| panic!("no access log line:\n{}", daemon.log_text()));
    let line = line.strip_prefix("stderr: ").unwrap();
    let (peer, rest) = line
        .split_once(" \"POST /ingest/media\" - 200 ")
        .unwrap_or_else(|| panic!("format: {line}"));
    let peer: std::net::SocketAddr = peer
        .parse()
        .unwrap_or_else(|_| panic!("no client address in front of {line}"));
    assert_eq!(peer.ip(), daemon.addr.ip(), "{line}");
    assert_ne!(
        peer.port(),
        daemon.addr.port(),
        "the client's port, not ours: {line}"
    );
    let (bytes, rest) = rest
        .split_once("B in ")
        .unwrap_or_else(|| panic!("format: {line}"));
    assert!(
        !bytes.is_empty() && bytes.bytes().all(|b| b.is_ascii_digit()),
        "size in {line}"
    );
    let millis = rest
        .trim_end()
        .strip_suffix("ms")
        .unwrap_or_else(|| panic!("unit in {line} (no query: no query field)"));
    assert!(
        millis.parse::<f64>().is_ok_and(|ms| ms >= 0.0),
        "duration in {line}"
    );
    assert_eq!(daemon.get("/files?page=1&limit=5").status, 200);
    let listed = daemon.wait_for_line(Duration::from_secs(5), |l| {
        l.contains("\"GET /files\" - 200 ") && l.ends_with("ms query=\"page=1&limit=5\"")
    });
    assert!(listed.is_some(), "query not logged:\n{}", daemon.log_text());
    let get = daemon.get("/healthz");
    assert_eq!(get.status, 200);
    let logged = daemon.wait_for_line(Duration::from_secs(5), |l| {
        l.contains("\"GET /healthz\" - 200 ")
    });
    assert!(logged.is_some(), "GET not logged:\n{}", daemon.log_text());
}

/// `--addr :PORT` listens on every IPv4 and IPv6 address: one daemon started with `:0`
/// answers over 127.0.0.1 and over [::1], and logs each client as it connected
/// (`127.0.0.1:P`, not `[::ffff:127.0.0.1]:P`). On a host without IPv6 the daemon says so
/// in one warning line and the IPv6 half is skipped with a printed reason.
#[test]
fn every_interface_port_listens_on_ipv4_and_ipv6() {
    let daemon = Daemon::builder().args(&["--addr", ":0"]).start();
    let port = daemon.addr.port();
    let answer = |addr: std::net::SocketAddr| {
        Connection::connect(addr)
            .and_then(|mut c| c.request("GET", "/healthz", &[], b""))
            .map(|r| r.status)
    };
    let ipv4: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(answer(ipv4).expect("connect over 127.0.0.1"), 200);
    let has_ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    if has_ipv6 {
        assert!(
            daemon.addr.is_ipv6(),
            "`:0` did not bind [::]: {}",
            daemon.addr
        );
        let ipv6: std::net::SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
        assert_eq!(answer(ipv6).expect("connect over [::1]"), 200);
    } else {
        let warned = daemon
            .log_text()
            .contains("rhinobox: warning: no IPv6 on this host");
        assert!(warned, "no IPv6 here, and the daemon did not say so");
        eprintln!("SKIPPED: the IPv6 half (this host has no IPv6 loopback)");
    }
    let logged = |prefix: &str| {
        daemon.wait_for_line(Duration::from_secs(5), |l| {
            l.starts_with(prefix) && l.contains("\"GET /healthz\" - 200")
        })
    };
    assert!(
        logged("stderr: 127.0.0.1:").is_some(),
        "IPv4 client not logged as 127.0.0.1:\n{}",
        daemon.log_text()
    );
    if has_ipv6 {
        assert!(
            logged("stderr: [::1]:").is_some(),
            "IPv6 client not logged as [::1]:\n{}",
            daemon.log_text()
        );
    }
}
