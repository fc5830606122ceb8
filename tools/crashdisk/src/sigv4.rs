//! AWS Signature Version 4, header form, for the S3 load: signs one path-style request
//! with the payload hash `UNSIGNED-PAYLOAD` (the daemon accepts it; the bytes are checked
//! by BLAKE3 after the restart anyway). Sans IO; the daemon's own signer is not used, as
//! this workspace does not depend on the daemon crate.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The payload hash of a request whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The key pair and region requests are signed for.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// What a request needs to be signed.
pub struct Signing<'a> {
    pub method: &'a str,
    /// The URI-encoded path (`/bucket/key`, each segment encoded, `/` kept).
    pub path: &'a str,
    /// The canonical query string (`a=1&b=2`, sorted and encoded), often empty.
    pub query: &'a str,
    pub host: &'a str,
    /// Headers to sign beyond host, x-amz-date and x-amz-content-sha256: lowercase names.
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
        canonical.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let signed_headers: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    let signed_headers = signed_headers.join(";");
    canonical.push_str(&format!("\n{signed_headers}\n{}", request.payload_hash));
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

/// `YYYYMMDDTHHMMSSZ` (UTC) of a time.
pub fn amz_date(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A path segment URI-encoded as SigV4 wants it (unreserved characters kept).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
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

    /// AWS's published example of a signed GetObject (examplebucket, `/test.txt`,
    /// `Range: bytes=0-9`, 2013-05-24): the signature the S3 documentation gives, the same
    /// example the daemon's own signer is tested against.
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

    /// The date of the example above, a leap day and the last second of a century year.
    #[test]
    fn formats_utc_dates() {
        let at = |s: u64| amz_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(1_369_353_600), "20130524T000000Z");
        assert_eq!(at(951_782_400 + 3661), "20000229T010101Z");
        assert_eq!(at(978_307_199), "20001231T235959Z");
        assert_eq!(at(0), "19700101T000000Z");
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_segment("a b/ü"), "a%20b%2F%C3%BC");
    }
}
