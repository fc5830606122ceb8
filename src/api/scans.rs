//! Listings and searches run on a scan thread of their own, never on a core.
//!
//! A search over a million records is tens of milliseconds of CPU: on a core it would hold
//! up every connection of that core. Here it runs on [`ScanPool`]'s threads, at a lower
//! CPU priority (nice +10) so ingest wins the cores when both want them, and only a
//! bounded number run or wait at once: beyond [`SCANS_IN_FLIGHT_MAX`] a request gets 503
//! with Retry-After at once instead of queueing without bound. The index itself is read
//! without a lock across the pass (`store::chronicle`).

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use tokio::sync::{Semaphore, oneshot};

use super::errors::ApiError;

/// Listings and searches running or waiting at once, over all cores.
pub const SCANS_IN_FLIGHT_MAX: usize = 8;

/// CPU niceness of the scan threads (ingest runs at the process's own, usually 0).
const SCAN_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The scan threads and the bound on scans in flight.
pub struct ScanPool {
    jobs: SyncSender<Job>,
    slots: Arc<Semaphore>,
}

impl ScanPool {
    pub fn start(threads: usize) -> std::io::Result<ScanPool> {
        let (jobs, receiver) = sync_channel::<Job>(SCANS_IN_FLIGHT_MAX);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("rhinobox-scan-{i}"))
                .spawn(move || {
                    // SAFETY: setpriority on this thread's own id; no memory is passed.
                    // Failure only leaves the thread at normal priority.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, SCAN_NICENESS);
                    }
                    loop {
                        let job = {
                            let guard = receiver.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(ScanPool {
            jobs,
            slots: Arc::new(Semaphore::new(SCANS_IN_FLIGHT_MAX)),
        })
    }

    /// Runs `scan` on a scan thread; 503 when [`SCANS_IN_FLIGHT_MAX`] are in flight.
    pub async fn run<R: Send + 'static>(
        &self,
        scan: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(ApiError::overloaded(format!(
                "too many listings and searches in progress (at most {SCANS_IN_FLIGHT_MAX})"
            )));
        };
        let (sender, receiver) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = scan();
            drop(slot);
            let _ = sender.send(result);
        });
        // A slot is held, and the queue has one place per slot: this never blocks.
        self.jobs
            .try_send(job)
            .map_err(|_| ApiError::overloaded("scan threads stopped"))?;
        receiver
            .await
            .map_err(|_| ApiError::new(hyper::StatusCode::INTERNAL_SERVER_ERROR, "scan failed"))
    }
}

/// Whether `haystack` contains `needle_lower` (already lowercased) ignoring case, without
/// allocating: ASCII needles compare bytes, others compare lowercased chars.
pub fn contains_ignore_case(haystack: &str, needle_lower: &str) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    if needle_lower.is_ascii() {
        let needle = needle_lower.as_bytes();
        return haystack
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle));
    }
    haystack.char_indices().any(|(start, _)| {
        let mut rest = haystack[start..].chars().flat_map(char::to_lowercase);
        needle_lower.chars().all(|n| rest.next() == Some(n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_contains() {
        let cases = [
            ("Summer Photo.JPG", "photo", true),
            ("Summer Photo.JPG", ".jpg", true),
            ("Summer Photo.JPG", "winter", false),
            ("ÄRGER.txt", "ärger", true),
            ("straße", "STRASSE", false),
            ("Ünïcödé", "nïc", true),
            ("ab", "abc", false),
            ("", "", true),
        ];
        for (haystack, needle, expected) in cases {
            let lower = needle.to_lowercase();
            assert_eq!(
                contains_ignore_case(haystack, &lower),
                expected,
                "{haystack:?} / {needle:?}"
            );
            assert_eq!(
                haystack.to_lowercase().contains(&lower),
                expected,
                "reference {haystack:?} / {needle:?}"
            );
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    /// Beyond SCANS_IN_FLIGHT_MAX scans in flight, the next one is refused with 503 at
    /// once; once they finish, scans run again.
    #[test]
    fn scans_beyond_the_bound_get_503() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pool = ScanPool::start(1).unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        runtime.block_on(async {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let pool = std::rc::Rc::new(pool);
                    let mut running = Vec::new();
                    for _ in 0..SCANS_IN_FLIGHT_MAX {
                        let (pool, gate) = (pool.clone(), gate.clone());
                        running.push(tokio::task::spawn_local(async move {
                            pool.run(move || gate.lock().unwrap().recv().is_ok()).await
                        }));
                    }
                    tokio::task::yield_now().await;
                    let refused = pool.run(|| true).await.unwrap_err();
                    assert_eq!(refused.status, hyper::StatusCode::SERVICE_UNAVAILABLE);
                    for _ in 0..SCANS_IN_FLIGHT_MAX {
                        release.send(()).unwrap();
                    }
                    for task in running {
                        assert!(task.await.unwrap().unwrap());
                    }
                    assert!(pool.run(|| true).await.unwrap());
                })
                .await;
        });
    }
}
