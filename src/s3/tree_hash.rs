//! The BLAKE3 of a multipart object from its parts, without reading the object again.
//!
//! BLAKE3 is a tree over 1 KiB chunks whose left subtrees are powers of two. When every
//! part but the last has the same size `S`, a power of two of at least 1 KiB (8 MiB, the
//! aws-cli/boto3 default, is), part `n` starts at `(n-1)·S` and is a whole subtree of the
//! object's tree; its chaining value can be computed while the part is received (a second
//! hasher told its input offset), and Complete merges the values in the tree's shape.
//! The last part, smaller or not, is a subtree too (every split above it falls on a
//! multiple of `S`). Otherwise — part sizes not a power of two (s3cmd's 15 MiB), parts
//! missing from the numbering — Complete hashes the assembled bytes as it copies them.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// A part of `size` bytes can be a whole subtree at offset `(n-1)·size`.
pub fn is_subtree_size(size: u64) -> bool {
    size >= blake3::CHUNK_LEN as u64 && size.is_power_of_two()
}

/// The hasher of part `number` (from 1) of `size` bytes as a subtree, when it can be one.
pub fn part_hasher(number: i32, size: u64) -> Option<(u64, blake3::Hasher)> {
    if number < 1 || !is_subtree_size(size) {
        return None;
    }
    let offset = (number as u64 - 1).checked_mul(size)?;
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    Some((offset, hasher))
}

/// The chaining value of bytes at `offset` (a multiple of a power-of-two subtree size).
pub fn subtree_value(hasher: &blake3::Hasher) -> ChainingValue {
    hasher.finalize_non_root()
}

/// The root hash of an object of `cvs.len() ≥ 2` parts, all of `part_size` bytes but the
/// last, of `total` bytes in all (the last part non-empty).
pub fn combine(cvs: &[ChainingValue], part_size: u64, total: u64) -> blake3::Hash {
    assert!(cvs.len() >= 2, "one part is hashed whole");
    let left = left_subtree_len(total);
    let k = (left / part_size) as usize;
    let l = node(&cvs[..k], part_size, left);
    let r = node(&cvs[k..], part_size, total - left);
    merge_subtrees_root(&l, &r, Mode::Hash)
}

fn node(cvs: &[ChainingValue], part_size: u64, len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let k = (left / part_size) as usize;
    let l = node(&cvs[..k], part_size, left);
    let r = node(&cvs[k..], part_size, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every part count and last-part size gives the hash of the whole.
    #[test]
    fn combined_parts_hash_as_the_whole() {
        for part_size in [1024u64, 4096] {
            for parts in 2..=9usize {
                for last in [
                    1usize,
                    1000,
                    1024,
                    part_size as usize - 1,
                    part_size as usize,
                ] {
                    let mut whole = Vec::new();
                    let mut cvs = Vec::new();
                    for n in 1..=parts {
                        let size = if n == parts { last } else { part_size as usize };
                        let data = bytes(size, n as u8);
                        let (_, mut hasher) = part_hasher(n as i32, part_size).unwrap();
                        hasher.update(&data);
                        cvs.push(subtree_value(&hasher));
                        whole.extend_from_slice(&data);
                    }
                    assert_eq!(
                        combine(&cvs, part_size, whole.len() as u64),
                        blake3::hash(&whole),
                        "part size {part_size}, {parts} parts, last {last}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_powers_of_two_from_a_chunk() {
        assert!(is_subtree_size(8 << 20));
        assert!(!is_subtree_size(5 << 20));
        assert!(!is_subtree_size(15 << 20));
        assert!(!is_subtree_size(512));
        assert!(part_hasher(0, 1024).is_none());
    }
}
