//! Regression tests named after the bug they guard.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::*;
use rhinobox::client::MediaKind;

/// Buffer-pool deadlock (found by the size sweep): several large uploads at once on one
/// core, each wanting more registered buffers while its finished writes still held theirs,
/// hung forever. Six concurrent 6 MiB uploads on `--workers 1` must all complete, each
/// stored with the right hash, within a generous bound.
#[test]
fn concurrent_large_uploads_on_one_core_do_not_deadlock() {
    let daemon = Daemon::builder().args(&["--workers", "1"]).start();
    let daemon = Arc::new(daemon);
    let start = Arc::new(Barrier::new(6));
    let uploads: Vec<_> = (0..6u64)
        .map(|i| {
            let (daemon, start) = (daemon.clone(), start.clone());
            thread::spawn(move || {
                let file = TestFile::new(MediaKind::Mp4, 6 * 1024 * 1024 + 77 * i, 900 + i);
                start.wait();
                let entries = daemon.upload_ok(std::slice::from_ref(&file));
                assert_eq!(entries[0]["hash"], file.hash().as_str());
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for upload in uploads {
        while !upload.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "uploads hung: buffer pool deadlock"
            );
            thread::sleep(Duration::from_millis(20));
        }
        upload.join().expect("upload thread");
    }
    assert_eq!(stored_files(&daemon.data_dir).len(), 6);
}

/// Directory cache gone stale: the daemon remembers the directories it created. If an
/// operator removes a category directory while the daemon runs, the next upload into that
/// category must recreate it and succeed, not fail until a restart.
#[test]
fn removed_category_directory_is_recreated() {
    let daemon = Daemon::start();
    let first = TestFile::new(MediaKind::Png, 2000, 31);
    let form = form_of(std::slice::from_ref(&first)).text("category", "albums");
    let entry = stored_entries(&daemon.post_multipart(form), 1).remove(0);
    let stored = daemon.disk_path(entry["path"].as_str().expect("path"));
    let category_dir = stored.parent().expect("parent").to_path_buf();
    std::fs::remove_dir_all(&category_dir).expect("remove the category directory");

    let second = TestFile::new(MediaKind::Png, 2100, 32);
    let form = form_of(std::slice::from_ref(&second)).text("category", "albums");
    let entry = stored_entries(&daemon.post_multipart(form), 1).remove(0);
    let stored = daemon.disk_path(entry["path"].as_str().expect("path"));
    assert_eq!(std::fs::read(&stored).expect("stored file"), second.bytes);
    assert!(tmp_files(&daemon.data_dir).is_empty());
}
