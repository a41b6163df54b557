//! The web console at `/ui/` on the admin listener: its files are compiled into the binary from
//! `console/`, so it works offline and `cargo build` needs no Node toolchain. Everything it shows
//! comes from the JSON admin API, which it calls from the browser; this module only serves the
//! files, sends signed-out visitors to the login page, and puts the security headers (a strict
//! Content-Security-Policy without inline code, `nosniff`, no referrer, no framing) on every
//! answer. The single-page app routes with the URL's `#` part, so it needs no server routes.

use http::{header, HeaderMap, Method, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Where the console lives; `/ui` alone is sent here.
pub const ROOT: &str = "/ui/";
/// The login page: the only page a visitor without a session is shown.
pub const LOGIN: &str = "/ui/login";

/// No inline script or style, nothing from another origin; SVG charts are built in the page, and
/// `data:` images are the only images not served from here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// A file of the console with the content type it is served with.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../console/", $name)),
        }
    };
}

/// The files under `/ui/assets/`: scripts, style sheet and icon. Listed by hand, so that a file
/// in `console/` is only served once someone has chosen to ship it.
static ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("chart.js", JS),
    asset!("login.js", JS),
    asset!("page-overview.js", JS),
    asset!("page-keys.js", JS),
    asset!("page-create.js", JS),
    asset!("page-key.js", JS),
    asset!("page-workloads.js", JS),
    asset!("key-form.js", JS),
    asset!("style.css", CSS),
    asset!("icon.svg", SVG),
];

static INDEX: &[u8] = include_bytes!("../../console/index.html");
static LOGIN_PAGE: &[u8] = include_bytes!("../../console/login.html");
static NOT_FOUND: &[u8] = include_bytes!("../../console/not-found.html");

/// Each asset's entity tag, from its bytes: browsers revalidate (`no-cache`) and get 304 until
/// a new binary ships a changed file, without versioned file names the ES modules would have to
/// import each other by.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..12])))
        .collect()
});

/// True for the paths this module answers.
pub fn owns(path: &str) -> bool {
    path == "/ui" || path.starts_with(ROOT)
}

/// The answer to a request for a console path. `signed_in` says whether the request carries a
/// live console session; it is asked only for pages whose answer depends on it.
pub fn respond(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    signed_in: impl FnOnce() -> bool,
) -> Response<Vec<u8>> {
    if method != Method::GET {
        let mut response = page(StatusCode::METHOD_NOT_ALLOWED, NOT_FOUND);
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/ui" => redirect(ROOT),
        ROOT | LOGIN => match (path == ROOT, signed_in()) {
            (true, true) => page(StatusCode::OK, INDEX),
            (true, false) => redirect(LOGIN),
            (false, true) => redirect(ROOT),
            (false, false) => page(StatusCode::OK, LOGIN_PAGE),
        },
        _ => match path
            .strip_prefix("/ui/assets/")
            .and_then(|name| ASSETS.iter().position(|a| a.name == name))
        {
            Some(i) => asset(i, headers),
            None => page(StatusCode::NOT_FOUND, NOT_FOUND),
        },
    }
}

/// A page: never cached, since what `/ui/` answers depends on the session.
fn page(status: StatusCode, body: &'static [u8]) -> Response<Vec<u8>> {
    build(status, Some(HTML), "no-store", body.to_vec())
}

/// 303: the browser follows with a GET whatever brought it here.
fn redirect(to: &'static str) -> Response<Vec<u8>> {
    let mut response = build(StatusCode::SEE_OTHER, None, "no-store", Vec::new());
    response
        .headers_mut()
        .insert(header::LOCATION, header::HeaderValue::from_static(to));
    response
}

fn asset(i: usize, headers: &HeaderMap) -> Response<Vec<u8>> {
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Vec::new())
    } else {
        (StatusCode::OK, asset.body.to_vec())
    };
    let mut response = build(status, Some(asset.content_type), "no-cache", body);
    if let Ok(value) = header::HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn build(
    status: StatusCode,
    content_type: Option<&'static str>,
    cache: &'static str,
    body: Vec<u8>,
) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CACHE_CONTROL, cache)
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header("cross-origin-opener-policy", "same-origin")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, signed_in: bool) -> Response<Vec<u8>> {
        respond(&Method::GET, path, &HeaderMap::new(), || signed_in)
    }

    #[test]
    fn every_shipped_page_loads_only_shipped_files() {
        // A script or style the pages name but the binary lacks would break the console silently.
        for (name, body) in [("index.html", INDEX), ("login.html", LOGIN_PAGE)] {
            let text = std::str::from_utf8(body).unwrap();
            for part in text.split("/ui/assets/").skip(1) {
                let file = part.split('"').next().unwrap();
                assert!(
                    ASSETS.iter().any(|a| a.name == file),
                    "{name} loads {file}, which is not embedded"
                );
            }
            assert!(!text.contains("<script>"), "{name} has an inline script");
            assert!(!text.contains("<style"), "{name} has an inline style");
            assert!(!text.contains(" style="), "{name} has an inline style");
        }
    }

    #[test]
    fn scripts_import_only_embedded_modules() {
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(a.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let module = line
                    .rsplit("'./")
                    .next()
                    .unwrap()
                    .split('\'')
                    .next()
                    .unwrap();
                assert!(
                    ASSETS.iter().any(|b| b.name == module),
                    "{} imports {module}, which is not embedded",
                    a.name
                );
            }
        }
    }

    #[test]
    fn pages_follow_the_session() {
        assert_eq!(get("/ui/", false).status(), StatusCode::SEE_OTHER);
        assert_eq!(get("/ui/", false).headers()[header::LOCATION], LOGIN);
        assert_eq!(get("/ui/", true).status(), StatusCode::OK);
        assert_eq!(get("/ui/login", false).status(), StatusCode::OK);
        assert_eq!(get("/ui/login", true).headers()[header::LOCATION], ROOT);
        assert_eq!(get("/ui", false).headers()[header::LOCATION], ROOT);
    }

    #[test]
    fn assets_revalidate_by_etag() {
        let first = get("/ui/assets/app.js", false);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        let again = respond(&Method::GET, "/ui/assets/app.js", &headers, || false);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.body().is_empty());
        headers.insert(
            header::IF_NONE_MATCH,
            header::HeaderValue::from_static("\"stale\""),
        );
        let changed = respond(&Method::GET, "/ui/assets/app.js", &headers, || false);
        assert_eq!(changed.status(), StatusCode::OK);
    }
}
