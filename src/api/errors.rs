//! Errors as the API returns them: `{"error": "<message>"}` with a fitting status.
//!
//! Every operating error of a request maps to one [`ApiError`]; the status code is chosen
//! where the error is raised, the JSON shape in one place here.

use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{Response, StatusCode, header};

/// The response body type of every handler: boxed, `Send` but not `Sync` (streams from
/// io_uring files are fed through a channel by a task on the serving core).
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_S: u64 = 1;

/// The challenge of every 401: a Bearer token (`Authorization: Bearer <token>`).
pub const WWW_AUTHENTICATE_BEARER: &str = "Bearer realm=\"rhinobox\"";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn invalid_multipart(detail: impl std::fmt::Display) -> ApiError {
        ApiError::bad_request(format!("invalid multipart payload: {detail}"))
    }

    pub fn too_large(limit_bytes: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body exceeds the limit of {} MiB",
                limit_bytes / (1024 * 1024)
            ),
        )
    }

    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// Maps a file-system error: a full disk is 507, a bounded wait for an io buffer that
    /// ran out 503 (with Retry-After), anything else 500.
    pub fn storage(context: &str, error: &io::Error) -> ApiError {
        let status = match error.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StatusCode::INSUFFICIENT_STORAGE,
            // A bounded wait that ran out, or a cluster engine that does not answer.
            _ if matches!(
                error.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::NotConnected
            ) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, format!("{context}: {error}"))
    }

    /// A store operation that failed: [`ApiError::storage`] of what it was doing.
    pub fn from_store(error: crate::store::StoreError) -> ApiError {
        ApiError::storage(error.context, &error.error)
    }

    /// A cluster engine that does not answer is 503 (with Retry-After), a refusal 500.
    pub fn from_cluster(error: crate::cluster::ClusterError) -> ApiError {
        match error {
            crate::cluster::ClusterError::Unavailable(why) => ApiError::overloaded(why),
            crate::cluster::ClusterError::Failed(why) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why)
            }
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.message });
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_AFTER_S),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the scheme the client must use (RFC 6750).
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(WWW_AUTHENTICATE_BEARER),
            );
        }
        response
    }
}

/// A complete in-memory body.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).expect("response values always serialize");
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full_body(bytes))
        .expect("static headers are valid")
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> ApiError {
        ApiError::from_store(error)
    }
}
