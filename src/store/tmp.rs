//! Files in `storage/.tmp/`: the guard that removes a failed request's tmp files, and the
//! reaper thread that removes large batches of them off the cores.
//!
//! Every tmp path is registered with its request's [`TmpFiles`] before the file can exist,
//! so a failed or cancelled request leaves nothing in `.tmp`; a handful are removed before
//! the reply, more on the [`Reaper`] thread, never stalling the core. What a crash leaves
//! there is removed at the next start.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Removes the files of failed requests on a thread of its own: a refused request of
/// thousands of parts must not stall the core that served it.
#[derive(Clone)]
pub struct Reaper {
    queue: SyncSender<Vec<PathBuf>>,
}

/// Batches of paths queued for the reaper at most; a full queue makes the core remove
/// its own files (back-pressure instead of growth).
const REAPER_QUEUE_MAX: usize = 256;

impl Reaper {
    pub fn start() -> std::io::Result<Reaper> {
        let (queue, batches) = sync_channel::<Vec<PathBuf>>(REAPER_QUEUE_MAX);
        std::thread::Builder::new()
            .name("rhinobox-reaper".into())
            .spawn(move || {
                for batch in batches {
                    for path in batch {
                        let _ = std::fs::remove_file(path);
                    }
                }
            })?;
        Ok(Reaper { queue })
    }

    /// Removes `paths` soon (or now, when the reaper is behind).
    pub fn remove(&self, paths: Vec<PathBuf>) {
        match self.queue.try_send(paths) {
            Ok(()) => {}
            Err(TrySendError::Full(paths)) | Err(TrySendError::Disconnected(paths)) => {
                for path in paths {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// Tmp files of one request; removed on drop unless the request committed them.
///
/// A write task still running at drop time sees `cancelled` when it ends and removes its
/// own file, so no tmp file outlives a failed request whatever the interleaving.
pub struct TmpFiles {
    paths: Vec<PathBuf>,
    cancelled: Rc<Cell<bool>>,
    reaper: Reaper,
}

impl TmpFiles {
    pub fn new(reaper: Reaper) -> TmpFiles {
        TmpFiles {
            paths: Vec::new(),
            cancelled: Rc::new(Cell::new(false)),
            reaper,
        }
    }

    /// Registers a tmp path before the file can exist.
    pub fn add(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    /// The files were renamed or removed by the commit: nothing left to clean.
    pub fn disarm(&mut self) {
        self.paths.clear();
    }

    /// Set when the guard dropped: a write task still running removes its own file.
    pub fn cancelled(&self) -> Rc<Cell<bool>> {
        self.cancelled.clone()
    }
}

/// Tmp files of a failed request removed on the core itself, before its reply: the common
/// case (one or a few large files) frees its space before the client hears of the failure
/// (a 507 must not leave the disk full). More go to the reaper thread.
const TMP_FILES_REMOVED_INLINE_MAX: usize = 16;

impl Drop for TmpFiles {
    fn drop(&mut self) {
        if self.paths.is_empty() {
            return;
        }
        self.cancelled.set(true);
        if self.paths.len() <= TMP_FILES_REMOVED_INLINE_MAX {
            for path in self.paths.drain(..) {
                let _ = std::fs::remove_file(path);
            }
        } else {
            self.reaper.remove(std::mem::take(&mut self.paths));
        }
    }
}
