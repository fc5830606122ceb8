//! Failure injection for tests, compiled only with the `failpoints` cargo feature.
//!
//! `RHINOBOX_FAILPOINTS=name=ERRNO[@N],...` makes [`check`] return that errno at the
//! N-th call of the named point and every call after it (N defaults to 1). Errno names:
//! `EIO`, `ENOSPC`, `EDQUOT`, `EROFS`; `KILL` instead sends the process SIGKILL right
//! there (a crash at an exact step of a protocol). Points: `sync` (the group commit's syncfs),
//! `write` (a file's data), `rename` (a file into its final name), `journal-append`,
//! `unlink` (a deleted or rolled-back file). Without the feature [`check`] is an empty
//! inline function: release builds carry no trace of this.

use std::io;

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub struct Point {
        pub errno: i32,
        pub from_call: u64,
        pub calls: AtomicU64,
    }

    /// Not an errno: the point kills the process.
    pub const KILL: i32 = -9;

    pub fn points() -> &'static HashMap<String, Point> {
        static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var("RHINOBOX_FAILPOINTS").unwrap_or_default();
            spec.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|item| parse(item.trim()))
                .collect()
        })
    }

    fn parse(item: &str) -> (String, Point) {
        let (name, rest) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("RHINOBOX_FAILPOINTS: {item:?} is not name=ERRNO[@N]"));
        let (errno, from_call) = match rest.split_once('@') {
            Some((errno, n)) => (errno, n.parse().expect("RHINOBOX_FAILPOINTS: bad @N")),
            None => (rest, 1),
        };
        let errno = match errno {
            "EIO" => libc::EIO,
            "ENOSPC" => libc::ENOSPC,
            "EDQUOT" => libc::EDQUOT,
            "EROFS" => libc::EROFS,
            "KILL" => KILL,
            other => panic!("RHINOBOX_FAILPOINTS: unknown errno {other}"),
        };
        let point = Point {
            errno,
            from_call,
            calls: AtomicU64::new(0),
        };
        (name.to_string(), point)
    }

    pub fn hit(name: &str) -> Option<i32> {
        let point = points().get(name)?;
        let call = point.calls.fetch_add(1, Ordering::Relaxed) + 1;
        (call >= point.from_call).then_some(point.errno)
    }
}

/// Fails with the configured errno when the point `name` is armed and due.
#[cfg(feature = "failpoints")]
pub fn check(name: &str) -> io::Result<()> {
    match armed::hit(name) {
        Some(armed::KILL) => {
            // SAFETY: kill(2) on our own pid touches no memory; SIGKILL cannot be caught.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            loop {
                std::thread::park();
            }
        }
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Ok(()),
    }
}

/// Without the `failpoints` feature nothing ever fails here.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn check(_name: &str) -> io::Result<()> {
    Ok(())
}
