//! Space reclaimed in the background (SPEC §8): blobs of deleted content and blobs that
//! were never committed are removed after a grace period, never under an upload or a
//! download that still needs them.
//!
//! # Protocol
//! Every node runs a pass every `reclaim_interval`; passes of several nodes may overlap
//! (every step is idempotent).
//! 1. **Emptied objects**: the rows of `rhinobox_objects` with no live file since longer
//!    than the grace → DELETE of the object in the blob cluster → the row forgotten (only
//!    while still empty).
//! 2. **Strays**: the keys under `packs/` and `files/` in the bucket that are older than
//!    the grace (their LastModified) and have no row → DELETE.
//!
//! # Why it never races
//! - R1: an object's key is used by one upload only ([`super::Cluster::object_key`]),
//!   and no record is ever added to an object after its commit (records are inserted
//!   with the object, in the commit's transaction). So an emptied object stays empty
//!   forever, and a stray without a row gets one only from its own uploader's commit.
//! - R2: an uploader commits only when less than half the grace passed since it began
//!   writing its objects ([`super::protocol`], step 3), and the commit is bounded by the
//!   statement timeout. A key older than the grace without a row therefore belongs to an
//!   upload that failed or gave up — it never commits. (The grace must exceed half the
//!   longest upload plus the statement timeout plus the clock skew between the nodes and
//!   the blob cluster; the default hour leaves a wide margin.)
//! - R3: an upload of content that is being reclaimed writes a new object under a new
//!   key: reclaim of the old key cannot touch it.
//! - R4: a download looked its record up before a delete; the emptied object stays for
//!   the grace, longer than any download takes to begin reading (a download that starts
//!   reading later than that fails with an error, never with other bytes).
//!
//! # Crash points
//! A node killed between the DELETE of a blob and forgetting its row leaves an empty row
//! whose blob is gone: the next pass deletes again (a missing key is success) and
//! forgets it. Nothing else is written.

use std::time::{Duration, SystemTime};

use super::Cluster;
use super::blob_client::BlobError;

/// Emptied objects removed per pass (bounds one pass's work and its PostgreSQL query).
const EMPTY_OBJECTS_PER_PASS_MAX: i64 = 1000;
/// Keys listed per page while looking for strays.
const LIST_PAGE_KEYS: usize = 1000;
/// Pages listed per prefix per pass: a very large bucket is walked over several passes.
const LIST_PAGES_PER_PASS_MAX: usize = 100;
/// Prefixes of the keys this daemon writes.
const PREFIXES: [&str; 2] = ["packs/", "files/"];

/// What one pass removed.
#[derive(Default, Debug, Clone, Copy)]
pub struct Reclaimed {
    pub emptied_objects: u64,
    pub strays: u64,
}

/// The background loop: a pass, then a pause; an engine that is down only delays it.
pub async fn run(cluster: &Cluster) {
    loop {
        tokio::time::sleep(cluster.settings.reclaim_interval).await;
        match pass(cluster).await {
            Ok(done) if done.emptied_objects + done.strays > 0 => eprintln!(
                "rhinobox: reclaim: {} emptied objects and {} strays removed",
                done.emptied_objects, done.strays
            ),
            Ok(_) => {}
            Err(why) => eprintln!("rhinobox: reclaim: pass stopped: {why}"),
        }
    }
}

/// One pass (see the module docs).
pub async fn pass(cluster: &Cluster) -> Result<Reclaimed, String> {
    let grace = cluster.settings.reclaim_grace;
    let mut done = Reclaimed::default();
    let emptied = cluster
        .metadata
        .empty_objects(grace, EMPTY_OBJECTS_PER_PASS_MAX)
        .await
        .map_err(|e| e.to_string())?;
    for key in emptied {
        remove_blob(cluster, &key).await?;
        cluster
            .metadata
            .forget_object(&key)
            .await
            .map_err(|e| e.to_string())?;
        done.emptied_objects += 1;
    }
    for prefix in PREFIXES {
        done.strays += remove_strays(cluster, prefix, grace).await?;
    }
    Ok(done)
}

/// Removes the keys under `prefix` older than `grace` that no row names.
async fn remove_strays(cluster: &Cluster, prefix: &str, grace: Duration) -> Result<u64, String> {
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    let mut start_after: Option<String> = None;
    for _ in 0..LIST_PAGES_PER_PASS_MAX {
        let page = cluster
            .blobs
            .list(prefix, start_after.as_deref(), LIST_PAGE_KEYS)
            .await
            .map_err(|e| e.to_string())?;
        let old: Vec<String> = page
            .keys
            .iter()
            .filter(|listed| listed.last_modified < cutoff)
            .map(|listed| listed.key.clone())
            .collect();
        if !old.is_empty() {
            let known = cluster
                .metadata
                .known_objects(&old)
                .await
                .map_err(|e| e.to_string())?;
            for key in old.iter().filter(|key| !known.contains(key)) {
                remove_blob(cluster, key).await?;
                removed += 1;
            }
        }
        match page.next_start_after {
            Some(next) => start_after = Some(next),
            None => break,
        }
    }
    Ok(removed)
}

async fn remove_blob(cluster: &Cluster, key: &str) -> Result<(), String> {
    match cluster.blobs.delete(key).await {
        Ok(()) | Err(BlobError::NotFound) => Ok(()),
        Err(e) => Err(format!("cannot remove {key}: {e}")),
    }
}
