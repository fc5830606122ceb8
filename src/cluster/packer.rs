//! Small files grouped into packs: the cluster's answer to "one object per 4 KiB file
//! caps the store at the engine's objects/s" (SPEC §8).
//!
//! Requests whose files are all in memory (small) queue here instead of writing their own
//! object. The packer works like a group commit: while [`PACKS_IN_FLIGHT_MAX`] batches are
//! being written and committed, new requests wait in the queue; when one finishes, the
//! next batch takes everything that waited (up to [`BATCH_FILES_MAX`] files and
//! [`BATCH_BYTES_MAX`] bytes) and goes through [`super::protocol::put`] as one: one pack
//! PUT and one PostgreSQL transaction for all of them. Under light load a batch is one
//! request (no added latency: there is no timer); under heavy load batches grow with the
//! queue, and the engine's objects/s stops being the limit.
//!
//! A batch is all or nothing, so every request in it is too. The queue is bounded
//! ([`QUEUE_REQUESTS_MAX`]): a full queue answers 503 at once instead of growing.

use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use super::protocol::{self, Item, Outcome};
use super::{Cluster, ClusterError};

/// Batches being written and committed at once per node: enough to overlap one batch's
/// PUT with another's commit, few enough that batches stay large under load.
pub const PACKS_IN_FLIGHT_MAX: usize = 4;
/// Files per batch (one multi-row insert; PostgreSQL's parameter arrays stay small).
pub const BATCH_FILES_MAX: usize = 2048;
/// Bytes per batch: one pack object of at most this size (plus the last request's).
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Requests waiting for a batch; beyond this the request gets 503.
pub const QUEUE_REQUESTS_MAX: usize = 4096;

/// One request waiting to be packed.
struct Job {
    items: Vec<Item>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<Outcome>, ClusterError>>,
}

/// The queue and its consumer.
pub struct Packer {
    sender: mpsc::Sender<Job>,
    receiver: Mutex<Option<mpsc::Receiver<Job>>>,
}

impl Packer {
    pub fn new() -> Packer {
        let (sender, receiver) = mpsc::channel(QUEUE_REQUESTS_MAX);
        Packer {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Queues the small files of one request and waits for its batch's answer.
    pub async fn put(&self, items: Vec<Item>) -> Result<Vec<Outcome>, ClusterError> {
        let bytes = items.iter().map(|item| item.record.size as usize).sum();
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Job {
                items,
                bytes,
                reply,
            })
            .map_err(|_| ClusterError::Unavailable("the pack queue is full".into()))?;
        answer
            .await
            .map_err(|_| ClusterError::Failed("the packer stopped".into()))?
    }

    /// The consumer loop (one per node, on the cluster runtime).
    pub async fn run(&self, cluster: &Arc<Cluster>) {
        let Some(mut receiver) = self.receiver.lock().await.take() else {
            return;
        };
        let in_flight = Arc::new(Semaphore::new(PACKS_IN_FLIGHT_MAX));
        loop {
            // The permit first: while every batch is busy, requests gather in the queue.
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut files = first.items.len();
            let mut bytes = first.bytes;
            let mut jobs = vec![first];
            while files < BATCH_FILES_MAX && bytes < BATCH_BYTES_MAX {
                match receiver.try_recv() {
                    Ok(job) => {
                        files += job.items.len();
                        bytes += job.bytes;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let cluster = cluster.clone();
            tokio::spawn(async move {
                write_batch(&cluster, jobs).await;
                drop(permit);
            });
        }
    }
}

impl Default for Packer {
    fn default() -> Packer {
        Packer::new()
    }
}

/// Puts the jobs' files as one batch and answers each job with its part.
async fn write_batch(cluster: &Cluster, jobs: Vec<Job>) {
    let mut items = Vec::new();
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        replies.push((job.items.len(), job.reply));
        items.extend(job.items);
    }
    match protocol::put(cluster, items).await {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (count, reply) in replies {
                let part: Vec<Outcome> = outcomes.by_ref().take(count).collect();
                let _ = reply.send(Ok(part));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
