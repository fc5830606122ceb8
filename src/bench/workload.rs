//! What one request carries: which files (media kind, size, seed), framed how, and what
//! the server must answer for each (BLAKE3 hash, duplicate or not).
//!
//! Files are a pure function of (run nonce, client, request, slot), so a duplicate is
//! made by naming a file of the same client's warm-up again: its bytes, and so its hash,
//! are the same. Warm-up files are never duplicates, so with a duplicate ratio of 50 %
//! exactly every other measured file is one. Requests are prepared before the clock
//! starts; a large single file stays a plain payload and is framed while it is sent,
//! so memory holds it once.

use crate::client::payload::{MediaKind, payload};
use crate::client::{Multipart, blake3_hex};

use super::target::Mode;

/// Single-file POST bodies at least this large are framed while sent, not copied.
const FRAME_WHILE_SENDING_BYTES_MIN: u64 = 1 << 20;

/// Kinds used for fixed-size files, in rotation: the common media a user uploads.
const ROTATION: [MediaKind; 12] = [
    MediaKind::Jpeg,
    MediaKind::Png,
    MediaKind::Mp4,
    MediaKind::Mp3,
    MediaKind::Gif,
    MediaKind::Webp,
    MediaKind::Wav,
    MediaKind::Pdf,
    MediaKind::Mov,
    MediaKind::Flac,
    MediaKind::Zip,
    MediaKind::Ogg,
];

/// File sizes of a workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sizes {
    Fixed(u64),
    /// A media library: half photos (32 KiB–1 MiB), 20 % documents (4–256 KiB), 15 %
    /// audio (1–8 MiB), 10 % video (4–32 MiB), 5 % archives (64 KiB–4 MiB), sizes
    /// log-uniform within each class; mean about 2 MiB.
    Media,
}

impl Sizes {
    /// A short label: `4KiB`, `256MiB`, `media`.
    pub fn label(self) -> String {
        match self {
            Sizes::Fixed(bytes) if bytes >= 1 << 20 && bytes % (1 << 20) == 0 => {
                format!("{}MiB", bytes >> 20)
            }
            Sizes::Fixed(bytes) if bytes >= 1 << 10 && bytes % (1 << 10) == 0 => {
                format!("{}KiB", bytes >> 10)
            }
            Sizes::Fixed(bytes) => format!("{bytes}B"),
            Sizes::Media => "media".into(),
        }
    }

    /// Mean file size in bytes (for sizing runs).
    pub fn mean_bytes(self) -> u64 {
        match self {
            Sizes::Fixed(bytes) => bytes,
            Sizes::Media => 2 << 20,
        }
    }
}

/// The shape of every request of a run.
#[derive(Clone, Debug)]
pub struct Workload {
    pub files_per_request: usize,
    pub sizes: Sizes,
    /// Share of measured files (0.0–1.0) that repeat a warm-up file of the same client.
    pub duplicate_ratio: f64,
    /// Distinguishes runs, so that files of one run never dedup against another's.
    pub nonce: u64,
    pub mode: Mode,
}

/// One file of a request.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub kind: MediaKind,
    pub size: u64,
    pub seed: u64,
    pub name: String,
}

/// What the server must answer for one file.
#[derive(Clone, Debug)]
pub struct Expected {
    pub hash: String,
    /// `Some(true)` for a planned duplicate, `Some(false)` for a new file.
    pub duplicate: Option<bool>,
}

/// A request body, ready to send.
pub enum Body {
    /// A whole multipart body: (Content-Type, bytes).
    Multipart(String, Vec<u8>),
    /// One file framed as multipart while it is sent.
    MultipartFramedLater(FileSpec, Vec<u8>),
    /// PUT and S3 PutObject: the raw file, sent to the endpoint prefix + `name`.
    Raw(String, Vec<u8>),
    /// S3 GetObject of the endpoint prefix + `name`: the file an `S3Put` run of the same
    /// workload (nonce, clients, requests) stored, which the answer must hold.
    Get(String),
}

/// A prepared request.
pub struct Prepared {
    pub body: Body,
    pub expected: Vec<Expected>,
    /// Sum of file sizes (not counting framing).
    pub file_bytes: u64,
}

impl Workload {
    /// The file in `slot` of request `request` of `client`; `warmup` requests are the
    /// first ones and never hold duplicates.
    pub fn file(&self, client: usize, request: usize, slot: usize, warmup: usize) -> FileSpec {
        if self.is_duplicate(request, slot, warmup) {
            let source_request = (request + slot) % warmup;
            return self.file(client, source_request, slot, warmup);
        }
        let ordinal = request * self.files_per_request + slot;
        let seed = mix(self.nonce, client as u64, request as u64, slot as u64);
        let (kind, size) = match self.sizes {
            Sizes::Fixed(size) => (ROTATION[ordinal % ROTATION.len()], size),
            Sizes::Media => media_pick(seed),
        };
        let size = size.max(kind.min_size());
        let name = format!(
            "b{:x}-c{client}-r{request}-s{slot}.{}",
            self.nonce & 0xffff_ffff,
            kind.expected_ext()
        );
        FileSpec {
            kind,
            size,
            seed,
            name,
        }
    }

    /// Whether the file in that position is a planned duplicate.
    fn is_duplicate(&self, request: usize, slot: usize, warmup: usize) -> bool {
        let ordinal = request * self.files_per_request + slot;
        // Spread evenly: the n-th file is one when floor(n·ratio) steps up there.
        let step = |n: usize| (n as f64 * self.duplicate_ratio).floor() as u64;
        request >= warmup && warmup > 0 && step(ordinal + 1) > step(ordinal)
    }

    /// Generates request `request` of `client` (payloads, framing, expected answers).
    pub fn prepare(&self, client: usize, request: usize, warmup: usize) -> Prepared {
        let files_per_request = match self.mode {
            Mode::Post => self.files_per_request,
            Mode::Put | Mode::S3Put | Mode::S3Get => 1,
        };
        let mut multipart = Multipart::new();
        let mut expected = Vec::with_capacity(files_per_request);
        let mut file_bytes = 0;
        for slot in 0..files_per_request {
            let spec = self.file(client, request, slot, warmup);
            let bytes = payload(spec.kind, spec.size, spec.seed);
            file_bytes += spec.size;
            expected.push(Expected {
                hash: blake3_hex(&bytes),
                duplicate: Some(self.is_duplicate(request, slot, warmup)),
            });
            let body = match self.mode {
                Mode::Put | Mode::S3Put => Body::Raw(spec.name.clone(), bytes),
                Mode::S3Get => Body::Get(spec.name.clone()),
                Mode::Post
                    if files_per_request == 1 && spec.size >= FRAME_WHILE_SENDING_BYTES_MIN =>
                {
                    Body::MultipartFramedLater(spec, bytes)
                }
                Mode::Post => {
                    multipart =
                        multipart.file("file", &spec.name, spec.kind.expected_mime(), &bytes);
                    continue;
                }
            };
            return Prepared {
                body,
                expected,
                file_bytes,
            };
        }
        let (content_type, body) = multipart.finish();
        Prepared {
            body: Body::Multipart(content_type, body),
            expected,
            file_bytes,
        }
    }
}

/// A run-unique nonce from the clock and the pid.
pub fn fresh_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix(nanos, std::process::id() as u64, 0, 0)
}

/// splitmix64 over the four words: distinct inputs give unrelated seeds.
fn mix(a: u64, b: u64, c: u64, d: u64) -> u64 {
    let mut z = a;
    for word in [b, c, d] {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(word);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// Kind and size of a file of the media mix, from its seed.
fn media_pick(seed: u64) -> (MediaKind, u64) {
    let class = seed % 100;
    let pick = |kinds: &[MediaKind]| kinds[(seed >> 8) as usize % kinds.len()];
    let (kind, low, high) = match class {
        0..50 => (
            pick(&[MediaKind::Jpeg, MediaKind::Png, MediaKind::Webp]),
            32 << 10,
            1 << 20,
        ),
        50..70 => (
            pick(&[MediaKind::Pdf, MediaKind::Docx, MediaKind::Text]),
            4 << 10,
            256 << 10,
        ),
        70..85 => (
            pick(&[MediaKind::Mp3, MediaKind::Flac, MediaKind::Wav]),
            1 << 20,
            8 << 20,
        ),
        85..95 => (
            pick(&[MediaKind::Mp4, MediaKind::Mov, MediaKind::Webm]),
            4 << 20,
            32 << 20,
        ),
        _ => (MediaKind::Zip, 64 << 10, 4 << 20),
    };
    // Log-uniform between low and high from 16 more bits of the seed.
    let unit = ((seed >> 16) & 0xffff) as f64 / 65535.0;
    let size = (low as f64 * (high as f64 / low as f64).powf(unit)) as u64;
    (kind, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(ratio: f64) -> Workload {
        Workload {
            files_per_request: 10,
            sizes: Sizes::Fixed(4096),
            duplicate_ratio: ratio,
            nonce: 7,
            mode: Mode::Post,
        }
    }

    /// Half the measured files of a 50 % run repeat warm-up files, byte for byte.
    #[test]
    fn duplicates_repeat_warmup_files() {
        let workload = workload(0.5);
        let warmup = 2;
        let warm_hashes: Vec<String> = (0..warmup)
            .flat_map(|r| workload.prepare(0, r, warmup).expected)
            .map(|e| e.hash)
            .collect();
        let measured = workload.prepare(0, 5, warmup);
        let planned = measured
            .expected
            .iter()
            .filter(|e| e.duplicate == Some(true))
            .count();
        assert_eq!(planned, 5);
        for expected in &measured.expected {
            let repeats = warm_hashes.contains(&expected.hash);
            assert_eq!(Some(repeats), expected.duplicate);
        }
    }

    /// Without duplicates every file of every client is distinct.
    #[test]
    fn files_are_distinct() {
        let workload = &workload(0.0);
        let mut hashes: Vec<String> = (0..2)
            .flat_map(|c| (0..3).flat_map(move |r| workload.prepare(c, r, 1).expected))
            .map(|e| e.hash)
            .collect();
        let total = hashes.len();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), total);
    }

    /// The media mix stays within its classes' bounds.
    #[test]
    fn media_sizes_in_bounds() {
        for seed in 0..1000u64 {
            let (_, size) = media_pick(mix(seed, 1, 2, 3));
            assert!((4 << 10..=32 << 20).contains(&size), "{size}");
        }
    }
}
