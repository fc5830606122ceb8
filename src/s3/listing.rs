//! One page of an S3 listing (ListObjects v1 and v2): keys in byte order after a start
//! key, under a prefix, with keys that share a part up to the delimiter rolled into one
//! common prefix — computed in one pass over the keys in any order, holding at most
//! `max_keys + 1` entries (a bounded ordered map), never the whole key set.
//!
//! Cost: one pass over every stored key per page (O(n log max_keys)). The index keeps no
//! key order of its own today; a sorted key index is the step that makes deep listings
//! of millions of keys cheap.

use std::collections::BTreeMap;

/// The largest page S3 serves, and ours.
pub const MAX_KEYS_MAX: usize = 1000;

/// What a page asks for.
pub struct PageRequest<'a> {
    pub prefix: &'a str,
    /// Empty: no roll-up.
    pub delimiter: &'a str,
    /// Entries strictly after this key (a marker, start-after or continuation token).
    pub after: &'a str,
    pub max_keys: usize,
}

/// One page being collected; `T` is what a key carries (size, time, ETag).
pub struct PageBuilder<'a, T> {
    request: PageRequest<'a>,
    /// Key or common prefix → the key's value (`None` for a common prefix).
    entries: BTreeMap<String, Option<T>>,
}

/// A collected page, in key order.
pub struct Page<T> {
    pub keys: Vec<(String, T)>,
    pub common_prefixes: Vec<String>,
    /// More entries follow; the next page starts after `last`.
    pub truncated: bool,
    /// The last key or common prefix of this page.
    pub last: Option<String>,
}

impl<'a, T> PageBuilder<'a, T> {
    pub fn new(request: PageRequest<'a>) -> PageBuilder<'a, T> {
        PageBuilder {
            request,
            entries: BTreeMap::new(),
        }
    }

    /// Offers one key; `value` is called only when the key makes it onto the page.
    pub fn offer(&mut self, key: &str, value: impl FnOnce() -> T) {
        let request = &self.request;
        if request.max_keys == 0 || !key.starts_with(request.prefix) {
            return;
        }
        let rolled_up = match request.delimiter {
            "" => None,
            delimiter => key[request.prefix.len()..]
                .find(delimiter)
                .map(|at| &key[..request.prefix.len() + at + delimiter.len()]),
        };
        let entry = rolled_up.unwrap_or(key);
        if entry <= request.after {
            return;
        }
        // Full and this entry sorts after the last kept one: it cannot be on the page.
        if self.entries.len() > request.max_keys
            && let Some((last, _)) = self.entries.last_key_value()
            && entry >= last.as_str()
        {
            return;
        }
        match rolled_up {
            Some(common) => {
                if !self.entries.contains_key(common) {
                    self.entries.insert(common.to_string(), None);
                }
            }
            None => {
                self.entries.insert(key.to_string(), Some(value()));
            }
        }
        if self.entries.len() > request.max_keys + 1 {
            self.entries.pop_last();
        }
    }

    /// With keys offered in ascending order, no later key can make it onto the page.
    pub fn is_full(&self) -> bool {
        self.entries.len() > self.request.max_keys
    }

    /// The first key after every key that rolls up into `common` (a common prefix ending
    /// in the delimiter): its last character plus one. Keys offered in order can skip to
    /// it. `None` when that character has no successor.
    pub fn past_common_prefix(common: &str) -> Option<String> {
        let last = common.chars().next_back()?;
        let next = char::from_u32(last as u32 + 1)
            .or_else(|| char::from_u32(0xE000).filter(|_| last as u32 == 0xD7FF))?;
        let mut past = common[..common.len() - last.len_utf8()].to_string();
        past.push(next);
        Some(past)
    }

    /// The common prefix `key` rolls up into, if any.
    pub fn rolled_up<'k>(&self, key: &'k str) -> Option<&'k str> {
        let request = &self.request;
        if request.delimiter.is_empty() || !key.starts_with(request.prefix) {
            return None;
        }
        key[request.prefix.len()..]
            .find(request.delimiter)
            .map(|at| &key[..request.prefix.len() + at + request.delimiter.len()])
    }

    pub fn finish(self) -> Page<T> {
        let truncated = self.entries.len() > self.request.max_keys;
        let mut page = Page {
            keys: Vec::new(),
            common_prefixes: Vec::new(),
            truncated,
            last: None,
        };
        for (entry, value) in self.entries.into_iter().take(self.request.max_keys) {
            page.last = Some(entry.clone());
            match value {
                Some(value) => page.keys.push((entry, value)),
                None => page.common_prefixes.push(entry),
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 7] = [
        "videos/mp4/b.mp4",
        "images/png/a.png",
        "images/jpg/2.jpg",
        "images/jpg/1.jpg",
        "audio/mpeg/x.mp3",
        "images/jpg/trip/3.jpg",
        "images/jpeg.txt",
    ];

    fn page(prefix: &str, delimiter: &str, after: &str, max_keys: usize) -> Page<usize> {
        let mut builder = PageBuilder::new(PageRequest {
            prefix,
            delimiter,
            after,
            max_keys,
        });
        for (i, key) in KEYS.iter().enumerate() {
            builder.offer(key, || i);
        }
        builder.finish()
    }

    fn keys(page: &Page<usize>) -> Vec<&str> {
        page.keys.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Without a delimiter: every key in byte order, paged by `after`.
    #[test]
    fn flat_listing_pages_in_byte_order() {
        let first = page("", "", "", 3);
        assert_eq!(
            keys(&first),
            ["audio/mpeg/x.mp3", "images/jpeg.txt", "images/jpg/1.jpg"]
        );
        assert!(first.truncated);
        let second = page("", "", first.last.as_deref().unwrap(), 3);
        assert_eq!(
            keys(&second),
            [
                "images/jpg/2.jpg",
                "images/jpg/trip/3.jpg",
                "images/png/a.png"
            ]
        );
        assert!(second.truncated);
        let third = page("", "", second.last.as_deref().unwrap(), 3);
        assert_eq!(keys(&third), ["videos/mp4/b.mp4"]);
        assert!(!third.truncated);
    }

    /// With a delimiter: keys below the next `/` roll up into one common prefix, which
    /// counts once towards max-keys and is skipped as a whole on the next page.
    #[test]
    fn delimiter_rolls_keys_into_common_prefixes() {
        let top = page("", "/", "", 1000);
        assert!(top.keys.is_empty());
        assert_eq!(top.common_prefixes, ["audio/", "images/", "videos/"]);
        let images = page("images/", "/", "", 1000);
        assert_eq!(keys(&images), ["images/jpeg.txt"]);
        assert_eq!(images.common_prefixes, ["images/jpg/", "images/png/"]);
        let first = page("images/", "/", "", 2);
        assert_eq!(keys(&first), ["images/jpeg.txt"]);
        assert_eq!(first.common_prefixes, ["images/jpg/"]);
        assert!(first.truncated);
        let rest = page("images/", "/", first.last.as_deref().unwrap(), 2);
        assert!(rest.keys.is_empty());
        assert_eq!(rest.common_prefixes, ["images/png/"]);
        assert!(!rest.truncated);
    }

    /// A prefix that is not a directory boundary, and max-keys 0.
    #[test]
    fn partial_prefix_and_empty_page() {
        assert_eq!(
            keys(&page("images/jp", "", "", 10)),
            [
                "images/jpeg.txt",
                "images/jpg/1.jpg",
                "images/jpg/2.jpg",
                "images/jpg/trip/3.jpg"
            ]
        );
        let empty = page("", "", "", 0);
        assert!(empty.keys.is_empty() && !empty.truncated);
    }
}
