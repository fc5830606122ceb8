//! Request bodies → files: multipart/form-data parts (POST) or one raw body (PUT).
//!
//! The body is a stream of chunks, counted against the upload limit (413) and bounded by
//! an idle timeout between chunks. multer splits the multipart stream; the
//! Content-Disposition of each part is decoded by [`super::naming`] (multer's own decoding
//! does not follow SPEC §3). `category` and `comment` apply to every file, wherever they
//! stand in the body, so they are only used at commit time, after the whole body is read.

use std::rc::Rc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};

use super::IngestContext;
use super::commit::{Annotations, IngestResponse, commit};
use super::naming::parse_disposition;
use super::receive::{ChunkSource, ReceivedFile, TmpFiles, receive_file};
use crate::api::errors::ApiError;

/// Why reading the body stopped early.
#[derive(Debug)]
enum BodyError {
    TooLarge,
    Stalled,
    Read(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("body too large"),
            BodyError::Stalled => f.write_str("body stalled"),
            BodyError::Read(e) => write!(f, "body read failed: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    fn into_api(self, ctx: &IngestContext) -> ApiError {
        match self {
            BodyError::TooLarge => ApiError::too_large(ctx.limits.upload_size_bytes_max),
            BodyError::Stalled => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body stalled for {} s",
                    ctx.limits.body_idle_timeout.as_secs()
                ),
            ),
            BodyError::Read(e) => ApiError::invalid_multipart(format!("body read failed: {e}")),
        }
    }
}

/// The request body as a stream of data chunks, limited in size and in idle time.
fn body_stream(
    body: Incoming,
    limit_bytes: u64,
    idle: std::time::Duration,
) -> impl Stream<Item = Result<Bytes, BodyError>> {
    let state = (body.into_data_stream(), 0u64, false);
    futures_util::stream::unfold(state, move |(mut stream, seen, failed)| async move {
        if failed {
            return None;
        }
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => Some((Err(BodyError::Stalled), (stream, seen, true))),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some((Err(BodyError::Read(e.to_string())), (stream, seen, true))),
            Ok(Some(Ok(chunk))) => {
                let seen = seen + chunk.len() as u64;
                if seen > limit_bytes {
                    Some((Err(BodyError::TooLarge), (stream, seen, true)))
                } else {
                    Some((Ok(chunk), (stream, seen, false)))
                }
            }
        }
    })
}

fn content_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn check_declared_length(ctx: &IngestContext, request: &Request<Incoming>) -> Result<(), ApiError> {
    match content_length(request) {
        Some(len) if len > ctx.limits.upload_size_bytes_max => {
            Err(ApiError::too_large(ctx.limits.upload_size_bytes_max))
        }
        _ => Ok(()),
    }
}

/// Maps a multer error, recovering our own body errors from inside it.
fn multipart_error(ctx: &IngestContext, error: multer::Error) -> ApiError {
    if let multer::Error::StreamReadFailed(inner) = &error
        && let Some(body) = inner.downcast_ref::<BodyError>()
    {
        let copy = match body {
            BodyError::TooLarge => BodyError::TooLarge,
            BodyError::Stalled => BodyError::Stalled,
            BodyError::Read(e) => BodyError::Read(e.clone()),
        };
        return copy.into_api(ctx);
    }
    ApiError::invalid_multipart(error)
}

struct FieldSource<'a, 'r> {
    field: &'a mut multer::Field<'r>,
    ctx: &'a IngestContext,
}

impl ChunkSource for FieldSource<'_, '_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        self.field
            .chunk()
            .await
            .map_err(|e| multipart_error(self.ctx, e))
    }
}

/// `POST /ingest/media`.
pub async fn handle_post(
    ctx: Rc<IngestContext>,
    request: Request<Incoming>,
) -> Result<IngestResponse, ApiError> {
    check_declared_length(&ctx, &request)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let boundary = multer::parse_boundary(&content_type).map_err(|_| {
        ApiError::invalid_multipart("Content-Type must be multipart/form-data with a boundary")
    })?;
    let stream = body_stream(
        request.into_body(),
        ctx.limits.upload_size_bytes_max,
        ctx.limits.body_idle_timeout,
    );
    let mut multipart = multer::Multipart::new(stream, boundary);

    let mut tmp_files = TmpFiles::new();
    let mut files: Vec<ReceivedFile> = Vec::new();
    let mut annotations = Annotations {
        category_hint: String::new(),
        comment: String::new(),
    };
    let mut parts = 0usize;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&ctx, e))?
    {
        parts += 1;
        if parts > ctx.limits.parts_per_request_max {
            return Err(ApiError::bad_request(format!(
                "too many parts: at most {} per request",
                ctx.limits.parts_per_request_max
            )));
        }
        let disposition = field
            .headers()
            .get(header::CONTENT_DISPOSITION)
            .map(|v| parse_disposition(v.as_bytes()))
            .unwrap_or_default();
        let name = disposition.name.clone().unwrap_or_default();
        match name.as_str() {
            "file" | "files" => {
                let original_name = disposition.filename.unwrap_or_default();
                if original_name.len() > ctx.limits.file_name_bytes_max {
                    return Err(ApiError::bad_request(format!(
                        "file name longer than {} bytes",
                        ctx.limits.file_name_bytes_max
                    )));
                }
                let part_type = field.content_type().map(|m| m.to_string());
                let mut source = FieldSource {
                    field: &mut field,
                    ctx: &ctx,
                };
                let file =
                    receive_file(&ctx, &mut source, original_name, part_type, &mut tmp_files)
                        .await?;
                files.push(file);
            }
            "category" => annotations.category_hint = read_text(&ctx, &mut field).await?,
            "comment" => annotations.comment = read_text(&ctx, &mut field).await?,
            _ => {
                while field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(&ctx, e))?
                    .is_some()
                {}
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::bad_request("no files provided"));
    }
    let stored = commit(ctx.clone(), files, annotations, tmp_files).await?;
    Ok(IngestResponse { stored })
}

async fn read_text(ctx: &IngestContext, field: &mut multer::Field<'_>) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(ctx, e))? {
        if bytes.len() + chunk.len() > ctx.limits.field_size_bytes_max {
            return Err(ApiError::bad_request(format!(
                "field value longer than {} bytes",
                ctx.limits.field_size_bytes_max
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

struct BodySource<S> {
    stream: S,
    ctx: Rc<IngestContext>,
}

impl<S: Stream<Item = Result<Bytes, BodyError>> + Unpin> ChunkSource for BodySource<S> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(BodyError::Read(e))) => {
                Err(ApiError::bad_request(format!("body read failed: {e}")))
            }
            Some(Err(e)) => Err(e.into_api(&self.ctx)),
        }
    }
}

/// `PUT /ingest/media/{filename}?category=&comment=`: the raw body is the file.
pub async fn handle_put(
    ctx: Rc<IngestContext>,
    request: Request<Incoming>,
    file_name: String,
    annotations: Annotations,
) -> Result<IngestResponse, ApiError> {
    check_declared_length(&ctx, &request)?;
    if file_name.len() > ctx.limits.file_name_bytes_max {
        return Err(ApiError::bad_request("file name too long"));
    }
    let part_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let stream = body_stream(
        request.into_body(),
        ctx.limits.upload_size_bytes_max,
        ctx.limits.body_idle_timeout,
    );
    let mut source = BodySource {
        stream: Box::pin(stream),
        ctx: ctx.clone(),
    };
    let mut tmp_files = TmpFiles::new();
    let file = receive_file(&ctx, &mut source, file_name, part_type, &mut tmp_files).await?;
    let stored = commit(ctx.clone(), vec![file], annotations, tmp_files).await?;
    Ok(IngestResponse { stored })
}
