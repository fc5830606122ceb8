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
