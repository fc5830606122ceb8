//! Fitting the registered buffer pools into RLIMIT_MEMLOCK.
//!
//! io_uring charges registered buffers to the user's locked memory unless the process has
//! CAP_IPC_LOCK (root usually does). The default pools (32 × 64 KiB + 4 × 1 MiB = 6 MiB
//! a core) do not fit the usual 8 MiB `ulimit -l` of an ordinary user on two cores, so
//! before any ring registers, [`fit_pools`] shrinks the pools of every core to share
//! three quarters of the limit (the rest is headroom for what else the user has locked):
//! large buffers first give way (down to none: large files then go through small
//! buffers), small ones down to [`SMALL_BUFFERS_MIN`]. Below that the uring engine does
//! not fit, and `auto` falls back to `threads`.

use crate::config::Limits;

/// Fewest small buffers a core can run on (a handful of uploads writing at once).
pub const SMALL_BUFFERS_MIN: usize = 4;

/// What the locked-memory limit allows, read from the process.
#[derive(Clone, Copy, Debug)]
pub struct MemlockLimit {
    /// RLIMIT_MEMLOCK (soft), `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Already locked by this process (VmLck).
    pub locked_bytes: u64,
    /// CAP_IPC_LOCK in the effective set: registered buffers are not charged.
    pub exempt: bool,
}

impl MemlockLimit {
    pub fn of_process() -> MemlockLimit {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct we own; no other memory is touched.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        let limit_bytes = if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
            None
        } else {
            Some(limit.rlim_cur)
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let locked_bytes = field("VmLck:")
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        // CAP_IPC_LOCK is capability 14.
        let exempt = field("CapEff:")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|caps| caps & (1 << 14) != 0);
        MemlockLimit {
            limit_bytes,
            locked_bytes,
            exempt,
        }
    }
}

/// Bytes one core's pools lock.
pub fn pool_bytes(limits: &Limits) -> u64 {
    (limits.io_small_buffers_per_core * limits.io_small_buffer_bytes
        + limits.io_large_buffers_per_core * limits.io_large_buffer_bytes) as u64
}

/// Shrinks the per-core pools of `limits` so that `workers` cores fit `memlock`.
/// `Ok(None)`: unchanged; `Ok(Some(note))`: shrunk, `note` says how; `Err(why)`: even the
/// smallest pools do not fit.
pub fn fit_pools(
    limits: &mut Limits,
    workers: usize,
    memlock: MemlockLimit,
) -> Result<Option<String>, String> {
    let Some(limit_bytes) = memlock.limit_bytes.filter(|_| !memlock.exempt) else {
        return Ok(None);
    };
    let wanted = pool_bytes(limits) * workers as u64;
    let usable = limit_bytes.saturating_sub(memlock.locked_bytes) / 4 * 3;
    if wanted <= usable {
        return Ok(None);
    }
    let per_core = usable / workers.max(1) as u64;
    let small_bytes = limits.io_small_buffer_bytes as u64;
    let large_bytes = limits.io_large_buffer_bytes as u64;
    let large = ((per_core / 2) / large_bytes).min(limits.io_large_buffers_per_core as u64);
    let small = ((per_core - large * large_bytes) / small_bytes)
        .min(limits.io_small_buffers_per_core as u64);
    if (small as usize) < SMALL_BUFFERS_MIN {
        return Err(format!(
            "the locked-memory limit ({} KiB, `ulimit -l`) cannot hold {SMALL_BUFFERS_MIN} io \
             buffers of {} KiB on each of {workers} cores",
            limit_bytes / 1024,
            small_bytes / 1024
        ));
    }
    let before = pool_bytes(limits);
    limits.io_small_buffers_per_core = small as usize;
    limits.io_large_buffers_per_core = large as usize;
    if large == 0 {
        // Large files continue in small buffers.
        limits.io_large_buffer_bytes = limits.io_small_buffer_bytes;
        limits.io_large_buffers_per_core = 0;
    }
    Ok(Some(format!(
        "io buffers shrunk to fit the locked-memory limit of {} KiB (`ulimit -l`): {} KiB \
         instead of {} KiB per core ({small} small, {large} large); raise the limit \
         (LimitMEMLOCK= in a systemd unit) for the full pool",
        limit_bytes / 1024,
        pool_bytes(limits) / 1024,
        before / 1024
    )))
}

/// The advice every io_uring start-up failure ends with.
pub const URING_ADVICE: &str = "raise the locked-memory limit (`ulimit -l`, LimitMEMLOCK= in \
     a systemd unit), or use fewer cores (--workers), or --io-engine threads";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Args, Config};
    use clap::Parser;

    fn limits() -> Limits {
        Config::from_args(Args::parse_from(["rhinobox"]))
            .unwrap()
            .limits
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn unlimited_or_exempt_keeps_the_pools() {
        let mut l = limits();
        let unlimited = MemlockLimit {
            limit_bytes: None,
            locked_bytes: 0,
            exempt: false,
        };
        assert_eq!(fit_pools(&mut l, 64, unlimited), Ok(None));
        let exempt = MemlockLimit {
            limit_bytes: Some(MIB),
            locked_bytes: 0,
            exempt: true,
        };
        assert_eq!(fit_pools(&mut l, 64, exempt), Ok(None));
    }

    /// The usual 8 MiB limit on 2 and 4 cores shrinks the pools into 3/4 of it.
    #[test]
    fn usual_limit_shrinks_into_three_quarters() {
        for workers in [2usize, 4, 8] {
            let mut l = limits();
            let memlock = MemlockLimit {
                limit_bytes: Some(8 * MIB),
                locked_bytes: 0,
                exempt: false,
            };
            let note = fit_pools(&mut l, workers, memlock).unwrap();
            assert!(note.is_some());
            assert!(
                pool_bytes(&l) * workers as u64 <= 6 * MIB,
                "{workers}: {l:?}"
            );
            assert!(l.io_small_buffers_per_core >= SMALL_BUFFERS_MIN);
            assert!(l.io_large_buffers_per_core == 0 || l.io_large_buffer_bytes as u64 == MIB);
        }
    }

    #[test]
    fn too_small_a_limit_is_an_error() {
        let mut l = limits();
        let memlock = MemlockLimit {
            limit_bytes: Some(64 * 1024),
            locked_bytes: 0,
            exempt: false,
        };
        let err = fit_pools(&mut l, 2, memlock).unwrap_err();
        assert!(err.contains("ulimit -l"), "{err}");
    }
}
