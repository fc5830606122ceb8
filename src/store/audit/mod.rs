//! The offline admin commands: `rhinobox verify` and `rhinobox repair`.
//!
//! Both take the data dir lock (`flock` on `<data>/.lock`, as the daemon does) for their
//! whole run, so they refuse while a daemon serves the data dir and a daemon cannot start
//! under them. [`verify`] is read-only: it replays the journal without stopping at a
//! damaged line (`scan`), walks `storage/` without following symlinks, re-hashes every
//! live record's file on two threads (`digest`) and prints one line per finding and a
//! summary. [`repair`] runs the same audit, then makes the store consistent
//! (`repair::repair` lists its steps and their order). Findings and steps go to stdout,
//! progress (at most every 2 s) and errors to stderr.
//!
//! Exit status: [`EXIT_CLEAN`] when the store is (or, after repair, was made) consistent,
//! [`EXIT_PROBLEMS`] when verify found problems or a repair step failed, and
//! [`EXIT_CANNOT_RUN`] when the command could not run (lock held, unreadable journal).

mod digest;
mod repair;
mod scan;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Instant, SystemTime};

use digest::{Progress, human_bytes};
use scan::Audit;

/// The store is consistent.
pub const EXIT_CLEAN: i32 = 0;
/// Verify found problems, or a repair step failed (each one printed).
pub const EXIT_PROBLEMS: i32 = 1;
/// The command could not run; nothing was changed that a rerun would not finish.
pub const EXIT_CANNOT_RUN: i32 = 2;

/// Why a command cannot run; printed as `rhinobox: error: ...`.
#[derive(Debug)]
pub struct AuditError(pub String);

impl std::fmt::Display for AuditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `rhinobox verify`: prints the findings and a summary; returns the exit status.
pub fn verify(data_dir: &Path) -> i32 {
    let started = Instant::now();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let audit = match run_verify(data_dir, &mut out) {
        Ok(audit) => audit,
        Err(e) => return cannot_run(&e),
    };
    let problems = audit.problems();
    let verdict = match problems {
        0 => "clean".to_string(),
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    let _ = writeln!(out, "summary: {verdict}; {}", counts(&audit, started));
    if problems == 0 {
        EXIT_CLEAN
    } else {
        EXIT_PROBLEMS
    }
}

fn run_verify(data_dir: &Path, out: &mut dyn Write) -> Result<Audit, AuditError> {
    check_data_dir(data_dir)?;
    let _lock = lock_data_dir(data_dir, false)?;
    scan::audit(data_dir, &mut Progress::new("verify"), out)
}

/// `rhinobox repair`: prints the findings, each step and a summary; returns the exit
/// status.
pub fn repair(data_dir: &Path) -> i32 {
    let started = Instant::now();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run_repair(data_dir, &mut out) {
        Ok(None) => {
            let _ = writeln!(out, "summary: nothing to repair");
            EXIT_CLEAN
        }
        Ok(Some(done)) => {
            let _ = writeln!(
                out,
                "summary: {}; {} journal lines set aside, {} records rebuilt, {} records \
                 deleted, {} files moved aside, {} files removed; {:.1} s",
                match done.failures {
                    0 => "consistent".to_string(),
                    n => format!("{n} steps failed, run `rhinobox verify`"),
                },
                done.lines_set_aside,
                done.records_rebuilt,
                done.records_deleted,
                done.files_moved_aside,
                done.files_removed,
                started.elapsed().as_secs_f64()
            );
            if done.failures == 0 {
                EXIT_CLEAN
            } else {
                EXIT_PROBLEMS
            }
        }
        Err(e) => cannot_run(&e),
    }
}

/// `None` when the audit found nothing to do (not even a torn tail to set aside).
fn run_repair(
    data_dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<repair::Repaired>, AuditError> {
    check_data_dir(data_dir)?;
    let _lock = lock_data_dir(data_dir, true)?;
    let mut progress = Progress::new("repair");
    let audit = scan::audit(data_dir, &mut progress, out)?;
    if audit.problems() == 0 && audit.journal.invalid.is_empty() {
        return Ok(None);
    }
    let stamp = repair::utc_stamp(SystemTime::now());
    repair::repair(data_dir, &audit, &stamp, &mut progress, out).map(Some)
}

fn cannot_run(error: &AuditError) -> i32 {
    crate::log_line!("rhinobox: error: {error}");
    EXIT_CANNOT_RUN
}

/// `N files checked (SIZE); N missing, ...; N.N s` for the summary line (S3 object
/// content counted with the files).
fn counts(audit: &Audit, started: Instant) -> String {
    format!(
        "{} files checked ({}); {} missing, {} damaged, {} stray, {} damaged-journal-line, \
         {} tmp; {:.1} s",
        audit.files_checked,
        human_bytes(audit.bytes_checked),
        audit.missing.len() + audit.objects_missing.len(),
        audit.damaged.len() + audit.objects_damaged.len(),
        audit.tree.strays.len(),
        audit.journal.damaged().len(),
        audit.tree.tmp_files,
        started.elapsed().as_secs_f64()
    )
}

/// A data dir must exist and hold `storage/` or `metadata/`: a mistyped path is an error,
/// not an empty, clean store.
fn check_data_dir(data_dir: &Path) -> Result<(), AuditError> {
    if !data_dir.is_dir() {
        return Err(AuditError(format!(
            "RHINOBOX_DATA_DIR/--data-dir: {} is not a directory",
            data_dir.display()
        )));
    }
    if !data_dir.join("storage").is_dir() && !data_dir.join("metadata").is_dir() {
        return Err(AuditError(format!(
            "RHINOBOX_DATA_DIR/--data-dir: {} holds neither storage/ nor metadata/: not a \
             rhinobox data dir",
            data_dir.display()
        )));
    }
    Ok(())
}

/// Takes the data dir lock without waiting. Verify opens `.lock` read-only and does not
/// create it (no daemon ever ran there when it is absent); repair creates it.
fn lock_data_dir(data_dir: &Path, create: bool) -> Result<Option<File>, AuditError> {
    let path = data_dir.join(".lock");
    let opened = OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .open(&path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) => {
            return Err(AuditError(format!("cannot open {}: {e}", path.display())));
        }
    };
    // SAFETY: flock on a descriptor we own; it touches no user memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(AuditError(format!(
                "{} is in use by a running rhinobox daemon: stop the daemon first",
                data_dir.display()
            )));
        }
        return Err(AuditError(format!("cannot lock {}: {e}", path.display())));
    }
    Ok(Some(file))
}
