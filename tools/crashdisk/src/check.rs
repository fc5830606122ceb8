//! The invariants checked after every restart, against the ledger and the daemon's HTTP API.
//!
//! - every acknowledged upload is served with the right bytes (BLAKE3 of the download);
//! - every acknowledged delete answers 404;
//! - nothing is ever served with wrong bytes, acknowledged or not (a record naming a torn
//!   file is corruption: dedup would answer the next upload of that content `duplicate`);
//!   such an item is uploaded again, and if that 200 still serves wrong bytes, an
//!   acknowledged upload is lost;
//! - with `none` durability, lost acknowledged uploads and returned deletes are counted,
//!   not failed (the contract allows them); corruption still fails.
//! - strays (files under `storage/` that no served record names) and `.tmp` leftovers are
//!   counted; they fail only with `--strays-fail` (run-ci.sh sets it: the store logs
//!   place intents, so none may survive a start);
//! - the S3 keys hold what was acknowledged, or what a request in flight at the cut would
//!   have left (`s3check.rs`); their blobs count as served for the stray count;
//! - once the daemon is stopped, `rhinobox verify` on the data dir exits 0 (every record's
//!   file there with its hash, every S3 key's blob under `storage/.objects/`, no stray, no
//!   damaged journal line): [`verify`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::daemon;
use crate::http;
use crate::load::{Addrs, Ledger};
use crate::s3check::{self, S3Findings};

#[derive(Default, Debug)]
pub struct Findings {
    pub violations: Vec<String>,
    /// Items served with the right bytes now.
    pub present: Vec<bool>,
    pub checked: usize,
    pub acked_present: usize,
    pub acked_deletes_gone: usize,
    /// `none` durability only: acknowledged, lost (allowed).
    pub lost_allowed: usize,
    /// `none` durability only: deleted, came back (allowed).
    pub returned_allowed: usize,
    pub strays: usize,
    pub stray_examples: Vec<String>,
    pub tmp_leftovers: usize,
    /// The S3 keys (their violations are in `violations` too).
    pub s3: S3Findings,
}

enum Served {
    Right,
    Wrong(usize, String),
    Absent,
    Error(String),
}

fn download(addr: SocketAddr, ledger: &Ledger, index: usize) -> Served {
    let target = format!("/files/download?hash={}", ledger.hex(index));
    match http::request(addr, "GET", &target, None, &[]) {
        Ok(r) if r.status == 200 => {
            if Some(*blake3::hash(&r.body).as_bytes()) == ledger.items[index].hash {
                Served::Right
            } else {
                Served::Wrong(
                    r.body.len(),
                    blake3::hash(&r.body).to_hex()[..16].to_string(),
                )
            }
        }
        Ok(r) if r.status == 404 => Served::Absent,
        Ok(r) => Served::Error(format!(
            "HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        )),
        Err(e) => Served::Error(e.to_string()),
    }
}

/// Checks every item and S3 key ever sent. `strict`: durability `batch` (a 200 is a
/// promise).
pub fn check(ledger: &Ledger, addrs: Addrs, data_dir: &Path, strict: bool) -> Findings {
    let addr = addrs.native;
    let mut f = Findings {
        present: vec![false; ledger.items.len()],
        ..Findings::default()
    };
    for index in 0..ledger.items.len() {
        let state = &ledger.state[index];
        // put_sent is set when the request is planned, the hash just before it is sent.
        if !state.put_sent || ledger.items[index].hash.is_none() {
            continue;
        }
        f.checked += 1;
        let size = ledger.items[index].size;
        let what = format!("item {index} ({size} B, {})", &ledger.hex(index)[..12]);
        match download(addr, ledger, index) {
            Served::Right => {
                f.present[index] = true;
                if state.delete_acked {
                    if strict {
                        f.violations
                            .push(format!("{what}: acknowledged DELETE, still served"));
                    } else {
                        f.returned_allowed += 1;
                    }
                } else if state.put_acked {
                    f.acked_present += 1;
                }
            }
            Served::Absent => {
                if state.delete_acked {
                    f.acked_deletes_gone += 1;
                } else if state.put_acked && !state.delete_sent {
                    if strict {
                        f.violations
                            .push(format!("{what}: acknowledged upload LOST (404)"));
                    } else {
                        f.lost_allowed += 1;
                    }
                }
            }
            Served::Wrong(len, got) => {
                let acked = if state.put_acked {
                    "acknowledged"
                } else {
                    "unacknowledged"
                };
                f.violations.push(format!(
                    "{what}: {acked} upload served with WRONG bytes ({len} B, blake3 {got}…)"
                ));
                reupload_probe(ledger, addr, index, &what, &mut f);
            }
            Served::Error(e) => {
                let acked = if state.put_acked {
                    "acknowledged"
                } else {
                    "unacknowledged"
                };
                f.violations
                    .push(format!("{what}: {acked} upload, download failed: {e}"));
                reupload_probe(ledger, addr, index, &what, &mut f);
            }
        }
    }
    f.s3 = s3check::check(ledger, addrs.s3, strict);
    f.violations.extend(f.s3.violations.iter().cloned());
    count_strays(ledger, data_dir, &mut f);
    f
}

/// A damaged stored copy: does a new upload of the same content heal it, or is it answered
/// 200 (`duplicate`) while the bytes stay wrong — an acknowledged upload lost?
fn reupload_probe(ledger: &Ledger, addr: SocketAddr, index: usize, what: &str, f: &mut Findings) {
    let target = format!("/ingest/media/{}", ledger.name(index, 999_999));
    let reply = http::request(addr, "PUT", &target, None, &ledger.bytes(index));
    let status = reply.as_ref().map(|r| r.status).unwrap_or(0);
    if status != 200 {
        return;
    }
    if !matches!(download(addr, ledger, index), Served::Right) {
        f.violations.push(format!(
            "{what}: re-upload after restart answered 200 but the content still is not \
             served right: acknowledged upload LOST (dedup trusts the damaged copy)"
        ));
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>, depth: usize) {
    // The layout is at most 4 levels deep; the bound keeps a symlink loop harmless.
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out, depth + 1),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
}

pub fn tmp_leftovers(data_dir: &Path) -> usize {
    let mut files = Vec::new();
    walk(&data_dir.join("storage/.tmp"), &mut files, 0);
    files.len()
}

fn count_strays(ledger: &Ledger, data_dir: &Path, f: &mut Findings) {
    let mut by_prefix: HashMap<String, usize> = HashMap::new();
    for index in 0..ledger.items.len() {
        if f.present[index] {
            by_prefix.insert(ledger.hex(index)[..12].to_string(), index);
        }
    }
    // S3 blobs are named by their whole hash (`storage/.objects/<hh>/<hash>`).
    for hash in &f.s3.present_hashes {
        let hex = blake3::Hash::from_bytes(*hash).to_hex();
        by_prefix.insert(hex[..12].to_string(), usize::MAX);
    }
    let storage = data_dir.join("storage");
    let mut files = Vec::new();
    walk(&storage, &mut files, 0);
    for path in files {
        if path.starts_with(storage.join(".tmp")) {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        let prefix = name.as_deref().and_then(|n| n.get(..12)).unwrap_or("");
        if !by_prefix.contains_key(prefix) {
            f.strays += 1;
            if f.stray_examples.len() < 3 {
                let relative = path.strip_prefix(data_dir).unwrap_or(&path);
                f.stray_examples.push(relative.display().to_string());
            }
        }
    }
    f.tmp_leftovers = tmp_leftovers(data_dir);
}

/// A verify of a few thousand files takes well under a second; this bound is for a hang.
const VERIFY_LIMIT: Duration = Duration::from_secs(60);
/// Finding lines of a failed verify quoted in its violation.
const VERIFY_LINES_SHOWN: usize = 8;

/// The outcome of `rhinobox verify` on a stopped daemon's data dir.
pub struct Verified {
    /// Why it is a violation (without the state's tag); `None` when it exited 0.
    pub violation: Option<String>,
    pub seconds: f64,
}

/// Runs `BINARY verify --data-dir DATA_DIR` (the daemon stopped) and judges it: exit 0 is
/// clean; exit 1 is a violation quoting its first finding lines (`tmp` and `note:` lines
/// are informative, not findings) and its summary, each with what the ledger says of the
/// item or S3 content its path names (`present`, `s3`: what the checks just before found);
/// exit 2 (could
/// not run), a signal or the time limit is a violation quoting stderr. `scratch` names its
/// output files.
pub fn verify(
    binary: &Path,
    data_dir: &Path,
    scratch: &Path,
    ledger: &Ledger,
    present: &[bool],
    s3: &S3Findings,
) -> Verified {
    let run = match daemon::verify(binary, data_dir, scratch, VERIFY_LIMIT) {
        Ok(run) => run,
        Err(e) => {
            return Verified {
                violation: Some(e),
                seconds: VERIFY_LIMIT.as_secs_f64(),
            };
        }
    };
    let seconds = run.elapsed.as_secs_f64();
    let violation = match run.code {
        Some(0) => None,
        Some(1) => {
            let findings: Vec<&str> = run
                .stdout
                .lines()
                .filter(|l| {
                    !(l.starts_with("tmp ") || l.starts_with("note:") || l.starts_with("summary:"))
                })
                .collect();
            let summary = run
                .stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("summary:"))
                .unwrap_or("no summary line");
            let mut text = format!("rhinobox verify found problems (exit 1): {summary}");
            for line in findings.iter().take(VERIFY_LINES_SHOWN) {
                text.push_str("\n      ");
                text.push_str(line);
                text.push_str(&ledger_note(line, ledger, present, s3));
            }
            if findings.len() > VERIFY_LINES_SHOWN {
                text.push_str(&format!(
                    "\n      … and {} more finding lines",
                    findings.len() - VERIFY_LINES_SHOWN
                ));
            }
            Some(text)
        }
        Some(2) => Some(format!(
            "rhinobox verify could not run (exit 2): {}",
            daemon::tail(run.stderr.trim(), 1500)
        )),
        other => Some(format!(
            "rhinobox verify ended with {}; stdout:\n{}\nstderr:\n{}",
            other.map_or("a signal".to_string(), |c| format!("exit {c}")),
            daemon::tail(&run.stdout, 1000),
            daemon::tail(&run.stderr, 1000)
        )),
    };
    Verified { violation, seconds }
}

/// ` [item N: put acked, delete acked, served before the stop: no]` for a finding line
/// whose path is a stored name the load made (`<hash12>_f<N>_<copy>.<ext>`); empty if not.
fn ledger_note(line: &str, ledger: &Ledger, present: &[bool], s3: &S3Findings) -> String {
    let Some(path) = line.split_whitespace().nth(1) else {
        return String::new();
    };
    let file = path.rsplit('/').next().unwrap_or(path);
    if path.contains(".objects/") {
        return s3check::ledger_note(file, ledger, &s3.observed);
    }
    let mut parts = file.split('_');
    let (Some(hash12), Some(item)) = (parts.next(), parts.next()) else {
        return String::new();
    };
    let Some(index) = item
        .strip_prefix('f')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&i| i < ledger.items.len() && ledger.items[i].hash.is_some())
    else {
        return String::new();
    };
    if !ledger.hex(index).starts_with(hash12) {
        return String::new();
    }
    let state = &ledger.state[index];
    let put = match (state.put_sent, state.put_acked) {
        (_, true) => "put acked",
        (true, false) => "put unanswered",
        (false, false) => "put not sent",
    };
    let delete = match (state.delete_sent, state.delete_acked) {
        (_, true) => "delete acked",
        (true, false) => "delete unanswered",
        (false, false) => "no delete sent",
    };
    let served = if present.get(index) == Some(&true) {
        "yes"
    } else {
        "no"
    };
    format!(" [item {index}: {put}, {delete}, served before the stop: {served}]")
}
