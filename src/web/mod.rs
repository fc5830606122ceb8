//! The web page for people (`GET /`): upload, browse, search, a file's record, download,
//! delete, statistics, the token prompt.
//!
//! Plain HTML, CSS and JavaScript in `assets/`, embedded in the binary with
//! `include_str!`: no build step, nothing fetched from anywhere but this daemon (the
//! Content-Security-Policy below makes the browser enforce that). The page uses only the
//! public HTTP API, so it needs nothing the API does not offer. The page and its assets are
//! served without the token, since a browser cannot send a Bearer header on navigation;
//! every API call the page makes carries the token the user typed.

use std::sync::OnceLock;

use hyper::{Method, Response, StatusCode, header};

use crate::api::errors::{ApiError, Body, full_body};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        path: "/assets/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/icon.svg"),
    },
];

/// Only this origin, for everything: scripts, styles, API calls, images (plus `blob:` for
/// the preview of an image fetched with the token). No inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' blob:; connect-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the page's routes (served without the token).
pub fn is_page_path(path: &str) -> bool {
    path == "/index.html" || ASSETS.iter().any(|asset| asset.path == path)
}

/// The quoted ETag of each asset: a hash of its bytes, so a new build's page is fetched
/// again while an unchanged one is answered 304.
fn etags() -> &'static [String; 4] {
    static ETAGS: OnceLock<[String; 4]> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS.each_ref().map(|asset| {
            let hash = blake3::hash(asset.body.as_bytes()).to_hex();
            format!("\"{}\"", &hash[..16])
        })
    })
}

/// Serves a page route: GET and HEAD, with If-None-Match. `None` when `path` is not one.
pub fn serve(method: &Method, path: &str, if_none_match: Option<&str>) -> Option<Response<Body>> {
    let path = if path == "/index.html" { "/" } else { path };
    let index = ASSETS.iter().position(|asset| asset.path == path)?;
    let asset = &ASSETS[index];
    if method != Method::GET && method != Method::HEAD {
        let mut response =
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Some(response);
    }
    let etag = &etags()[index];
    let not_modified = if_none_match.is_some_and(|value| {
        value
            .split(',')
            .any(|tag| tag.trim() == etag || tag.trim() == "*")
    });
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, asset.content_type)
        // Revalidate every time (cheap: a 304), so an upgraded daemon never runs an old page.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::ETAG, etag.as_str())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    let response = if not_modified {
        builder.status(StatusCode::NOT_MODIFIED).body(full_body(""))
    } else {
        let body = if method == Method::HEAD {
            ""
        } else {
            asset.body
        };
        builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, asset.body.len())
            .body(full_body(body))
    };
    Some(response.expect("static headers are valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every asset the page references is served, and nothing it references is missing.
    #[test]
    fn page_references_only_embedded_assets() {
        let html = ASSETS[0].body;
        for reference in html.split("href=\"").chain(html.split("src=\"")).skip(1) {
            let target = reference.split('"').next().unwrap();
            if target.starts_with("/assets/") {
                assert!(
                    is_page_path(target),
                    "{target} is referenced but not embedded"
                );
            }
            assert!(
                !target.starts_with("http:") && !target.starts_with("https:"),
                "the page must not load anything from elsewhere: {target}"
            );
        }
    }

    /// A matching If-None-Match is a 304 with no body; another tag gets the page.
    #[test]
    fn etag_revalidation() {
        let etag = etags()[0].clone();
        let fresh = serve(&Method::GET, "/", Some(&etag)).unwrap();
        assert_eq!(fresh.status(), StatusCode::NOT_MODIFIED);
        let changed = serve(&Method::GET, "/", Some("\"other\"")).unwrap();
        assert_eq!(changed.status(), StatusCode::OK);
        assert!(serve(&Method::GET, "/nope", None).is_none());
        let post = serve(&Method::POST, "/", None).unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
