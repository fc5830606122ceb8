//! The load and the ledger: what was sent, what the daemon acknowledged before the crash.
//!
//! Contents are generated from (seed, item index), so nothing big is kept in memory and
//! every byte replays from the seed. Each item is owned by at most one request at a time
//! (the `busy` flag), and an item whose delete was ever sent is never uploaded again: the
//! expectations stay exact without depending on how the daemon orders concurrent requests
//! on one hash (a race this load does not set out to test).
//!
//! The crash (power cut or kill -9) happens with the ledger locked, so every reply recorded
//! as acknowledged was read before the crash.
//!
//! A share of the client threads speaks S3 instead (`s3load.rs`, its ledger in
//! [`Ledger::s3`], under the same lock).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http;
use crate::rng::Rng;
use crate::s3load::{self, S3Ledger};

/// The file size classes: small, medium, multi-MiB; 0 B is one item (all empty files are
/// one content).
pub const SIZE_CLASSES_BYTES: [usize; 3] = [4096, 100 * 1024, 3 << 20];
/// Client threads by default (`--workers`): enough to keep several requests in one group
/// commit on 2 cores.
pub const WORKERS_DEFAULT: usize = 4;
/// Upper bound on requests per worker per run (a bound on the loop; time ends it first).
const REQUESTS_PER_WORKER_MAX: usize = 100_000;

#[derive(Clone, Copy)]
pub struct Item {
    pub size: usize,
    pub kind: Kind,
    /// Set by the worker that first generates the bytes, before they are sent: hashing
    /// every possible item up front would cost seconds per run.
    pub hash: Option<[u8; 32]>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Png,
    Jpeg,
    Binary,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Kind::Png => "png",
            Kind::Jpeg => "jpg",
            Kind::Binary => "bin",
        }
    }
}

/// The bytes of item `index`: a magic number (so files spread over media-type directories)
/// then seeded noise.
pub fn content(seed: u64, index: usize, size: usize, kind: Kind) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    rng.fill(&mut bytes);
    let magic: &[u8] = match kind {
        Kind::Png => b"\x89PNG\r\n\x1a\n",
        Kind::Jpeg => b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        Kind::Binary => b"",
    };
    let n = magic.len().min(size);
    bytes[..n].copy_from_slice(&magic[..n]);
    bytes
}

#[derive(Default, Clone)]
pub struct ItemState {
    pub put_sent: bool,
    pub put_acked: bool,
    pub delete_sent: bool,
    pub delete_acked: bool,
    busy: bool,
}

#[derive(Default)]
pub struct Stats {
    pub puts_acked: u64,
    pub multipart_acked: u64,
    pub duplicates_acked: u64,
    pub deletes_acked: u64,
    pub failures: u64,
}

pub struct Ledger {
    pub seed: u64,
    pub items: Vec<Item>,
    pub state: Vec<ItemState>,
    /// Items never sent, or sent without an answer and found absent after a restart.
    fresh: Vec<usize>,
    /// Items acknowledged (or found present) and not deleted: duplicate and delete targets.
    stored: Vec<usize>,
    /// Set with the crash: replies after it are not recorded.
    pub crashed: bool,
    pub stats: Stats,
    /// The S3 keys and what they must hold.
    pub s3: S3Ledger,
}

impl Ledger {
    pub fn new(seed: u64, item_count: usize) -> Ledger {
        let mut rng = Rng::new(seed);
        let mut items = Vec::with_capacity(item_count);
        for index in 0..item_count {
            let size = if index == 0 {
                0
            } else {
                // 45 % 4 KiB, 40 % 100 KiB, 15 % 3 MiB.
                match rng.below(100) {
                    0..45 => SIZE_CLASSES_BYTES[0],
                    45..85 => SIZE_CLASSES_BYTES[1],
                    _ => SIZE_CLASSES_BYTES[2],
                }
            };
            let kind = match rng.below(3) {
                0 => Kind::Png,
                1 => Kind::Jpeg,
                _ => Kind::Binary,
            };
            items.push(Item {
                size,
                kind,
                hash: None,
            });
        }
        let mut fresh: Vec<usize> = (0..item_count).collect();
        fresh.reverse();
        Ledger {
            seed,
            items,
            state: vec![ItemState::default(); item_count],
            fresh,
            stored: Vec::new(),
            crashed: false,
            stats: Stats::default(),
            s3: S3Ledger::new(),
        }
    }

    /// The item's BLAKE3 in hex; only for items already sent (their hash is known).
    pub fn hex(&self, index: usize) -> String {
        let hash = self.items[index].hash.expect("hash of a sent item");
        blake3::Hash::from_bytes(hash).to_hex().to_string()
    }

    pub fn bytes(&self, index: usize) -> Vec<u8> {
        let item = self.items[index];
        content(self.seed, index, item.size, item.kind)
    }

    pub fn name(&self, index: usize, copy: u32) -> String {
        format!("f{index}_{copy}.{}", self.items[index].kind.extension())
    }

    /// A native item acknowledged and not deleted (maybe being deleted right now), for an
    /// S3 put of the same bytes.
    pub fn sample_stored(&self, rng: &mut Rng) -> Option<usize> {
        if self.stored.is_empty() {
            return None;
        }
        Some(self.stored[rng.below(self.stored.len() as u64) as usize])
    }

    /// One of the next few items the native workers will upload, for an S3 put that stores
    /// its bytes first (the native upload then meets an S3 blob of its content).
    pub fn sample_upcoming(&self, rng: &mut Rng) -> Option<usize> {
        let next = self.fresh.len().min(8);
        if next == 0 {
            return None;
        }
        Some(self.fresh[self.fresh.len() - 1 - rng.below(next as u64) as usize])
    }

    fn take_fresh(&mut self) -> Option<usize> {
        let index = self.fresh.pop()?;
        self.state[index].busy = true;
        Some(index)
    }

    fn take_stored(&mut self, rng: &mut Rng, remove: bool) -> Option<usize> {
        for _ in 0..8 {
            if self.stored.is_empty() {
                return None;
            }
            let at = rng.below(self.stored.len() as u64) as usize;
            let index = self.stored[at];
            if self.state[index].busy {
                continue;
            }
            if remove {
                self.stored.swap_remove(at);
            }
            self.state[index].busy = true;
            return Some(index);
        }
        None
    }

    /// After a restart: sorts every item by what the store holds now (`present[i]`), so the
    /// next run continues from the real state (the kill loop).
    pub fn resume(&mut self, present: &[bool]) {
        self.crashed = false;
        self.fresh.clear();
        self.stored.clear();
        for index in (0..self.items.len()).rev() {
            let state = &mut self.state[index];
            state.busy = false;
            if state.delete_sent {
                continue;
            }
            if present[index] {
                self.stored.push(index);
            } else if !state.put_acked {
                self.fresh.push(index);
            }
        }
    }
}

enum Op {
    Put(usize),
    Multipart(Vec<usize>),
    Duplicate(usize),
    Delete(usize),
}

fn pick(ledger: &mut Ledger, rng: &mut Rng) -> Option<Op> {
    let roll = rng.below(100);
    if roll < 10 {
        if let Some(i) = ledger.take_stored(rng, true) {
            ledger.state[i].delete_sent = true;
            return Some(Op::Delete(i));
        }
    } else if roll < 22 {
        if let Some(i) = ledger.take_stored(rng, false) {
            return Some(Op::Duplicate(i));
        }
    } else if roll < 45 {
        let count = 1 + rng.below(3) as usize;
        let mut parts = Vec::new();
        for _ in 0..count {
            if let Some(i) = ledger.take_fresh() {
                ledger.state[i].put_sent = true;
                parts.push(i);
            }
        }
        // A duplicate inside one request: the second copy must be answered as such.
        if let Some(&first) = parts.first()
            && rng.below(4) == 0
        {
            parts.push(first);
        }
        if !parts.is_empty() {
            return Some(Op::Multipart(parts));
        }
    }
    let i = ledger.take_fresh()?;
    ledger.state[i].put_sent = true;
    Some(Op::Put(i))
}

/// A request to build outside the lock: (method, target, content type, items and names).
struct Plan {
    method: &'static str,
    target: String,
    parts: Vec<(usize, String)>,
}

fn plan(ledger: &Ledger, op: &Op, copy: u32) -> Plan {
    match op {
        Op::Put(i) | Op::Duplicate(i) => Plan {
            method: "PUT",
            target: format!("/ingest/media/{}", ledger.name(*i, copy)),
            parts: vec![(*i, String::new())],
        },
        Op::Multipart(items) => Plan {
            method: "POST",
            target: "/ingest/media".into(),
            parts: items.iter().map(|i| (*i, ledger.name(*i, copy))).collect(),
        },
        Op::Delete(i) => Plan {
            method: "DELETE",
            target: format!("/files/{}", ledger.hex(*i)),
            parts: vec![],
        },
    }
}

/// A request ready to send: content type, body, and the hashes learnt making it.
type Built = (Option<String>, Vec<u8>, Vec<(usize, [u8; 32])>);

/// Generates the bytes (without the lock) and the body; returns new hashes to record.
fn build(seed: u64, items: &[(usize, Item)], plan: &Plan, copy: u32) -> Built {
    let mut hashes = Vec::new();
    let mut bytes_of = |index: usize, item: &Item| {
        let bytes = content(seed, index, item.size, item.kind);
        if item.hash.is_none() {
            hashes.push((index, *blake3::hash(&bytes).as_bytes()));
        }
        bytes
    };
    match plan.method {
        "PUT" => {
            let (index, item) = &items[0];
            let body = bytes_of(*index, item);
            (None, body, hashes)
        }
        "POST" => {
            let boundary = format!("crashdisk{copy:x}b0undary");
            let parts: Vec<(String, Vec<u8>)> = plan
                .parts
                .iter()
                .zip(items)
                .map(|((_, name), (index, item))| (name.clone(), bytes_of(*index, item)))
                .collect();
            let body = http::multipart(&boundary, &parts);
            (
                Some(format!("multipart/form-data; boundary={boundary}")),
                body,
                hashes,
            )
        }
        _ => (None, Vec::new(), hashes),
    }
}

fn record(ledger: &mut Ledger, op: &Op, status: Option<u16>) {
    let acked = status == Some(200) && !ledger.crashed;
    let items: Vec<usize> = match op {
        Op::Put(i) | Op::Duplicate(i) | Op::Delete(i) => vec![*i],
        Op::Multipart(v) => v.clone(),
    };
    for &i in &items {
        ledger.state[i].busy = false;
    }
    if !acked {
        if !ledger.crashed {
            ledger.stats.failures += 1;
        }
        // Unanswered: the item stays "maybe"; it is not reused before a restart sorts it.
        return;
    }
    match op {
        Op::Put(i) | Op::Duplicate(i) => {
            if !ledger.state[*i].put_acked {
                ledger.stored.push(*i);
            }
            ledger.state[*i].put_acked = true;
            if matches!(op, Op::Duplicate(_)) {
                ledger.stats.duplicates_acked += 1;
            } else {
                ledger.stats.puts_acked += 1;
            }
        }
        Op::Multipart(v) => {
            let mut seen = std::collections::HashSet::new();
            for &i in v {
                if seen.insert(i) && !ledger.state[i].put_acked {
                    ledger.stored.push(i);
                }
                ledger.state[i].put_acked = true;
            }
            ledger.stats.multipart_acked += 1;
        }
        Op::Delete(i) => {
            ledger.state[*i].delete_acked = true;
            ledger.stats.deletes_acked += 1;
        }
    }
}

/// Where the daemon listens: the native API and, when started with it, the S3 API.
#[derive(Clone, Copy)]
pub struct Addrs {
    pub native: SocketAddr,
    pub s3: Option<SocketAddr>,
}

/// Runs `workers` client threads until the ledger says crashed (or the bound is hit);
/// `s3_workers` of them (a seeded choice of indices) speak S3, when the daemon has it.
pub fn start_workers(
    ledger: Arc<Mutex<Ledger>>,
    addrs: Addrs,
    seed: u64,
    workers: usize,
    s3_workers: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    let first_s3 = Rng::new(seed ^ 0x53).below(workers.max(1) as u64) as usize;
    (0..workers)
        .map(|w| {
            let ledger = ledger.clone();
            let seed = seed ^ ((w as u64 + 1) << 48);
            let s3 = (w + workers - first_s3) % workers < s3_workers;
            match addrs.s3 {
                Some(addr) if s3 => {
                    s3load::start_worker(ledger, crate::s3::Client::new(addr), seed)
                }
                _ => std::thread::spawn(move || worker(ledger, addrs.native, seed)),
            }
        })
        .collect()
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(ledger: Arc<Mutex<Ledger>>, addr: SocketAddr, seed: u64) {
    let mut rng = Rng::new(seed);
    for n in 0..REQUESTS_PER_WORKER_MAX {
        let (op, plan, items, seed) = {
            let mut l = lock(&ledger);
            if l.crashed || crate::sys::check_interrupted().is_err() {
                return;
            }
            let Some(op) = pick(&mut l, &mut rng) else {
                return;
            };
            let plan = plan(&l, &op, n as u32);
            let items: Vec<(usize, Item)> =
                plan.parts.iter().map(|(i, _)| (*i, l.items[*i])).collect();
            (op, plan, items, l.seed)
        };
        let (content_type, body, hashes) = build(seed, &items, &plan, n as u32);
        {
            // Known before the request leaves, so the check can look for it after a crash.
            let mut l = lock(&ledger);
            for (index, hash) in hashes {
                l.items[index].hash = Some(hash);
            }
        }
        let reply = http::request(
            addr,
            plan.method,
            &plan.target,
            content_type.as_deref(),
            &body,
        );
        let status = reply.ok().map(|r| r.status);
        let mut l = lock(&ledger);
        record(&mut l, &op, status);
        if status.is_none() && !l.crashed {
            drop(l);
            // The daemon is not answering (e.g. exited); do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
