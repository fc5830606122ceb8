//! The daemon's S3 API as the load and the checks use it: signed path-style requests on
//! one bucket, over the plain HTTP client (`http.rs`), each signed with
//! `UNSIGNED-PAYLOAD` (see `sigv4.rs`).

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::http::{self, Reply};
use crate::sigv4::{self, Credentials, Signing, UNSIGNED_PAYLOAD};

/// The one bucket the load writes into.
pub const BUCKET: &str = "crash";
/// The key pair the daemon is started with (`--s3-access-key`, `--s3-secret-key`).
pub const ACCESS_KEY: &str = "crashdisk";
pub const SECRET_KEY: &str = "crashdisk-s3-secret";
/// The daemon's default region.
const REGION: &str = "us-east-1";

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    credentials: Credentials,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            credentials: Credentials {
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
                region: REGION.into(),
            },
        }
    }

    /// One signed request: `path` is already encoded, `query` canonical (sorted, encoded).
    fn request(&self, method: &str, path: &str, query: &str, body: &[u8]) -> Result<Reply, String> {
        let host = self.addr.to_string();
        let amz_date = sigv4::amz_date(SystemTime::now());
        let signed = sigv4::sign(
            &self.credentials,
            &Signing {
                method,
                path,
                query,
                host: &host,
                extra_headers: &[],
                payload_hash: UNSIGNED_PAYLOAD,
                amz_date: &amz_date,
            },
        );
        let headers: Vec<(&str, &str)> = signed
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let target = match query {
            "" => path.to_string(),
            q => format!("{path}?{q}"),
        };
        http::request_with(self.addr, method, &target, &headers, body).map_err(|e| e.to_string())
    }

    pub fn create_bucket(&self) -> Result<Reply, String> {
        self.request("PUT", &format!("/{BUCKET}"), "", b"")
    }

    pub fn head_bucket(&self) -> Result<Reply, String> {
        self.request("HEAD", &format!("/{BUCKET}"), "", b"")
    }

    pub fn put_object(&self, key: &str, bytes: &[u8]) -> Result<Reply, String> {
        self.request("PUT", &object_path(key), "", bytes)
    }

    pub fn get_object(&self, key: &str) -> Result<Reply, String> {
        self.request("GET", &object_path(key), "", b"")
    }

    pub fn delete_object(&self, key: &str) -> Result<Reply, String> {
        self.request("DELETE", &object_path(key), "", b"")
    }

    /// CreateMultipartUpload: the upload id, or why there is none.
    pub fn create_multipart(&self, key: &str) -> Result<String, String> {
        let reply = self.request("POST", &object_path(key), "uploads=", b"")?;
        let text = String::from_utf8_lossy(&reply.body);
        match (reply.status, xml_value(&text, "UploadId")) {
            (200, Some(id)) => Ok(id.to_string()),
            (status, _) => Err(format!("HTTP {status}: {}", short(&text))),
        }
    }

    /// UploadPart: the part's ETag (quoted, as received), or why there is none.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        bytes: &[u8],
    ) -> Result<String, String> {
        let query = format!(
            "partNumber={number}&uploadId={}",
            sigv4::encode_segment(upload_id)
        );
        let reply = self.request("PUT", &object_path(key), &query, bytes)?;
        match (reply.status, reply.header("etag")) {
            (200, Some(etag)) => Ok(etag.to_string()),
            (status, _) => Err(format!(
                "HTTP {status}: {}",
                short(&String::from_utf8_lossy(&reply.body))
            )),
        }
    }

    /// CompleteMultipartUpload with the parts `(number, ETag)` in order. The reply counts
    /// as an acknowledgement only when it is a 200 with a `CompleteMultipartUploadResult`
    /// body (S3 may report an error in a 200 reply).
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<Reply, String> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (number, etag) in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let query = format!("uploadId={}", sigv4::encode_segment(upload_id));
        self.request("POST", &object_path(key), &query, body.as_bytes())
    }
}

/// `/BUCKET/key`, each segment of the key encoded.
pub fn object_path(key: &str) -> String {
    let segments: Vec<String> = key.split('/').map(sigv4::encode_segment).collect();
    format!("/{BUCKET}/{}", segments.join("/"))
}

/// The text of the first `<tag>…</tag>` of an XML body.
pub fn xml_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let from = text.find(&open)? + open.len();
    let to = text[from..].find(&format!("</{tag}>"))? + from;
    Some(&text[from..to])
}

/// At most 200 bytes of a reply, for a message.
pub fn short(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_xml() {
        assert_eq!(object_path("d1/k 2.obj"), "/crash/d1/k%202.obj");
        let xml = "<Error><Code>NoSuchKey</Code><Message>m</Message></Error>";
        assert_eq!(xml_value(xml, "Code"), Some("NoSuchKey"));
        assert_eq!(xml_value(xml, "UploadId"), None);
    }
}
