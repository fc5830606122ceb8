//! HTTP routing: method + path → handler; auth; access log and metrics for every request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::json;

use super::Shared;
use super::access_log::AccessEntry;
use super::parse_errors::ResponseGuard;
use crate::api::errors::{ApiError, Body, json_response};
use crate::api::files::{FileEndpoint, serve_file};
use crate::api::manage;
use crate::api::metrics::encode_scalar;
use crate::api::query::query_param;
use crate::ingest::IngestContext;
use crate::ingest::commit::Annotations;
use crate::ingest::request::{handle_post, handle_put};

/// Serves one request and records it in the access log and metrics.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: Rc<IngestContext>,
    peer: SocketAddr,
    request: Request<Incoming>,
    in_flight: ResponseGuard,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    // A panic is a bug, never a way for input to take the daemon down: it ends this request
    // with a 500 and closes its connection; every guard it held is dropped on the way.
    let routed = std::panic::AssertUnwindSafe(route(&shared, ctx, request))
        .catch_unwind()
        .await;
    let response = match routed {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(),
        Err(panic) => panic_response(&method, &path, panic.as_ref()),
    };
    logged(
        shared,
        peer,
        (method, path, query),
        started,
        response,
        Some(in_flight),
    )
}

/// The response with its access-log line and metrics attached (any front: the native
/// API, the S3 API). Logged when hyper drops the body: after the last byte is sent or the
/// client left, so a long download logs its real duration and the bytes actually sent.
pub fn logged(
    shared: Arc<Shared>,
    peer: SocketAddr,
    (method, path, query): (Method, String, Option<String>),
    started: Instant,
    response: Response<Body>,
    in_flight: Option<ResponseGuard>,
) -> Response<Body> {
    let record = RequestRecord {
        shared,
        peer,
        method,
        path,
        query,
        status: response.status().as_u16(),
        started,
        bytes_sent: 0,
        _in_flight: in_flight,
    };
    response.map(|inner| LoggedBody { inner, record }.boxed_unsync())
}

fn panic_response(
    method: &Method,
    path: &str,
    panic: &(dyn std::any::Any + Send),
) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    crate::log_line!("rhinobox: error: handler of {method} {path} panicked: {message}");
    let mut response =
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// One request's access-log line and metrics, written on drop.
struct RequestRecord {
    shared: Arc<Shared>,
    peer: SocketAddr,
    method: Method,
    path: String,
    query: Option<String>,
    status: u16,
    started: Instant,
    bytes_sent: u64,
    /// Tells the connection's parse-error rewriter that this response is ours (native
    /// connections only).
    _in_flight: Option<ResponseGuard>,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.shared
            .http_metrics
            .observe(self.status, elapsed.as_secs_f64());
        self.shared.access_log.record(&AccessEntry {
            peer: self.peer,
            method: self.method.as_str(),
            path: &self.path,
            query: self.query.as_deref(),
            status: self.status,
            bytes_sent: self.bytes_sent,
            millis: elapsed.as_secs_f64() * 1e3,
        });
    }
}

/// A response body that counts the bytes it yields for the access log.
struct LoggedBody {
    inner: Body,
    record: RequestRecord,
}

impl hyper::body::Body for LoggedBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.record.bytes_sent += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn authorized(shared: &Shared, request: &Request<Incoming>) -> bool {
    let Some(token) = &shared.config.api_token else {
        return true;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // RFC 9110 §11.1: the scheme name is case-insensitive.
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.as_bytes())
}

/// Compares in constant time: both sides are hashed to 32 bytes and `blake3::Hash`
/// equality is constant-time, so neither the matching prefix nor the length leaks.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    blake3::hash(a) == blake3::hash(b)
}

async fn route(
    shared: &Shared,
    ctx: Rc<IngestContext>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_string();
    // The page and its assets need no token: a browser cannot send one on navigation.
    if crate::web::is_page_path(&path) {
        let if_none_match = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        return Ok(crate::web::serve(request.method(), &path, if_none_match)
            .expect("a page path is served"));
    }
    if path != "/healthz" && !authorized(shared, &request) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
    }
    if shared.shutting_down.load(Ordering::Relaxed) && path.starts_with("/ingest/") {
        return Err(ApiError::overloaded("shutting down"));
    }
    let method = request.method().clone();
    match (path.as_str(), method) {
        ("/healthz", Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
        }
        ("/stats", Method::GET) => Ok(json_response(StatusCode::OK, &shared.stats_json())),
        ("/metrics", Method::GET) => Ok(metrics_response(shared)),
        ("/ingest/media", Method::POST) => {
            let value = handle_post(ctx, request).await?;
            Ok(json_response(StatusCode::OK, &value))
        }
        (p, Method::PUT) if p.starts_with("/ingest/media/") => {
            let raw_name = &p["/ingest/media/".len()..];
            let name = percent_encoding::percent_decode_str(raw_name)
                .decode_utf8_lossy()
                .into_owned();
            let annotations = Annotations {
                category_hint: query_param(&request, "category").unwrap_or_default(),
                comment: query_param(&request, "comment").unwrap_or_default(),
            };
            let value = handle_put(ctx, request, name, annotations).await?;
            Ok(json_response(StatusCode::OK, &value))
        }
        ("/files/download", Method::GET | Method::HEAD) => {
            serve_file(&ctx, &request, FileEndpoint::Download).await
        }
        ("/files/stream", Method::GET | Method::HEAD) => {
            serve_file(&ctx, &request, FileEndpoint::Stream).await
        }
        ("/files/metadata", Method::GET) => manage::metadata(&ctx, &request).await,
        ("/files/search", Method::GET) => {
            manage::search(shared.store.clone(), &shared.scans, &request).await
        }
        ("/files", Method::GET) => {
            manage::list(shared.store.clone(), &shared.scans, &request).await
        }
        ("/statistics", Method::GET) => manage::statistics(&shared.store).await,
        ("/files/download" | "/files/stream", _) => Ok(method_not_allowed("GET, HEAD")),
        ("/files/metadata" | "/files/search" | "/files" | "/statistics", _) => {
            Ok(method_not_allowed("GET"))
        }
        (p, Method::DELETE) if p.starts_with("/files/") => {
            manage::delete(ctx, &p["/files/".len()..]).await
        }
        (p, _) if p.starts_with("/files/") => Ok(method_not_allowed("DELETE")),
        ("/healthz", _) => Ok(method_not_allowed("GET, HEAD")),
        ("/stats" | "/metrics", _) => Ok(method_not_allowed("GET")),
        ("/ingest/media", _) => Ok(method_not_allowed("POST")),
        (p, _) if p.starts_with("/ingest/media/") => Ok(method_not_allowed("PUT")),
        _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    }
}

/// 405 with the `Allow` header RFC 9110 §15.5.6 asks for.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

fn metrics_response(shared: &Shared) -> Response<Body> {
    let counters = &shared.store.counters;
    let mut out = String::with_capacity(4096);
    let scalars = [
        (
            "rhinobox_files_ingested_total",
            "counter",
            "Files newly stored since start.",
            &counters.files_ingested_total,
        ),
        (
            "rhinobox_bytes_ingested_total",
            "counter",
            "Bytes newly stored since start.",
            &counters.bytes_ingested_total,
        ),
        (
            "rhinobox_duplicates_total",
            "counter",
            "Uploaded files that were already stored.",
            &counters.duplicates_total,
        ),
    ];
    for (name, kind, help, value) in scalars {
        encode_scalar(&mut out, name, kind, help, value.load(Ordering::Relaxed));
    }
    encode_scalar(
        &mut out,
        "rhinobox_fsync_batches_total",
        "counter",
        "Group-commit syncs run.",
        shared.store.group_commit.batches_total(),
    );
    encode_scalar(
        &mut out,
        "rhinobox_access_log_dropped_total",
        "counter",
        "Access log lines dropped because stderr was too slow.",
        shared.access_log.dropped_total.load(Ordering::Relaxed),
    );
    encode_scalar(
        &mut out,
        "rhinobox_jobs_in_flight",
        "gauge",
        "Files being received now (job slots taken).",
        shared.jobs_in_flight() as u64,
    );
    out.push_str(
        "# HELP rhinobox_queue_depth Connections handed to a core and not yet picked up.\n",
    );
    out.push_str("# TYPE rhinobox_queue_depth gauge\n");
    for (core, stats) in shared.cores.iter().enumerate() {
        let depth = stats.queue_len.load(Ordering::Relaxed);
        out.push_str(&format!(
            "rhinobox_queue_depth{{core=\"{core}\"}} {depth}\n"
        ));
    }
    shared.http_metrics.encode(&mut out);
    crate::api::metrics::encode_store_gauges(&mut out, &shared.store, shared.engine_name());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(crate::api::errors::full_body(out))
        .expect("static headers are valid")
}
