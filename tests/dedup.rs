//! Deduplication by content: within a request, across requests, under concurrency.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::*;
use rhinobox::client::{Connection, MediaKind};

/// The same bytes twice in one request under two names: the first entry is new, the
/// second is `duplicate: true` and points at the first one's path and name; one file on
/// disk.
#[test]
fn duplicate_within_one_request() {
    let daemon = Daemon::start();
    let first = TestFile::named("one.png", MediaKind::Png, 3000, 1);
    let second = TestFile {
        name: "two.png".to_string(),
        ..first.clone()
    };
    let entries = daemon.upload_ok(&[first.clone(), second]);
    assert_eq!(entries[0]["duplicate"], false);
    assert_eq!(entries[1]["duplicate"], true);
    assert_eq!(entries[1]["hash"], first.hash().as_str());
    assert_eq!(entries[1]["path"], entries[0]["path"]);
    assert_eq!(
        entries[1]["original_name"], "one.png",
        "a duplicate reports the stored record"
    );
    assert_eq!(stored_files(&daemon.data_dir).len(), 1);
}

/// The same bytes in a second request: `duplicate: true` with the stored record (its
/// path, name, time and comment); still one file on disk.
#[test]
fn duplicate_across_requests() {
    let daemon = Daemon::start();
    let file = TestFile::named("orig.mp3", MediaKind::Mp3, 5000, 2);
    let form = form_of(std::slice::from_ref(&file)).text("comment", "first");
    let first = stored_entries(&daemon.post_multipart(form), 1).remove(0);
    let again = TestFile {
        name: "again.mp3".to_string(),
        ..file.clone()
    };
    let form = form_of(&[again]).text("comment", "second");
    let second = stored_entries(&daemon.post_multipart(form), 1).remove(0);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    for key in [
        "path",
        "hash",
        "original_name",
        "uploaded_at",
        "comment",
        "size",
    ] {
        assert_eq!(second[key], first[key], "{key} of the duplicate");
    }
    assert_eq!(stored_files(&daemon.data_dir).len(), 1);
}

/// 20 clients upload the same file at the same moment (a barrier releases them): all
/// get 200 with the same hash and path, exactly one says `duplicate: false`, and exactly
/// one file is on disk.
#[test]
fn concurrent_identical_uploads_store_one_copy() {
    const CLIENTS: usize = 20;
    let daemon = Daemon::start();
    let file = TestFile::named("same.jpg", MediaKind::Jpeg, 200_000, 3);
    let (content_type, body) = form_of(std::slice::from_ref(&file)).finish();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (barrier, content_type, body) =
                (barrier.clone(), content_type.clone(), body.clone());
            let mut conn = daemon.conn();
            thread::spawn(move || {
                barrier.wait();
                let headers = [("Content-Type", content_type.as_str())];
                conn.request("POST", "/ingest/media", &headers, &body)
                    .unwrap()
            })
        })
        .collect();
    let entries: Vec<_> = workers
        .into_iter()
        .map(|w| stored_entries(&w.join().unwrap(), 1).remove(0))
        .collect();
    let fresh = entries.iter().filter(|e| e["duplicate"] == false).count();
    assert_eq!(fresh, 1, "entries saying duplicate:false: {entries:?}");
    for entry in &entries {
        assert_eq!(entry["hash"], file.hash().as_str());
        assert_eq!(entry["path"], entries[0]["path"]);
    }
    assert_eq!(
        stored_files(&daemon.data_dir).len(),
        1,
        "{:?}",
        stored_files(&daemon.data_dir)
    );
    assert_entry_matches(&daemon, &entries[0], &file);
}

/// Attaches strace to every thread of the daemon and delays each `syncfs` by `delay`, so
/// a delete holds its place in the protocol (logged, not yet synced and unlinked) long
/// enough for another request to arrive. Detaches when dropped.
struct SlowSyncs(std::process::Child);

impl SlowSyncs {
    fn attach(daemon: &Daemon, delay: &str) -> SlowSyncs {
        let child = std::process::Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=syncfs", "-e"])
            .arg(format!("inject=syncfs:delay_enter={delay}"))
            .arg("-p")
            .arg(daemon.pid().to_string())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("strace");
        // strace attaches to the existing threads as it starts; give it that moment.
        thread::sleep(std::time::Duration::from_millis(500));
        SlowSyncs(child)
    }
}

impl Drop for SlowSyncs {
    fn drop(&mut self) {
        // SIGTERM makes strace detach; the daemon goes on untraced.
        // SAFETY: kill(2) on the strace child we spawned and have not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        self.0.wait().ok();
    }
}

/// An upload of content that a DELETE is removing at that moment (the delete's sync is
/// held for a second by strace): the upload must not answer `duplicate: true` with the
/// path the delete is about to unlink. It waits for the delete and stores its own copy,
/// so once both have answered the content is stored and downloads with its bytes.
#[test]
fn upload_during_a_delete_of_the_same_content_stores_its_own_copy() {
    if !tool_available("strace", std::process::Command::new("strace").arg("-V")) {
        return;
    }
    let daemon = Daemon::start();
    let file = TestFile::named("raced.jpg", MediaKind::Jpeg, 20_000, 4242);
    daemon.upload_ok(std::slice::from_ref(&file));
    let slow = SlowSyncs::attach(&daemon, "1s");
    let hash = file.hash();
    let delete = {
        let addr = daemon.addr;
        let hash = hash.clone();
        thread::spawn(move || {
            Connection::connect(addr)
                .unwrap()
                .request("DELETE", &format!("/files/{hash}"), &[], b"")
                .unwrap()
        })
    };
    // The delete is now waiting for its sync (a second); the upload arrives meanwhile.
    thread::sleep(std::time::Duration::from_millis(300));
    let again = TestFile {
        name: "raced again.jpg".into(),
        ..file.clone()
    };
    let entry = daemon.upload_ok(std::slice::from_ref(&again)).remove(0);
    let deleted = delete.join().unwrap();
    drop(slow);
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(
        entry["duplicate"], false,
        "the upload named a file being deleted: {entry}"
    );
    let download = daemon.get(&format!("/files/download?hash={hash}"));
    assert_eq!(
        download.status, 200,
        "the upload's 200 named a file that is gone"
    );
    assert_eq!(download.body, file.bytes);
    assert_stored_tree_consistent(&daemon.data_dir);
}
