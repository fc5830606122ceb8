//! `rhinobox-bench`: the end-to-end benchmark harness. Thin: parses flags, runs
//! the suite of [`rhinobox::bench::scenarios`], prints the tables and writes JSON.
//!
//! ```text
//! rhinobox-bench                                  # start ./target/release/rhinobox per group
//! rhinobox-bench --url http://127.0.0.1:8090      # any server with POST /ingest/media
//! rhinobox-bench --url http://127.0.0.1:8090 --compare http://127.0.0.1:8091
//! rhinobox-bench --put --scenarios put --compare http://127.0.0.1:8080/dav
//! rhinobox-bench --scenarios hostile --workers 2 --daemon-bin /path/to/old/rhinobox
//! rhinobox-bench --scenarios s3 --s3-url http://127.0.0.1:9000 --s3-access-key K \
//!     --s3-secret-key S --compare-s3-url http://127.0.0.1:8014 --pid 123 --compare-pid 456
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use rhinobox::bench::hostile;
use rhinobox::bench::report::{self, RunResult};
use rhinobox::bench::s3::{self, S3Options, S3Target};
use rhinobox::bench::scenarios::{self, Options, STANDARD};
use rhinobox::bench::target::DaemonSpec;
use rhinobox::bench::target::load_average;
use rhinobox::client::sigv4::Credentials;

/// Load generator for rhinobox and any server that speaks POST /ingest/media or PUT.
#[derive(Parser, Debug)]
#[command(name = "rhinobox-bench", version)]
struct Cli {
    /// Target A. Without it, the harness starts the daemon (--daemon-bin) per scenario
    /// group on a fresh data dir under --work-dir and samples its memory and CPU.
    #[arg(long)]
    url: Option<String>,
    /// pid of the --url (or --s3-url) server, to sample its RSS and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Target B: every scenario runs on A and B interleaved (A B A B), ratios printed.
    #[arg(long)]
    compare: Option<String>,
    /// pid of the --compare (or --compare-s3-url) server (its worker, for nginx).
    #[arg(long)]
    compare_pid: Option<u32>,
    /// Send every file as `PUT <url path><name>` (one file per request), e.g. to nginx
    /// WebDAV; batch scenarios are skipped. The `put` group always uses PUT.
    #[arg(long)]
    put: bool,
    /// Scenario groups, comma-separated: seed, latency, sizes, concurrency, dedup,
    /// durability, engines, workers, put, index; `standard` = all of them. Not in
    /// `standard`: hostile (= hostile:trickle, hostile:search, hostile:floods, each on a
    /// daemon of its own; one target only, no --compare); s3 (= s3:put, s3:get,
    /// s3:get-large, s3:multipart, against --s3-url and --compare-s3-url).
    #[arg(long, default_value = "standard", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Multiplies the request counts of every scenario (1.0 finishes in a few minutes on
    /// 2 cores; use 5–10 on big hosts).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Open-loop rate of the `latency` group, requests per second over 4 connections.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// A/B rounds per scenario with --compare.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The daemon binary started when no --url is given.
    #[arg(long, default_value = "./target/release/rhinobox")]
    daemon_bin: PathBuf,
    /// Durability of the started daemon (passed through); for --url, the target's
    /// durability, which picks the sync policy of its fs ceiling.
    #[arg(long, default_value = "batch")]
    durability: String,
    /// Workers of the started daemon (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// io engine of the started daemon: uring, threads, auto.
    #[arg(long, default_value = "uring")]
    io_engine: String,
    /// Further daemon flag, repeatable: --daemon-arg=--queue-capacity --daemon-arg=20000.
    #[arg(long, allow_hyphen_values = true)]
    daemon_arg: Vec<String>,
    /// Where fresh data dirs go (the file system under test).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Keep the data dirs (removing many files slows ext4 down for a while).
    #[arg(long)]
    keep_data: bool,
    /// Highest worker count of the `workers` group (default: the number of cores).
    #[arg(long)]
    max_workers: Option<usize>,
    /// Threads of the fs ceiling (default: the number of cores).
    #[arg(long)]
    ceiling_threads: Option<usize>,
    /// Journal records of the `index` group and of `hostile:search`.
    #[arg(long, default_value_t = 1_000_000)]
    index_records: usize,
    /// Dead lines (a put and a delete of a file no longer stored, each) spread among the
    /// `index` group's records; the first start compacts them away when they dominate.
    #[arg(long, default_value_t = 0)]
    index_dead_records: usize,
    /// hostile:trickle: trickling uploads per daemon core (--workers, 0 = every core)
    /// beside the normal clients: each sends a multipart head with a 100 MB
    /// Content-Length, 1000 B (every fifth 200 KiB), then one byte per second.
    #[arg(long, default_value_t = 200)]
    trickle_per_core: usize,
    /// hostile:search: clients searching and listing without pause beside ingest.
    #[arg(long, default_value_t = 4)]
    search_clients: usize,
    /// hostile:floods: connections opened, held 2 s and closed per cycle.
    #[arg(long, default_value_t = 2000)]
    flood_connections: usize,
    /// hostile:floods: cycles.
    #[arg(long, default_value_t = 5)]
    flood_cycles: usize,
    /// S3 target A for the s3:* scenarios: `http://HOST:PORT` of any S3 server, spoken
    /// to path-style (`/BUCKET/KEY`) with SigV4 header signatures and
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD` (bodies are checked by reading back).
    /// s3:put: PutObject of distinct 4 KiB objects, 8 clients. s3:get: GetObject of such
    /// objects (put first, unmeasured), 8 clients, bodies BLAKE3-checked. s3:get-large:
    /// one PutObject and one GetObject of a --s3-large-mib object, compared byte by byte.
    /// s3:multipart: Create, UploadPart of 8 MiB parts (--s3-parts-in-flight at once),
    /// Complete; then checked by HEAD and GET. Give --pid for the server's peak RSS.
    #[arg(long)]
    s3_url: Option<String>,
    /// Access key id the S3 requests are signed with.
    #[arg(long, env = "RHINOBOX_BENCH_S3_ACCESS_KEY", default_value = "bench")]
    s3_access_key: String,
    /// Secret key the S3 requests are signed with (the env var keeps it out of `ps`).
    #[arg(
        long,
        env = "RHINOBOX_BENCH_S3_SECRET_KEY",
        default_value = "bench-secret",
        hide_env_values = true
    )]
    s3_secret_key: String,
    /// Region put into the signatures.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// Bucket the s3:* scenarios use on every S3 target; created (PUT /BUCKET) when HEAD
    /// says it is absent.
    #[arg(long, default_value = "rhinobox-bench")]
    s3_bucket: String,
    /// S3 target B: every s3:* scenario runs on A and B interleaved (A B A B, --rounds),
    /// same bucket and region; its pid is --compare-pid.
    #[arg(long)]
    compare_s3_url: Option<String>,
    /// Access key of target B (default: --s3-access-key).
    #[arg(long)]
    compare_s3_access_key: Option<String>,
    /// Secret key of target B (default: --s3-secret-key).
    #[arg(
        long,
        env = "RHINOBOX_BENCH_COMPARE_S3_SECRET_KEY",
        hide_env_values = true
    )]
    compare_s3_secret_key: Option<String>,
    /// Size of the object of s3:get-large and s3:multipart, MiB.
    #[arg(long, default_value_t = 1024)]
    s3_large_mib: u64,
    /// UploadPart requests in flight in s3:multipart (one connection each).
    #[arg(long, default_value_t = 4)]
    s3_parts_in_flight: usize,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let groups: Vec<String> = cli
        .scenarios
        .iter()
        .flat_map(|name| match name.as_str() {
            "standard" => STANDARD.iter().map(|s| s.to_string()).collect(),
            other => vec![other.to_string()],
        })
        .collect();
    let options = Options {
        url: cli.url.clone(),
        pid: cli.pid,
        compare: cli.compare.clone(),
        compare_pid: cli.compare_pid,
        put: cli.put,
        daemon: DaemonSpec {
            bin: cli.daemon_bin.clone(),
            durability: cli.durability.clone(),
            workers: cli.workers,
            io_engine: cli.io_engine.clone(),
            extra_args: cli.daemon_arg.clone(),
        },
        url_durability: cli.durability.clone(),
        work_dir: cli.work_dir.clone(),
        scale: cli.scale,
        rate: cli.rate,
        rounds: cli.rounds,
        max_workers: cli.max_workers.unwrap_or(cores),
        ceiling_threads: cli.ceiling_threads.unwrap_or(cores),
        index_records: cli.index_records,
        index_dead_records: cli.index_dead_records,
        trickle_per_core: cli.trickle_per_core,
        search_clients: cli.search_clients,
        flood_connections: cli.flood_connections,
        flood_cycles: cli.flood_cycles,
        s3: s3_options(&cli),
        groups,
    };
    let needs_daemon = options.groups.iter().any(|g| !g.starts_with("s3"));
    if needs_daemon && options.url.is_none() && !options.daemon.bin.exists() {
        eprintln!(
            "rhinobox-bench: error: {} not found; run `cargo build --release` or pass --url",
            options.daemon.bin.display()
        );
        return ExitCode::from(2);
    }
    let setup_before = setup(cores);
    let suite = scenarios::run_suite(&options);
    if !cli.keep_data {
        scenarios::remove_run_dir(&options.work_dir);
    }
    let comparisons = report::comparisons(&suite.runs);
    let nginx_ratio = comparisons
        .iter()
        .find(|c| c.scenario == "put/4KiB-c8")
        .and_then(|c| c.throughput_ratio);
    let seed = report::seed_table(&suite.runs);
    let targets = report::targets_table(&suite.runs, nginx_ratio);
    report::print_table(
        "Reference: the Go RhinoBox",
        ["Metric", "its target", "it measured", "this run"],
        &seed,
    );
    report::print_table(
        "Targets (2-core host, 4 KiB files)",
        ["Metric", "target", "", "this run"],
        &targets,
    );
    print_workers(&suite.runs);
    hostile::print_summary(&suite.hostile);
    s3::print_summary(&suite.runs);
    if let Some(b) = &options.compare {
        let a = options
            .url
            .clone()
            .unwrap_or_else(|| "rhinobox (started)".into());
        report::print_comparisons(&a, b, &comparisons);
    } else if let (Some(a), Some(b)) = (&options.s3.a, &options.s3.b) {
        report::print_comparisons(&a.url, &b.url, &comparisons);
    }
    let failed: u64 = suite.runs.iter().map(|r| r.failed_files).sum();
    println!("\nfailed files over all runs: {failed}");
    if suite.s3_errors > 0 {
        println!(
            "S3 shapes that could not run: {} (see the notes)",
            suite.s3_errors
        );
    }
    if let Some(path) = &cli.json {
        let document = json!({
            "setup": setup_before,
            "load_after": load_average(),
            "options": format!("{options:?}"),
            "runs": suite.runs,
            "ceilings": suite.ceilings,
            "index": suite.index,
            "hostile": suite.hostile,
            "seed_table": seed,
            "targets": targets,
            "comparisons": comparisons,
            "notes": suite.notes,
            "s3_errors": suite.s3_errors,
        });
        let text = serde_json::to_string_pretty(&document).expect("results serialize");
        if let Err(error) = std::fs::write(path, text) {
            eprintln!(
                "rhinobox-bench: error: cannot write {}: {error}",
                path.display()
            );
            return ExitCode::from(1);
        }
    }
    if failed > 0 || suite.s3_errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn s3_options(cli: &Cli) -> S3Options {
    let credentials = |access_key: &str, secret_key: &str| Credentials {
        access_key: access_key.to_string(),
        secret_key: secret_key.to_string(),
        region: cli.s3_region.clone(),
    };
    S3Options {
        a: cli.s3_url.as_ref().map(|url| S3Target {
            url: url.clone(),
            credentials: credentials(&cli.s3_access_key, &cli.s3_secret_key),
        }),
        b: cli.compare_s3_url.as_ref().map(|url| S3Target {
            url: url.clone(),
            credentials: credentials(
                cli.compare_s3_access_key
                    .as_ref()
                    .unwrap_or(&cli.s3_access_key),
                cli.compare_s3_secret_key
                    .as_ref()
                    .unwrap_or(&cli.s3_secret_key),
            ),
        }),
        bucket: cli.s3_bucket.clone(),
        large_bytes: cli.s3_large_mib << 20,
        parts_in_flight: cli.s3_parts_in_flight,
    }
}

fn print_workers(runs: &[RunResult]) {
    let rows: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.scenario.starts_with("workers/"))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("\n### Worker scaling (8 clients × 100-file batches of 4 KiB)\n");
    println!("| workers | files/s | p50 ms | p99 ms | server µs/file | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} |",
            r.scenario.trim_start_matches("workers/"),
            r.files_per_s,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.server_cpu_us_per_file.unwrap_or(0.0),
            r.server_rss_peak_mib.unwrap_or(0.0)
        );
    }
}

fn setup(cores: usize) -> serde_json::Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "host": read("/proc/sys/kernel/hostname"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "cores": cores,
        "load_before": load_average(),
    })
}
