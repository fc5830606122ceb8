//! Request bodies → files: multipart/form-data parts (POST) or one raw body (PUT).
//!
//! The body is read frame by frame, counted against the upload limit (413) and bounded by
//! an idle timeout between frames (408). [`super::multipart`] frames the form; the
//! Content-Disposition of each part is decoded by [`super::naming`]. `category` and
//! `comment` apply to every file, wherever they stand in the body, so they are only used
//! at commit time. The commit starts only once the parser says `Finished`: the final
//! boundary was seen *and* the body ended (all of Content-Length, or the chunked
//! terminator) — a body cut short after its final boundary stores nothing.
//!
//! Every limit on what a client sends outside file data (part heads, preamble, epilogue,
//! field values, names, part count) is enforced while parsing, before a job slot is taken
//! for the part that breaks it.

use std::rc::Rc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};

use super::IngestContext;
use super::commit::{Annotations, IngestResponse, commit};
use super::multipart::{Event, MultipartLimits, MultipartParser, boundary_of};
use super::naming::parse_disposition;
use super::receive::{ChunkSource, Destination, ReceivedFile, TmpFiles, receive_file};
use crate::api::errors::ApiError;

/// Parts handled between two voluntary yields: a request of many tiny parts, all in the
/// socket buffer already, must not keep the core from its other connections.
const PARTS_BETWEEN_YIELDS: usize = 32;

/// The request body, frame by frame, limited in size and in idle time.
pub struct BodyReader {
    body: Incoming,
    seen_bytes: u64,
    limit_bytes: u64,
    idle: std::time::Duration,
    ended: bool,
}

impl BodyReader {
    pub fn new(body: Incoming, ctx: &IngestContext) -> BodyReader {
        BodyReader {
            body,
            seen_bytes: 0,
            limit_bytes: ctx.limits.upload_size_bytes_max,
            idle: ctx.limits.body_idle_timeout,
            ended: false,
        }
    }

    /// The next data chunk; `None` at the end of the body. Cancel-safe: a dropped call
    /// loses no data (hyper's frame future holds none).
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("request body stalled for {} s", self.idle.as_secs()),
                    ));
                }
                Ok(None) => {
                    self.ended = true;
                    return Ok(None);
                }
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_request(format!("body read failed: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry no data: skip them.
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            self.seen_bytes += chunk.len() as u64;
            if self.seen_bytes > self.limit_bytes {
                return Err(ApiError::too_large(self.limit_bytes));
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }
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

/// A multipart body being parsed: the parser fed from the body reader.
struct Form {
    parser: MultipartParser,
    body: BodyReader,
}

impl Form {
    async fn next_event(&mut self) -> Result<Event, ApiError> {
        loop {
            if let Some(event) = self
                .parser
                .next_event()
                .map_err(ApiError::invalid_multipart)?
            {
                return Ok(event);
            }
            match self.body.next().await? {
                Some(chunk) => self.parser.push(&chunk),
                None => self.parser.end(),
            }
        }
    }

    /// The next piece of the current part; `None` at its end.
    async fn next_data(&mut self) -> Result<Option<Bytes>, ApiError> {
        match self.next_event().await? {
            Event::Data(data) => Ok(Some(data)),
            Event::PartEnd => Ok(None),
            other => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("multipart parser broke its order: {other:?} inside a part"),
            )),
        }
    }
}

struct PartSource<'a> {
    form: &'a mut Form,
}

impl ChunkSource for PartSource<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        self.form.next_data().await
    }
}

fn multipart_limits(ctx: &IngestContext) -> MultipartLimits {
    MultipartLimits {
        preamble_bytes_max: ctx.limits.multipart_preamble_bytes_max,
        part_head_bytes_max: ctx.limits.part_head_bytes_max,
        part_headers_max: ctx.limits.part_headers_max,
        epilogue_bytes_max: ctx.limits.multipart_preamble_bytes_max,
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
        .unwrap_or("");
    let boundary = boundary_of(content_type).ok_or_else(|| {
        ApiError::invalid_multipart("Content-Type must be multipart/form-data with a boundary")
    })?;
    let mut form = Form {
        parser: MultipartParser::new(&boundary, multipart_limits(&ctx)),
        body: BodyReader::new(request.into_body(), &ctx),
    };
    let mut tmp_files = TmpFiles::new(ctx.reaper.clone());
    let mut files: Vec<ReceivedFile> = Vec::new();
    let mut annotations = Annotations {
        category_hint: String::new(),
        comment: String::new(),
    };
    let mut parts = 0usize;
    loop {
        let head = match form.next_event().await? {
            Event::Part(head) => head,
            Event::Finished => break,
            other => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("multipart parser broke its order: {other:?} outside a part"),
                ));
            }
        };
        parts += 1;
        if parts > ctx.limits.parts_per_request_max {
            return Err(ApiError::bad_request(format!(
                "too many parts: at most {} per request",
                ctx.limits.parts_per_request_max
            )));
        }
        if parts.is_multiple_of(PARTS_BETWEEN_YIELDS) {
            tokio::task::yield_now().await;
        }
        let disposition = head
            .disposition
            .as_deref()
            .map(parse_disposition)
            .unwrap_or_default();
        match disposition.name.as_deref().unwrap_or("") {
            "file" | "files" => {
                let original_name = disposition.filename.unwrap_or_default();
                if original_name.len() > ctx.limits.file_name_bytes_max {
                    return Err(ApiError::bad_request(format!(
                        "file name longer than {} bytes",
                        ctx.limits.file_name_bytes_max
                    )));
                }
                let mut source = PartSource { form: &mut form };
                let file = receive_file(
                    &ctx,
                    &mut source,
                    original_name,
                    head.content_type,
                    &mut tmp_files,
                    &Destination::OwnTmp,
                )
                .await?;
                files.push(file);
            }
            "category" => annotations.category_hint = read_text(&ctx, &mut form).await?,
            "comment" => annotations.comment = read_text(&ctx, &mut form).await?,
            _ => while form.next_data().await?.is_some() {},
        }
    }
    if files.is_empty() {
        return Err(ApiError::bad_request("no files provided"));
    }
    let stored = commit(ctx.clone(), files, annotations, tmp_files).await?;
    Ok(IngestResponse { stored })
}

async fn read_text(ctx: &IngestContext, form: &mut Form) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = form.next_data().await? {
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

impl ChunkSource for BodyReader {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        self.next().await
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
    let mut body = BodyReader::new(request.into_body(), &ctx);
    let mut tmp_files = TmpFiles::new(ctx.reaper.clone());
    let file = receive_file(
        &ctx,
        &mut body,
        file_name,
        part_type,
        &mut tmp_files,
        &Destination::OwnTmp,
    )
    .await?;
    let stored = commit(ctx.clone(), vec![file], annotations, tmp_files).await?;
    Ok(IngestResponse { stored })
}
