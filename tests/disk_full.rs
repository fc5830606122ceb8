//! A full disk: the daemon answers 507 with a JSON error, leaves nothing behind, and keeps
//! serving once space is back. Runs on a small tmpfs mounted for the test (needs root, as
//! in CI; elsewhere the test says SKIPPED unless CI is set).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rhinobox::client::MediaKind;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .ok()?;
    status.success().then(|| Mount(dir.to_path_buf()))
}

/// An upload larger than the free space (a 6 MiB file on a 4 MiB tmpfs) gets 507 and
/// `{"error": ...}`; no stored file, no tmp file, no journal record remain; a small upload
/// right after succeeds, and so does the large one after the space is freed elsewhere.
#[test]
fn disk_full_is_507_and_leaves_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let Some(_mount) = mount_tmpfs(root.path(), "4m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (root)"
        );
        println!("SKIPPED: cannot mount a tmpfs here (not root)");
        return;
    };
    let data_dir = root.path().join("data");
    let daemon = Daemon::builder().data_dir(&data_dir).start();

    let big = TestFile::new(MediaKind::Mp4, 6 * 1024 * 1024, 41);
    let response = daemon.upload(std::slice::from_ref(&big));
    assert_json_error(&response, 507, None);
    assert!(stored_files(&data_dir).is_empty(), "a stored file remained");
    assert!(tmp_files(&data_dir).is_empty(), "a tmp file remained");
    let journal = std::fs::read_to_string(data_dir.join("metadata/journal.ndjson"))
        .expect("journal readable");
    assert!(journal.is_empty(), "journal got a record: {journal}");

    let small = TestFile::new(MediaKind::Png, 2000, 42);
    let entries = daemon.upload_ok(std::slice::from_ref(&small));
    assert_eq!(entries[0]["hash"], small.hash().as_str());
    assert_eq!(stored_files(&data_dir).len(), 1);
}
