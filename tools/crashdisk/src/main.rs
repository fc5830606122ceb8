//! crashdisk: a disk with a volatile write cache (FUSE) and the rhinobox power-loss and
//! kill -9 harness built on it. See README.md.
//!
//! # Layout
//! - `disk`     the FUSE server: one image behind a write cache that FSYNC empties and a
//!   power cut forgets (`crashdisk serve`)
//! - `load`     contents from a seed, the client workers, the ledger of acknowledgements
//! - `s3load`   the S3 share of the load (PutObject, DeleteObject, multipart) and its ledger
//! - `adversary` early writeback of the journal at seeded moments (a legal kernel schedule)
//! - `check`    the invariants after a restart; `s3check` those of the S3 keys
//! - `scenario` power-loss crash states and the kill -9 loop
//! - `probe`    counts what reaches the disk per daemon operation and per syscall
//! - `daemon`, `http`, `s3`, `sigv4`, `sys`, `rng`  the daemon process, an HTTP client,
//!   an S3 client and its SigV4 signer, commands with time limits and the cleanup stack, a
//!   seeded PRNG

mod adversary;
mod check;
mod daemon;
mod disk;
mod http;
mod load;
mod probe;
mod rng;
mod s3;
mod s3check;
mod s3load;
mod scenario;
mod sigv4;
mod sys;

use std::path::PathBuf;
use std::time::Instant;

use scenario::{Fs, Options, Summary};

const USAGE: &str = "usage:
  crashdisk serve IMAGE MOUNTPOINT
  crashdisk powerloss --daemon BIN [--fs ext4|xfs|both] [--states N] [--seed S] [COMMON]
  crashdisk killloop  --daemon BIN [--iterations N] [--seed S] [COMMON]
  crashdisk probe     --daemon BIN [--fs ext4|xfs|both] [--work DIR]
  crashdisk ci        --daemon BIN [--long] [--states N] [--iterations N] [--seed S] [COMMON]
COMMON: [--engine uring|threads|both] [--durability batch|none] [--work DIR]
        [--strays-fail] [--verbose] [--workers N (default 4)]
        [--s3-workers N (default: a quarter of the workers, at least 1 of 2 or more;
         0 = no S3 API and no S3 load)]
        [--disk-latency-us WRITE,FLUSH (default 0,0)]
        [--early-writeback never|half|always (default half: journal fdatasync at seeded
         moments in half the crash states, a legal kernel writeback order)]
  --engine both alternates the io engine from one crash state (or iteration) to the next.
  Exit status: 0 clean, 1 violations found, 2 usage or set-up error.";

struct Args {
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut flags = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let name = raw[i]
                .strip_prefix("--")
                .ok_or(format!("unexpected {:?}", raw[i]))?;
            let boolean = matches!(name, "strays-fail" | "verbose" | "long");
            if boolean {
                flags.push((name.to_string(), None));
                i += 1;
            } else {
                let value = raw.get(i + 1).ok_or(format!("--{name} needs a value"))?;
                flags.push((name.to_string(), Some(value.clone())));
                i += 2;
            }
        }
        Ok(Args { flags })
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}")),
        }
    }

    fn options(&self) -> Result<Options, String> {
        let binary = PathBuf::from(self.value("daemon").ok_or("--daemon BIN is required")?);
        if !binary.exists() {
            return Err(format!("{}: no such daemon binary", binary.display()));
        }
        let binary = binary.canonicalize().map_err(|e| e.to_string())?;
        let engines: Vec<&str> = match self.value("engine").unwrap_or("both") {
            "both" => vec!["uring", "threads"],
            e @ ("uring" | "threads") => vec![e],
            e => return Err(format!("--engine: {e:?}")),
        };
        let durability = self.value("durability").unwrap_or("batch").to_string();
        if durability != "batch" && durability != "none" {
            return Err(format!("--durability: {durability:?}"));
        }
        let workers = self
            .number("workers", load::WORKERS_DEFAULT as u64)?
            .clamp(1, 64) as usize;
        let s3_workers_default = match workers {
            1 => 0,
            n => (n / 4).max(1),
        };
        let s3_workers = self
            .number("s3-workers", s3_workers_default as u64)?
            .min(workers as u64) as usize;
        let work = PathBuf::from(self.value("work").unwrap_or("/tmp/crashdisk-work"));
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        Ok(Options {
            work: work.canonicalize().map_err(|e| e.to_string())?,
            daemons: engines
                .iter()
                .map(|e| daemon::Spec {
                    binary: binary.clone(),
                    engine: e.to_string(),
                    durability: durability.clone(),
                    s3: s3_workers > 0,
                })
                .collect(),
            strays_fail: self.has("strays-fail"),
            disk_latency_us: match self.value("disk-latency-us") {
                None => None,
                Some(v) => {
                    let (w, f) = v.split_once(',').ok_or("--disk-latency-us WRITE,FLUSH")?;
                    let parse =
                        |x: &str| x.parse::<u64>().map_err(|_| format!("not a number: {x:?}"));
                    Some((parse(w)?, parse(f)?))
                }
            },
            adversary: match self.value("early-writeback").unwrap_or("half") {
                "never" => scenario::Adversarial::Never,
                "half" => scenario::Adversarial::Half,
                "always" => scenario::Adversarial::Always,
                v => return Err(format!("--early-writeback never|half|always: {v:?}")),
            },
            workers,
            s3_workers,
            verbose: self.has("verbose"),
        })
    }
}

fn seed_of(args: &Args) -> Result<u64, String> {
    match args.value("seed") {
        Some(_) => args.number("seed", 0),
        // A fresh seed per run, printed, so that a failure replays.
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)),
    }
}

fn finish(summaries: &[(String, Summary)], started: Instant) -> i32 {
    let mut violations = 0;
    println!("==== summary ({:.0} s)", started.elapsed().as_secs_f64());
    for (what, s) in summaries {
        println!("{}", s.line(what));
        violations += s.violations.len();
    }
    // Every state printed its own; the summary repeats a bounded number.
    for (what, s) in summaries {
        for v in s.violations.iter().take(100) {
            println!("VIOLATION {}", v.trim_end());
        }
        if s.violations.len() > 100 {
            println!("… {what}: {} more violations", s.violations.len() - 100);
        }
    }
    if violations > 0 { 1 } else { 0 }
}

fn run(command: &str, args: &Args) -> Result<i32, String> {
    let started = Instant::now();
    let mut summaries = Vec::new();
    match command {
        "powerloss" => {
            let opts = args.options()?;
            let seed = seed_of(args)?;
            println!("powerloss: base seed {seed}");
            for fs in Fs::parse(args.value("fs").unwrap_or("both"))? {
                let states = args.number("states", 20)? as usize;
                let s = scenario::powerloss(&opts, fs, seed, states)?;
                summaries.push((format!("powerloss {}", fs.name()), s));
            }
        }
        "killloop" => {
            let opts = args.options()?;
            let seed = seed_of(args)?;
            println!("killloop: seed {seed}");
            let iterations = args.number("iterations", 20)? as usize;
            summaries.push((
                "killloop".into(),
                scenario::killloop(&opts, seed, iterations)?,
            ));
        }
        "ci" => {
            let opts = args.options()?;
            let seed = seed_of(args)?;
            let (states, iterations) = if args.has("long") {
                (200, 100)
            } else {
                (20, 20)
            };
            // --states / --iterations override the mode's sizes (CI trims its second pass).
            let states = args.number("states", states as u64)? as usize;
            let iterations = args.number("iterations", iterations as u64)? as usize;
            println!("ci: seed {seed}, {states} crash states per file system, {iterations} kills");
            for fs in [Fs::Ext4, Fs::Xfs] {
                let s = scenario::powerloss(&opts, fs, seed, states)?;
                summaries.push((format!("powerloss {}", fs.name()), s));
            }
            summaries.push((
                "killloop".into(),
                scenario::killloop(&opts, seed, iterations)?,
            ));
        }
        "probe" => {
            let opts = args.options()?;
            for fs in Fs::parse(args.value("fs").unwrap_or("both"))? {
                probe::probe(&opts, fs)?;
            }
            return Ok(0);
        }
        _ => return Err(USAGE.into()),
    }
    Ok(finish(&summaries, started))
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if let [serve, image, mountpoint] = raw.as_slice()
        && serve == "serve"
    {
        if let Err(e) = disk::serve(image, mountpoint) {
            eprintln!("crashdisk serve: {e}");
            std::process::exit(2);
        }
        return;
    }
    sys::install_signal_handlers();
    let Some(command) = raw.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let code = match Args::parse(&raw[1..]).and_then(|args| run(command, &args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crashdisk: {e}");
            2
        }
    };
    std::process::exit(code);
}
