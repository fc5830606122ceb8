//! The admin commands against the real binary: `rhinobox verify` names exactly the damage
//! done to a stopped store (and nothing else), `rhinobox repair` makes it consistent again
//! so that the daemon starts and serves what survived, and both refuse while a daemon owns
//! the data dir.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rhinobox::client::{MediaKind, blake3_hex};
use serde_json::Value;

/// Runs `rhinobox <args...>` to its exit; returns the exit code, stdout and stderr lines.
fn admin(args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<String>, Vec<String>) {
    let (status, lines) = run_until_exit(args, env);
    let of = |prefix: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|line| line.strip_prefix(prefix).map(str::to_string))
            .collect()
    };
    let code = status.code().unwrap_or(-1);
    (code, of("stdout: "), of("stderr: "))
}

fn verify(data_dir: &Path) -> (i32, Vec<String>, Vec<String>) {
    admin(&["verify", "--data-dir", data_dir.to_str().unwrap()], &[])
}

fn repair(data_dir: &Path) -> (i32, Vec<String>, Vec<String>) {
    admin(&["repair", "--data-dir", data_dir.to_str().unwrap()], &[])
}

/// The finding lines of a verify output (notes, `tmp` lines and the summary left out),
/// sorted.
fn findings(stdout: &[String]) -> Vec<String> {
    let kinds = ["missing ", "damaged ", "stray ", "damaged-journal-line "];
    let mut found: Vec<String> = stdout
        .iter()
        .filter(|line| kinds.iter().any(|kind| line.starts_with(kind)))
        .cloned()
        .collect();
    found.sort();
    found
}

/// A stopped store with one of each kind of damage, and what was done to it.
struct DamagedStore {
    daemon: Daemon,
    files: Vec<TestFile>,
    /// Stored path of each file, in upload order (one request each: one journal line each).
    paths: Vec<String>,
    /// The file whose bytes were flipped, the truncated one, the deleted one.
    flipped: usize,
    truncated: usize,
    deleted: usize,
    /// A stray with a stored name matching its content (repair rebuilds its record).
    shaped_stray: (String, TestFile),
    plain_stray: String,
    symlink: String,
}

/// Uploads six files one request each, stops the daemon (SIGTERM), then flips one byte of
/// file 0, truncates file 1, deletes file 2, plants a stray with a stored name (and the
/// right hash), a stray without one, a symlink, and a leftover in `.tmp`.
fn damaged_store() -> DamagedStore {
    let mut daemon = Daemon::start();
    let kinds = [
        MediaKind::Png,
        MediaKind::Jpeg,
        MediaKind::Pdf,
        MediaKind::Gif,
        MediaKind::Mp3,
        MediaKind::Zip,
    ];
    let files: Vec<TestFile> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| TestFile::new(*kind, 3000 + i as u64 * 100, 900 + i as u64))
        .collect();
    let paths: Vec<String> = files
        .iter()
        .map(|file| {
            let entry = &daemon.upload_ok(std::slice::from_ref(file))[0];
            entry["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(daemon.sigterm().success(), "{}", daemon.log_text());

    let (flipped, truncated, deleted) = (0, 1, 2);
    let mut bytes = std::fs::read(daemon.disk_path(&paths[flipped])).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(daemon.disk_path(&paths[flipped]), &bytes).unwrap();
    let handle = std::fs::OpenOptions::new()
        .write(true)
        .open(daemon.disk_path(&paths[truncated]))
        .unwrap();
    handle.set_len(1000).unwrap();
    std::fs::remove_file(daemon.disk_path(&paths[deleted])).unwrap();

    let planted = TestFile::new(MediaKind::Png, 2000, 999);
    let shaped = format!(
        "storage/images/png/holiday/{}_planted.png",
        &planted.hash()[..12]
    );
    let plain = "storage/other/notes.txt".to_string();
    let symlink = format!("{}/link.png", parent_of(&paths[3]));
    for (path, bytes) in [(&shaped, &planted.bytes[..]), (&plain, b"not stored")] {
        let absolute = daemon.disk_path(path);
        std::fs::create_dir_all(absolute.parent().unwrap()).unwrap();
        std::fs::write(absolute, bytes).unwrap();
    }
    std::os::unix::fs::symlink(daemon.disk_path(&paths[3]), daemon.disk_path(&symlink)).unwrap();
    std::fs::write(daemon.data_dir.join("storage/.tmp/leftover"), b"half").unwrap();
    DamagedStore {
        daemon,
        files,
        paths,
        flipped,
        truncated,
        deleted,
        shaped_stray: (shaped, planted),
        plain_stray: plain,
        symlink,
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').unwrap().0
}

impl DamagedStore {
    /// The findings verify must print for the file damage (not the journal's).
    fn expected_file_findings(&self) -> Vec<String> {
        let hash = |i: usize| self.files[i].hash();
        let mut expected = vec![
            format!(
                "damaged {} (expected {}, found {})",
                self.paths[self.flipped],
                hash(self.flipped),
                {
                    let mut bytes = self.files[self.flipped].bytes.clone();
                    bytes[1000] ^= 0x40;
                    blake3_hex(&bytes)
                }
            ),
            format!(
                "damaged {} (expected {}, found 1000 bytes instead of {})",
                self.paths[self.truncated],
                hash(self.truncated),
                self.files[self.truncated].bytes.len()
            ),
            format!("missing {}", self.paths[self.deleted]),
            format!("stray {}", self.shaped_stray.0),
            format!("stray {}", self.plain_stray),
            format!("stray {} (symlink)", self.symlink),
        ];
        expected.sort();
        expected
    }

    /// Changes one digit of the `size` of line `index` (0-based) of the journal, keeping
    /// the JSON valid and the path readable: only the checksum tells. Returns the bad line
    /// (with its newline), its 1-based number and its byte offset.
    /// Changes one byte of the `put` line of file `index` (0-based, upload order; the
    /// journal also holds the `place` intent logged before each put); returns the bad
    /// line, its 1-based line number and its byte offset.
    fn corrupt_journal_line(&self, index: usize) -> (Vec<u8>, usize, usize) {
        let journal = self.daemon.data_dir.join("metadata/journal.ndjson");
        let mut text = std::fs::read(&journal).unwrap();
        let needle = format!("\"path\":\"{}\"", self.paths[index]);
        let mut offset = 0;
        let mut line_index = 0;
        loop {
            let end = offset + text[offset..].iter().position(|&b| b == b'\n').unwrap() + 1;
            let line = &text[offset..end];
            if line.starts_with(b"{\"op\":\"put\"") && find(line, needle.as_bytes()).is_some() {
                break;
            }
            offset = end;
            line_index += 1;
        }
        let index = line_index;
        let end = offset + text[offset..].iter().position(|&b| b == b'\n').unwrap() + 1;
        let line = &text[offset..end];
        let at = offset + find(line, b"\"size\":").expect("a put line") + b"\"size\":".len();
        text[at] = if text[at] == b'9' { b'8' } else { text[at] + 1 };
        let bad = text[offset..end].to_vec();
        std::fs::write(&journal, &text).unwrap();
        (bad, index + 1, offset)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Damages a stopped store in six ways (a flipped byte, a truncated file, a deleted file,
/// a stray with and one without a stored name, a symlink) and leaves a file in `.tmp`:
/// `rhinobox verify` exits 1 and its finding lines are exactly those six, with the
/// expected and found hash (or size); the `.tmp` file is listed as `tmp` but not counted.
/// Then it exits 1 again, unchanged, since verify writes nothing.
#[test]
fn verify_names_exactly_the_damage() {
    let store = damaged_store();
    let data_dir = &store.daemon.data_dir;
    let (code, stdout, stderr) = verify(data_dir);
    assert_eq!(
        code,
        1,
        "stdout:\n{}\nstderr:\n{}",
        stdout.join("\n"),
        stderr.join("\n")
    );
    assert_eq!(findings(&stdout), store.expected_file_findings());
    assert!(
        stdout
            .iter()
            .any(|line| line == "tmp storage/.tmp/leftover"),
        "{stdout:?}"
    );
    let summary = stdout.last().unwrap();
    assert!(
        summary.starts_with("summary: 6 problems; 6 files checked"),
        "{summary}"
    );
    let (again, stdout_again, _) = verify(data_dir);
    assert_eq!((again, findings(&stdout_again)), (1, findings(&stdout)));
}

/// The whole recovery path. The damaged store of [`damaged_store`] also gets one byte of
/// its 4th journal line (of 6) changed. The daemon then refuses to start (exit 2, an
/// error line naming `rhinobox repair`); verify reports the damaged line by number and
/// byte and the file it described as a stray. `rhinobox repair` exits 0, sets the line
/// aside byte for byte in `metadata/damaged-*.ndjson`, moves the two damaged files (not
/// deletes them) under `damaged-*/`; afterwards verify exits 0 and the daemon starts,
/// serves the surviving and rebuilt files with their bytes, lists both rebuilt records,
/// and stores the damaged and the missing file again on re-upload (`duplicate: false`).
#[test]
fn repair_makes_a_damaged_store_consistent() {
    let mut store = damaged_store();
    let data_dir = store.daemon.data_dir.clone();
    let (bad_line, line_number, offset) = store.corrupt_journal_line(3);

    let status = store.daemon.start_expecting_exit();
    let run = store.daemon.current_run_lines();
    assert_eq!(status.code(), Some(2), "log:\n{}", run.join("\n"));
    assert!(
        run.iter()
            .any(|line| line.starts_with("stderr: rhinobox: error:")
                && line.contains(&format!("line {line_number} (byte {offset})"))
                && line.contains("rhinobox repair")),
        "no error line pointing to repair:\n{}",
        run.join("\n")
    );

    let (code, stdout, _) = verify(&data_dir);
    assert_eq!(code, 1, "{}", stdout.join("\n"));
    let mut expected = store.expected_file_findings();
    expected.push(format!(
        "damaged-journal-line {line_number} (byte {offset})"
    ));
    expected.push(format!("stray {}", store.paths[3]));
    expected.sort();
    assert_eq!(findings(&stdout), expected);

    let (code, stdout, stderr) = repair(&data_dir);
    let output = format!(
        "stdout:\n{}\nstderr:\n{}",
        stdout.join("\n"),
        stderr.join("\n")
    );
    assert_eq!(code, 0, "{output}");
    assert!(
        stdout.last().unwrap().starts_with("summary: consistent"),
        "{output}"
    );
    assert_set_aside(&data_dir, &bad_line);
    for i in [store.flipped, store.truncated] {
        let aside = moved_aside(&data_dir, &store.paths[i]);
        assert!(
            aside.is_some(),
            "{} not kept under damaged-*/:\n{output}",
            store.paths[i]
        );
    }
    let (code, stdout, _) = verify(&data_dir);
    assert_eq!(code, 0, "verify after repair:\n{}", stdout.join("\n"));

    store.daemon.start_again();
    let daemon = &store.daemon;
    for i in [3, 4, 5] {
        assert_served(daemon, &store.files[i]);
    }
    assert_served(daemon, &store.shaped_stray.1);
    let listed = list_all(daemon);
    for (file, path) in [
        (&store.files[3], &store.paths[3]),
        (&store.shaped_stray.1, &store.shaped_stray.0),
    ] {
        let record = listed
            .iter()
            .find(|record| record["hash"] == file.hash().as_str())
            .unwrap_or_else(|| panic!("rebuilt {path} not listed: {listed:?}"));
        assert_eq!(record["path"], path.as_str(), "{record}");
        assert_eq!(record["size"], file.bytes.len() as u64, "{record}");
        assert_eq!(
            record["media_type"],
            file.kind.expected_media_type(),
            "{record}"
        );
    }
    assert_eq!(listed.len(), 4, "{listed:?}");
    for i in [store.flipped, store.truncated, store.deleted] {
        let entry = &daemon.upload_ok(std::slice::from_ref(&store.files[i]))[0];
        assert_eq!(entry["duplicate"], false, "{entry}");
        assert_entry_matches(daemon, entry, &store.files[i]);
    }
}

/// `metadata/damaged-*.ndjson` holds exactly `line`, and the journal no longer does.
fn assert_set_aside(data_dir: &Path, line: &[u8]) {
    let metadata = data_dir.join("metadata");
    let set_aside: Vec<PathBuf> = files_under(&metadata)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("damaged-") && name.ends_with(".ndjson")
        })
        .collect();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!(std::fs::read(&set_aside[0]).unwrap(), line);
    let journal = std::fs::read(metadata.join("journal.ndjson")).unwrap();
    assert!(
        find(&journal, line).is_none(),
        "the damaged line is still in the journal"
    );
}

/// Where repair moved a damaged file: `<data>/damaged-<time>/<path>`, if there.
fn moved_aside(data_dir: &Path, path: &str) -> Option<PathBuf> {
    std::fs::read_dir(data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| {
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .map(|dir| dir.join(path))
        .find(|moved| moved.is_file())
}

/// The file downloads by hash with exactly its bytes.
fn assert_served(daemon: &Daemon, file: &TestFile) {
    let response = daemon.get(&format!("/files/download?hash={}", file.hash()));
    assert_eq!(response.status, 200, "{}: {}", file.name, response.text());
    assert!(
        response.body == file.bytes,
        "{}: other bytes served",
        file.name
    );
}

fn list_all(daemon: &Daemon) -> Vec<Value> {
    let response = daemon.get("/files?limit=1000");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["files"].as_array().unwrap().clone()
}

/// A delete whose journal line was damaged after it was acknowledged (the file is back,
/// as after a restore from backup): repair completes it (a new delete line, the file
/// removed) instead of resurrecting the file; verify is then clean and the daemon does not
/// list it. Fails if repair only sets the line aside.
#[test]
fn repair_completes_a_delete_only_a_damaged_line_tells() {
    let mut daemon = Daemon::start();
    let kept = TestFile::new(MediaKind::Gif, 1500, 1200);
    let gone = TestFile::new(MediaKind::Png, 1500, 1201);
    let path = daemon.upload_ok(std::slice::from_ref(&gone))[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = daemon.request("DELETE", &format!("/files/{}", gone.hash()), &[], b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    daemon.upload_ok(std::slice::from_ref(&kept));
    assert!(daemon.sigterm().success());
    std::fs::write(daemon.disk_path(&path), &gone.bytes).unwrap();
    let journal = daemon.data_dir.join("metadata/journal.ndjson");
    let mut text = std::fs::read(&journal).unwrap();
    let key = b"\"deleted_at\":\"";
    let at = find(&text, key).expect("a delete line") + key.len();
    text[at] = b'x';
    std::fs::write(&journal, &text).unwrap();

    let (code, stdout, stderr) = repair(&daemon.data_dir);
    let output = format!(
        "stdout:\n{}\nstderr:\n{}",
        stdout.join("\n"),
        stderr.join("\n")
    );
    assert_eq!(code, 0, "{output}");
    assert!(
        !daemon.disk_path(&path).exists(),
        "{path} resurrected:\n{output}"
    );
    let (code, stdout, _) = verify(&daemon.data_dir);
    assert_eq!(code, 0, "{}", stdout.join("\n"));
    daemon.start_again();
    let listed = list_all(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["hash"], kept.hash().as_str());
}

/// A torn journal tail (half a line, as a crash mid-append leaves) is a note, not a
/// problem: verify exits 0 and says so. Repair sets the fragment aside (no byte dropped
/// silently), and the journal then ends on a whole line.
#[test]
fn a_torn_tail_is_a_note_and_repair_sets_it_aside() {
    let mut daemon = Daemon::start();
    daemon.upload_ok(&mixed_files(2, 1300));
    assert!(daemon.sigterm().success());
    let journal = daemon.data_dir.join("metadata/journal.ndjson");
    let fragment = b"{\"op\":\"put\",\"path\":\"storage/ima";
    let mut text = std::fs::read(&journal).unwrap();
    let whole_lines = text.iter().filter(|&&b| b == b'\n').count();
    text.extend_from_slice(fragment);
    std::fs::write(&journal, &text).unwrap();

    let (code, stdout, _) = verify(&daemon.data_dir);
    assert_eq!(code, 0, "{}", stdout.join("\n"));
    let note = format!("note: torn journal tail from line {}", whole_lines + 1);
    assert!(
        stdout.iter().any(|line| line.starts_with(&note)),
        "{stdout:?}"
    );
    let (code, stdout, _) = repair(&daemon.data_dir);
    assert_eq!(code, 0, "{}", stdout.join("\n"));
    let mut line = fragment.to_vec();
    line.push(b'\n');
    assert_set_aside(&daemon.data_dir, &line);
    assert!(std::fs::read(&journal).unwrap().ends_with(b"}\n"));
    daemon.start_again();
    assert_eq!(list_all(&daemon).len(), 2);
}

/// While a daemon owns the data dir, verify and repair exit 2 with one line saying to
/// stop the daemon first, and change nothing (a stray stays, the journal is unchanged);
/// `RHINOBOX_DATA_DIR` names the data dir as it does for the daemon.
#[test]
fn verify_and_repair_refuse_while_the_daemon_runs() {
    let daemon = Daemon::start();
    daemon.upload_ok(&mixed_files(2, 1400));
    let stray = daemon.data_dir.join("storage/stray.bin");
    std::fs::write(&stray, b"stray").unwrap();
    let journal = daemon.data_dir.join("metadata/journal.ndjson");
    let before = std::fs::read(&journal).unwrap();
    let env = [("RHINOBOX_DATA_DIR", daemon.data_dir.to_str().unwrap())];
    for command in ["verify", "repair"] {
        let (code, stdout, stderr) = admin(&[command], &env);
        assert_eq!(code, 2, "{command}: {stdout:?} {stderr:?}");
        assert_eq!(stderr.len(), 1, "{command}: {stderr:?}");
        assert!(stderr[0].starts_with("rhinobox: error:"), "{stderr:?}");
        assert!(stderr[0].contains("stop the daemon first"), "{stderr:?}");
    }
    assert!(stray.exists());
    assert_eq!(std::fs::read(&journal).unwrap(), before);
}
