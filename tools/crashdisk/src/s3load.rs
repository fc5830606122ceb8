//! The S3 share of the load: PutObject, DeleteObject and multipart uploads into one
//! bucket, and the ledger of what each key must hold after a restart.
//!
//! Contents are generated from (seed, content id) like the native items, and some are the
//! very bytes of native items (stored ones, or ones the native workers are about to
//! upload), so dedup and blobs shared by hard link with native files are exercised in both
//! orders; S3-only contents are reused under several keys (one blob, many keys), and a few
//! are empty.
//!
//! Each key is owned by at most one request at a time (`busy`), so a key's requests reach
//! the daemon in the order the ledger records them. A key's expectation is its `acked`
//! state, or `maybe`: the state an unanswered request (in flight at the cut, or failed)
//! may have left instead. A key with a `maybe` is not used again before a restart has
//! sorted it (the request may still be running inside the daemon). `maybe` is set with the
//! ledger locked just before the request leaves, so a request the crash stopped before
//! sending leaves no `maybe`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::load::{self, Kind, Ledger};
use crate::rng::Rng;
use crate::s3::{self, Client};

/// Upper bound on requests per S3 worker per run (time ends it first).
const REQUESTS_PER_WORKER_MAX: usize = 100_000;
/// Upper bound on keys per ledger: past it, requests reuse keys.
const KEYS_MAX: usize = 50_000;
/// Sizes of S3-only contents (the native items add 3 MiB ones).
const OWN_SIZES_BYTES: [usize; 3] = [4096, 100 * 1024, 1 << 20];
/// Multipart uploads: two parts, the first of S3's minimum part size, the second small.
pub const PART_BYTES: usize = 5 << 20;
pub const LAST_PART_BYTES: usize = 1024;
/// Salts that keep S3-only contents apart from the native items of the same seed.
const OWN_SALT: u64 = 0x5e_0b1e_c700;
const MULTIPART_SALT: u64 = 0x5e_3a27_0000;

/// What an S3 request sends.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Content {
    /// The bytes of native item N (one content for both APIs: one blob, hard links).
    Native(usize),
    /// S3-only content N; `Own(0)` is the empty object.
    Own(u32),
    /// The assembled bytes of multipart upload N (`PART_BYTES + LAST_PART_BYTES`).
    Multipart(u32),
}

impl Content {
    pub fn describe(self) -> String {
        match self {
            Content::Native(i) => format!("native item {i}"),
            Content::Own(j) => format!("s3 content {j}"),
            Content::Multipart(m) => format!("multipart {m}"),
        }
    }
}

/// How to generate a content's bytes: (seed, index, size, kind) for [`load::content`];
/// resolved under the ledger lock, generated outside it.
pub type Recipe = (u64, usize, usize, Kind);

pub fn recipe(ledger: &Ledger, content: Content) -> Recipe {
    match content {
        Content::Native(i) => (ledger.seed, i, ledger.items[i].size, ledger.items[i].kind),
        Content::Own(j) => {
            let (size, kind) = own_shape(ledger.seed, j);
            (ledger.seed ^ OWN_SALT, j as usize, size, kind)
        }
        Content::Multipart(m) => (
            ledger.seed ^ MULTIPART_SALT,
            m as usize,
            PART_BYTES + LAST_PART_BYTES,
            Kind::Binary,
        ),
    }
}

pub fn generate((seed, index, size, kind): Recipe) -> Vec<u8> {
    load::content(seed, index, size, kind)
}

/// Size and magic of S3-only content `j`: 0 B for 0; then 50 % 4 KiB, 35 % 100 KiB,
/// 15 % 1 MiB.
fn own_shape(seed: u64, j: u32) -> (usize, Kind) {
    let mut rng = Rng::new(seed ^ OWN_SALT ^ u64::from(j).wrapping_mul(0x9e37_79b9));
    let size = match (j, rng.below(100)) {
        (0, _) => 0,
        (_, 0..50) => OWN_SIZES_BYTES[0],
        (_, 50..85) => OWN_SIZES_BYTES[1],
        _ => OWN_SIZES_BYTES[2],
    };
    let kind = if rng.below(2) == 0 {
        Kind::Png
    } else {
        Kind::Binary
    };
    (size, kind)
}

#[derive(Default, Clone, Debug)]
pub struct KeyState {
    /// What the key holds by its last acknowledged request, or as found after the last
    /// restart; `None` is absent (never put, or deleted).
    pub acked: Option<Content>,
    /// The state an unanswered request may have left instead; `Some(None)`: a delete.
    pub maybe: Option<Option<Content>>,
    /// Its last acknowledged request was a DeleteObject (for the report's wording).
    pub acked_delete: bool,
    /// Every content ever sent to the key (`none` durability: any may come back).
    pub history: Vec<Content>,
    /// Found with wrong bytes or unreadable: no longer used, no longer checked.
    pub retired: bool,
    pub(crate) busy: bool,
}

impl KeyState {
    fn idle(&self) -> bool {
        !self.busy && self.maybe.is_none() && !self.retired
    }
}

#[derive(Default, Debug)]
pub struct S3Stats {
    pub puts_acked: u64,
    pub multipart_acked: u64,
    pub deletes_acked: u64,
    /// Acknowledged puts of a native item's bytes (one blob, hard-linked with a native file).
    pub native_bytes_acked: u64,
    pub failures: u64,
}

#[derive(Default)]
pub struct S3Ledger {
    /// CreateBucket acknowledged (or the bucket found after a restart).
    pub bucket_acked: bool,
    pub keys: Vec<KeyState>,
    /// BLAKE3 of every content sent, recorded before it is sent.
    pub hashes: HashMap<Content, [u8; 32]>,
    own_next: u32,
    own_used: Vec<u32>,
    multipart_next: u32,
    pub stats: S3Stats,
}

impl S3Ledger {
    pub fn new() -> S3Ledger {
        S3Ledger {
            own_next: 1,
            ..S3Ledger::default()
        }
    }

    pub fn key_name(index: usize) -> String {
        format!("d{}/k{index}.obj", index % 5)
    }

    pub fn hash(&self, content: Content) -> Option<[u8; 32]> {
        self.hashes.get(&content).copied()
    }

    /// After a restart: every key holds what was found (`observed[k]`, `None` when the
    /// check could not tell: the key is retired), and a bucket lost (`none` durability) is
    /// created again before the next load.
    pub fn resume(&mut self, observed: &[Option<Option<Content>>], bucket_present: bool) {
        self.bucket_acked &= bucket_present;
        for (key, seen) in self.keys.iter_mut().zip(observed) {
            key.busy = false;
            key.maybe = None;
            match seen {
                Some(state) => key.acked = *state,
                None => key.retired = true,
            }
        }
    }

    /// An idle key that holds an object, taken (busy); a few random tries.
    fn take_held(&mut self, rng: &mut Rng) -> Option<usize> {
        for _ in 0..8 {
            if self.keys.is_empty() {
                return None;
            }
            let k = rng.below(self.keys.len() as u64) as usize;
            if self.keys[k].idle() && self.keys[k].acked.is_some() {
                self.keys[k].busy = true;
                return Some(k);
            }
        }
        None
    }

    /// A key never used, taken; an idle one when the bound is reached.
    fn take_new(&mut self, rng: &mut Rng) -> Option<usize> {
        if self.keys.len() < KEYS_MAX {
            self.keys.push(KeyState {
                busy: true,
                ..KeyState::default()
            });
            return Some(self.keys.len() - 1);
        }
        self.take_held(rng)
    }
}

enum Op {
    Put(usize, Content),
    Delete(usize),
    Multipart(usize, Content),
}

impl Op {
    fn key(&self) -> usize {
        match self {
            Op::Put(k, _) | Op::Delete(k) | Op::Multipart(k, _) => *k,
        }
    }

    /// The state the key is left in when the request succeeds.
    fn outcome(&self) -> Option<Content> {
        match self {
            Op::Put(_, c) | Op::Multipart(_, c) => Some(*c),
            Op::Delete(_) => None,
        }
    }
}

/// 15 % delete of a stored key, 3 % multipart upload, else a put: 30 % of them overwrite a
/// stored key.
fn pick(l: &mut Ledger, rng: &mut Rng) -> Option<Op> {
    let roll = rng.below(100);
    if roll < 15
        && let Some(k) = l.s3.take_held(rng)
    {
        return Some(Op::Delete(k));
    }
    if (15..18).contains(&roll) {
        let key = match rng.below(2) {
            0 => l.s3.take_held(rng),
            _ => None,
        };
        let k = key.or_else(|| l.s3.take_new(rng))?;
        let m = l.s3.multipart_next;
        l.s3.multipart_next += 1;
        return Some(Op::Multipart(k, Content::Multipart(m)));
    }
    let key = match rng.below(10) {
        0..3 => l.s3.take_held(rng),
        _ => None,
    };
    let k = key.or_else(|| l.s3.take_new(rng))?;
    Some(Op::Put(k, pick_content(l, rng)))
}

/// 20 % a stored native item's bytes, 15 % the bytes of a native item about to be uploaded,
/// 15 % an S3 content already used under another key, 3 % the empty object, else new.
fn pick_content(l: &mut Ledger, rng: &mut Rng) -> Content {
    let roll = rng.below(100);
    let native = match roll {
        0..20 => l.sample_stored(rng),
        20..35 => l.sample_upcoming(rng),
        _ => None,
    };
    if let Some(i) = native {
        return Content::Native(i);
    }
    if (35..50).contains(&roll) && !l.s3.own_used.is_empty() {
        let at = rng.below(l.s3.own_used.len() as u64) as usize;
        return Content::Own(l.s3.own_used[at]);
    }
    if (50..53).contains(&roll) {
        return Content::Own(0);
    }
    let j = l.s3.own_next;
    l.s3.own_next += 1;
    l.s3.own_used.push(j);
    Content::Own(j)
}

/// Creates the bucket unless the ledger has it; the load needs it acknowledged.
pub fn ensure_bucket(ledger: &Mutex<Ledger>, client: &Client) -> Result<(), String> {
    if lock(ledger).s3.bucket_acked {
        return Ok(());
    }
    let reply = client.create_bucket()?;
    if reply.status != 200 {
        return Err(format!(
            "CreateBucket {}: HTTP {} {}",
            s3::BUCKET,
            reply.status,
            s3::short(&String::from_utf8_lossy(&reply.body))
        ));
    }
    lock(ledger).s3.bucket_acked = true;
    Ok(())
}

pub fn start_worker(
    ledger: Arc<Mutex<Ledger>>,
    client: Client,
    seed: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || worker(&ledger, &client, seed))
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(ledger: &Mutex<Ledger>, client: &Client, seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..REQUESTS_PER_WORKER_MAX {
        let op = {
            let mut l = lock(ledger);
            if l.crashed || crate::sys::check_interrupted().is_err() {
                return;
            }
            match pick(&mut l, &mut rng) {
                Some(op) => op,
                None => return,
            }
        };
        let acked = match &op {
            Op::Put(k, content) | Op::Multipart(k, content) => {
                let recipe = recipe(&lock(ledger), *content);
                let bytes = generate(recipe);
                send_put(
                    ledger,
                    client,
                    *k,
                    *content,
                    &bytes,
                    matches!(op, Op::Multipart(..)),
                )
            }
            Op::Delete(k) => {
                if !mark_sent(ledger, *k, None, None) {
                    return;
                }
                let reply = client.delete_object(&S3Ledger::key_name(*k));
                matches!(reply, Ok(r) if r.status == 204 || r.status == 200)
            }
        };
        let mut l = lock(ledger);
        record(&mut l, &op, acked);
        if !acked && !l.crashed {
            drop(l);
            // The daemon refused or is not answering (e.g. exited); do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Just before the request that changes key `k` leaves: records the content's hash, the
/// key's possible new state and its history. False when the crash came first (nothing is
/// sent then).
fn mark_sent(
    ledger: &Mutex<Ledger>,
    k: usize,
    outcome: Option<Content>,
    hash: Option<[u8; 32]>,
) -> bool {
    let mut l = lock(ledger);
    if l.crashed {
        return false;
    }
    if let (Some(content), Some(hash)) = (outcome, hash) {
        l.s3.hashes.insert(content, hash);
        l.s3.keys[k].history.push(content);
    }
    l.s3.keys[k].maybe = Some(outcome);
    true
}

/// PutObject, or a multipart upload (Create, two UploadParts, Complete) of `bytes`; true
/// when acknowledged. Only the request that can change the key (the PUT, the Complete) is
/// marked as sent.
fn send_put(
    ledger: &Mutex<Ledger>,
    client: &Client,
    k: usize,
    content: Content,
    bytes: &[u8],
    multipart: bool,
) -> bool {
    let key = S3Ledger::key_name(k);
    let hash = *blake3::hash(bytes).as_bytes();
    if !multipart {
        if !mark_sent(ledger, k, Some(content), Some(hash)) {
            return false;
        }
        return matches!(client.put_object(&key, bytes), Ok(r) if r.status == 200);
    }
    let Ok(upload_id) = client.create_multipart(&key) else {
        return false;
    };
    let mut parts = Vec::new();
    for (number, part) in [(1, &bytes[..PART_BYTES]), (2, &bytes[PART_BYTES..])] {
        match client.upload_part(&key, &upload_id, number, part) {
            Ok(etag) => parts.push((number, etag)),
            Err(_) => return false,
        }
    }
    if !mark_sent(ledger, k, Some(content), Some(hash)) {
        return false;
    }
    matches!(
        client.complete_multipart(&key, &upload_id, &parts),
        Ok(r) if r.status == 200
            && String::from_utf8_lossy(&r.body).contains("<CompleteMultipartUploadResult")
    )
}

fn record(l: &mut Ledger, op: &Op, acked: bool) {
    let crashed = l.crashed;
    let key = &mut l.s3.keys[op.key()];
    key.busy = false;
    // A reply read after the crash is not an acknowledgement: the key keeps its `maybe`.
    if !acked || crashed {
        if !crashed {
            l.s3.stats.failures += 1;
        }
        return;
    }
    key.acked = op.outcome();
    key.maybe = None;
    key.acked_delete = matches!(op, Op::Delete(_));
    let stats = &mut l.s3.stats;
    if let Op::Put(_, Content::Native(_)) = op {
        stats.native_bytes_acked += 1;
    }
    match op {
        Op::Put(..) => stats.puts_acked += 1,
        Op::Multipart(..) => stats.multipart_acked += 1,
        Op::Delete(_) => stats.deletes_acked += 1,
    }
}
