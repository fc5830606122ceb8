//! The suites: which runs make up each scenario group, on which daemon configuration, and
//! the bookkeeping around them (fresh data dirs, the fs ceiling, A/B interleaving).
//!
//! A group is a list of load shapes run on one server: a daemon the harness starts for
//! the group (with the group's durability, io engine or worker count) on a fresh data
//! dir, or the URL it was given. With `--compare`, every shape runs on target A then B,
//! `rounds` times, interleaved (A B A B), so that drift of the host hits both alike.
//! Data dirs are only removed when the whole suite is done: deleting many files makes
//! ext4 without a journal create files slowly for a while afterwards
//! (5-10x slower for about 30 s, measured on a 2-core VM).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ceiling::{self, CeilingOutcome, CeilingSpec};
use super::hostile::{self, HostileOutcome, HostileSpec};
use super::index_scale::{self, IndexOutcome};
use super::load::{self, LoadSpec};
use super::report::{RunLabels, RunResult};
use super::s3::{self, S3Options};
use super::target::{Daemon, DaemonSpec, Endpoint, Mode};
use super::workload::{Sizes, Workload, fresh_nonce};

/// Runs of the fs ceiling per configuration; the best counts.
const CEILING_TRIES: usize = 3;

/// Every group of the standard suite, in the order they run.
pub const STANDARD: &[&str] = &[
    "seed",
    "latency",
    "sizes",
    "concurrency",
    "dedup",
    "durability",
    "engines",
    "workers",
    "put",
    "index",
];

/// Everything the suite needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// Target A: a URL, or `None` to start the daemon per group.
    pub url: Option<String>,
    pub pid: Option<u32>,
    /// Target B.
    pub compare: Option<String>,
    pub compare_pid: Option<u32>,
    /// Frame every request as PUT (one file per request).
    pub put: bool,
    pub daemon: DaemonSpec,
    /// The sync policy of a URL target (for its fs ceiling); a started daemon's own.
    pub url_durability: String,
    pub work_dir: PathBuf,
    pub scale: f64,
    pub rate: f64,
    pub rounds: usize,
    pub max_workers: usize,
    pub ceiling_threads: usize,
    pub index_records: usize,
    /// Dead journal lines (stored and deleted files) among them, for the `index` group.
    pub index_dead_records: usize,
    /// Trickling uploads per daemon core in `hostile:trickle`.
    pub trickle_per_core: usize,
    /// Clients searching without pause in `hostile:search`.
    pub search_clients: usize,
    /// Connections per cycle and cycles of `hostile:floods`.
    pub flood_connections: usize,
    pub flood_cycles: usize,
    /// Targets and sizes of the `s3:*` shapes.
    pub s3: S3Options,
    pub groups: Vec<String>,
}

/// A load shape of a group.
struct Plan {
    name: String,
    clients: usize,
    files_per_request: usize,
    sizes: Sizes,
    duplicate_ratio: f64,
    warmup_per_client: usize,
    requests_per_client: usize,
    rate: Option<f64>,
    mode: Option<Mode>,
}

/// A group: its daemon configuration changes, then its shapes.
struct Group {
    name: String,
    durability: Option<String>,
    io_engine: Option<String>,
    workers: Option<usize>,
    plans: Vec<Plan>,
}

/// One server for one group.
struct Server {
    addr: std::net::SocketAddr,
    url_path: String,
    pid: Option<u32>,
    daemon: Option<Daemon>,
    desc: String,
    durability: Option<String>,
}

/// Everything measured by a suite.
#[derive(Debug, Default, Serialize)]
pub struct SuiteOutcome {
    pub runs: Vec<RunResult>,
    pub ceilings: Vec<(CeilingSpec, CeilingOutcome)>,
    pub index: Option<IndexOutcome>,
    pub hostile: HostileOutcome,
    pub notes: Vec<String>,
    /// S3 shapes that could not run (no target, bucket not creatable, ...); the harness
    /// exits non-zero when there are any.
    pub s3_errors: usize,
}

/// Runs the groups named in `options.groups`.
pub fn run_suite(options: &Options) -> SuiteOutcome {
    let run_dir = options
        .work_dir
        .join(format!("rhinobox-bench-{}", std::process::id()));
    let mut suite = Suite {
        options,
        run_dir,
        dirs_made: 0,
        outcome: SuiteOutcome::default(),
        ceiling_cache: HashMap::new(),
    };
    let names: Vec<String> = options
        .groups
        .iter()
        .flat_map(|g| expand(g, options))
        .collect();
    for name in &names {
        eprintln!("== {name}");
        if name == "index" {
            suite.index();
            continue;
        }
        if let Some(shape) = name.strip_prefix("hostile:") {
            suite.hostile(shape);
            continue;
        }
        if let Some(shape) = name.strip_prefix("s3:") {
            let (runs, errors) = s3::run_shape(options, shape);
            suite.outcome.runs.extend(runs);
            suite.outcome.s3_errors += errors.len();
            errors.into_iter().for_each(|error| suite.note(error));
            continue;
        }
        match build_group(name, options).or_else(|| build_varied(name, options)) {
            Some(group) => suite.group(group),
            None => suite.note(format!("unknown scenario group {name:?} (skipped)")),
        }
    }
    suite.outcome
}

struct Suite<'a> {
    options: &'a Options,
    run_dir: PathBuf,
    dirs_made: usize,
    outcome: SuiteOutcome,
    ceiling_cache: HashMap<(u64, String, usize), f64>,
}

impl Suite<'_> {
    fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.outcome.notes.push(note);
    }

    fn fresh_dir(&mut self, name: &str) -> PathBuf {
        self.dirs_made += 1;
        let dir = self.run_dir.join(format!("{:02}-{name}", self.dirs_made));
        std::fs::create_dir_all(&dir).expect("creating a run directory");
        dir
    }

    /// Runs every plan of `group` on its server(s).
    fn group(&mut self, group: Group) {
        let changes_daemon =
            group.durability.is_some() || group.io_engine.is_some() || group.workers.is_some();
        if changes_daemon && (self.options.url.is_some() || self.options.compare.is_some()) {
            let note = format!(
                "{}: needs daemons started by the harness (no --url/--compare); skipped",
                group.name
            );
            self.note(note);
            return;
        }
        let mut servers = Vec::new();
        let targets: Vec<(&str, Option<&String>, Option<u32>)> =
            std::iter::once(("A", self.options.url.as_ref(), self.options.pid))
                .chain(
                    self.options
                        .compare
                        .as_ref()
                        .map(|url| ("B", Some(url), self.options.compare_pid)),
                )
                .collect();
        for (label, url, pid) in targets {
            match self.start_server(&group, url, pid) {
                Ok(server) => servers.push((label, server)),
                Err(error) => {
                    self.note(format!(
                        "{}: cannot start target {label}: {error}",
                        group.name
                    ));
                    return;
                }
            }
        }
        let rounds = if servers.len() > 1 {
            self.options.rounds.max(1)
        } else {
            1
        };
        for plan in &group.plans {
            let mode = plan.mode.unwrap_or(if self.options.put {
                Mode::Put
            } else {
                Mode::Post
            });
            if mode == Mode::Put && plan.files_per_request > 1 {
                self.note(format!(
                    "{}/{}: batches cannot be sent as PUT; skipped",
                    group.name, plan.name
                ));
                continue;
            }
            for _ in 0..rounds {
                for (label, server) in &servers {
                    self.run_plan(&group.name, plan, mode, label, server);
                }
            }
        }
        for (label, server) in servers {
            if let Some(daemon) = server.daemon
                && let Err(error) = daemon.stop()
            {
                self.note(format!(
                    "{}: target {label} did not stop cleanly: {error}",
                    group.name
                ));
            }
        }
    }

    fn start_server(
        &mut self,
        group: &Group,
        url: Option<&String>,
        pid: Option<u32>,
    ) -> Result<Server, String> {
        if let Some(url) = url {
            let endpoint = Endpoint::parse(url, Mode::Post)?;
            let url_path = url
                .trim_start_matches("http://")
                .find('/')
                .map(|at| url.trim_start_matches("http://")[at..].to_string());
            return Ok(Server {
                addr: endpoint.addr,
                url_path: url_path.unwrap_or_default(),
                pid,
                daemon: None,
                desc: url.clone(),
                durability: Some(self.options.url_durability.clone()),
            });
        }
        let mut spec = self.options.daemon.clone();
        if let Some(durability) = &group.durability {
            spec.durability = durability.clone();
        }
        if let Some(engine) = &group.io_engine {
            spec.io_engine = engine.clone();
        }
        if let Some(workers) = group.workers {
            spec.workers = workers;
        }
        let dir = self.fresh_dir(&format!(
            "{}-{}-{}-w{}",
            group.name, spec.durability, spec.io_engine, spec.workers
        ));
        let daemon = Daemon::start(&spec, &dir.join("data"), &dir.join("daemon.log"))?;
        Ok(Server {
            addr: daemon.addr,
            url_path: String::new(),
            pid: Some(daemon.pid),
            desc: format!(
                "rhinobox durability={} io-engine={} workers={}",
                spec.durability, spec.io_engine, spec.workers
            ),
            durability: Some(spec.durability.clone()),
            daemon: Some(daemon),
        })
    }

    fn run_plan(&mut self, group: &str, plan: &Plan, mode: Mode, label: &str, server: &Server) {
        let endpoint = Endpoint::new(server.addr, &server.url_path, mode);
        let files_per_request = if mode == Mode::Put {
            1
        } else {
            plan.files_per_request
        };
        let spec = LoadSpec {
            clients: plan.clients,
            warmup_per_client: plan.warmup_per_client,
            requests_per_client: plan.requests_per_client,
            workload: Workload {
                files_per_request,
                sizes: plan.sizes,
                duplicate_ratio: plan.duplicate_ratio,
                nonce: fresh_nonce(),
                mode,
            },
            rate: plan.rate,
            request_timeout: None,
            run_time_max: None,
        };
        let scenario = format!("{group}/{}", plan.name);
        let outcome = load::run(&endpoint, server.pid, &spec, &scenario);
        let labels = RunLabels {
            scenario,
            target: label.to_string(),
            target_desc: server.desc.clone(),
            mode,
            clients: plan.clients,
            files_per_request,
            file_size: plan.sizes.label(),
            duplicate_ratio: plan.duplicate_ratio,
            rate_per_s: plan.rate,
            durability: server.durability.clone(),
        };
        let mut result = RunResult::new(labels, outcome);
        if let (Sizes::Fixed(size), Some(sync), "A") = (plan.sizes, &server.durability, label)
            && size <= 1 << 20
            && plan.rate.is_none()
        {
            // The daemon syncs once for whatever is in flight: the ceiling syncs once per
            // the same number of files (clients × files per request).
            let files_per_sync = plan.clients * files_per_request;
            let files = (result.files as usize).clamp(8000, 20_000);
            if let Some(ceiling) = self.ceiling(size, sync, files_per_sync, files) {
                result.ceiling_files_per_s = Some(ceiling);
                result.pct_of_ceiling = Some(result.files_per_s / ceiling * 100.0);
            }
        }
        println!("{}", result.line());
        self.outcome.runs.push(result);
    }

    /// The fs ceiling for files of `size` under `sync` (one syncfs per `files_per_sync`
    /// files), measured once per suite: the best of [`CEILING_TRIES`] runs, as the
    /// ceiling is what the file system allows and noise only ever lowers it.
    fn ceiling(
        &mut self,
        size: u64,
        sync: &str,
        files_per_sync: usize,
        files: usize,
    ) -> Option<f64> {
        let files_per_sync = if sync == "none" { 0 } else { files_per_sync };
        let key = (size, sync.to_string(), files_per_sync);
        if let Some(&value) = self.ceiling_cache.get(&key) {
            return Some(value);
        }
        let threads = self.options.ceiling_threads.max(1);
        let spec = CeilingSpec {
            files: if size >= 1 << 20 {
                files.min(512)
            } else {
                files
            },
            size_bytes: size,
            threads,
            batch: files_per_sync.div_ceil(threads).max(1),
            sync: sync.to_string(),
        };
        let mut best: Option<CeilingOutcome> = None;
        for _ in 0..CEILING_TRIES {
            let dir = self.fresh_dir(&format!("ceiling-{size}-{sync}-{files_per_sync}"));
            match ceiling::run(&dir, &spec) {
                Ok(outcome)
                    if best
                        .as_ref()
                        .is_none_or(|b| outcome.files_per_s > b.files_per_s) =>
                {
                    best = Some(outcome)
                }
                Ok(_) => {}
                Err(error) => {
                    self.note(format!("ceiling for {size} B, sync {sync}: {error}"));
                    return None;
                }
            }
        }
        let outcome = best?;
        println!(
            "{:<22} [fs] {:>7} files {:>9.0} files/s {:>8.1} MiB/s  (best of {CEILING_TRIES}; {} threads, \
             sync {} per {} files per thread, cpu {:.0}µs/file)",
            format!("ceiling/{}", Sizes::Fixed(size).label()),
            outcome.files,
            outcome.files_per_s,
            outcome.mib_per_s,
            spec.threads,
            spec.sync,
            spec.batch,
            outcome.cpu_us_per_file
        );
        let value = outcome.files_per_s;
        self.ceiling_cache.insert(key, value);
        self.outcome.ceilings.push((spec, outcome));
        Some(value)
    }

    fn index(&mut self) {
        if self.options.url.is_some() || self.options.compare.is_some() {
            self.note("index: needs a daemon started by the harness; skipped".into());
            return;
        }
        let dir = self.fresh_dir("index");
        let options = &self.options;
        match index_scale::run(
            &dir,
            options.index_records,
            options.index_dead_records,
            &options.daemon,
        ) {
            Ok(outcome) => {
                println!(
                    "index/{:<16} journal {:.0} MiB ({} dead lines) written in {:.1} s; daemon ready in \
                     {:.2} s, RSS {:.1} MiB (peak {:.1} MiB, {:.0} B/record), reports {} files; \
                     again: ready in {:.2} s, RSS {:.1} MiB, journal {:.0} MiB",
                    outcome.records,
                    outcome.journal_bytes as f64 / (1 << 20) as f64,
                    outcome.dead_lines,
                    outcome.journal_write_s,
                    outcome.ready_s,
                    outcome.rss_after_start_mib,
                    outcome.hwm_after_start_mib,
                    outcome.bytes_per_record,
                    outcome.files_reported,
                    outcome.ready_again_s,
                    outcome.rss_again_mib,
                    outcome.journal_bytes_again as f64 / (1 << 20) as f64
                );
                self.outcome.index = Some(outcome);
            }
            Err(error) => self.note(format!("index: {error}")),
        }
    }
}

impl Suite<'_> {
    /// One shape of the hostile group (`trickle`, `search`, `floods`), on a daemon started
    /// for it on a fresh data dir (`search`: with a journal of `index_records` records
    /// written first) or on the `--url` target (`search` then uses what it holds).
    fn hostile(&mut self, shape: &str) {
        if !matches!(shape, "trickle" | "search" | "floods") {
            self.note(format!("unknown hostile shape {shape:?} (skipped)"));
            return;
        }
        if self.options.compare.is_some() {
            self.note(format!(
                "hostile:{shape}: runs on one target (no --compare); run it per target"
            ));
            return;
        }
        let spec = self.hostile_spec();
        let records = self.options.index_records;
        let (daemon, addr, pid, desc) = match &self.options.url {
            Some(url) => match super::target::Endpoint::parse(url, Mode::Post) {
                Ok(endpoint) => (None, endpoint.addr, self.options.pid, url.clone()),
                Err(error) => return self.note(format!("hostile:{shape}: {error}")),
            },
            None => match self.start_hostile_daemon(shape, records) {
                Ok(daemon) => {
                    let desc = format!(
                        "{} durability={} io-engine={} workers={}",
                        self.options.daemon.bin.display(),
                        self.options.daemon.durability,
                        self.options.daemon.io_engine,
                        self.options.daemon.workers
                    );
                    let (addr, pid) = (daemon.addr, Some(daemon.pid));
                    (Some(daemon), addr, pid, desc)
                }
                Err(error) => return self.note(format!("hostile:{shape}: {error}")),
            },
        };
        let target = hostile::Target {
            addr,
            pid,
            desc: &desc,
            durability: Some(self.options.daemon.durability.clone()),
        };
        match shape {
            "trickle" => {
                let outcome = hostile::trickle_shape(&target, &spec);
                for round in &outcome.rounds {
                    self.outcome.runs.push(round.calm.clone());
                    self.outcome.runs.push(round.trickled.clone());
                }
                self.outcome.hostile.trickle = Some(outcome);
            }
            "search" => {
                let records = if daemon.is_some() {
                    records
                } else {
                    files_reported(addr).unwrap_or(records)
                };
                let outcome = hostile::search_shape(&target, &spec, records);
                for round in &outcome.rounds {
                    self.outcome.runs.push(round.alone.clone());
                    self.outcome.runs.push(round.searched.clone());
                }
                self.outcome.hostile.search = Some(outcome);
            }
            _ => self.outcome.hostile.floods = Some(hostile::flood_shape(&target, &spec)),
        }
        self.outcome.hostile.spec = Some(spec);
        if let Some(daemon) = daemon
            && let Err(error) = daemon.stop()
        {
            self.note(format!(
                "hostile:{shape}: daemon did not stop cleanly: {error}"
            ));
        }
    }

    fn hostile_spec(&self) -> HostileSpec {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let workers = self.options.daemon.workers;
        HostileSpec {
            trickle_per_core: self.options.trickle_per_core,
            cores: if workers == 0 { cores } else { workers },
            search_clients: self.options.search_clients,
            flood_connections: self.options.flood_connections,
            flood_cycles: self.options.flood_cycles,
            flood_hold_s: 2.0,
            rounds: self.options.rounds.max(1),
            scale: self.options.scale,
        }
    }

    fn start_hostile_daemon(&mut self, shape: &str, records: usize) -> Result<Daemon, String> {
        let spec = &self.options.daemon;
        let name = format!("hostile-{shape}-{}-w{}", spec.io_engine, spec.workers);
        let dir = self.fresh_dir(&name);
        let data_dir = dir.join("data");
        if shape == "search" {
            let written = std::time::Instant::now();
            let bytes = index_scale::write_journal(&data_dir, records, 0)
                .map_err(|e| format!("writing the journal: {e}"))?;
            eprintln!(
                "  journal of {records} records ({:.0} MiB) written in {:.1} s",
                bytes as f64 / (1 << 20) as f64,
                written.elapsed().as_secs_f64()
            );
        }
        let daemon = Daemon::start(&self.options.daemon, &data_dir, &dir.join("daemon.log"))?;
        eprintln!(
            "  daemon pid {} on {} ready in {:.2} s",
            daemon.pid,
            daemon.addr,
            daemon.ready_after.as_secs_f64()
        );
        Ok(daemon)
    }
}

/// The file count a server reports in `GET /statistics`.
fn files_reported(addr: std::net::SocketAddr) -> Option<usize> {
    let response = crate::client::http::request_once(addr, "GET", "/statistics", &[], b"").ok()?;
    response.try_json().ok()?["files"]
        .as_u64()
        .map(|n| n as usize)
}

/// Removes the suite's data dirs.
pub fn remove_run_dir(work_dir: &Path) {
    let run_dir = work_dir.join(format!("rhinobox-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(run_dir);
}

fn scaled(count: usize, scale: f64) -> usize {
    ((count as f64 * scale).round() as usize).max(1)
}

fn plan(
    name: &str,
    clients: usize,
    files_per_request: usize,
    sizes: Sizes,
    requests_per_client: usize,
) -> Plan {
    Plan {
        name: name.into(),
        clients,
        files_per_request,
        sizes,
        duplicate_ratio: 0.0,
        warmup_per_client: 1,
        requests_per_client,
        rate: None,
        mode: None,
    }
}

/// The sustained shape: 8 clients posting 100-file batches of 4 KiB.
fn sustained(name: &str, scale: f64) -> Plan {
    plan(name, 8, 100, Sizes::Fixed(4096), scaled(20, scale))
}

fn build_group(name: &str, options: &Options) -> Option<Group> {
    let s = options.scale;
    let group = |plans: Vec<Plan>| Group {
        name: name.to_string(),
        durability: None,
        io_engine: None,
        workers: None,
        plans,
    };
    let four_kib = Sizes::Fixed(4096);
    Some(match name {
        "seed" => group(vec![
            Plan {
                warmup_per_client: 200,
                ..plan("single", 1, 1, four_kib, scaled(2000, s))
            },
            Plan {
                warmup_per_client: 2,
                ..plan("batch100", 1, 100, four_kib, scaled(20, s))
            },
            plan("batch1000", 1, 1000, four_kib, scaled(5, s)),
            sustained("sustained", s),
        ]),
        "latency" => {
            let clients = 4;
            let total = scaled((options.rate * 5.0) as usize, s);
            group(vec![Plan {
                warmup_per_client: 50,
                rate: Some(options.rate),
                ..plan(
                    &format!("open-{}rps", options.rate),
                    clients,
                    1,
                    four_kib,
                    total.div_ceil(clients),
                )
            }])
        }
        "sizes" => group(vec![
            plan("1KiB", 8, 100, Sizes::Fixed(1024), scaled(20, s)),
            plan("4KiB", 8, 100, four_kib, scaled(20, s)),
            plan("64KiB", 8, 10, Sizes::Fixed(64 << 10), scaled(40, s)),
            plan("1MiB", 4, 1, Sizes::Fixed(1 << 20), scaled(64, s)),
            Plan {
                warmup_per_client: 0,
                ..plan("256MiB", 1, 1, Sizes::Fixed(256 << 20), scaled(2, s))
            },
            plan("media", 4, 1, Sizes::Media, scaled(32, s)),
        ]),
        "concurrency" => group(
            [1, 2, 4, 8, 16, 32, 64]
                .into_iter()
                .map(|clients| Plan {
                    warmup_per_client: 10,
                    ..plan(
                        &format!("c{clients}"),
                        clients,
                        1,
                        four_kib,
                        scaled(4000, s).div_ceil(clients),
                    )
                })
                .collect(),
        ),
        "dedup" => group(
            [0.0, 0.5]
                .into_iter()
                .map(|ratio| Plan {
                    duplicate_ratio: ratio,
                    warmup_per_client: 4,
                    ..plan(
                        &format!("{}pct", (ratio * 100.0) as u32),
                        8,
                        100,
                        four_kib,
                        scaled(20, s),
                    )
                })
                .collect(),
        ),
        "put" => group(vec![
            Plan {
                warmup_per_client: 100,
                mode: Some(Mode::Put),
                ..plan("4KiB-seq", 1, 1, four_kib, scaled(2000, s))
            },
            Plan {
                warmup_per_client: 50,
                mode: Some(Mode::Put),
                ..plan("4KiB-c8", 8, 1, four_kib, scaled(2000, s))
            },
        ]),
        // Groups that change the daemon are built by `build_varied`.
        _ => return None,
    })
}

/// Expands the groups that vary the daemon (durability, engines, workers) into one group
/// per configuration; other names pass through.
fn expand(name: &str, options: &Options) -> Vec<String> {
    match name {
        "durability" => vec!["durability:none".into(), "durability:batch".into()],
        "hostile" => ["trickle", "search", "floods"]
            .iter()
            .map(|shape| format!("hostile:{shape}"))
            .collect(),
        "engines" => vec!["engines:uring".into(), "engines:threads".into()],
        "s3" => s3::SHAPES
            .iter()
            .map(|shape| format!("s3:{shape}"))
            .collect(),
        "workers" => (1..=options.max_workers.max(1))
            .map(|w| format!("workers:{w}"))
            .collect(),
        _ => vec![name.to_string()],
    }
}

/// Builds a daemon-varying group from an expanded name (`durability:none`, ...).
fn build_varied(name: &str, options: &Options) -> Option<Group> {
    let (kind, value) = name.split_once(':')?;
    let mut group = Group {
        name: kind.to_string(),
        durability: None,
        io_engine: None,
        workers: None,
        plans: vec![sustained(value, options.scale)],
    };
    match kind {
        "durability" => group.durability = Some(value.to_string()),
        "engines" => group.io_engine = Some(value.to_string()),
        "workers" => group.workers = Some(value.parse().ok()?),
        _ => return None,
    }
    Some(group)
}
