//! Results: one [`RunResult`] per run, and the tables printed at the end (the Go
//! RhinoBox's targets and figures, this daemon's targets, worker scaling, side-by-side
//! ratios) — the same figures go to JSON.

use serde::Serialize;

use super::load::LoadOutcome;
use super::stats::{Latency, median};
use super::target::Mode;

const MIB: f64 = (1 << 20) as f64;

/// One run of one scenario against one target.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    /// `A` (the main target) or `B` (`--compare`).
    pub target: String,
    pub target_desc: String,
    pub mode: Mode,
    pub clients: usize,
    pub files_per_request: usize,
    pub file_size: String,
    pub duplicate_ratio: f64,
    pub rate_per_s: Option<f64>,
    /// The sync policy of the target (daemon durability) when known.
    pub durability: Option<String>,
    pub requests: u64,
    pub files: u64,
    pub failed_requests: u64,
    pub failed_files: u64,
    pub error_samples: Vec<String>,
    pub duplicates_seen: u64,
    pub unverified_files: u64,
    pub duration_s: f64,
    pub files_per_s: f64,
    pub mib_per_s: f64,
    pub latency: Latency,
    pub client_cpu_us_per_file: f64,
    pub server_cpu_us_per_file: Option<f64>,
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    pub server_rss_peak_mib: Option<f64>,
    /// RSS after minus before, per 1000 files of the run.
    pub server_rss_growth_mib_per_1000_files: Option<f64>,
    pub ceiling_files_per_s: Option<f64>,
    pub pct_of_ceiling: Option<f64>,
    /// `/proc/loadavg` as the run ended (the host is shared).
    pub load_average: String,
}

/// Fields of a [`RunResult`] that come from the plan rather than the measurement.
pub struct RunLabels {
    pub scenario: String,
    pub target: String,
    pub target_desc: String,
    pub mode: Mode,
    pub clients: usize,
    pub files_per_request: usize,
    pub file_size: String,
    pub duplicate_ratio: f64,
    pub rate_per_s: Option<f64>,
    pub durability: Option<String>,
}

impl RunResult {
    pub fn new(labels: RunLabels, outcome: LoadOutcome) -> RunResult {
        let seconds = outcome.duration.as_secs_f64().max(1e-9);
        let files = outcome.files.max(1) as f64;
        let server = outcome.server_before.zip(outcome.server_after);
        RunResult {
            scenario: labels.scenario,
            target: labels.target,
            target_desc: labels.target_desc,
            mode: labels.mode,
            clients: labels.clients,
            files_per_request: labels.files_per_request,
            file_size: labels.file_size,
            duplicate_ratio: labels.duplicate_ratio,
            rate_per_s: labels.rate_per_s,
            durability: labels.durability,
            requests: outcome.requests,
            files: outcome.files,
            failed_requests: outcome.failed_requests,
            failed_files: outcome.failed_files,
            error_samples: outcome.error_samples,
            duplicates_seen: outcome.duplicates_seen,
            unverified_files: outcome.unverified_files,
            duration_s: seconds,
            files_per_s: outcome.files as f64 / seconds,
            mib_per_s: outcome.file_bytes as f64 / MIB / seconds,
            latency: outcome.latency,
            client_cpu_us_per_file: outcome.client_cpu_s * 1e6 / files,
            server_cpu_us_per_file: server.map(|(b, a)| (a.cpu_s - b.cpu_s) * 1e6 / files),
            server_rss_before_mib: server.map(|(b, _)| b.rss_kib as f64 / 1024.0),
            server_rss_after_mib: server.map(|(_, a)| a.rss_kib as f64 / 1024.0),
            server_rss_peak_mib: server.map(|(_, a)| a.hwm_kib as f64 / 1024.0),
            server_rss_growth_mib_per_1000_files: server
                .map(|(b, a)| (a.rss_kib as f64 - b.rss_kib as f64) / 1024.0 / files * 1000.0),
            ceiling_files_per_s: None,
            pct_of_ceiling: None,
            load_average: super::target::load_average(),
        }
    }

    /// One line for the log as the run ends.
    pub fn line(&self) -> String {
        let opt =
            |v: Option<f64>, unit: &str| v.map(|v| format!("{v:.0}{unit}")).unwrap_or("-".into());
        let mut line = format!(
            "{:<22} [{}] {:>7} files {:>9.0} files/s {:>8.1} MiB/s  p50 {:.3} p99 {:.3} max {:.2} ms  \
             cpu/file srv {} cli {:.0}µs  peak {}  failed {}",
            self.scenario,
            self.target,
            self.files,
            self.files_per_s,
            self.mib_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            opt(self.server_cpu_us_per_file, "µs"),
            self.client_cpu_us_per_file,
            self.server_rss_peak_mib
                .map(|v| format!("{v:.1}MiB"))
                .unwrap_or("-".into()),
            self.failed_files,
        );
        line.push_str(&format!("  load {}", self.load_average));
        if let Some(pct) = self.pct_of_ceiling {
            line.push_str(&format!("  {pct:.0}% of fs ceiling"));
        }
        for error in &self.error_samples {
            line.push_str(&format!("\n    error: {error}"));
        }
        line
    }
}

/// A row of a printed table (also serialized).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub metric: String,
    pub target: String,
    pub reference: String,
    pub this_run: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured or no pass/fail.
    pub met: Option<bool>,
}

/// Prints rows as a Markdown table with the given column titles.
pub fn print_table(title: &str, columns: [&str; 4], rows: &[Row]) {
    println!("\n### {title}\n");
    println!(
        "| {} | {} | {} | {} | |",
        columns[0], columns[1], columns[2], columns[3]
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        let verdict = match row.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {verdict} |",
            row.metric, row.target, row.reference, row.this_run
        );
    }
}

/// Finds the first run of a scenario on target A.
pub fn find<'a>(runs: &'a [RunResult], scenario: &str) -> Option<&'a RunResult> {
    runs.iter()
        .find(|r| r.scenario == scenario && r.target == "A")
}

/// The targets and measured figures of the Go RhinoBox, which this daemon re-implements,
/// beside this run's figures.
pub fn seed_table(runs: &[RunResult]) -> Vec<Row> {
    let single = find(runs, "seed/single");
    let batch100 = find(runs, "seed/batch100");
    let batch1000 = find(runs, "seed/batch1000");
    let sustained = find(runs, "seed/sustained");
    let ms = |r: Option<&RunResult>, f: fn(&Latency) -> f64| r.map(|r| f(&r.latency));
    let row = |metric: &str,
               target: &str,
               seed: &str,
               value: Option<f64>,
               text: String,
               ok: fn(f64) -> bool| Row {
        metric: metric.into(),
        target: target.into(),
        reference: seed.into(),
        this_run: value.map(|_| text).unwrap_or("not run".into()),
        met: value.map(ok),
    };
    let p50 = ms(single, |l| l.p50_ms);
    let p99 = ms(single, |l| l.p99_ms);
    let b100 = ms(batch100, |l| l.p50_ms);
    let b1000 = ms(batch1000, |l| l.p50_ms);
    let throughput = sustained.map(|r| r.files_per_s);
    let memory = batch1000.and_then(|r| r.server_rss_peak_mib);
    let growth = sustained.and_then(|r| r.server_rss_growth_mib_per_1000_files);
    vec![
        row(
            "single file p50",
            "< 10 ms",
            "0.43 ms",
            p50,
            format!("{:.3} ms", p50.unwrap_or(0.0)),
            |v| v < 10.0,
        ),
        row(
            "single file p99",
            "< 50 ms",
            "~1 ms",
            p99,
            format!("{:.3} ms", p99.unwrap_or(0.0)),
            |v| v < 50.0,
        ),
        row(
            "batch of 100 files",
            "< 500 ms",
            "14–20 ms",
            b100,
            format!("{:.1} ms", b100.unwrap_or(0.0)),
            |v| v < 500.0,
        ),
        row(
            "batch of 1000 files",
            "< 3 s",
            "~150 ms",
            b1000,
            format!("{:.1} ms", b1000.unwrap_or(0.0)),
            |v| v < 3000.0,
        ),
        row(
            "throughput",
            "> 1000 files/s",
            "6,000+ files/s",
            throughput,
            format!("{:.0} files/s", throughput.unwrap_or(0.0)),
            |v| v > 1000.0,
        ),
        row(
            "memory",
            "< 100 MB / 1000 files",
            "~1.1 MB per file",
            memory,
            format!(
                "peak RSS {:.1} MiB during a 1000-file batch; growth {:.2} MiB per 1000 files stored",
                memory.unwrap_or(0.0),
                growth.unwrap_or(0.0)
            ),
            |v| v < 100.0,
        ),
    ]
}

/// This daemon's own targets on a 2-core machine, 4 KiB files: sustained rates against
/// the file-system ceiling and fixed floors, latency, memory.
pub fn targets_table(runs: &[RunResult], nginx_ratio: Option<f64>) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |metric: &str, target: &str, value: Option<f64>, text: String, ok: bool| {
        rows.push(Row {
            metric: metric.into(),
            target: target.into(),
            reference: String::new(),
            this_run: if value.is_some() {
                text
            } else {
                "not run".into()
            },
            met: value.map(|_| ok),
        })
    };
    let none = find(runs, "durability/none");
    let pct = none.and_then(|r| r.pct_of_ceiling);
    push(
        "sustained, durability none",
        "≥ 90 % of fs ceiling",
        pct,
        format!(
            "{:.0} files/s = {:.0} % of {:.0}",
            none.map(|r| r.files_per_s).unwrap_or(0.0),
            pct.unwrap_or(0.0),
            none.and_then(|r| r.ceiling_files_per_s).unwrap_or(0.0)
        ),
        pct.is_some_and(|p| p >= 90.0),
    );
    let batch = find(runs, "durability/batch").map(|r| r.files_per_s);
    push(
        "sustained, durability batch",
        "≥ 10,000 files/s",
        batch,
        format!("{:.0} files/s", batch.unwrap_or(0.0)),
        batch.is_some_and(|v| v >= 10_000.0),
    );
    let single = find(runs, "seed/single");
    let p50 = single.map(|r| r.latency.p50_ms);
    let p99 = single.map(|r| r.latency.p99_ms);
    push(
        "single file p50",
        "≤ 0.2 ms",
        p50,
        format!("{:.3} ms", p50.unwrap_or(0.0)),
        p50.is_some_and(|v| v <= 0.2),
    );
    push(
        "single file p99",
        "≤ 1 ms",
        p99,
        format!("{:.3} ms", p99.unwrap_or(0.0)),
        p99.is_some_and(|v| v <= 1.0),
    );
    let b1000 = find(runs, "seed/batch1000").map(|r| r.latency.p50_ms);
    push(
        "batch of 1000 files",
        "≤ 80 ms",
        b1000,
        format!("{:.1} ms", b1000.unwrap_or(0.0)),
        b1000.is_some_and(|v| v <= 80.0),
    );
    let big = find(runs, "sizes/256MiB").map(|r| r.mib_per_s * MIB / 1e9);
    push(
        "one 256 MiB upload",
        "≥ 1 GB/s",
        big,
        format!("{:.2} GB/s", big.unwrap_or(0.0)),
        big.is_some_and(|v| v >= 1.0),
    );
    let peak = runs
        .iter()
        .filter(|r| r.target == "A")
        .filter_map(|r| r.server_rss_peak_mib.map(|p| (p, r.scenario.clone())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    push(
        "peak RSS, every scenario",
        "≤ 48 MiB",
        peak.as_ref().map(|p| p.0),
        peak.as_ref()
            .map(|(p, s)| format!("{p:.1} MiB ({s})"))
            .unwrap_or_default(),
        peak.as_ref().is_some_and(|p| p.0 <= 48.0),
    );
    push(
        "4 KiB PUT vs nginx",
        "≥ 1.0× nginx files/s",
        nginx_ratio,
        format!("{:.2}×", nginx_ratio.unwrap_or(0.0)),
        nginx_ratio.is_some_and(|r| r >= 1.0),
    );
    rows
}

/// A scenario run on both targets: medians and ratios A/B.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub a_files_per_s: f64,
    pub b_files_per_s: f64,
    /// A/B of files/s; `None` when either side had failed files.
    pub throughput_ratio: Option<f64>,
    pub a_failed_files: u64,
    pub b_failed_files: u64,
    pub a_p50_ms: f64,
    pub b_p50_ms: f64,
    pub a_p99_ms: f64,
    pub b_p99_ms: f64,
}

/// Medians over the rounds of every scenario that ran on both targets.
pub fn comparisons(runs: &[RunResult]) -> Vec<Comparison> {
    let mut scenarios: Vec<&str> = runs
        .iter()
        .filter(|r| r.target == "B")
        .map(|r| r.scenario.as_str())
        .filter(|scenario| {
            runs.iter()
                .any(|r| r.target == "A" && r.scenario == *scenario)
        })
        .collect();
    scenarios.dedup();
    scenarios
        .into_iter()
        .map(|scenario| {
            let of = |target: &str, f: fn(&RunResult) -> f64| {
                let values: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.scenario == scenario && r.target == target)
                    .map(f)
                    .collect();
                median(&values)
            };
            let (a, b) = (of("A", |r| r.files_per_s), of("B", |r| r.files_per_s));
            let failed = |target: &str| -> u64 {
                runs.iter()
                    .filter(|r| r.scenario == scenario && r.target == target)
                    .map(|r| r.failed_files)
                    .sum()
            };
            let (a_failed_files, b_failed_files) = (failed("A"), failed("B"));
            Comparison {
                scenario: scenario.to_string(),
                a_files_per_s: a,
                b_files_per_s: b,
                throughput_ratio: (a_failed_files == 0 && b_failed_files == 0 && b > 0.0)
                    .then(|| a / b),
                a_failed_files,
                b_failed_files,
                a_p50_ms: of("A", |r| r.latency.p50_ms),
                b_p50_ms: of("B", |r| r.latency.p50_ms),
                a_p99_ms: of("A", |r| r.latency.p99_ms),
                b_p99_ms: of("B", |r| r.latency.p99_ms),
            }
        })
        .collect()
}

/// Prints the side-by-side table.
pub fn print_comparisons(a: &str, b: &str, comparisons: &[Comparison]) {
    println!("\n### Side by side (medians over rounds; A = {a}, B = {b})\n");
    println!(
        "| scenario | A files/s | B files/s | A/B | A p50 ms | B p50 ms | A p99 ms | B p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in comparisons {
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            c.scenario,
            c.a_files_per_s,
            c.b_files_per_s,
            c.throughput_ratio
                .map(|r| format!("{r:.2}×"))
                .unwrap_or(format!(
                    "n/a (failed A {} B {})",
                    c.a_failed_files, c.b_failed_files
                )),
            c.a_p50_ms,
            c.b_p50_ms,
            c.a_p99_ms,
            c.b_p99_ms
        );
    }
}
