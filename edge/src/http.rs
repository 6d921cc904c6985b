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

/// Why a request was refused: the one error type of both services' HTTP boundary. Every
/// variant's text is what the client reads in `{"error": ...}`, so it names what was wrong;
/// [`Refusal::into_response`] is the one place a refusal becomes a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: malformed or invalid input; the message names the field, index or line.
    #[error("{0}")]
    BadRequest(String),
    /// 401 with the `WWW-Authenticate: Bearer` challenge, naming the token the route needs.
    #[error("missing or wrong token: this route needs {0}; send Authorization: Bearer <token> or ?token=<token>")]
    Unauthorized(&'static str),
    /// 403: the credential is fine but the request may not do this here (a dashboard opened
    /// from an origin not allowed); the message names what and the flag that allows it.
    #[error("{0}")]
    Forbidden(String),
    /// 404 naming the path.
    #[error("no route for {0}")]
    NotFound(String),
    /// 405 with `Allow`.
    #[error("method not allowed here; use {0}")]
    MethodNotAllowed(&'static str),
    /// 408: the request (its body) did not arrive within a deadline, which the message names.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 415: content type or encoding.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// 503 with `Retry-After: 1`: a dependency (Redis) is down or slower than the deadline.
    #[error("{0}")]
    Unavailable(String),
    /// 426 with `Upgrade: websocket`: a plain request to a WebSocket route that would
    /// otherwise be admitted (a page checking why its socket failed learns that the token,
    /// Origin and query were not the reason).
    #[error("{0}")]
    UpgradeRequired(String),
}

impl Refusal {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// `{"error": message}` with the status and the headers the status calls for. Any page may
    /// read it (`Access-Control-Allow-Origin: *`): a refusal carries no data, only why, and a
    /// dashboard page served by one system that opens another's stream (side by side) can only
    /// learn why its socket was refused by asking again with a plain request.
    pub fn into_response(self) -> Response<Body> {
        let mut r = error(self.status(), &self.to_string());
        let headers = r.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        match self {
            Refusal::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::MethodNotAllowed(allowed) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            Refusal::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::UpgradeRequired(_) => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        r
    }
}

impl From<metrics_model::DecodeError> for Refusal {
    fn from(e: metrics_model::DecodeError) -> Self {
        Refusal::BadRequest(e.to_string())
    }
}

/// A handler's answer: a response, or a refusal to turn into one.
pub type Answer = Result<Response<Body>, Refusal>;

/// The response for `answer`.
pub fn respond(answer: Answer) -> Response<Body> {
    answer.unwrap_or_else(Refusal::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_headers_their_status_needs() {
        let r = Refusal::Unavailable("Redis is down".into()).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = Refusal::Unauthorized("the agent token").into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            Refusal::Forbidden("no".into()).into_response().status(),
            StatusCode::FORBIDDEN
        );
        let r = Refusal::MethodNotAllowed("POST").into_response();
        assert_eq!(
            (r.status(), &r.headers()[header::ALLOW]),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                &HeaderValue::from_static("POST")
            )
        );
        assert_eq!(
            Refusal::NotFound("/x".into()).to_string(),
            "no route for /x"
        );
        let r = Refusal::UpgradeRequired("speak WebSocket".into()).into_response();
        assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.headers()[header::UPGRADE], "websocket");
        // Readable by a page of any origin, whatever the refusal.
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
