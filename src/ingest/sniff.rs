//! MIME detection: content first (infer), then the part's Content-Type, then the extension.
//!
//! Output is the MIME type, the media type (one of [`MEDIA_TYPES`]) and the canonical
//! extension that names the subtype directory and the stored file's extension.

/// Every media type a file can be filed under.
pub const MEDIA_TYPES: [&str; 9] = [
    "images",
    "videos",
    "audio",
    "documents",
    "spreadsheets",
    "presentations",
    "archives",
    "code",
    "other",
];

/// Bytes of the file's head kept for sniffing (infer looks at most this far).
pub const SNIFF_BYTES: usize = 8192;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub mime_type: String,
    pub media_type: &'static str,
    pub ext: String,
}

/// Known extensions: (extension, MIME type, media type). Used when content says nothing.
const BY_EXTENSION: &[(&str, &str, &str)] = &[
    ("txt", "text/plain", "documents"),
    ("md", "text/markdown", "documents"),
    ("rtf", "application/rtf", "documents"),
    ("doc", "application/msword", "documents"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "documents",
    ),
    (
        "odt",
        "application/vnd.oasis.opendocument.text",
        "documents",
    ),
    ("pdf", "application/pdf", "documents"),
    ("csv", "text/csv", "spreadsheets"),
    ("tsv", "text/tab-separated-values", "spreadsheets"),
    ("xls", "application/vnd.ms-excel", "spreadsheets"),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "spreadsheets",
    ),
    (
        "ods",
        "application/vnd.oasis.opendocument.spreadsheet",
        "spreadsheets",
    ),
    ("ppt", "application/vnd.ms-powerpoint", "presentations"),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "presentations",
    ),
    (
        "odp",
        "application/vnd.oasis.opendocument.presentation",
        "presentations",
    ),
    ("json", "application/json", "code"),
    ("xml", "application/xml", "code"),
    ("html", "text/html", "code"),
    ("htm", "text/html", "code"),
    ("css", "text/css", "code"),
    ("js", "text/javascript", "code"),
    ("ts", "text/x-typescript", "code"),
    ("py", "text/x-python", "code"),
    ("rs", "text/x-rust", "code"),
    ("go", "text/x-go", "code"),
    ("c", "text/x-c", "code"),
    ("h", "text/x-c", "code"),
    ("cpp", "text/x-c++", "code"),
    ("java", "text/x-java", "code"),
    ("sh", "application/x-sh", "code"),
    ("yaml", "application/yaml", "code"),
    ("yml", "application/yaml", "code"),
    ("toml", "application/toml", "code"),
    ("sql", "application/sql", "code"),
    ("svg", "image/svg+xml", "images"),
    ("jpg", "image/jpeg", "images"),
    ("jpeg", "image/jpeg", "images"),
    ("png", "image/png", "images"),
    ("gif", "image/gif", "images"),
    ("webp", "image/webp", "images"),
    ("mp4", "video/mp4", "videos"),
    ("mov", "video/quicktime", "videos"),
    ("mkv", "video/x-matroska", "videos"),
    ("webm", "video/webm", "videos"),
    ("mp3", "audio/mpeg", "audio"),
    ("wav", "audio/x-wav", "audio"),
    ("flac", "audio/x-flac", "audio"),
    ("ogg", "audio/ogg", "audio"),
    ("zip", "application/zip", "archives"),
    ("gz", "application/gzip", "archives"),
    ("tar", "application/x-tar", "archives"),
    ("7z", "application/x-7z-compressed", "archives"),
    ("rar", "application/vnd.rar", "archives"),
];

/// The media type of a MIME type, by its family and a few well-known application types.
pub fn media_type_of(mime: &str, ext: &str) -> &'static str {
    if let Some((_, _, media)) = BY_EXTENSION
        .iter()
        .find(|(e, m, _)| *m == mime && *e == ext)
    {
        return media;
    }
    let (family, subtype) = mime.split_once('/').unwrap_or((mime, ""));
    match family {
        "image" => "images",
        "video" => "videos",
        "audio" => "audio",
        _ => match subtype {
            "pdf" | "msword" | "rtf" | "epub+zip" | "plain" | "markdown" => "documents",
            s if s.contains("wordprocessingml") || s.contains("opendocument.text") => "documents",
            s if s.contains("spreadsheetml")
                || s.contains("ms-excel")
                || s.contains("opendocument.spreadsheet")
                || s == "csv" =>
            {
                "spreadsheets"
            }
            s if s.contains("presentationml")
                || s.contains("ms-powerpoint")
                || s.contains("opendocument.presentation") =>
            {
                "presentations"
            }
            "zip"
            | "gzip"
            | "x-tar"
            | "x-7z-compressed"
            | "vnd.rar"
            | "x-rar-compressed"
            | "x-bzip2"
            | "x-xz"
            | "zstd"
            | "x-compress"
            | "x-lzip"
            | "vnd.ms-cab-compressed"
            | "x-cpio" => "archives",
            "json" | "xml" | "javascript" | "x-sh" | "x-python" | "html" | "css" | "wasm"
            | "yaml" | "toml" => "code",
            s if s.starts_with("x-") && family == "text" => "code",
            _ => "other",
        },
    }
}

/// Lowercased extension of a file name (without the dot), when it has a sane one.
pub fn extension_of(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let (stem, ext) = base.rsplit_once('.')?;
    if stem.is_empty() || ext.is_empty() || ext.len() > 10 {
        return None;
    }
    let ext = ext.to_ascii_lowercase();
    ext.bytes()
        .all(|b| b.is_ascii_alphanumeric())
        .then_some(ext)
}

fn canonical_ext_for_mime(mime: &str) -> Option<&'static str> {
    BY_EXTENSION
        .iter()
        .find(|(_, m, _)| *m == mime)
        .map(|(e, _, _)| *e)
}

/// Detects the type of a file from its head, the part's Content-Type and its name.
pub fn detect(head: &[u8], part_content_type: Option<&str>, file_name: &str) -> Detected {
    let name_ext = extension_of(file_name);
    if let Some(kind) = infer::get(head) {
        let mime = kind.mime_type();
        // infer names SVG text/xml; an .svg name says which XML it is.
        if mime == "text/xml" && name_ext.as_deref() == Some("svg") {
            return from_pair("image/svg+xml", "svg");
        }
        return from_pair(mime, kind.extension());
    }
    let declared = part_content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|ct| !ct.is_empty() && ct != "application/octet-stream" && ct.contains('/'));
    if let Some(mime) = declared {
        let ext = canonical_ext_for_mime(&mime)
            .map(str::to_string)
            .or_else(|| name_ext.clone())
            .unwrap_or_else(|| "bin".to_string());
        let media_type = media_type_of(&mime, &ext);
        return Detected {
            mime_type: mime,
            media_type,
            ext,
        };
    }
    if let Some(ext) = name_ext {
        if let Some((e, mime, media)) = BY_EXTENSION.iter().find(|(e, _, _)| *e == ext) {
            return Detected {
                mime_type: mime.to_string(),
                media_type: media,
                ext: e.to_string(),
            };
        }
        return Detected {
            mime_type: "application/octet-stream".into(),
            media_type: "other",
            ext,
        };
    }
    Detected {
        mime_type: "application/octet-stream".into(),
        media_type: "other",
        ext: "bin".into(),
    }
}

fn from_pair(mime: &str, ext: &str) -> Detected {
    Detected {
        mime_type: mime.to_string(),
        media_type: media_type_of(mime, ext),
        ext: ext.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content wins over a misleading name: a PNG named x.jpg is a png.
    #[test]
    fn content_wins_over_name() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
        let d = detect(png, Some("image/jpeg"), "x.jpg");
        assert_eq!(
            (d.mime_type.as_str(), d.media_type, d.ext.as_str()),
            ("image/png", "images", "png")
        );
    }

    /// Text has no magic: the part's type, then the extension decide.
    #[test]
    fn fallbacks() {
        let d = detect(b"hello", Some("text/plain"), "notes");
        assert_eq!((d.media_type, d.ext.as_str()), ("documents", "txt"));
        let d = detect(b"a,b\n1,2\n", Some("application/octet-stream"), "table.CSV");
        assert_eq!(
            (d.mime_type.as_str(), d.media_type, d.ext.as_str()),
            ("text/csv", "spreadsheets", "csv")
        );
        let d = detect(b"??", None, "blob.weird");
        assert_eq!((d.media_type, d.ext.as_str()), ("other", "weird"));
        let d = detect(b"??", None, "noext");
        assert_eq!(d.ext, "bin");
        let d = detect(b"fn main() {}", None, "main.rs");
        assert_eq!(d.media_type, "code");
    }
}
