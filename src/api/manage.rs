//! Managing stored files: metadata, delete, list, search and statistics.
//!
//! Every answer comes from the in-memory index (no directory walk on a request): metadata
//! is a hash lookup, listings and searches read the index's newest-first view, statistics
//! read the per-media-type totals and the counters since start-up.
//!
//! `DELETE` calls the store's delete protocol (`store::protocol`).
//!
//! Directories are never removed: the ingest path remembers the directories it created.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::api::errors::{ApiError, Body, json_response};
use crate::api::files::{check_path, lookup_hash};
use crate::api::query::query_param;
use crate::api::scans::{ScanPool, contains_ignore_case};
use crate::ingest::IngestContext;
use crate::store::Store;
use crate::store::index::{StoredFile, parse_hash};

/// Files per listing page when `limit` is not given.
pub const LIST_LIMIT_DEFAULT: usize = 50;
/// Most files per listing page or search answer: bounds the size of one response.
pub const LIST_LIMIT_MAX: usize = 1000;

/// `GET /files/metadata?hash=` (or `?path=`): the stored record.
pub async fn metadata(
    ctx: &IngestContext,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if let Some(cluster) = &ctx.store.cluster {
        let located = crate::api::files::cluster_lookup(ctx, cluster, request).await?;
        return Ok(json_response(StatusCode::OK, &located.record));
    }
    let file = match (query_param(request, "hash"), query_param(request, "path")) {
        (Some(hash), None) => lookup_hash(ctx, &hash)?,
        (None, Some(path)) => {
            check_path(&path)?;
            ctx.store
                .metadata
                .index
                .get_by_path(&path)
                .ok_or_else(|| ApiError::not_found(format!("no stored file at {path}")))?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either hash or path, not both"));
        }
        (None, None) => return Err(ApiError::bad_request("missing query parameter hash")),
    };
    Ok(json_response(StatusCode::OK, &record_json(&file)))
}

fn record_json(file: &StoredFile) -> Value {
    serde_json::to_value(file.record()).expect("records serialize")
}

/// `DELETE /files/{hash}`: the store's delete protocol, run as its own task so that a
/// client that disconnects cannot stop it half way.
pub async fn delete(ctx: Rc<IngestContext>, hex: &str) -> Result<Response<Body>, ApiError> {
    let hash = parse_hash(hex).ok_or_else(|| {
        ApiError::bad_request("invalid hash: expected 64 hexadecimal digits (BLAKE3)")
    })?;
    let task = tokio::task::spawn_local(async move { ctx.store.delete(&ctx.io, &hash).await });
    let deleted = task.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("delete failed: {e}"),
        )
    })??;
    let record =
        deleted.ok_or_else(|| ApiError::not_found(format!("no stored file with hash {hex}")))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deleted": record.hash, "path": record.path}),
    ))
}

/// A positive integer query parameter; absent → `default`, 0 or garbage → 400.
fn positive_param(
    request: &Request<Incoming>,
    name: &str,
    default: usize,
) -> Result<usize, ApiError> {
    let Some(value) = query_param(request, name) else {
        return Ok(default);
    };
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let parsed = if digits {
        // Digits beyond usize still mean "a very large number".
        Some(value.parse::<usize>().unwrap_or(usize::MAX))
    } else {
        None
    };
    match parsed {
        Some(n) if n > 0 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "invalid {name} {value:?}: expected a positive integer"
        ))),
    }
}

/// A filter value; empty counts as absent.
fn filter_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    query_param(request, name).filter(|v| !v.is_empty())
}

/// Whether `category` is `prefix` or lies below it (`images/jpg` matches
/// `images/jpg/vacation`, not `images/jpgx`).
pub fn category_matches(category: &str, prefix: &str) -> bool {
    category
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `GET /files?media_type=&category=&page=&limit=`: newest first, one page. The pass over
/// the index and the JSON run on a scan thread (`api::scans`).
pub async fn list(
    store: Arc<Store>,
    scans: &ScanPool,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let page = positive_param(request, "page", 1)?;
    let limit = positive_param(request, "limit", LIST_LIMIT_DEFAULT)?.min(LIST_LIMIT_MAX);
    let media_type = filter_param(request, "media_type");
    let category =
        filter_param(request, "category").map(|c| c.trim_matches('/').to_ascii_lowercase());
    let offset = (page - 1).saturating_mul(limit);
    if let Some(cluster) = &store.cluster {
        let filter = crate::cluster::metadata::Filter {
            media_type,
            category,
            ..Default::default()
        };
        let result = cluster_page(cluster, filter, offset, limit).await?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"files": result.files, "page": page, "limit": limit, "total": result.total}),
        ));
    }
    let body = scans
        .run(move || {
            let result = if media_type.is_none() && category.is_none() {
                store.metadata.index.page_all_newest_first(offset, limit)
            } else if let (Some(m), None) = (media_type.as_deref(), category.as_deref()) {
                // The total is known per media type: the pass ends with the page.
                let total = store.metadata.index.files_of_media_type(m);
                let keep = |file: &StoredFile| file.media_type() == m;
                store
                    .metadata
                    .index
                    .page_newest_first_counted(keep, offset, limit, total)
            } else {
                let keep = |file: &StoredFile| {
                    media_type.as_deref().is_none_or(|m| file.media_type() == m)
                        && category
                            .as_deref()
                            .is_none_or(|c| category_matches(file.category(), c))
                };
                store.metadata.index.page_newest_first(keep, offset, limit)
            };
            let files: Vec<Value> = result.files.iter().map(|f| record_json(f)).collect();
            json!({"files": files, "page": page, "limit": limit, "total": result.total})
        })
        .await?;
    Ok(json_response(StatusCode::OK, &body))
}

/// The filters of a search, parsed.
struct SearchFilter {
    name: Option<String>,
    ext: Option<String>,
    media_type: Option<String>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
}

impl SearchFilter {
    fn parse(request: &Request<Incoming>) -> Result<SearchFilter, ApiError> {
        let time = |name: &str, end_of_day: bool| -> Result<Option<SystemTime>, ApiError> {
            let Some(value) = filter_param(request, name) else {
                return Ok(None);
            };
            parse_time(&value, end_of_day).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid {name} {value:?}: expected RFC 3339 or YYYY-MM-DD"
                ))
            })
        };
        Ok(SearchFilter {
            name: filter_param(request, "name").map(|n| n.to_lowercase()),
            ext: filter_param(request, "ext")
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty()),
            media_type: filter_param(request, "media_type"),
            from: time("from", false)?,
            to: time("to", true)?,
        })
    }

    /// The same filter for PostgreSQL. Record times are whole seconds, so `from` rounds
    /// up and `to` rounds down to a second without changing what matches.
    fn for_cluster(&self) -> crate::cluster::metadata::Filter {
        let seconds = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| (d.as_secs() as i64, d.subsec_nanos() > 0))
                .unwrap_or((0, false))
        };
        crate::cluster::metadata::Filter {
            media_type: self.media_type.clone(),
            category: None,
            name: self.name.clone(),
            ext: self.ext.clone(),
            from_s: self.from.map(|t| {
                let (s, fraction) = seconds(t);
                s + i64::from(fraction)
            }),
            to_s: self.to.map(|t| seconds(t).0),
        }
    }

    fn matches(&self, file: &StoredFile) -> bool {
        if self
            .media_type
            .as_deref()
            .is_some_and(|m| file.media_type() != m)
        {
            return false;
        }
        if let Some(ext) = &self.ext
            && !file.ext().eq_ignore_ascii_case(ext)
        {
            return false;
        }
        if let Some(name) = &self.name
            && !contains_ignore_case(file.original_name(), name)
        {
            return false;
        }
        if self.from.is_some() || self.to.is_some() {
            let uploaded = file.uploaded_at_time();
            if self.from.is_some_and(|from| uploaded < from)
                || self.to.is_some_and(|to| uploaded > to)
            {
                return false;
            }
        }
        true
    }
}

/// RFC 3339 (`Z` or a numeric offset, fractions allowed) or `YYYY-MM-DD`; a bare date as
/// the end of a range means the end of that day (inclusive). Parsed by jiff, which
/// validates every field (no slicing of the input by hand: no panic on any input).
pub fn parse_time(value: &str, end_of_day: bool) -> Option<SystemTime> {
    let value = value.trim();
    let is_date = value.len() == 10 && value.bytes().filter(|b| *b == b'-').count() == 2;
    if is_date {
        let date: jiff::civil::Date = value.parse().ok()?;
        let start = date
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        let start = SystemTime::try_from(start).ok()?;
        return Some(if end_of_day {
            start + Duration::from_secs(86_400) - Duration::from_nanos(1)
        } else {
            start
        });
    }
    // RFC 3339 needs the `T` (or `t`) between date and time and a `Z` or numeric offset.
    if !matches!(value.as_bytes().get(10), Some(b'T' | b't')) {
        return None;
    }
    let timestamp: jiff::Timestamp = value.parse().ok()?;
    SystemTime::try_from(timestamp).ok()
}

/// `GET /files/search?name=&ext=&media_type=&from=&to=`: newest first, at most
/// [`LIST_LIMIT_MAX`] files (or `limit`), and the total number of matches. Runs on a scan
/// thread (`api::scans`).
pub async fn search(
    store: Arc<Store>,
    scans: &ScanPool,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let filter = SearchFilter::parse(request)?;
    let limit = positive_param(request, "limit", LIST_LIMIT_MAX)?.min(LIST_LIMIT_MAX);
    if let Some(cluster) = &store.cluster {
        let result = cluster_page(cluster, filter.for_cluster(), 0, limit).await?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"files": result.files, "total": result.total}),
        ));
    }
    let body = scans
        .run(move || {
            let result =
                store
                    .metadata
                    .index
                    .page_newest_first(|file| filter.matches(file), 0, limit);
            let files: Vec<Value> = result.files.iter().map(|f| record_json(f)).collect();
            json!({"files": files, "total": result.total})
        })
        .await?;
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /statistics`: what is stored now, and duplicates since start-up. In cluster mode
/// the totals are the whole cluster's (PostgreSQL), the duplicates this node's.
pub async fn statistics(store: &Store) -> Result<Response<Body>, ApiError> {
    let totals: Vec<(String, u64, u64)> = match &store.cluster {
        Some(cluster) => {
            let cluster_ = cluster.clone();
            cluster
                .run(async move { Ok(cluster_.metadata.totals().await?) })
                .await
                .map_err(ApiError::from_cluster)?
        }
        None => store
            .metadata
            .index
            .totals()
            .into_iter()
            .map(|(media_type, t)| (media_type, t.files, t.bytes))
            .collect(),
    };
    let files: u64 = totals.iter().map(|t| t.1).sum();
    let bytes: u64 = totals.iter().map(|t| t.2).sum();
    let by_media_type: serde_json::Map<String, Value> = totals
        .into_iter()
        .map(|(media_type, files, bytes)| (media_type, json!({"files": files, "bytes": bytes})))
        .collect();
    let counters = &store.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "files": files,
            "bytes": bytes,
            "duplicates": load(&counters.duplicates_total),
            "bytes_deduplicated": load(&counters.bytes_deduplicated_total),
            "by_media_type": by_media_type,
        }),
    ))
}

/// Cluster mode: one page from PostgreSQL (see `cluster::metadata` for the indexes).
async fn cluster_page(
    cluster: &Arc<crate::cluster::Cluster>,
    filter: crate::cluster::metadata::Filter,
    offset: usize,
    limit: usize,
) -> Result<crate::cluster::metadata::Page, ApiError> {
    let cluster_ = cluster.clone();
    cluster
        .run(async move {
            Ok(cluster_
                .metadata
                .page(&filter, offset as u64, limit as u64)
                .await?)
        })
        .await
        .map_err(ApiError::from_cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A category filter matches itself and what lies below it at a `/` boundary only.
    #[test]
    fn category_prefix_at_boundary() {
        assert!(category_matches("images/jpg/vacation", "images/jpg"));
        assert!(category_matches("images/jpg", "images/jpg"));
        assert!(category_matches("images/jpg", "images"));
        assert!(!category_matches("images/jpgx", "images/jpg"));
        assert!(!category_matches("images", "images/jpg"));
    }

    /// Dates, UTC timestamps and offsets parse; a bare `to` date covers the whole day.
    #[test]
    fn time_forms() {
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert_eq!(
            parse_time("2026-01-15", false),
            Some(t("2026-01-15T00:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-01-15", true),
            Some(t("2026-01-16T00:00:00Z") - Duration::from_nanos(1))
        );
        assert_eq!(
            parse_time("2026-01-15T10:30:00Z", false),
            Some(t("2026-01-15T10:30:00Z"))
        );
        assert_eq!(
            parse_time("2026-01-15T12:30:00+02:00", false),
            Some(t("2026-01-15T10:30:00Z"))
        );
        assert_eq!(
            parse_time("2026-01-15T08:30:00.5-02:00", false),
            Some(t("2026-01-15T10:30:00.5Z"))
        );
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-01-15T10:30:00",
            "2026-1-5",
            "",
            // Once a panic (a byte slice inside a UTF-8 character): a search that must be a 400.
            "2026-01-15T1234567\u{e9}12345",
            "2026-01-15T10:30:00\u{e9}0:00",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}T\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(parse_time(bad, false), None, "{bad:?}");
        }
    }
}
