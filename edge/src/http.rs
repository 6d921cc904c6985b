//! Response helpers: one body type for every route and the JSON error shape.
//!
//! Every refusal is `{"error": "..."}` with a message that names what the client got wrong.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// The response body of every route (full bodies, streams and upgrades alike).
pub type Body = BoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().boxed()
}

/// A JSON response with `status`.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut body = Vec::with_capacity(message.len() + 16);
    body.extend_from_slice(b"{\"error\":");
    metrics_model::event::write_str(&mut body, message);
    body.push(b'}');
    json(status, body)
}

/// 401 with the `WWW-Authenticate` challenge.
pub fn unauthorized() -> Response<Body> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send Authorization: Bearer <token> or ?token=<token>",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// 404 naming the path.
pub fn not_found(path: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, &format!("no route for {path}"))
}

/// 405 naming the allowed method.
pub fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; use {allowed}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    r
}
