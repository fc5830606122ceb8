//! The two experiments: power cuts on the crash disk, and the kill -9 loop.
//!
//! Power loss, one crash state (seed S):
//!   copy a fresh file system image → serve it with `crashdisk serve` → `losetup -b 4096`
//!   → mount → start the daemon → load → after a seeded delay, with the ledger locked, cut
//!   power (all unflushed blocks lost, or a seeded subset kept) → kill -9 → unmount, detach,
//!   stop the FUSE server → mount the durable image (journal replay) → unmount → fsck -n →
//!   mount → start the daemon → check (see check.rs) → stop (SIGTERM) → `rhinobox verify`
//!   → unmount.
//! Replay one state: `crashdisk powerloss --fs FS --seed S --states 1` (same engine and
//! durability flags). The seed fixes the contents, the schedule, the delay and the subset;
//! thread interleaving and the kernel's timing are not replayable, so a rare failure may
//! need a few runs of its seed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::adversary::Adversary;
use crate::check::{self, Findings};
use crate::daemon::{self, Spec};
use crate::load::{self, Ledger};
use crate::rng::Rng;
use crate::sys::{self, Cleanup, Result};
use crate::{s3, s3load};

/// Room for a whole run of the load (a full file system is a different test), and above
/// mkfs.xfs's 300 MB minimum; sparse on the host.
const IMAGE_BYTES: u64 = 2 << 30;
/// Distinct contents per power-loss state: far more than a 2.5 s load can send.
const ITEMS_PER_STATE: usize = 3000;
const MOUNT_LIMIT: Duration = Duration::from_secs(60);
const FSCK_LIMIT: Duration = Duration::from_secs(120);
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Violations printed per crash state (a broken build can produce thousands).
const VIOLATIONS_SHOWN: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fs {
    Ext4,
    Xfs,
}

impl Fs {
    pub fn parse(s: &str) -> Result<Vec<Fs>> {
        match s {
            "ext4" => Ok(vec![Fs::Ext4]),
            "xfs" => Ok(vec![Fs::Xfs]),
            "both" => Ok(vec![Fs::Ext4, Fs::Xfs]),
            _ => Err(format!("unknown file system {s:?} (ext4, xfs, both)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }

    fn mkfs(self, image: &str) -> Result<()> {
        let limit = Duration::from_secs(60);
        match self {
            // 4 KiB blocks to match the loop device's logical block size; lazy init off so
            // no background zeroing runs during a test; no discard at mkfs.
            Fs::Ext4 => sys::run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-b",
                    "4096",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                    image,
                ],
                limit,
            ),
            // 4 KiB sectors: XFS refuses a device whose logical block is larger than its sector.
            Fs::Xfs => sys::run(
                "mkfs.xfs",
                &["-q", "-f", "-K", "-s", "size=4096", image],
                limit,
            ),
        }
        .map(|_| ())
    }

    /// Read-only check of the unmounted image; Err(text) when it reports damage.
    fn fsck(self, image: &str) -> Result<String> {
        let (ok, text) = match self {
            Fs::Ext4 => sys::run_capture("e2fsck", &["-fn", image], FSCK_LIMIT)?,
            Fs::Xfs => sys::run_capture("xfs_repair", &["-n", "-f", image], FSCK_LIMIT)?,
        };
        if ok { Ok(text) } else { Err(text) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Adversarial {
    Never,
    /// A seeded half of the crash states (the default).
    Half,
    Always,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub work: PathBuf,
    pub daemons: Vec<Spec>,
    pub strays_fail: bool,
    pub verbose: bool,
    /// Client threads of the load.
    pub workers: usize,
    /// How many of them speak S3 (the daemon gets `--s3-addr` when not 0).
    pub s3_workers: usize,
    /// Early journal writeback (adversary.rs) in which crash states.
    pub adversary: Adversarial,
    /// `--disk-latency-us W,F`: each WRITE / FSYNC of the crash disk takes that long.
    pub disk_latency_us: Option<(u64, u64)>,
}

/// Totals of one experiment, printed at the end and summed by `ci`.
#[derive(Default, Debug)]
pub struct Summary {
    pub runs: usize,
    pub violations: Vec<String>,
    pub acked_checked: usize,
    pub deletes_checked: usize,
    /// S3 keys: holding their acknowledged object, gone after an acknowledged delete, and
    /// with a request in flight at the cut found in its new state / its old one.
    pub s3_acked_present: usize,
    pub s3_deletes_gone: usize,
    pub s3_in_flight_landed: usize,
    pub s3_in_flight_not_landed: usize,
    pub lost_allowed: usize,
    pub returned_allowed: usize,
    pub strays: usize,
    pub tmp_leftovers_before: usize,
    pub tmp_leftovers_after: usize,
    pub torn_tails: usize,
    pub fsck_failures: usize,
    /// `rhinobox verify` runs on a stopped daemon's data dir, those that did not exit 0,
    /// and their total time.
    pub verify_runs: usize,
    pub verify_failures: usize,
    pub verify_seconds: f64,
}

impl Summary {
    pub fn line(&self, what: &str) -> String {
        format!(
            "{what}: {} runs, {} violations; acked uploads present {}, acked deletes gone {}, \
             lost/returned allowed (none) {}/{}, strays {}, .tmp leftovers before/after restart \
             {}/{}, torn journal tails {}, fsck failures {}, verify runs/failures {}/{} \
             ({:.1} s); s3 keys: acked present {}, acked deletes gone {}, in flight at the cut \
             landed/not {}/{}",
            self.runs,
            self.violations.len(),
            self.acked_checked,
            self.deletes_checked,
            self.lost_allowed,
            self.returned_allowed,
            self.strays,
            self.tmp_leftovers_before,
            self.tmp_leftovers_after,
            self.torn_tails,
            self.fsck_failures,
            self.verify_runs,
            self.verify_failures,
            self.verify_seconds,
            self.s3_acked_present,
            self.s3_deletes_gone,
            self.s3_in_flight_landed,
            self.s3_in_flight_not_landed
        )
    }

    fn add(&mut self, f: &Findings, strays_fail: bool, tag: &str) {
        self.acked_checked += f.acked_present;
        self.deletes_checked += f.acked_deletes_gone;
        self.lost_allowed += f.lost_allowed + f.s3.lost_allowed;
        self.returned_allowed += f.returned_allowed + f.s3.returned_allowed;
        self.s3_acked_present += f.s3.acked_present;
        self.s3_deletes_gone += f.s3.acked_deletes_gone;
        self.s3_in_flight_landed += f.s3.in_flight_landed;
        self.s3_in_flight_not_landed += f.s3.in_flight_not_landed;
        self.strays += f.strays;
        self.tmp_leftovers_after += f.tmp_leftovers;
        for v in &f.violations {
            self.violations.push(format!("{tag}: {v}"));
        }
        if strays_fail && (f.strays > 0 || f.tmp_leftovers > 0) {
            self.violations.push(format!(
                "{tag}: {} strays {:?}, {} .tmp leftovers",
                f.strays, f.stray_examples, f.tmp_leftovers
            ));
        }
    }
}

/// Stops the daemon at `slot` (SIGTERM, at most `STOP_LIMIT`, then SIGKILL), runs
/// `rhinobox verify` on `data_dir` and counts it in `summary` (a failure also as a tagged
/// violation). Returns the words for the state's line and the untagged violation, if any.
/// `scratch` names verify's output files (`SCRATCH.verify.out`, `.verify.err`).
#[allow(clippy::too_many_arguments)]
fn stop_and_verify(
    cleanup: &mut Cleanup,
    slot: usize,
    binary: &Path,
    data_dir: &Path,
    scratch: &Path,
    ledger: &Ledger,
    findings: &Findings,
    summary: &mut Summary,
    tag: &str,
) -> (String, Option<String>) {
    let stop = match cleanup.child(slot).map(|c| sys::terminate(c, STOP_LIMIT)) {
        Some(Some(status)) if !status.success() => format!("stopped with {status}, "),
        Some(None) => format!("not stopped {STOP_LIMIT:?} after SIGTERM (killed), "),
        _ => String::new(),
    };
    let verified = check::verify(
        binary,
        data_dir,
        scratch,
        ledger,
        &findings.present,
        &findings.s3,
    );
    summary.verify_runs += 1;
    summary.verify_seconds += verified.seconds;
    let verdict = if verified.violation.is_some() {
        "FAILED"
    } else {
        "clean"
    };
    if let Some(text) = &verified.violation {
        summary.verify_failures += 1;
        summary.violations.push(format!("{tag}: {text}"));
    }
    (
        format!("{stop}verify {verdict} ({:.2} s)", verified.seconds),
        verified.violation,
    )
}

/// `s3 keys checked N (acked present, deletes gone, in flight landed/not)` of a check.
fn s3_words(f: &Findings) -> String {
    let s3 = &f.s3;
    format!(
        "s3 keys checked {} (acked present {}, deletes gone {}, in flight landed/not {}/{})",
        s3.keys_checked,
        s3.acked_present,
        s3.acked_deletes_gone,
        s3.in_flight_landed,
        s3.in_flight_not_landed
    )
}

/// With the S3 load: the bucket, created before the load and acknowledged (a daemon that
/// cannot create it is a set-up error, not a crash state).
fn ensure_bucket(ledger: &Mutex<Ledger>, running: &daemon::Running) -> Result<()> {
    match running.s3_addr {
        Some(addr) => s3load::ensure_bucket(ledger, &s3::Client::new(addr)),
        None => Ok(()),
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

fn mkdirs(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// A fresh image of `fs`, copied from a template made once per run (mkfs is the slow part).
pub fn fresh_image(fs: Fs, work: &Path, image: &Path) -> Result<()> {
    let template = work.join(format!("template-{}.img", fs.name()));
    if !template.exists() {
        let partial = work.join(format!("template-{}.img.partial", fs.name()));
        let f = std::fs::File::create(&partial).map_err(|e| e.to_string())?;
        f.set_len(IMAGE_BYTES).map_err(|e| e.to_string())?;
        drop(f);
        fs.mkfs(&path_str(&partial))?;
        std::fs::rename(&partial, &template).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(image);
    sys::run(
        "cp",
        &["--sparse=always", &path_str(&template), &path_str(image)],
        Duration::from_secs(60),
    )
    .map(|_| ())
}

/// Serves `image` through the crash disk at `fuse_dir`, puts a loop device on it and mounts
/// it at `mnt`. Pushes the undo steps on `cleanup`.
pub fn attach(image: &Path, fuse_dir: &Path, mnt: &Path, cleanup: &mut Cleanup) -> Result<()> {
    // /proc/self/exe, not current_exe(): a rebuild during a long run deletes the file at
    // that path, while /proc/self/exe still execs the running binary.
    let exe = PathBuf::from("/proc/self/exe");
    let server_log =
        std::fs::File::create(fuse_dir.with_extension("log")).map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .arg("serve")
        .arg(image)
        .arg(fuse_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(server_log)
        .spawn()
        .map_err(|e| format!("crashdisk serve: {e}"))?;
    let slot = cleanup.spawned(child);
    let disk = fuse_dir.join("disk");
    sys::wait_for("the FUSE disk", Duration::from_secs(10), || {
        disk.exists() || matches!(cleanup.child(slot).map(|c| c.try_wait()), Some(Ok(Some(_))))
    })?;
    if !disk.exists() {
        return Err("crashdisk serve exited before mounting".into());
    }
    cleanup.mounted(fuse_dir);
    let device = sys::run(
        "losetup",
        &["-f", "--show", "-b", "4096", &path_str(&disk)],
        Duration::from_secs(20),
    )?
    .trim()
    .to_string();
    cleanup.looped(&device);
    sys::run("mount", &[&device, &path_str(mnt)], MOUNT_LIMIT)?;
    cleanup.mounted(mnt);
    Ok(())
}

fn mount_image(image: &Path, mnt: &Path, cleanup: &mut Cleanup) -> Result<()> {
    sys::run(
        "mount",
        &["-o", "loop", &path_str(image), &path_str(mnt)],
        MOUNT_LIMIT,
    )?;
    cleanup.mounted(mnt);
    Ok(())
}

fn torn_tail_in(log: &Path) -> bool {
    daemon::read_log(log).contains("torn tail")
}

/// Runs `states` power-loss crash states on `fs` with seeds `seed`, `seed + 1`, ….
pub fn powerloss(opts: &Options, fs: Fs, seed: u64, states: usize) -> Result<Summary> {
    let dir = opts.work.join(format!("powerloss-{}", fs.name()));
    let (fuse_dir, mnt) = (dir.join("fuse"), dir.join("mnt"));
    mkdirs(&fuse_dir)?;
    mkdirs(&mnt)?;
    let mut summary = Summary::default();
    for k in 0..states {
        sys::check_interrupted()?;
        let state_seed = seed.wrapping_add(k as u64);
        let spec = &opts.daemons[k % opts.daemons.len()];
        let tag = format!(
            "powerloss fs={} seed={state_seed} engine={} durability={}",
            fs.name(),
            spec.engine,
            spec.durability
        );
        let started = Instant::now();
        let report = one_state(
            opts,
            fs,
            spec,
            state_seed,
            &dir,
            &fuse_dir,
            &mnt,
            &mut summary,
            &tag,
        )?;
        summary.runs += 1;
        println!("{tag}: {report} [{:.1}s]", started.elapsed().as_secs_f64());
    }
    println!("{}", summary.line(&format!("powerloss {}", fs.name())));
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn one_state(
    opts: &Options,
    fs: Fs,
    spec: &Spec,
    seed: u64,
    dir: &Path,
    fuse_dir: &Path,
    mnt: &Path,
    summary: &mut Summary,
    tag: &str,
) -> Result<String> {
    let image = dir.join("disk.img");
    fresh_image(fs, &opts.work, &image)?;
    let mut rng = Rng::new(seed);
    let delay = Duration::from_millis(200 + rng.below(2300));
    // A third each: every unflushed block lost now; a seeded subset kept now; or the cut
    // at the N-th flush from now, mid-flush (the cache at its fullest), subset kept.
    // One of: every unflushed block lost now (20 %); a seeded subset kept now (20 %); the
    // cut at the N-th flush from now, mid-flush (the cache at its fullest), subset kept
    // (20 %); or the daemon stopped (SIGSTOP) right after its N-th journal append, the
    // journal written back early (fdatasync, as the kernel may), then the cut — the state
    // where a record is on disk and whatever the daemon had not yet synced is not (40 %:
    // the only mode that exposes a missing data sync on XFS, and then about half the time).
    let cut = match rng.below(5) {
        3 | 4 => format!("append {}", 1 + rng.below(400)),
        0 => "cut".to_string(),
        1 => format!("cut-random {} {}", rng.next_u64() >> 1, rng.below(1001)),
        _ => format!(
            "arm {} {} {}",
            20 + rng.below(1500),
            rng.next_u64() >> 1,
            rng.below(1001)
        ),
    };
    // Half the states also get early journal writeback (see adversary.rs).
    let adversary_period_us = match (opts.adversary, rng.below(2)) {
        (Adversarial::Never, _) | (Adversarial::Half, 0) => None,
        _ => Some(200 + rng.below(5000)),
    };
    let ledger = Arc::new(Mutex::new(Ledger::new(seed, ITEMS_PER_STATE)));
    let mut cleanup = Cleanup::default();

    attach(&image, fuse_dir, mnt, &mut cleanup)?;
    if let Some((write_us, flush_us)) = opts.disk_latency_us {
        std::fs::write(
            fuse_dir.join("ctl"),
            format!("latency {write_us} {flush_us}\n"),
        )
        .map_err(|e| format!("latency: {e}"))?;
    }
    let data_dir = mnt.join("data");
    mkdirs(&data_dir)?;
    let log1 = dir.join("daemon-before.log");
    let running = daemon::start(spec, &data_dir, &log1, &mut cleanup)?;
    ensure_bucket(&ledger, &running)?;
    let ctl = fuse_dir.join("ctl");
    let arming = cut.starts_with("arm");
    if arming {
        std::fs::write(&ctl, format!("{cut}\n")).map_err(|e| format!("arm: {e}"))?;
    }
    let workers = load::start_workers(
        ledger.clone(),
        running.addrs(),
        seed,
        opts.workers,
        opts.s3_workers,
    );
    let adversary = adversary_period_us.map(|p| Adversary::start(&data_dir, seed ^ 0xad, p));
    let load_started = Instant::now();
    let stop_at_append = cut
        .strip_prefix("append ")
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(n) = stop_at_append {
        let journal = data_dir.join("metadata/journal.ndjson");
        if crate::adversary::wait_for_appends(&journal, n, Duration::from_secs(8))
            && let Some(child) = cleanup.child(running.slot)
        {
            // SAFETY: kill(2) on our child, not yet reaped, so the pid is still ours.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGSTOP);
            }
            crate::adversary::sync_journals(&data_dir);
        }
    } else if arming {
        // The disk cuts itself at its N-th flush; a load too slow to get there within the
        // bound gets a plain cut at the bound.
        let dead = || {
            std::fs::read_to_string(&ctl)
                .unwrap_or_default()
                .contains("dead 1")
        };
        let _ = sys::wait_for("the armed cut", Duration::from_secs(8), dead);
    } else {
        std::thread::sleep(delay);
    }
    let cut_after = load_started.elapsed();
    {
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        l.crashed = true;
        // For `arm` an already dead disk ignores this; a live one is cut now.
        std::fs::write(
            &ctl,
            if arming || stop_at_append.is_some() {
                "cut\n".to_string()
            } else {
                format!("{cut}\n")
            },
        )
        .map_err(|e| format!("power cut: {e}"))?;
        if let Some(child) = cleanup.child(running.slot) {
            // SIGKILL first; syncfs threads blocked on a held flush exit once released.
            let _ = child.kill();
        }
        std::fs::write(&ctl, "release\n").map_err(|e| format!("release: {e}"))?;
        if let Some(child) = cleanup.child(running.slot) {
            sys::kill9(child);
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let early_syncs = adversary.map(Adversary::stop);
    let counters = std::fs::read_to_string(fuse_dir.join("ctl")).unwrap_or_default();
    cleanup.unwind_to(0)?;

    // The machine is back: only the durable image is left.
    mount_image(&image, mnt, &mut cleanup)?;
    summary.tmp_leftovers_before += check::tmp_leftovers(&data_dir);
    cleanup.unwind_to(0)?;
    let mut report = String::new();
    if let Err(text) = fs.fsck(&path_str(&image)) {
        summary.fsck_failures += 1;
        summary.violations.push(format!(
            "{tag}: fsck reports damage:\n{}",
            daemon::tail(&text, 1500)
        ));
    }
    mount_image(&image, mnt, &mut cleanup)?;
    let log2 = dir.join("daemon-after.log");
    let running = match daemon::start(spec, &data_dir, &log2, &mut cleanup) {
        Ok(r) => r,
        Err(e) => {
            // A harness interrupted while waiting is not a daemon that failed to start.
            sys::check_interrupted()?;
            summary
                .violations
                .push(format!("{tag}: daemon does not start: {e}"));
            cleanup.unwind_to(0)?;
            keep_failed(opts, &image, tag);
            return Ok("DAEMON DOES NOT START".into());
        }
    };
    if torn_tail_in(&running.log) {
        summary.torn_tails += 1;
    }
    let strict = spec.durability == "batch";
    if let (Some(period), Some(n)) = (adversary_period_us, early_syncs) {
        let _ = write!(report, "journal fdatasync every ≤{period} µs ({n}), ");
    }
    let findings = {
        let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        let f = check::check(&l, running.addrs(), &data_dir, strict);
        let s = &l.stats;
        let _ = write!(
            report,
            "{cut}, after {} ms: acked put {} multipart {} dup {} delete {}; checked {} \
             (acked present {}, deletes gone {}), strays {}, tmp {}",
            cut_after.as_millis(),
            s.puts_acked,
            s.multipart_acked,
            s.duplicates_acked,
            s.deletes_acked,
            f.checked,
            f.acked_present,
            f.acked_deletes_gone,
            f.strays,
            f.tmp_leftovers
        );
        if running.s3_addr.is_some() {
            let s3 = &l.s3.stats;
            let _ = write!(
                report,
                "; s3 acked put {} ({} of native bytes) multipart {} delete {}; {}",
                s3.puts_acked,
                s3.native_bytes_acked,
                s3.multipart_acked,
                s3.deletes_acked,
                s3_words(&f)
            );
        }
        if !strict {
            let _ = write!(
                report,
                ", lost {} returned {} (allowed)",
                f.lost_allowed + f.s3.lost_allowed,
                f.returned_allowed + f.s3.returned_allowed
            );
        }
        f
    };
    // The checks done, the daemon stops cleanly and the offline audit must find nothing.
    let (words, verify_violation) = stop_and_verify(
        &mut cleanup,
        running.slot,
        &spec.binary,
        &data_dir,
        &dir.join("daemon-after"),
        &ledger.lock().unwrap_or_else(|p| p.into_inner()),
        &findings,
        summary,
        tag,
    );
    let _ = write!(report, "; {words}");
    if opts.verbose {
        let keep: Vec<&str> = counters
            .lines()
            .filter(|l| {
                l.starts_with("fsyncs") || l.starts_with("dropped") || l.starts_with("survived")
            })
            .collect();
        let _ = write!(report, " | disk: {}", keep.join(", "));
    }
    summary.add(&findings, opts.strays_fail, tag);
    let mut shown = findings.violations.clone();
    shown.extend(verify_violation);
    let failed = !shown.is_empty();
    report.push_str(&violation_lines(&shown));
    cleanup.unwind_to(0)?;
    if failed {
        keep_failed(opts, &image, tag);
    }
    Ok(report)
}

/// The first `VIOLATIONS_SHOWN` violations of one state, one per line, and how many more.
pub fn violation_lines(violations: &[String]) -> String {
    let mut out: String = violations
        .iter()
        .take(VIOLATIONS_SHOWN)
        .map(|v| format!("\n  VIOLATION {}", v.trim_end()))
        .collect();
    if violations.len() > VIOLATIONS_SHOWN {
        let _ = write!(
            out,
            "\n  … and {} more violations",
            violations.len() - VIOLATIONS_SHOWN
        );
    }
    out
}

/// Keeps the durable image of a failed state (sparse copy) for a post-mortem.
fn keep_failed(opts: &Options, image: &Path, tag: &str) {
    let name: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kept = opts.work.join(format!("failed-{name}.img"));
    static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // A handful per run is enough for a post-mortem; do not fill the disk.
    if KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        let _ = sys::run(
            "cp",
            &["--sparse=always", &path_str(image), &path_str(&kept)],
            Duration::from_secs(60),
        );
        println!("  kept the durable image: {}", kept.display());
    }
}

/// The sled-style loop: one data dir, `iterations` × (start, check everything acknowledged
/// so far, stop (SIGTERM), `rhinobox verify`, start again, load, kill -9 at a random
/// instant); a final start checks and verifies the last kill.
pub fn killloop(opts: &Options, seed: u64, iterations: usize) -> Result<Summary> {
    let dir = opts.work.join("killloop");
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.join("data");
    mkdirs(&data_dir)?;
    let mut rng = Rng::new(seed);
    // Enough distinct contents for every iteration; deleted ones are never reused.
    let ledger = Arc::new(Mutex::new(Ledger::new(seed, 2000 + iterations * 600)));
    let mut summary = Summary::default();
    let mut cleanup = Cleanup::default();
    for k in 0..iterations {
        sys::check_interrupted()?;
        let spec = &opts.daemons[k % opts.daemons.len()];
        let tag = format!(
            "killloop seed={seed} iteration={k} engine={} durability={}",
            spec.engine, spec.durability
        );
        let delay = Duration::from_millis(50 + rng.below(1200));
        let log = dir.join(format!("daemon-{k}.log"));
        let running = match daemon::start(spec, &data_dir, &log, &mut cleanup) {
            Ok(r) => r,
            Err(e) => {
                sys::check_interrupted()?;
                summary
                    .violations
                    .push(format!("{tag}: daemon does not start: {e}"));
                break;
            }
        };
        let torn = torn_tail_in(&log);
        summary.torn_tails += torn as usize;
        // Check what the previous iterations left (the first start has nothing to check).
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        let findings = check::check(&l, running.addrs(), &data_dir, spec.durability == "batch");
        l.resume(&findings.present);
        l.s3.resume(&findings.s3.observed, findings.s3.bucket_present);
        summary.add(&findings, opts.strays_fail, &tag);
        // Verify needs the data dir lock: stop the daemon, verify, start it again for the load.
        let (verify_words, verify_violation) = stop_and_verify(
            &mut cleanup,
            running.slot,
            &spec.binary,
            &data_dir,
            &dir.join(format!("daemon-{k}")),
            &l,
            &findings,
            &mut summary,
            &tag,
        );
        drop(l);
        let mut shown = findings.violations.clone();
        shown.extend(verify_violation);
        cleanup.unwind_to(running.slot)?;
        let log = dir.join(format!("daemon-{k}-load.log"));
        let running = match daemon::start(spec, &data_dir, &log, &mut cleanup) {
            Ok(r) => r,
            Err(e) => {
                sys::check_interrupted()?;
                let v = format!("daemon does not start again after verify: {e}");
                summary.violations.push(format!("{tag}: {v}"));
                shown.push(v);
                println!("{tag}: {verify_words}{}", violation_lines(&shown));
                break;
            }
        };
        ensure_bucket(&ledger, &running)?;
        let workers = load::start_workers(
            ledger.clone(),
            running.addrs(),
            rng.next_u64(),
            opts.workers,
            opts.s3_workers,
        );
        std::thread::sleep(delay);
        {
            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.crashed = true;
            if let Some(child) = cleanup.child(running.slot) {
                sys::kill9(child);
            }
        }
        for w in workers {
            let _ = w.join();
        }
        cleanup.unwind_to(running.slot)?;
        let tmp = check::tmp_leftovers(&data_dir);
        summary.tmp_leftovers_before += tmp;
        summary.runs += 1;
        let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        println!(
            "{tag}: killed after {} ms; checked {} (acked present {}, deletes gone {}), \
             {}, strays {}, tmp before/after restart {}/{}, torn tail at start {}; {}{}",
            delay.as_millis(),
            findings.checked,
            findings.acked_present,
            findings.acked_deletes_gone,
            s3_words(&findings),
            findings.strays,
            tmp,
            findings.tmp_leftovers,
            torn,
            verify_words,
            violation_lines(&shown)
        );
        drop(l);
    }
    // The final restart checks the last kill.
    let spec = &opts.daemons[iterations % opts.daemons.len()];
    let tag = format!("killloop seed={seed} final engine={}", spec.engine);
    let log = dir.join("daemon-final.log");
    match daemon::start(spec, &data_dir, &log, &mut cleanup) {
        Ok(running) => {
            summary.torn_tails += torn_tail_in(&log) as usize;
            let l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            let f = check::check(&l, running.addrs(), &data_dir, spec.durability == "batch");
            summary.add(&f, opts.strays_fail, &tag);
            // Strays accumulate in one data dir: the last count is the total, not the sum.
            summary.strays = f.strays;
            let (words, verify_violation) = stop_and_verify(
                &mut cleanup,
                running.slot,
                &spec.binary,
                &data_dir,
                &dir.join("daemon-final"),
                &l,
                &f,
                &mut summary,
                &tag,
            );
            drop(l);
            let mut shown = f.violations.clone();
            shown.extend(verify_violation);
            println!(
                "{tag}: checked {} (acked present {}, deletes gone {}), {}, strays {}; \
                 {words}{}",
                f.checked,
                f.acked_present,
                f.acked_deletes_gone,
                s3_words(&f),
                f.strays,
                violation_lines(&shown)
            );
        }
        Err(e) => summary
            .violations
            .push(format!("{tag}: daemon does not start: {e}")),
    }
    cleanup.unwind_to(0)?;
    println!("{}", summary.line("killloop"));
    Ok(summary)
}
