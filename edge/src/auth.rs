//! The optional bearer token for ingest and dashboards.
//!
//! Accepted as `Authorization: Bearer T` or `?token=T` (browsers cannot set headers on a
//! WebSocket). The comparison runs in constant time over the token's bytes so a client cannot
//! learn it a byte at a time from response timing.

use subtle::ConstantTimeEq;

/// The configured token, if any.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    token: Option<String>,
}

impl Auth {
    /// `None` or an empty token disables the check.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// [`Auth::allows`], as a refusal to answer with.
    pub fn check<B>(&self, req: &::http::Request<B>) -> Result<(), crate::http::Refusal> {
        if self.allows(req) {
            Ok(())
        } else {
            Err(crate::http::Refusal::Unauthorized)
        }
    }

    /// Checks the request's `Authorization` header, then its `token` query parameter.
    pub fn allows<B>(&self, req: &::http::Request<B>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let from_header = req
            .headers()
            .get(::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let from_query = || query_param(req.uri().query().unwrap_or(""), "token");
        let given = match from_header {
            Some(t) => Some(t.to_string()),
            None => from_query(),
        };
        match given {
            Some(g) => same_secret(g.as_bytes(), expected.as_bytes()),
            None => false,
        }
    }
}

/// `given == expected`, in time that depends on `expected`'s length only: `subtle`'s slice
/// comparison returns at once when the lengths differ, which would tell a client the token's
/// length.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut same = (given.len() as u64).ct_eq(&(expected.len() as u64));
    for (i, e) in expected.iter().enumerate() {
        same &= given.get(i).copied().unwrap_or(!e).ct_eq(e);
    }
    bool::from(same)
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3crets", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(same_secret(b"", b""));
    }

    fn req(uri: &str, header: Option<&str>) -> ::http::Request<()> {
        let mut b = ::http::Request::builder().uri(uri);
        if let Some(h) = header {
            b = b.header("authorization", h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn token_from_header_or_query() {
        let a = Auth::new(Some("s3cret".into()));
        assert!(a.allows(&req("/ws", Some("Bearer s3cret"))));
        assert!(a.allows(&req("/ws?token=s3cret", None)));
        assert!(a.allows(&req("/ws?serverId=a&token=s3cr%65t", None)));
        assert!(!a.allows(&req("/ws", None)));
        assert!(!a.allows(&req("/ws?token=s3cre", None)));
        assert!(!a.allows(&req("/ws", Some("Bearer wrong"))));
        assert!(Auth::new(None).allows(&req("/ws", None)));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(query_param("a=1&b=x%2Cy", "b").as_deref(), Some("x,y"));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(query_param("b=%zz%", "b").as_deref(), Some("%zz%"));
    }
}
