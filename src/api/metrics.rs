//! Request metrics and the Prometheus text exposition (`GET /metrics`).
//!
//! Counters are atomics updated on every request by every core; the exposition is built
//! on demand. Histogram buckets are fixed at start-up.

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Store;

/// Upper bounds of the request duration histogram, in seconds.
pub const DURATION_BUCKETS_S: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

pub struct HttpMetrics {
    /// Requests by status code, indexed by code - 100.
    by_status: Vec<AtomicU64>,
    buckets: Vec<AtomicU64>,
    duration_sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        HttpMetrics {
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            buckets: DURATION_BUCKETS_S
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            duration_sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        if let Some(counter) = self.by_status.get(status.saturating_sub(100) as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = DURATION_BUCKETS_S.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.duration_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends `rhinobox_http_requests_total` and the duration histogram.
    pub fn encode(&self, out: &mut String) {
        out.push_str(
            "# HELP rhinobox_http_requests_total HTTP requests answered, by status code.\n",
        );
        out.push_str("# TYPE rhinobox_http_requests_total counter\n");
        for (i, counter) in self.by_status.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "rhinobox_http_requests_total{{code=\"{}\"}} {n}",
                    i + 100
                );
            }
        }
        out.push_str(
            "# HELP rhinobox_request_duration_seconds Time from request head to response head.\n",
        );
        out.push_str("# TYPE rhinobox_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in DURATION_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "rhinobox_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "rhinobox_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "rhinobox_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "rhinobox_request_duration_seconds_count {count}");
    }
}

/// Appends one counter or gauge with its HELP and TYPE lines.
pub fn encode_scalar(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Appends the gauges of what is stored now (as /statistics reports it), of the room left
/// on each data file system (what an operator alerts on before uploads get 507), and
/// `rhinobox_build_info` (what a dashboard groups by).
pub fn encode_store_gauges(out: &mut String, store: &Store, io_engine: &str) {
    let totals = store.metadata.index.totals();
    let files: u64 = totals.iter().map(|(_, t)| t.files).sum();
    let bytes: u64 = totals.iter().map(|(_, t)| t.bytes).sum();
    encode_scalar(
        out,
        "rhinobox_stored_files",
        "gauge",
        "Files stored now (as /statistics reports).",
        files,
    );
    encode_scalar(
        out,
        "rhinobox_stored_bytes",
        "gauge",
        "Bytes of the files stored now (as /statistics reports).",
        bytes,
    );
    out.push_str(
        "# HELP rhinobox_free_bytes Bytes available to unprivileged users on the file system \
         of each data directory (statvfs f_bavail * f_frsize).\n",
    );
    out.push_str("# TYPE rhinobox_free_bytes gauge\n");
    let metadata_dir = store.data_dir.join("metadata");
    for (dir, path) in [
        ("storage", store.blobs.storage_dir.as_path()),
        ("metadata", metadata_dir.as_path()),
    ] {
        // A directory that cannot be asked (removed under the daemon) has no sample
        // rather than a made-up one.
        if let Ok(free) = free_bytes(path) {
            let _ = writeln!(out, "rhinobox_free_bytes{{dir=\"{dir}\"}} {free}");
        }
    }
    out.push_str(
        "# HELP rhinobox_build_info The daemon's version, io engine and durability; always 1.\n",
    );
    out.push_str("# TYPE rhinobox_build_info gauge\n");
    let _ = writeln!(
        out,
        "rhinobox_build_info{{version=\"{}\",io_engine=\"{io_engine}\",durability=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        store.durability.as_str()
    );
}

/// Bytes an unprivileged writer can still use on the file system holding `path`.
// The casts are no-ops here but not on 32-bit targets, whose counts are 32-bit.
#[allow(clippy::unnecessary_cast)]
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` points
    // to memory for one statvfs struct, which the kernel fills when the call succeeds.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the whole struct.
    let stats = unsafe { stats.assume_init() };
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}
