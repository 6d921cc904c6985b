//! The dashboard page, embedded in the binary: no CDN, works offline.
//!
//! One self-contained HTML file (inline CSS and JavaScript, charts drawn on canvas) that
//! connects to `/ws` on the host that served it, carrying over `?token=` and `?serverId=`.

use http::{header, HeaderValue, Response};

use crate::http::{full, Body};

/// The page source.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");

/// `GET /`: the page.
pub fn index() -> Response<Body> {
    let mut r = Response::new(full(INDEX_HTML));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
