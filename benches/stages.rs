//! Criterion micro-benchmarks, one group per pipeline stage (`cargo bench`):
//!
//! - `sniff`: [`rhinobox::ingest::sniff::detect`] on a media head, and on text (the
//!   fallback through the part's Content-Type and the extension).
//! - `hash`: BLAKE3 of 4 KiB and 1 MiB.
//! - `multipart`: multer splitting an in-memory body of 100 files of 4 KiB.
//! - `journal`: encoding one record, appending one line and a 100-line group.
//! - `dedup`: the sharded index under contention: threads claiming, publishing and
//!   looking up hashes at once.
//! - `store`: 100 files of 4 KiB created in `.tmp`, written, closed and renamed into a
//!   categorized tree: a plain std loop (what the `threads` engine does per file), and
//!   the daemon's own `CoreIo` for both engines with 32 files in flight.
//!
//! Store benches write into a temp dir under `target/` (the repository's file system);
//! files accumulate during a run and the dir is removed at the end, so run `cargo bench`
//! with nothing else creating files, and not right after a mass delete on ext4.

use std::convert::Infallible;
use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use rhinobox::client::Multipart;
use rhinobox::client::payload::{MediaKind, payload};
use rhinobox::config::{Args, Config, Limits};
use rhinobox::ingest::multipart::{Event, MultipartLimits, MultipartParser};
use rhinobox::ingest::sniff::detect;
use rhinobox::store::index::{Claim, Index};
use rhinobox::store::io::CoreIo;
use rhinobox::store::journal::{FileRecord, Journal, JournalEntry, encode_line};

/// Files per iteration of the store benches (one 100-file request's worth).
const STORE_FILES: usize = 100;
/// Files in flight on one core in the async store benches (the registered pool holds 32
/// buffers per core by default).
const STORE_IN_FLIGHT: usize = 32;
/// Threads of the dedup contention bench.
const DEDUP_THREADS: usize = 4;
/// Operations per thread and iteration of the dedup bench.
const DEDUP_OPS: usize = 1000;

fn sniff(c: &mut Criterion) {
    let mut group = c.benchmark_group("sniff");
    let jpeg = payload(MediaKind::Jpeg, 8192, 1);
    let mp4 = payload(MediaKind::Mp4, 8192, 1);
    let text = payload(MediaKind::Text, 8192, 1);
    group.bench_function("jpeg", |b| {
        b.iter(|| detect(black_box(&jpeg), Some("image/jpeg"), "a.jpg"))
    });
    group.bench_function("mp4", |b| {
        b.iter(|| detect(black_box(&mp4), None, "clip.mp4"))
    });
    group.bench_function("text-fallback", |b| {
        b.iter(|| detect(black_box(&text), Some("text/plain"), "notes.txt"))
    });
    group.finish();
}

fn hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    for size in [4096usize, 1 << 20] {
        let data = payload(MediaKind::Png, size as u64, 2);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("blake3-{size}"), |b| {
            b.iter(|| blake3::hash(black_box(&data)))
        });
    }
    group.finish();
}

fn multipart(c: &mut Criterion) {
    let mut body = Multipart::new();
    for index in 0..100 {
        let file = payload(MediaKind::Jpeg, 4096, index);
        body = body.file("file", &format!("f{index}.jpg"), "image/jpeg", &file);
    }
    let boundary = body.boundary().to_string();
    let (_, body) = body.finish();
    let body = Bytes::from(body);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("multipart");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("multer-100x4KiB", |b| {
        b.iter(|| {
            let stream =
                futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body.clone())));
            let mut parts = multer::Multipart::new(stream, boundary.clone());
            runtime.block_on(async {
                let mut bytes = 0usize;
                while let Some(mut field) = parts.next_field().await.expect("valid body") {
                    while let Some(chunk) = field.chunk().await.expect("valid part") {
                        bytes += chunk.len();
                    }
                }
                assert_eq!(bytes, 100 * 4096);
            })
        })
    });
    group.bench_function("rhinobox-100x4KiB", |b| {
        b.iter(|| {
            let mut parser = MultipartParser::new(boundary.as_bytes(), MultipartLimits::default());
            let mut bytes = 0usize;
            let mut fed = false;
            loop {
                match parser.next_event().expect("valid body") {
                    Some(Event::Data(data)) => bytes += data.len(),
                    Some(Event::Finished) => break,
                    Some(_) => {}
                    None if !fed => {
                        parser.push(black_box(&body));
                        fed = true;
                    }
                    None => parser.end(),
                }
            }
            assert_eq!(bytes, 100 * 4096);
        })
    });
    group.finish();
}

fn record(index: u64) -> FileRecord {
    let hash = blake3::hash(&index.to_le_bytes()).to_hex().to_string();
    FileRecord {
        path: format!("storage/images/jpg/{}_photo{index}.jpg", &hash[..12]),
        mime_type: "image/jpeg".into(),
        media_type: "images".into(),
        category: "images/jpg".into(),
        size: 245_680,
        original_name: format!("photo{index}.jpg"),
        comment: "summer 2024".into(),
        uploaded_at: "2026-01-15T10:30:00Z".into(),
        hash,
    }
}

fn journal(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    let entry = JournalEntry::Put(record(1));
    let mut line = Vec::with_capacity(512);
    group.bench_function("encode", |b| {
        b.iter(|| {
            line.clear();
            encode_line(black_box(&entry), &mut line);
        })
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, _, _) =
        Journal::open(&dir.path().join("journal.ndjson"), |_, _| {}).expect("journal");
    group.bench_function("append-1", |b| {
        b.iter(|| journal.append(black_box(&line)).expect("append"))
    });
    let mut hundred = Vec::new();
    for index in 0..100 {
        encode_line(&JournalEntry::Put(record(index)), &mut hundred);
    }
    group.throughput(Throughput::Elements(100));
    group.bench_function("append-100", |b| {
        b.iter(|| journal.append(black_box(&hundred)).expect("append"))
    });
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements((DEDUP_THREADS * DEDUP_OPS) as u64));
    let round = AtomicU64::new(0);
    group.bench_function(format!("claim-publish-get-{DEDUP_THREADS}-threads"), |b| {
        b.iter_custom(|iters| {
            let index = Arc::new(Index::new());
            let started = Instant::now();
            for _ in 0..iters {
                let base = round.fetch_add(1, Ordering::Relaxed);
                contend(&index, base);
            }
            started.elapsed()
        })
    });
    group.finish();
}

/// Each thread claims and publishes its own new hashes and looks up the others' —
/// half of the lookups hit another shard's fresh entries, as concurrent uploads do.
fn contend(index: &Arc<Index>, round: u64) {
    std::thread::scope(|scope| {
        for thread in 0..DEDUP_THREADS as u64 {
            let index = index.clone();
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                for op in 0..DEDUP_OPS as u64 {
                    let key = blake3::hash(&[round, thread, op].map(u64::to_le_bytes).concat());
                    let hash = *key.as_bytes();
                    match runtime.block_on(index.claim(&hash)) {
                        Claim::Claimed => {
                            index.publish(&hash, &record(op));
                        }
                        Claim::Existing(file, _lease) => {
                            black_box(file);
                        }
                    }
                    let other = blake3::hash(
                        &[round, (thread + 1) % DEDUP_THREADS as u64, op]
                            .map(u64::to_le_bytes)
                            .concat(),
                    );
                    black_box(index.get(other.as_bytes()));
                }
            });
        }
    });
}

/// A directory for one store bench, with the categorized subdirs made.
fn store_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join(".tmp")).expect("tmp dir");
    std::fs::create_dir_all(dir.join("images/jpg")).expect("category dir");
    dir
}

fn store(c: &mut Criterion) {
    let root = tempfile::Builder::new()
        .prefix("rhinobox-bench-store-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let data = payload(MediaKind::Jpeg, 4096, 3);
    let limits: Limits = Config::from_args(Args::parse_from(["rhinobox"]))
        .expect("default config")
        .limits;
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(STORE_FILES as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));

    let dir = store_dir(root.path(), "std");
    group.bench_function("std-loop-100x4KiB", |b| {
        b.iter(|| {
            for _ in 0..STORE_FILES {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let tmp = dir.join(format!(".tmp/{n}.tmp"));
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&tmp)
                    .expect("create");
                file.write_all(&data).expect("write");
                drop(file);
                std::fs::rename(&tmp, dir.join(format!("images/jpg/{n:012x}_f.jpg")))
                    .expect("rename");
            }
        })
    });

    for engine in ["threads", "uring"] {
        let dir = store_dir(root.path(), engine);
        let runtime =
            tokio_uring::Runtime::new(&tokio_uring::builder()).expect("tokio-uring runtime");
        let io = runtime.block_on(async {
            match engine {
                "uring" => CoreIo::uring(&limits),
                _ => CoreIo::threads(&limits),
            }
            .expect("io engine")
        });
        group.bench_function(
            format!("coreio-{engine}-100x4KiB-{STORE_IN_FLIGHT}-in-flight"),
            |b| {
                b.iter_batched(
                    || counter.fetch_add(STORE_FILES as u64, Ordering::Relaxed),
                    |first| runtime.block_on(store_async(&io, &dir, &data, first)),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

/// Creates, writes, finishes and renames 100 files, `STORE_IN_FLIGHT` at a time.
async fn store_async(io: &CoreIo, dir: &Path, data: &[u8], first: u64) {
    for wave in (0..STORE_FILES as u64)
        .collect::<Vec<_>>()
        .chunks(STORE_IN_FLIGHT)
    {
        let files = wave.iter().map(|&i| async move {
            let n = first + i;
            let tmp = dir.join(format!(".tmp/{n}.tmp"));
            let mut writer = io.create_new(tmp.clone());
            writer.write(data).await.expect("create and write");
            writer.finish().await.expect("finish");
            io.rename_noreplace(&tmp, &dir.join(format!("images/jpg/{n:012x}_f.jpg")))
                .await
                .expect("rename");
        });
        futures_util::future::join_all(files).await;
    }
}

criterion_group!(benches, sniff, hash, multipart, journal, dedup, store);
criterion_main!(benches);
