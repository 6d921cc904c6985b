//! Who may open what: the bearer tokens of the two roles and the origins dashboards may be
//! opened from.
//!
//! Agents send samples; dashboards read every server's data. Each role has its own token
//! (`--agent-token`, `--dashboard-token`), and `--token` stands in for a role without one, so
//! `--token` alone still means one token for both. A role with no token at all is open. A
//! token is accepted as `Authorization: Bearer T` or `?token=T` (browsers cannot set headers on
//! a WebSocket), compared in constant time over the expected token's bytes so a client cannot
//! learn it a byte at a time from response timing.
//!
//! Browsers send `Origin` on every WebSocket upgrade, and a page on any site may open a socket
//! to this service from a user's browser (cross-site WebSocket hijacking). So a connection
//! whose `Origin` is present but neither this service's own (the request's `Host`) nor listed
//! in `--allowed-origins` loses the dashboard role; a route that then has no role left
//! answers 403. Agents, the bench, curl and websocat send no `Origin` and are unaffected.
//!
//! With `--tls-client-ca`, the agent role also needs a verified client certificate on the
//! connection (the listener marks its requests with [`ClientCert`]): a token alone does not
//! make an agent, on the TLS listener or on the plaintext one. Dashboards are checked by the
//! TLS handshake only (`--tls-client-auth required`), or not at all (`optional`).
//!
//! Everything here runs once per request or upgrade, never per message: a socket's [`Grant`]
//! is decided at the upgrade and only consulted again for control messages.

use subtle::ConstantTimeEq;

use crate::http::Refusal;
use crate::listener::ClientCert;

/// Why an agent with the right token was refused for lack of a client certificate.
const NEEDS_CLIENT_CERT: &str = "agents need a TLS client certificate signed by a CA in --tls-client-ca, and this connection presented none";

/// What a client connects as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends samples (System 2's `/ingest` and sockets on `/`; System 1's `POST /metrics`).
    Agent,
    /// Reads the dashboard stream (`/ws`; a socket on `/` that registers as a dashboard).
    Dashboard,
}

impl Role {
    /// "the agent token (--agent-token, else --token)", for refusals.
    fn token_name(self) -> &'static str {
        match self {
            Role::Agent => "the agent token (--agent-token, else --token)",
            Role::Dashboard => "the dashboard token (--dashboard-token, else --token)",
        }
    }
}

/// The roles a connection's credential (and `Origin`) allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub agent: bool,
    pub dashboard: bool,
}

impl Grant {
    /// Both roles: no tokens configured, or the one shared token.
    pub const ALL: Grant = Grant {
        agent: true,
        dashboard: true,
    };

    pub fn allows(self, role: Role) -> bool {
        match role {
            Role::Agent => self.agent,
            Role::Dashboard => self.dashboard,
        }
    }

    fn any_of(self, roles: &[Role]) -> bool {
        roles.iter().any(|&r| self.allows(r))
    }
}

/// The tokens and allowed origins, as configured.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    agent: Option<String>,
    dashboard: Option<String>,
    origins: AllowedOrigins,
    /// The agent role also needs a verified client certificate (`--tls-client-ca`).
    agent_cert: bool,
}

impl Auth {
    /// Each role's own token when set, else `shared`; an empty token counts as unset. A role
    /// left with no token is open.
    pub fn new(
        shared: Option<String>,
        agent: Option<String>,
        dashboard: Option<String>,
        origins: AllowedOrigins,
    ) -> Self {
        let set = |t: Option<String>| t.filter(|t| !t.is_empty());
        let shared = set(shared);
        Self {
            agent: set(agent).or_else(|| shared.clone()),
            dashboard: set(dashboard).or(shared),
            origins,
            agent_cert: false,
        }
    }

    /// When `yes`, the agent role also needs a verified TLS client certificate.
    pub fn agents_need_client_cert(mut self, yes: bool) -> Self {
        self.agent_cert = yes;
        self
    }

    /// Whether the agent role needs a verified TLS client certificate.
    pub fn agent_cert(&self) -> bool {
        self.agent_cert
    }

    /// False when agents need a client certificate and `req`'s connection presented none.
    fn cert_ok<B>(&self, req: &::http::Request<B>) -> bool {
        !self.agent_cert || req.extensions().get::<ClientCert>().is_some()
    }

    /// The token `role` needs, if any (for the simulated agents, which connect to their own
    /// server).
    pub fn token(&self, role: Role) -> Option<&str> {
        match role {
            Role::Agent => self.agent.as_deref(),
            Role::Dashboard => self.dashboard.as_deref(),
        }
    }

    /// The roles the request's token (and client certificate) grant (its `Origin` not
    /// considered).
    pub fn grant<B>(&self, req: &::http::Request<B>) -> Grant {
        let mut g = self.token_grant(req);
        g.agent &= self.cert_ok(req);
        g
    }

    fn token_grant<B>(&self, req: &::http::Request<B>) -> Grant {
        let given = given_token(req);
        let fits = |expected: &Option<String>| match (expected, &given) {
            (None, _) => true,
            (Some(e), Some(g)) => same_secret(g.as_bytes(), e.as_bytes()),
            (Some(_), None) => false,
        };
        Grant {
            agent: fits(&self.agent),
            dashboard: fits(&self.dashboard),
        }
    }

    /// A request for `role` (a plain HTTP route such as `POST /metrics`): its token must fit.
    pub fn check<B>(&self, role: Role, req: &::http::Request<B>) -> Result<(), Refusal> {
        if !self.token_grant(req).allows(role) {
            Err(Refusal::Unauthorized(role.token_name()))
        } else if role == Role::Agent && !self.cert_ok(req) {
            Err(Refusal::Forbidden(NEEDS_CLIENT_CERT.into()))
        } else {
            Ok(())
        }
    }

    /// A WebSocket upgrade on a route serving any of `roles`: 401 unless the token grants one
    /// of them; then an `Origin` that is not allowed takes the dashboard role away, and 403
    /// when that leaves none of `roles`. The grant is the socket's for its whole life.
    pub fn admit<B>(&self, roles: &[Role], req: &::http::Request<B>) -> Result<Grant, Refusal> {
        let mut grant = self.token_grant(req);
        if !grant.any_of(roles) {
            return Err(Refusal::Unauthorized(match roles {
                [only] => only.token_name(),
                _ => "the agent or the dashboard token (--agent-token, --dashboard-token, else --token)",
            }));
        }
        if grant.agent && !self.cert_ok(req) {
            grant.agent = false;
            if !grant.any_of(roles) {
                return Err(Refusal::Forbidden(NEEDS_CLIENT_CERT.into()));
            }
        }
        if grant.dashboard {
            if let Err(origin) = self.origins.check(req) {
                grant.dashboard = false;
                if !grant.any_of(roles) {
                    return Err(Refusal::Forbidden(format!(
                        "Origin `{origin}` may not open a dashboard here: it must be this service's own origin or listed in --allowed-origins"
                    )));
                }
            }
        }
        Ok(grant)
    }
}

/// The token in the `Authorization` header, else in the `token` query parameter.
fn given_token<B>(req: &::http::Request<B>) -> Option<String> {
    let from_header = req
        .headers()
        .get(::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match from_header {
        Some(t) => Some(t.to_string()),
        None => query_param(req.uri().query().unwrap_or(""), "token"),
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

/// The origins dashboards may be opened from besides the service's own: `--allowed-origins`,
/// each `scheme://host[:port]`, kept lower-case and without the scheme's default port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

/// Why `--allowed-origins` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--allowed-origins: `{0}` is not an origin like https://dash.example.com or http://10.0.0.5:8080 (scheme, host, optional port; no path)")]
pub struct OriginError(pub String);

impl AllowedOrigins {
    /// A comma-separated list; blanks between commas are ignored.
    pub fn parse(list: &str) -> Result<Self, OriginError> {
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match normalize(item) {
                Some(o) if o.starts_with("http://") || o.starts_with("https://") => out.push(o),
                _ => return Err(OriginError(item.to_string())),
            }
        }
        Ok(Self(out))
    }

    /// Ok when the request has no `Origin`, or its own (`Host`), or a listed one; else the
    /// `Origin` as given.
    fn check<B>(&self, req: &::http::Request<B>) -> Result<(), String> {
        let Some(raw) = req.headers().get(::http::header::ORIGIN) else {
            return Ok(());
        };
        let given = String::from_utf8_lossy(raw.as_bytes()).into_owned();
        let Some(origin) = normalize(&given) else {
            return Err(given);
        };
        let host = req
            .headers()
            .get(::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let own = match (origin.split_once("://"), host) {
            (Some((scheme, authority)), Some(host)) => {
                authority == without_default_port(scheme, &host.to_ascii_lowercase())
            }
            _ => false,
        };
        if own || self.0.contains(&origin) {
            Ok(())
        } else {
            Err(given)
        }
    }
}

/// `scheme://host[:port]` lower-cased, without the scheme's default port; `None` when it has a
/// path, user info or no host.
fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let bad = |c: char| matches!(c, '/' | '?' | '#' | '@' | ' ');
    if scheme.is_empty() || authority.is_empty() || authority.contains(bad) {
        return None;
    }
    Some(format!(
        "{scheme}://{}",
        without_default_port(scheme, authority)
    ))
}

fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
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
#[path = "auth_tests.rs"]
mod tests;
