//! Media payloads for tests and benchmarks: a real magic header of the chosen kind (the
//! bytes the `infer` crate 0.22 recognises) followed by deterministic pseudo-random bytes.
//!
//! `payload(kind, size, seed)` is a pure function: the same arguments give the same bytes,
//! and a different seed gives a different body (and so a different hash). The tail comes
//! from xorshift64* so no `rand` crate is needed, and [`PayloadReader`] yields exactly the
//! same bytes piece by piece, so a 1 GiB upload can be generated while it is sent and
//! hashed on both sides without ever being held in memory. Text payloads are printable
//! ASCII that no sniffer takes for HTML, XML or a script. A size below the kind's header
//! length ([`MediaKind::min_size`]) is a programmer error and panics.

use std::io::{self, Read};

/// The kinds of payload the generator knows, each with the type the daemon must detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Jpeg,
    Png,
    Gif,
    Webp,
    Mp4,
    Mov,
    Mkv,
    Webm,
    Mp3,
    Wav,
    Flac,
    Ogg,
    Pdf,
    Zip,
    Docx,
    Xlsx,
    Pptx,
    Text,
}

impl MediaKind {
    /// Every kind, in declaration order.
    pub const ALL: [MediaKind; 18] = [
        MediaKind::Jpeg,
        MediaKind::Png,
        MediaKind::Gif,
        MediaKind::Webp,
        MediaKind::Mp4,
        MediaKind::Mov,
        MediaKind::Mkv,
        MediaKind::Webm,
        MediaKind::Mp3,
        MediaKind::Wav,
        MediaKind::Flac,
        MediaKind::Ogg,
        MediaKind::Pdf,
        MediaKind::Zip,
        MediaKind::Docx,
        MediaKind::Xlsx,
        MediaKind::Pptx,
        MediaKind::Text,
    ];

    /// The MIME type as `infer` names it (for text, which `infer` does not sniff, the
    /// type a client sends and the `.txt` extension imply).
    pub fn expected_mime(self) -> &'static str {
        match self {
            MediaKind::Jpeg => "image/jpeg",
            MediaKind::Png => "image/png",
            MediaKind::Gif => "image/gif",
            MediaKind::Webp => "image/webp",
            MediaKind::Mp4 => "video/mp4",
            MediaKind::Mov => "video/quicktime",
            MediaKind::Mkv => "video/x-matroska",
            MediaKind::Webm => "video/webm",
            MediaKind::Mp3 => "audio/mpeg",
            MediaKind::Wav => "audio/x-wav",
            MediaKind::Flac => "audio/x-flac",
            MediaKind::Ogg => "audio/ogg",
            MediaKind::Pdf => "application/pdf",
            MediaKind::Zip => "application/zip",
            MediaKind::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            MediaKind::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            MediaKind::Pptx => {
                "application/vnd.openxmlformats-officedocument.presentationml.presentation"
            }
            MediaKind::Text => "text/plain",
        }
    }

    /// The `media_type` directory the daemon must file this kind under.
    pub fn expected_media_type(self) -> &'static str {
        match self {
            MediaKind::Jpeg | MediaKind::Png | MediaKind::Gif | MediaKind::Webp => "images",
            MediaKind::Mp4 | MediaKind::Mov | MediaKind::Mkv | MediaKind::Webm => "videos",
            MediaKind::Mp3 | MediaKind::Wav | MediaKind::Flac | MediaKind::Ogg => "audio",
            MediaKind::Pdf | MediaKind::Docx | MediaKind::Text => "documents",
            MediaKind::Xlsx => "spreadsheets",
            MediaKind::Pptx => "presentations",
            MediaKind::Zip => "archives",
        }
    }

    /// The canonical extension (also the subtype directory).
    pub fn expected_ext(self) -> &'static str {
        match self {
            MediaKind::Jpeg => "jpg",
            MediaKind::Png => "png",
            MediaKind::Gif => "gif",
            MediaKind::Webp => "webp",
            MediaKind::Mp4 => "mp4",
            MediaKind::Mov => "mov",
            MediaKind::Mkv => "mkv",
            MediaKind::Webm => "webm",
            MediaKind::Mp3 => "mp3",
            MediaKind::Wav => "wav",
            MediaKind::Flac => "flac",
            MediaKind::Ogg => "ogg",
            MediaKind::Pdf => "pdf",
            MediaKind::Zip => "zip",
            MediaKind::Docx => "docx",
            MediaKind::Xlsx => "xlsx",
            MediaKind::Pptx => "pptx",
            MediaKind::Text => "txt",
        }
    }

    /// The smallest payload that still carries the whole header (Matroska's sniffer
    /// looks at the first 256 bytes and wants more than that).
    pub fn min_size(self) -> u64 {
        match self {
            MediaKind::Mkv | MediaKind::Webm => 257,
            _ => header(self, u64::MAX).len() as u64,
        }
    }
}

/// The whole payload in memory. Panics when `size < kind.min_size()`.
pub fn payload(kind: MediaKind, size: u64, seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size as usize);
    PayloadReader::new(kind, size, seed)
        .read_to_end(&mut bytes)
        .expect("generating a payload in memory cannot fail");
    bytes
}

/// BLAKE3 of `bytes`, as 64 lowercase hex digits.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Yields the same bytes as [`payload`] without holding them.
pub struct PayloadReader {
    header: Vec<u8>,
    text: bool,
    size: u64,
    position: u64,
    state: u64,
    word: [u8; 8],
    word_used: usize,
}

impl PayloadReader {
    /// A reader of `payload(kind, size, seed)`. Panics when `size < kind.min_size()`.
    pub fn new(kind: MediaKind, size: u64, seed: u64) -> PayloadReader {
        assert!(
            size >= kind.min_size(),
            "a {kind:?} payload needs at least {} bytes, {size} asked",
            kind.min_size()
        );
        PayloadReader {
            header: header(kind, size),
            text: kind == MediaKind::Text,
            size,
            position: 0,
            state: splitmix64(seed) | 1,
            word: [0; 8],
            word_used: 8,
        }
    }

    /// Total length of the payload.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn next_word(&mut self) -> [u8; 8] {
        // xorshift64*: fast, full period over non-zero states, good enough bytes.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        if self.text { word.map(printable) } else { word }
    }

    fn fill_random(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() && self.word_used < 8 {
            out[filled] = self.word[self.word_used];
            self.word_used += 1;
            filled += 1;
        }
        let mut words = out[filled..].chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&self.next_word());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word();
            let rest_len = rest.len();
            rest.copy_from_slice(&self.word[..rest_len]);
            self.word_used = rest_len;
        }
    }
}

impl Read for PayloadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let left = self.size - self.position;
        let want = (out.len() as u64).min(left) as usize;
        let out = &mut out[..want];
        let mut written = 0;
        if (self.position as usize) < self.header.len() {
            let header_rest = &self.header[self.position as usize..];
            written = header_rest.len().min(out.len());
            out[..written].copy_from_slice(&header_rest[..written]);
        }
        self.fill_random(&mut out[written..]);
        self.position += want as u64;
        Ok(want)
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a random byte to lowercase letters, spaces and newlines.
fn printable(byte: u8) -> u8 {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz    \n.";
    ALPHABET[(byte & 31) as usize]
}

/// The magic header of `kind` for a payload of `size` bytes (RIFF sizes depend on it).
fn header(kind: MediaKind, size: u64) -> Vec<u8> {
    let riff_size = (size.saturating_sub(8).min(u32::MAX as u64) as u32).to_le_bytes();
    match kind {
        MediaKind::Jpeg => b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            .to_vec(),
        MediaKind::Png => b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x10\x00\x00\x00\x10\
\x08\x02\x00\x00\x00\x90\x91\x68\x36"
            .to_vec(),
        MediaKind::Gif => b"GIF89a\x10\x00\x10\x00\x00\x00\x00".to_vec(),
        MediaKind::Webp => [b"RIFF".as_slice(), &riff_size, b"WEBPVP8 "].concat(),
        MediaKind::Mp4 => b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec(),
        MediaKind::Mov => b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ".to_vec(),
        MediaKind::Mkv => ebml(b"\x42\x82\x88matroska"),
        MediaKind::Webm => ebml(b"\x42\x82\x84webm"),
        MediaKind::Mp3 => b"ID3\x04\x00\x00\x00\x00\x00\x00\xFF\xFB\x90\x64".to_vec(),
        MediaKind::Wav => [
            b"RIFF".as_slice(),
            &riff_size,
            b"WAVEfmt \x10\x00\x00\x00\x01\x00\x02\x00\x44\xAC\x00\x00\x10\xB1\x02\x00\x04\x00\x10\x00data",
        ]
        .concat(),
        MediaKind::Flac => b"fLaC\x00\x00\x00\x22".to_vec(),
        // Page header (26 bytes), one segment, then the Vorbis identification packet at
        // offset 28 (where the Opus check looks for `OpusHead`).
        MediaKind::Ogg => b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\
\x00\x00\x00\x00\x00\x00\x00\x00\x01\x1e\x01vorbis"
            .to_vec(),
        MediaKind::Pdf => b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec(),
        MediaKind::Zip => zip_local_header(b"data.bin"),
        // infer reads the first entry's name at offset 0x1E: `word/`, `xl/`, `ppt/`.
        MediaKind::Docx => zip_local_header(b"word/document.xml"),
        MediaKind::Xlsx => zip_local_header(b"xl/workbook.xml"),
        MediaKind::Pptx => zip_local_header(b"ppt/presentation.xml"),
        MediaKind::Text => b"rhinobox plain text payload\n".to_vec(),
    }
}

/// An EBML header whose DocType element is `doc_type` (within the first 256 bytes).
fn ebml(doc_type: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x1A\x45\xDF\xA3\xA3\x42\x86\x81\x01\x42\xF7\x81\x01\x42\xF2\x81\x04\
\x42\xF3\x81\x08"
        .to_vec();
    bytes.extend_from_slice(doc_type);
    bytes.extend_from_slice(b"\x42\x87\x81\x04\x42\x85\x81\x02");
    bytes
}

/// A ZIP local file header (30 bytes) followed by the entry name.
fn zip_local_header(name: &[u8]) -> Vec<u8> {
    let mut bytes = b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    bytes.extend_from_slice(&[0; 12]); // crc32, compressed and uncompressed sizes
    bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&[0, 0]); // extra field length
    bytes.extend_from_slice(name);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `infer` detects every kind as the MIME type the daemon is expected to report,
    /// with the expected extension; text is recognised as nothing (the daemon falls back
    /// to the part's Content-Type).
    #[test]
    fn infer_recognises_every_kind() {
        for kind in MediaKind::ALL {
            for size in [kind.min_size(), 4096, 100_003] {
                let bytes = payload(kind, size, 42);
                let detected = infer::get(&bytes);
                if kind == MediaKind::Text {
                    assert!(detected.is_none(), "text sniffed as {detected:?}");
                    continue;
                }
                let detected = detected.unwrap_or_else(|| panic!("{kind:?} not recognised"));
                assert_eq!(
                    detected.mime_type(),
                    kind.expected_mime(),
                    "{kind:?} size {size}"
                );
                assert_eq!(detected.extension(), kind.expected_ext(), "{kind:?}");
            }
        }
    }

    /// Same arguments, same bytes; another seed, other bytes; the size is exact.
    #[test]
    fn payloads_are_deterministic_and_exact() {
        for kind in MediaKind::ALL {
            let a = payload(kind, 10_000, 1);
            assert_eq!(a.len(), 10_000);
            assert_eq!(a, payload(kind, 10_000, 1));
            assert_ne!(blake3_hex(&a), blake3_hex(&payload(kind, 10_000, 2)));
        }
    }

    /// Reading in odd-sized pieces yields the same bytes as the whole payload.
    #[test]
    fn reader_in_pieces_equals_payload() {
        let whole = payload(MediaKind::Mp4, 1_000_123, 9);
        let mut reader = PayloadReader::new(MediaKind::Mp4, 1_000_123, 9);
        let mut pieces = Vec::new();
        let mut buffer = [0u8; 1021];
        for step in 1.. {
            let want = (step * 7) % buffer.len() + 1;
            let got = reader.read(&mut buffer[..want]).unwrap();
            if got == 0 {
                break;
            }
            pieces.extend_from_slice(&buffer[..got]);
        }
        assert_eq!(pieces, whole);
    }

    /// Text payloads are printable ASCII.
    #[test]
    fn text_is_printable() {
        let text = payload(MediaKind::Text, 5000, 3);
        assert!(
            text.iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
        );
    }

    /// A payload shorter than its header is refused.
    #[test]
    #[should_panic(expected = "needs at least")]
    fn too_small_panics() {
        payload(MediaKind::Mkv, 10, 0);
    }

    /// The hex digest is BLAKE3's.
    #[test]
    fn blake3_hex_matches_known_vector() {
        assert_eq!(
            blake3_hex(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
