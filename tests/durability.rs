//! Durability and recovery, against the real binary: a crash at an exact step of
//! the put and delete protocols, injected write, rename, journal and sync errors, a final
//! name already taken, dedup over a damaged stored copy, a damaged or torn journal, and
//! `storage/` or `metadata/` on a file system of their own.
//!
//! Crashes and errors are injected by the daemon built with the `failpoints` feature
//! ([`failpoints_binary`], `RHINOBOX_FAILPOINTS=point=ERRNO|KILL[@N]`); every restart after
//! one runs the daemon under test ([`binary`]), so `RHINOBOX_TEST_BIN` points the recovery
//! side at another build.

mod common;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rhinobox::client::{MediaKind, Response, payload};
use serde_json::Value;
use tempfile::TempDir;

/// How long a daemon may take to die after a failpoint fired or a sync failed.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);

/// A data dir (not yet created) inside a temporary directory the caller holds.
fn scratch() -> (TempDir, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix("rhinobox-durability")
        .tempdir()
        .unwrap();
    let data = root.path().join("data");
    (root, data)
}

/// The failpoints daemon on `data_dir` with `RHINOBOX_FAILPOINTS=spec`.
fn with_failpoints(data_dir: &Path, spec: &str) -> DaemonBuilder {
    Daemon::builder()
        .binary(&failpoints_binary())
        .env("RHINOBOX_FAILPOINTS", spec)
        .data_dir(data_dir)
}

/// The request was not acknowledged: the connection closed before an answer, or a 5xx.
fn assert_not_acknowledged(result: &io::Result<Response>) {
    if let Ok(response) = result {
        assert!(
            response.status >= 500,
            "acknowledged with {}: {}",
            response.status,
            response.text()
        );
    }
}

/// The daemon died by SIGKILL (a `KILL` failpoint), within [`DEATH_TIMEOUT`].
fn assert_killed(daemon: &mut Daemon) {
    let status = daemon.wait_exit(DEATH_TIMEOUT);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the failpoint did not kill the daemon: {status}; log:\n{}",
        daemon.log_text()
    );
}

fn journal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("metadata").join("journal.ndjson")
}

/// Every journal line as JSON (each has its `crc` member; an undecodable line panics).
fn journal_entries(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(journal_path(data_dir))
        .expect("journal readable")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Whether the journal has a line with `op` for `hash`.
fn journal_has(data_dir: &Path, op: &str, hash: &str) -> bool {
    journal_entries(data_dir)
        .iter()
        .any(|entry| entry["op"] == op && entry["hash"] == hash)
}

/// `GET /files/download?hash=` must be 200; its body.
fn download(daemon: &Daemon, hash: &str) -> Vec<u8> {
    let response = daemon.get(&format!("/files/download?hash={hash}"));
    assert_eq!(response.status, 200, "download {hash}: {}", response.text());
    response.body
}

fn metadata_status(daemon: &Daemon, hash: &str) -> u16 {
    daemon.get(&format!("/files/metadata?hash={hash}")).status
}

/// `rhinobox_fsync_batches_total` from `/metrics`.
fn fsync_batches(daemon: &Daemon) -> u64 {
    let metrics = daemon.get("/metrics");
    assert_eq!(metrics.status, 200);
    metrics
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("rhinobox_fsync_batches_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("rhinobox_fsync_batches_total in /metrics")
}

/// A stopped daemon's data dir holds `file` either nowhere or intact and served, nothing
/// else: no stray, no tmp file (checked with the daemon under test started on it).
fn assert_absent_or_intact(daemon: &Daemon, file: &TestFile) {
    let data = &daemon.data_dir;
    assert!(
        tmp_files(data).is_empty(),
        "tmp files: {:?}",
        tmp_files(data)
    );
    assert_stored_tree_consistent(data);
    let stored = stored_files(data);
    match metadata_status(daemon, &file.hash()) {
        404 => assert!(stored.is_empty(), "unrecorded files remain: {stored:?}"),
        200 => {
            assert_eq!(stored.len(), 1, "stored files: {stored:?}");
            assert!(download(daemon, &file.hash()) == file.bytes, "bytes differ");
        }
        other => panic!("metadata answered {other}"),
    }
}

/// Crash between the rename and the put record: the failpoints daemon SIGKILLs itself at
/// the upload's second journal append (the first is the `place` intent, the second the
/// `put` record), so the file has its final name and no record. The upload gets no 200
/// (the connection closes) and the daemon is dead; the placed file is checked to be there.
/// The daemon under test, started on that data dir, removes it and logs `removed stray`:
/// nothing under `storage/` nor in `.tmp`. The same bytes uploaded again are new
/// (`duplicate: false`) and download intact.
#[test]
fn crash_between_rename_and_put_record_leaves_no_stray() {
    let (_root, data) = scratch();
    let file = TestFile::new(MediaKind::Png, 3000, 101);
    let mut crashing = with_failpoints(&data, "journal-append=KILL@2").start();
    assert_not_acknowledged(&crashing.try_upload(std::slice::from_ref(&file)));
    assert_killed(&mut crashing);
    assert_eq!(
        stored_files(&data).len(),
        1,
        "the crash was meant to come after the rename"
    );

    let daemon = Daemon::builder().data_dir(&data).start();
    assert!(
        stored_files(&data).is_empty(),
        "stray survived the start: {:?}",
        stored_files(&data)
    );
    assert!(tmp_files(&data).is_empty(), "{:?}", tmp_files(&data));
    assert!(
        daemon
            .stderr_lines()
            .iter()
            .any(|line| line.contains("removed stray")),
        "no `removed stray` line; log:\n{}",
        daemon.log_text()
    );
    let entries = daemon.upload_ok(std::slice::from_ref(&file));
    assert_eq!(entries[0]["duplicate"], false, "{}", entries[0]);
    assert!(download(&daemon, &file.hash()) == file.bytes);
}

/// Crash between the delete line and the unlink: a file uploaded by the daemon under test,
/// then the failpoints daemon on that data dir SIGKILLs itself at its first unlink, which a
/// DELETE reaches after its `delete` line is synced. The DELETE gets no 200 and the file is
/// still on disk. Restarted, the daemon under test removes it: gone from disk,
/// `GET /files/metadata?hash=` is 404, and the journal has the delete line.
#[test]
fn crash_between_delete_line_and_unlink_removes_the_file() {
    let (_root, data) = scratch();
    let file = TestFile::new(MediaKind::Pdf, 4000, 102);
    let mut daemon = Daemon::builder().data_dir(&data).start();
    let entry = daemon.upload_ok(std::slice::from_ref(&file)).remove(0);
    let on_disk = daemon.disk_path(entry["path"].as_str().expect("path"));
    assert!(daemon.sigterm().success());

    let mut crashing = with_failpoints(&data, "unlink=KILL@1").start();
    let deleted = crashing
        .conn()
        .request("DELETE", &format!("/files/{}", file.hash()), &[], b"");
    assert_not_acknowledged(&deleted);
    assert_killed(&mut crashing);
    assert!(
        on_disk.exists(),
        "the crash was meant to come before the unlink"
    );

    daemon.start_again();
    assert!(
        !on_disk.exists(),
        "deleted file {} survived",
        on_disk.display()
    );
    assert!(stored_files(&data).is_empty(), "{:?}", stored_files(&data));
    assert_eq!(metadata_status(&daemon, &file.hash()), 404);
    assert!(
        journal_has(&data, "delete", &file.hash()),
        "no delete line in the journal"
    );
}

/// An injected sync failure is fatal. `sync=EIO@2`, not `@1`: the sync thread's first sync
/// is an idle one about a second after start, and racing that timer would let it, not the
/// upload, hit the failpoint; `/metrics` shows it done before the upload. The upload's sync
/// fails, the upload gets no 200 (a 5xx or a closed connection) and the daemon exits 70
/// within a few seconds, saying why when `stderr_closed` is false. With `stderr_closed` the
/// read end of its stderr is closed after the ready line, so the fatal message cannot be
/// written: it must neither panic nor acknowledge, and still exit 70. The daemon under test
/// restarted on the data dir finds the file either absent everywhere or stored intact,
/// nothing stray.
fn failed_sync_case(stderr_closed: bool) {
    let (_root, data) = scratch();
    let file = TestFile::new(MediaKind::Jpeg, 5000, 103 + u64::from(stderr_closed));
    let mut builder = with_failpoints(&data, "sync=EIO@2");
    if stderr_closed {
        builder = builder.close_stderr_after_ready();
    }
    let mut failing = builder.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fsync_batches(&failing) < 1 {
        assert!(
            Instant::now() < deadline,
            "no idle sync after start: this test counts on it to be the first sync"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_not_acknowledged(&failing.try_upload(std::slice::from_ref(&file)));
    let status = failing.wait_exit(DEATH_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(70),
        "exit after a failed sync: {status}; log:\n{}",
        failing.log_text()
    );
    if !stderr_closed {
        assert!(
            failing
                .stderr_lines()
                .iter()
                .any(|line| line.starts_with("rhinobox: fatal: sync")),
            "no fatal line; log:\n{}",
            failing.log_text()
        );
    }
    let daemon = Daemon::builder().data_dir(&data).start();
    assert_absent_or_intact(&daemon, &file);
}

/// [`failed_sync_case`] with stderr readable: also the `rhinobox: fatal: sync` line.
#[test]
fn failed_sync_exits_70_without_acknowledging() {
    failed_sync_case(false);
}

/// [`failed_sync_case`] with the stderr pipe closed after the ready line (EPIPE on every
/// later write): the fatal message is lost, the exit status is still 70, not a panic.
#[test]
fn failed_sync_exits_70_when_stderr_cannot_be_written() {
    failed_sync_case(true);
}

/// Injected errors on a put's steps leave nothing behind: for each case the failpoints
/// daemon on a fresh data dir answers the upload with the errno's status (ENOSPC → 507,
/// EIO → 500) and a JSON `error`, twice (the second attempt shows the failed put released
/// its claim on the hash: no hang); then no file under `storage/`, none in `.tmp`, no put
/// record in the journal. Cases: the write of a small file (at the commit) and of a large
/// one (while received), the rename of a one-file upload and the second rename of a
/// two-file one (the first file must be removed again), the append of the intents and that
/// of the put record (after the rename). Restarted without the failpoint (the daemon under
/// test), the same files upload as new and download intact, and so do other bytes.
#[test]
fn injected_io_errors_leave_nothing_behind() {
    let small = |seed| TestFile::new(MediaKind::Png, 3000, seed);
    let cases: Vec<(&str, Vec<TestFile>, u16)> = vec![
        ("write=ENOSPC", vec![small(110)], 507),
        (
            "write=EIO",
            vec![TestFile::new(MediaKind::Mp4, 3 * 1024 * 1024, 111)],
            500,
        ),
        ("rename=ENOSPC", vec![small(112)], 507),
        ("rename=EIO@2", vec![small(113), small(114)], 500),
        ("journal-append=ENOSPC", vec![small(115)], 507),
        ("journal-append=EIO@2", vec![small(116)], 500),
    ];
    for (spec, files, status) in cases {
        eprintln!("case {spec}");
        let (_root, data) = scratch();
        let mut failing = with_failpoints(&data, spec).start();
        for attempt in 1..=2 {
            let response = failing
                .try_upload(&files)
                .unwrap_or_else(|e| panic!("{spec}, attempt {attempt}: no answer: {e}"));
            assert_json_error(&response, status, None);
        }
        assert!(
            stored_files(&data).is_empty(),
            "{spec}: files remain: {:?}",
            stored_files(&data)
        );
        assert!(
            tmp_files(&data).is_empty(),
            "{spec}: tmp files remain: {:?}",
            tmp_files(&data)
        );
        for file in &files {
            assert!(
                !journal_has(&data, "put", &file.hash()),
                "{spec}: a put record"
            );
        }
        assert!(failing.sigterm().success(), "{spec}: clean stop");

        let daemon = Daemon::builder().data_dir(&data).start();
        assert!(stored_files(&data).is_empty(), "{spec}: after restart");
        let mut later = files.clone();
        later.push(small(119));
        for entry in daemon.upload_ok(&later) {
            assert_eq!(entry["duplicate"], false, "{spec}: {entry}");
        }
        for file in &later {
            assert!(download(&daemon, &file.hash()) == file.bytes, "{spec}");
        }
    }
}

/// A final name already taken by another file is never replaced: a different file is
/// planted at the exact path an upload will get (`storage/images/png/<first 12 hex of its
/// BLAKE3>_collide.png`); the upload is stored under the 16-hex prefix instead, the planted
/// file keeps its bytes, and the upload downloads by hash and by path, also after a
/// restart.
#[test]
fn name_collision_gets_a_longer_prefix_and_replaces_nothing() {
    let mut daemon = Daemon::start();
    let file = TestFile::named("collide.png", MediaKind::Png, 3000, 120);
    let hash = file.hash();
    let leaf = |len: usize| format!("storage/images/png/{}_collide.png", &hash[..len]);
    let planted = daemon.disk_path(&leaf(12));
    let planted_bytes = payload(MediaKind::Png, 2500, 121);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, &planted_bytes).unwrap();

    let entry = daemon.upload_ok(std::slice::from_ref(&file)).remove(0);
    assert_eq!(entry["path"], leaf(16).as_str(), "{entry}");
    assert_eq!(entry["duplicate"], false);
    assert!(
        std::fs::read(&planted).unwrap() == planted_bytes,
        "planted file replaced"
    );
    assert!(std::fs::read(daemon.disk_path(&leaf(16))).unwrap() == file.bytes);
    for _run in 0..2 {
        assert!(download(&daemon, &hash) == file.bytes);
        let by_path = daemon.get(&format!("/files/download?path={}", leaf(16)));
        assert_eq!(by_path.status, 200, "{}", by_path.text());
        assert!(by_path.body == file.bytes);
        assert!(std::fs::read(&planted).unwrap() == planted_bytes);
        daemon.restart();
    }
}

/// Dedup heals a damaged stored copy: a file is uploaded, its stored copy damaged on disk
/// by `damage`, and the same bytes uploaded again: the upload is `duplicate: false` (the
/// copy was checked, not trusted), the bytes on disk and downloaded are right, and stay so
/// after a restart.
fn dedup_heal_case(seed: u64, damage: impl Fn(&Path)) {
    let mut daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Webp, 6000, seed);
    let entry = daemon.upload_ok(std::slice::from_ref(&file)).remove(0);
    damage(&daemon.disk_path(entry["path"].as_str().expect("path")));

    let again = daemon.upload_ok(std::slice::from_ref(&file)).remove(0);
    assert_eq!(again["duplicate"], false, "damaged copy trusted: {again}");
    let path = daemon.disk_path(again["path"].as_str().expect("path"));
    assert!(std::fs::read(&path).unwrap() == file.bytes, "bytes on disk");
    assert!(download(&daemon, &file.hash()) == file.bytes);
    daemon.restart();
    assert!(
        download(&daemon, &file.hash()) == file.bytes,
        "after restart"
    );
    assert_eq!(stored_files(&daemon.data_dir).len(), 1);
}

/// [`dedup_heal_case`] with the stored copy cut to 1000 of its 6000 bytes.
#[test]
fn dedup_heals_a_truncated_stored_copy() {
    dedup_heal_case(130, |path| {
        let stored = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        stored.set_len(1000).unwrap();
    });
}

/// [`dedup_heal_case`] with the stored copy removed.
#[test]
fn dedup_heals_a_removed_stored_copy() {
    dedup_heal_case(131, |path| std::fs::remove_file(path).unwrap());
}

/// Dedup heals a damaged copy also when stderr cannot be written (its pipe closed after
/// the ready line, as for a full or gone log): the heal's warning must not break the put.
/// The re-upload over a truncated copy is a 200 `duplicate: false`, and a third upload of
/// the same bytes a 200 `duplicate: true` within 10 s. Before log lines ignored a failing
/// stderr, the warning's `eprintln!` in `Store::plan` panicked after `claim_damaged` took
/// the hash: the put answered 500 and the hash stayed claimed, so the third upload waited
/// forever.
#[test]
fn dedup_heal_survives_an_unwritable_stderr() {
    let daemon = Daemon::builder().close_stderr_after_ready().start();
    let file = TestFile::new(MediaKind::Webp, 6000, 132);
    let entry = daemon.upload_ok(std::slice::from_ref(&file)).remove(0);
    let stored = daemon.disk_path(entry["path"].as_str().expect("path"));
    let copy = std::fs::OpenOptions::new()
        .write(true)
        .open(stored)
        .unwrap();
    copy.set_len(1000).unwrap();
    for duplicate in [false, true] {
        let (content_type, body) = form_of(std::slice::from_ref(&file)).finish();
        let response =
            rhinobox::client::Connection::connect_timeout(daemon.addr, Duration::from_secs(10))
                .and_then(|mut conn| {
                    let headers = [("Content-Type", content_type.as_str())];
                    conn.request("POST", "/ingest/media", &headers, &body)
                })
                .unwrap_or_else(|e| panic!("upload (duplicate: {duplicate}) got no answer: {e}"));
        let entries = stored_entries(&response, 1);
        assert_eq!(entries[0]["duplicate"], duplicate, "{}", entries[0]);
    }
    assert!(download(&daemon, &file.hash()) == file.bytes);
}

/// A flipped byte in the last journal record after a clean stop (SIGTERM, which syncs the
/// journal and its marker) is damage, not a torn tail: the start is refused with exit 2 and
/// a `rhinobox: error:` line naming `rhinobox repair`, and the journal is byte-for-byte what
/// it was (nothing cut, nothing set aside).
#[test]
fn damaged_last_record_after_clean_stop_refuses_the_start() {
    let mut daemon = Daemon::start();
    for seed in [140, 141] {
        daemon.upload_ok(&[TestFile::new(MediaKind::Gif, 2000, seed)]);
    }
    assert!(daemon.sigterm().success());
    let journal = journal_path(&daemon.data_dir);
    let mut bytes = std::fs::read(&journal).unwrap();
    let last_line = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let name_at = last_line
        + memchr::memmem::find(&bytes[last_line..], b"\"original_name\":\"f")
            .expect("the last line is a put record");
    let flip_at = name_at + "\"original_name\":\"".len();
    bytes[flip_at] ^= 0x01; // 'f' → 'g': still JSON, wrong checksum
    std::fs::write(&journal, &bytes).unwrap();

    let status = daemon.try_start_expecting_exit(Duration::from_secs(20));
    let Some(status) = status else {
        panic!("started on a damaged journal; log:\n{}", daemon.log_text());
    };
    assert_eq!(status.code(), Some(2), "log:\n{}", daemon.log_text());
    let error = daemon
        .current_run_lines()
        .into_iter()
        .find(|line| line.starts_with("stderr: rhinobox: error:"))
        .unwrap_or_else(|| panic!("no error line; log:\n{}", daemon.log_text()));
    assert!(error.contains("rhinobox repair"), "{error}");
    assert!(
        std::fs::read(&journal).unwrap() == bytes,
        "the journal changed"
    );
    assert!(torn_files(&daemon.data_dir).is_empty(), "bytes set aside");
}

/// `metadata/journal-tail-*.torn` files.
fn torn_files(data_dir: &Path) -> Vec<PathBuf> {
    files_under(&data_dir.join("metadata"))
        .into_iter()
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("journal-tail-") && name.ends_with(".torn")
        })
        .collect()
}

/// A torn tail, a partial line appended after a clean stop (past the synced marker: what
/// a crash mid-append leaves), is cut with a warning at the next start: the journal is
/// back to its length at the stop, the cut bytes are in `metadata/journal-tail-*.torn`,
/// and the stored file still downloads.
#[test]
fn torn_tail_after_clean_stop_is_cut_and_set_aside() {
    let mut daemon = Daemon::start();
    let file = TestFile::new(MediaKind::Gif, 2000, 142);
    daemon.upload_ok(std::slice::from_ref(&file));
    assert!(daemon.sigterm().success());
    let journal = journal_path(&daemon.data_dir);
    let clean = std::fs::read(&journal).unwrap();
    let torn: &[u8] = b"{\"op\":\"put\",\"path\":\"storage/images/gif/0123";
    let mut appended = clean.clone();
    appended.extend_from_slice(torn);
    std::fs::write(&journal, &appended).unwrap();

    daemon.start_again();
    assert!(
        daemon
            .current_run_lines()
            .iter()
            .any(|line| line.contains("warning") && line.contains("torn tail")),
        "no torn-tail warning; log:\n{}",
        daemon.log_text()
    );
    assert!(std::fs::read(&journal).unwrap() == clean, "tail not cut");
    let set_aside = torn_files(&daemon.data_dir);
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!(std::fs::read(&set_aside[0]).unwrap(), torn);
    assert!(download(&daemon, &file.hash()) == file.bytes);
}

/// A loop-mounted ext4 image; unmounted and detached on drop.
struct LoopMount {
    mount_point: PathBuf,
    device: String,
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// Makes a 64 MiB ext4 image at `image` and mounts it at `at` through a loop device; the
/// reason when that cannot be done here.
fn mount_ext4_image(image: &Path, at: &Path) -> Result<LoopMount, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".to_string());
    }
    std::fs::File::create(image)
        .and_then(|f| f.set_len(64 * 1024 * 1024))
        .map_err(|e| format!("image: {e}"))?;
    let run = |command: &mut Command| -> Result<String, String> {
        let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{command:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
    let device = run(Command::new("losetup").args(["-f", "--show"]).arg(image))?;
    let mount = LoopMount {
        mount_point: at.to_path_buf(),
        device: device.clone(),
    };
    std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
    run(Command::new("mount").arg(&device).arg(at))?;
    // An empty `lost+found` in the daemon's tree is not the daemon's business.
    let _ = std::fs::remove_dir(at.join("lost+found"));
    Ok(mount)
}

/// What to look for in the image after each acknowledged upload of `file`.
fn journal_hash(file: &TestFile) -> Vec<u8> {
    file.hash().into_bytes()
}

/// The 64 random bytes [`with_marker`] put at the end of `file`.
fn marker(file: &TestFile) -> Vec<u8> {
    file.bytes[file.bytes.len() - 64..].to_vec()
}

/// A small PNG (one page: buffered writes, no O_DIRECT) ending in 64 random bytes of its
/// own.
fn with_marker(seed: u64) -> TestFile {
    let mut file = TestFile::new(MediaKind::Png, 3000, seed);
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"durability marker");
    hasher.update(&seed.to_le_bytes());
    let mut random = [0u8; 64];
    hasher.finalize_xof().fill(&mut random);
    let at = file.bytes.len() - 64;
    file.bytes[at..].copy_from_slice(&random);
    file
}

/// Each data file system is synced before a 200 with durability `batch`:
/// `sub_dir` (`metadata` or `storage`) of the data dir is a 64 MiB ext4 image mounted
/// through a loop device, the rest on the host's file system. Twenty uploads, one file per
/// request; right after each 200 the image file itself is read (a plain read on the host:
/// what the loop device has written, not the mounted file system's cache) and must hold
/// `expected(file)`: the record's hash hex for `metadata/`, the file's last 64 random bytes
/// for `storage/`. A group commit that syncs only the data dir's own file system leaves
/// them in the mounted file system's page cache, not in the image. Needs root and loop
/// devices: elsewhere `SKIPPED:`, but under `CI` a failure.
fn separate_file_system_case(sub_dir: &str, expected: fn(&TestFile) -> Vec<u8>) {
    let (root, data) = scratch();
    let image = root.path().join(format!("{sub_dir}.ext4"));
    let _mount = match mount_ext4_image(&image, &data.join(sub_dir)) {
        Ok(mount) => mount,
        Err(reason) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to loop-mount an ext4 image: {reason}"
            );
            println!("SKIPPED: cannot loop-mount an ext4 image here: {reason}");
            return;
        }
    };
    // Declared after the mount: stopped before the unmount.
    let daemon = Daemon::builder().data_dir(&data).start();
    for i in 0..20 {
        let file = with_marker(150 + i);
        daemon.upload_ok(std::slice::from_ref(&file));
        let on_image = std::fs::read(&image).unwrap();
        assert!(
            memchr::memmem::find(&on_image, &expected(&file)).is_some(),
            "upload {i} acknowledged, but {sub_dir}/ on its own file system was not synced"
        );
    }
}

/// [`separate_file_system_case`] for `metadata/`: the record's hash hex is in the image.
#[test]
fn journal_on_its_own_file_system_is_synced_before_200() {
    separate_file_system_case("metadata", journal_hash);
}

/// [`separate_file_system_case`] for `storage/` (and so `storage/.tmp/`): the file's 64
/// random bytes are in the image.
#[test]
fn storage_on_its_own_file_system_is_synced_before_200() {
    separate_file_system_case("storage", marker);
}

/// The journal follows the files stored now, not the history: 5,100 small files uploaded
/// (in requests of 850) and 5,000 of them deleted (four connections in parallel) make
/// 15,200 journal lines (intent, put, delete) for 100 live files. After a restart the
/// daemon says it compacted the journal, the journal holds exactly the 100 `put` lines in
/// their journal order, every survivor downloads with its bytes, the listing keeps its
/// newest-first order, and a deleted file is still gone. A second restart does not compact
/// again. Before compaction existed the journal kept all 15,200 lines.
#[test]
fn churned_journal_is_compacted_at_start() {
    let mut daemon = Daemon::start();
    let files: Vec<TestFile> = (0..5_100)
        .map(|i| TestFile::new(MediaKind::Png, 200 + (i % 50), 10_000 + i))
        .collect();
    for chunk in files.chunks(850) {
        daemon.upload_ok(chunk);
    }
    let (doomed, kept) = files.split_at(5_000);
    std::thread::scope(|scope| {
        for part in doomed.chunks(1_250) {
            let daemon = &daemon;
            scope.spawn(move || {
                let mut conn = daemon.conn();
                for file in part {
                    let reply = conn
                        .request("DELETE", &format!("/files/{}", file.hash()), &[], b"")
                        .expect("delete");
                    assert_eq!(reply.status, 200, "{}", reply.text());
                }
            });
        }
    });
    let listed_before = daemon.get("/files?limit=100").json();
    let data = daemon.data_dir.clone();
    let before = journal_entries(&data);
    assert!(before.len() >= 15_200, "{} lines", before.len());
    let kept_hashes: std::collections::HashSet<String> = kept.iter().map(|f| f.hash()).collect();
    // Journal order (within a request the records follow hash order, the claim order).
    let order_before: Vec<&str> = before
        .iter()
        .filter(|e| e["op"] == "put")
        .filter_map(|e| e["hash"].as_str())
        .filter(|h| kept_hashes.contains(*h))
        .collect();

    daemon.restart();
    let compacted = daemon
        .current_run_lines()
        .iter()
        .any(|line| line.contains("journal compacted"));
    assert!(compacted, "{}", daemon.current_run_lines().join("\n"));
    let entries = journal_entries(&data);
    assert_eq!(entries.len(), kept.len(), "one line per stored file");
    for (entry, hash) in entries.iter().zip(&order_before) {
        assert_eq!(entry["op"], "put");
        assert_eq!(entry["hash"], *hash, "journal order kept");
    }
    for file in kept {
        assert_eq!(download(&daemon, &file.hash()), file.bytes);
    }
    assert_eq!(
        daemon.get("/files?limit=100").json()["files"],
        listed_before["files"]
    );
    assert_eq!(metadata_status(&daemon, &doomed[0].hash()), 404);

    daemon.restart();
    let again = daemon
        .current_run_lines()
        .iter()
        .any(|line| line.contains("journal compacted"));
    assert!(!again, "a compacted journal was compacted again");
}
