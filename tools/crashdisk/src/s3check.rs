//! The S3 invariants checked after every restart, against the S3 ledger and GetObject:
//!
//! - the bucket exists once its CreateBucket was acknowledged;
//! - every key holds what its last acknowledged request left (PutObject or
//!   CompleteMultipartUpload: exactly those bytes, BLAKE3-compared; DeleteObject: 404
//!   NoSuchKey), or, when a request on that key was unanswered at the cut, what that
//!   request would have left — the old state or the new, nothing else;
//! - no key is ever served with bytes that no request sent to it (a partial or torn
//!   object), acknowledged or not, in every durability mode;
//! - `none` durability: a lost bucket, lost puts and keys back at an earlier state are
//!   counted, not failed (the contract allows them).
//!
//! Strays under `storage/.objects/` are found by `rhinobox verify` (clean or a violation)
//! and by the stray count, which learns here which hashes keys serve.

use std::net::SocketAddr;

use crate::load::Ledger;
use crate::s3::{self, Client};
use crate::s3load::{Content, KeyState, S3Ledger};

#[derive(Default, Debug)]
pub struct S3Findings {
    pub violations: Vec<String>,
    pub bucket_present: bool,
    pub keys_checked: usize,
    pub acked_present: usize,
    pub acked_deletes_gone: usize,
    /// Keys with a request unanswered at the cut: found in its new state / in the old.
    pub in_flight_landed: usize,
    pub in_flight_not_landed: usize,
    /// `none` durability only: acknowledged state lost, or an earlier state back.
    pub lost_allowed: usize,
    pub returned_allowed: usize,
    /// What each key holds now; `None` when it cannot be told (a violation was reported).
    pub observed: Vec<Option<Option<Content>>>,
    /// The BLAKE3 of everything a key serves now.
    pub present_hashes: Vec<[u8; 32]>,
}

/// What a GetObject found.
enum Found {
    Absent,
    Bytes([u8; 32], usize),
    Error(String),
}

fn get(client: &Client, key: &str, bucket_present: bool) -> Found {
    let reply = match client.get_object(key) {
        Ok(reply) => reply,
        Err(e) => return Found::Error(e),
    };
    let text = || String::from_utf8_lossy(&reply.body).into_owned();
    match reply.status {
        200 => Found::Bytes(*blake3::hash(&reply.body).as_bytes(), reply.body.len()),
        404 => match s3::xml_value(&text(), "Code") {
            Some("NoSuchKey") => Found::Absent,
            Some("NoSuchBucket") if !bucket_present => Found::Absent,
            _ => Found::Error(format!("HTTP 404: {}", s3::short(&text()))),
        },
        status => Found::Error(format!("HTTP {status}: {}", s3::short(&text()))),
    }
}

/// Checks the bucket and every key ever sent. `strict`: durability `batch`.
pub fn check(ledger: &Ledger, addr: Option<SocketAddr>, strict: bool) -> S3Findings {
    let s3 = &ledger.s3;
    let mut f = S3Findings {
        observed: s3.keys.iter().map(|k| Some(k.acked)).collect(),
        ..S3Findings::default()
    };
    let Some(addr) = addr else {
        return f;
    };
    let client = Client::new(addr);
    f.bucket_present = match client.head_bucket() {
        Ok(r) if r.status == 200 => true,
        Ok(r) if r.status == 404 => false,
        Ok(r) => {
            f.violations
                .push(format!("s3 HeadBucket {}: HTTP {}", s3::BUCKET, r.status));
            true
        }
        Err(e) => {
            f.violations
                .push(format!("s3 HeadBucket {}: {e}", s3::BUCKET));
            true
        }
    };
    if s3.bucket_acked && !f.bucket_present {
        if strict {
            f.violations.push(format!(
                "s3 bucket {}: acknowledged CreateBucket LOST (404)",
                s3::BUCKET
            ));
        } else {
            f.lost_allowed += 1;
        }
    }
    if !s3.bucket_acked {
        return f;
    }
    for (k, key) in s3.keys.iter().enumerate() {
        if key.retired || (key.history.is_empty() && key.maybe.is_none()) {
            continue;
        }
        f.keys_checked += 1;
        let name = S3Ledger::key_name(k);
        let found = get(&client, &name, f.bucket_present);
        f.observed[k] = judge(s3, key, &name, &found, strict, &mut f);
        if let Found::Bytes(hash, _) = found {
            f.present_hashes.push(hash);
        }
    }
    f
}

/// The verdict on one key: what it holds now (`None`: cannot tell), counting and
/// reporting into `f`.
fn judge(
    s3: &S3Ledger,
    key: &KeyState,
    name: &str,
    found: &Found,
    strict: bool,
    f: &mut S3Findings,
) -> Option<Option<Content>> {
    let expected = expectation(s3, key);
    let in_flight = key.maybe;
    let holds = |state: Option<Content>, hash: &[u8; 32]| {
        state.and_then(|c| s3.hash(c)).as_ref() == Some(hash)
    };
    match found {
        Found::Error(e) => {
            f.violations.push(format!(
                "s3 key {name}: GetObject failed ({e}); expected {expected}"
            ));
            None
        }
        Found::Absent if key.acked.is_none() => {
            match in_flight {
                Some(Some(_)) => f.in_flight_not_landed += 1,
                Some(None) => f.in_flight_landed += 1,
                None if key.acked_delete => f.acked_deletes_gone += 1,
                None => {}
            }
            Some(None)
        }
        Found::Absent if in_flight == Some(None) => {
            f.in_flight_landed += 1;
            Some(None)
        }
        Found::Absent => {
            if strict {
                f.violations.push(format!(
                    "s3 key {name}: acknowledged put LOST (404 NoSuchKey); expected {expected}"
                ));
            } else {
                f.lost_allowed += 1;
            }
            Some(None)
        }
        Found::Bytes(hash, _) if holds(key.acked, hash) => {
            match in_flight {
                Some(_) => f.in_flight_not_landed += 1,
                None => f.acked_present += 1,
            }
            Some(key.acked)
        }
        Found::Bytes(hash, _) if in_flight.is_some_and(|s| holds(s, hash)) => {
            f.in_flight_landed += 1;
            in_flight
        }
        Found::Bytes(hash, size) => {
            let earlier = key.history.iter().find(|c| holds(Some(**c), hash));
            match earlier {
                Some(c) if !strict => {
                    f.returned_allowed += 1;
                    Some(Some(*c))
                }
                Some(c) => {
                    let what = if key.acked.is_none() && key.acked_delete {
                        "acknowledged DeleteObject, key still served"
                    } else {
                        "acknowledged put overwritten by an earlier one"
                    };
                    f.violations.push(format!(
                        "s3 key {name}: {what}: holds {}; expected {expected}",
                        c.describe()
                    ));
                    Some(Some(*c))
                }
                None => {
                    let hex = blake3::Hash::from_bytes(*hash).to_hex();
                    f.violations.push(format!(
                        "s3 key {name}: served WRONG bytes ({size} B, blake3 {}…), no request \
                         sent them; expected {expected}",
                        &hex[..16]
                    ));
                    None
                }
            }
        }
    }
}

/// `native item 7 (4096 B, 1a2b3c4d5e6f)`, `absent (acknowledged DeleteObject)`, with the
/// in-flight alternative.
fn expectation(s3: &S3Ledger, key: &KeyState) -> String {
    let state = |state: Option<Content>| match state {
        None => "absent".to_string(),
        Some(c) => {
            let hex = s3
                .hash(c)
                .map(|h| blake3::Hash::from_bytes(h).to_hex()[..12].to_string())
                .unwrap_or_default();
            format!("{} ({hex})", c.describe())
        }
    };
    let mut text = state(key.acked);
    if key.acked.is_none() {
        text.push_str(match key.acked_delete {
            true => " (acknowledged DeleteObject)",
            false => " (nothing acknowledged)",
        });
    }
    if let Some(maybe) = key.maybe {
        text.push_str(&format!(", or {} (in flight at the cut)", state(maybe)));
    }
    text
}

/// ` [s3: native item 7 under d2/k7.obj (acked), …]` for a finding line whose path is a
/// blob (`storage/.objects/<hh>/<hash>`) of a content the S3 load sent; empty if not.
pub fn ledger_note(
    file_name: &str,
    ledger: &Ledger,
    observed: &[Option<Option<Content>>],
) -> String {
    let s3 = &ledger.s3;
    let Some(content) = s3.hashes.iter().find_map(|(c, h)| {
        (blake3::Hash::from_bytes(*h).to_hex().as_str() == file_name).then_some(*c)
    }) else {
        return String::new();
    };
    let mut keys = Vec::new();
    for (k, key) in s3.keys.iter().enumerate() {
        let sent = key.history.iter().any(|c| s3.hash(*c) == s3.hash(content));
        if !sent || keys.len() >= 3 {
            continue;
        }
        let acked = key.acked.is_some_and(|c| s3.hash(c) == s3.hash(content));
        let now = observed.get(k).copied().flatten().flatten();
        let served = now.is_some_and(|c| s3.hash(c) == s3.hash(content));
        keys.push(format!(
            "{} ({}, served before the stop: {})",
            S3Ledger::key_name(k),
            if acked { "acked" } else { "not acked now" },
            if served { "yes" } else { "no" }
        ));
    }
    format!(" [s3: {} under {}]", content.describe(), keys.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Content = Content::Own(1);
    const NEW: Content = Content::Native(7);

    fn ledger() -> S3Ledger {
        let mut s3 = S3Ledger::new();
        s3.hashes.insert(OLD, [1; 32]);
        s3.hashes.insert(NEW, [2; 32]);
        s3
    }

    fn key(acked: Option<Content>, maybe: Option<Option<Content>>) -> KeyState {
        KeyState {
            acked,
            maybe,
            history: vec![OLD, NEW],
            ..KeyState::default()
        }
    }

    /// The verdict and the findings of one key found in `found`.
    fn verdict(
        key: &KeyState,
        found: Found,
        strict: bool,
    ) -> (Option<Option<Content>>, S3Findings) {
        let mut f = S3Findings::default();
        let held = judge(&ledger(), key, "d0/k0.obj", &found, strict, &mut f);
        (held, f)
    }

    /// An acknowledged put must be served; its loss is a violation under `batch` only.
    #[test]
    fn acknowledged_put_is_served_or_lost() {
        let k = key(Some(NEW), None);
        let (held, f) = verdict(&k, Found::Bytes([2; 32], 9), true);
        assert_eq!(
            (held, f.acked_present, f.violations.len()),
            (Some(Some(NEW)), 1, 0)
        );
        let (held, f) = verdict(&k, Found::Absent, true);
        assert_eq!(held, Some(None));
        assert!(
            f.violations[0].contains("acknowledged put LOST"),
            "{:?}",
            f.violations
        );
        let (_, f) = verdict(&k, Found::Absent, false);
        assert_eq!((f.lost_allowed, f.violations.len()), (1, 0));
    }

    /// A key overwritten by a request in flight at the cut holds the old or the new object,
    /// never nothing and never other bytes.
    #[test]
    fn in_flight_overwrite_is_old_or_new() {
        let k = key(Some(OLD), Some(Some(NEW)));
        let (held, f) = verdict(&k, Found::Bytes([1; 32], 9), true);
        assert_eq!((held, f.in_flight_not_landed), (Some(Some(OLD)), 1));
        let (held, f) = verdict(&k, Found::Bytes([2; 32], 9), true);
        assert_eq!((held, f.in_flight_landed), (Some(Some(NEW)), 1));
        let (_, f) = verdict(&k, Found::Absent, true);
        assert_eq!(f.violations.len(), 1);
        for strict in [true, false] {
            let (held, f) = verdict(&k, Found::Bytes([3; 32], 9), strict);
            assert_eq!(held, None);
            assert!(
                f.violations[0].contains("WRONG bytes"),
                "{:?}",
                f.violations
            );
        }
    }

    /// An acknowledged delete is 404; the object back is a violation under `batch`.
    #[test]
    fn acknowledged_delete_stays_gone() {
        let mut k = key(None, None);
        k.acked_delete = true;
        let (held, f) = verdict(&k, Found::Absent, true);
        assert_eq!((held, f.acked_deletes_gone), (Some(None), 1));
        let (_, f) = verdict(&k, Found::Bytes([2; 32], 9), true);
        assert!(
            f.violations[0].contains("still served"),
            "{:?}",
            f.violations
        );
        let (held, f) = verdict(&k, Found::Bytes([2; 32], 9), false);
        assert_eq!((held, f.returned_allowed), (Some(Some(NEW)), 1));
    }

    /// A first put in flight: the key is absent or holds it; an error is a violation.
    #[test]
    fn in_flight_first_put_is_all_or_nothing() {
        let k = key(None, Some(Some(NEW)));
        let (held, f) = verdict(&k, Found::Absent, true);
        assert_eq!((held, f.in_flight_not_landed), (Some(None), 1));
        let (held, f) = verdict(&k, Found::Bytes([2; 32], 9), true);
        assert_eq!((held, f.in_flight_landed), (Some(Some(NEW)), 1));
        let (held, f) = verdict(&k, Found::Error("HTTP 500".into()), true);
        assert_eq!((held, f.violations.len()), (None, 1));
    }
}
