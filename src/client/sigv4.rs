//! AWS Signature Version 4 for the client side (the harness's S3 mode, the tests): signs
//! one request, sans IO. Header signing only, with the payload hash given by the caller
//! (`UNSIGNED-PAYLOAD` or the hex SHA-256 of the body); path-style, no query string
//! parameters beyond what the caller passes already encoded in canonical order.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The payload hash of a request whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The key pair and region requests are signed for. Its `Debug` leaves the secret out,
/// so that options printed into logs and JSON do not carry it.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<not shown>")
            .field("region", &self.region)
            .finish()
    }
}

/// What a request needs to be signed.
pub struct Signing<'a> {
    pub method: &'a str,
    /// The URI-encoded path (`/bucket/key`, each segment encoded, `/` kept).
    pub path: &'a str,
    /// The canonical query string (`a=1&b=2`, sorted and encoded), often empty.
    pub query: &'a str,
    pub host: &'a str,
    /// Headers beyond host, x-amz-date and x-amz-content-sha256 to sign, lowercase
    /// names, sorted by name.
    pub extra_headers: &'a [(&'a str, &'a str)],
    pub payload_hash: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

/// The headers to send: `x-amz-date`, `x-amz-content-sha256` and `authorization`.
pub fn sign(credentials: &Credentials, request: &Signing<'_>) -> [(String, String); 3] {
    let date = &request.amz_date[..8];
    let mut headers: Vec<(&str, &str)> = vec![
        ("host", request.host),
        ("x-amz-content-sha256", request.payload_hash),
        ("x-amz-date", request.amz_date),
    ];
    headers.extend_from_slice(request.extra_headers);
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let mut canonical = format!("{}\n{}\n{}\n", request.method, request.path, request.query);
    for (name, value) in &headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value.trim());
        canonical.push('\n');
    }
    let signed_headers = headers
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(";");
    canonical.push('\n');
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(request.payload_hash);
    let scope = format!("{date}/{}/s3/aws4_request", credentials.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        request.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [credentials.region.as_bytes(), b"s3", b"aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    [
        ("x-amz-date".into(), request.amz_date.into()),
        ("x-amz-content-sha256".into(), request.payload_hash.into()),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
                 Signature={signature}",
                credentials.access_key
            ),
        ),
    ]
}

/// `YYYYMMDDTHHMMSSZ` of a time.
pub fn amz_date(time: std::time::SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(time).to_string();
    // 2026-12-02T13:04:05Z → 20261202T130405Z
    text.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// A path segment URI-encoded as SigV4 wants it (unreserved characters kept).
pub fn encode_segment(segment: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, KEEP).to_string()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example for a signed GetObject (examplebucket, `/test.txt`,
    /// `Range: bytes=0-9`, 2013-05-24): the signature the S3 documentation gives.
    #[test]
    fn matches_the_aws_documentation_example() {
        let credentials = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        };
        let headers = sign(
            &credentials,
            &Signing {
                method: "GET",
                path: "/test.txt",
                query: "",
                host: "examplebucket.s3.amazonaws.com",
                extra_headers: &[("range", "bytes=0-9")],
                payload_hash: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                amz_date: "20130524T000000Z",
            },
        );
        assert_eq!(
            headers[2].1,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn dates_and_segments() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
        assert_eq!(encode_segment("a b+c~_.-"), "a%20b%2Bc~_.-");
    }
}
