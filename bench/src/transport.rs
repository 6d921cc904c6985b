//! Where the load goes and how: a target's address, its transport, TLS trust, and the
//! connections agents and dashboards open to it.
//!
//! HTTP goes through hyper's connection-level client (one connection per agent, as real agents
//! hold one), WebSocket through the same client code the systems' own simulator uses.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_edge::client::{self, ClientSocket};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How agents send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// HTTP/1.1 `POST /metrics`, keep-alive, one request at a time per agent.
    H1,
    /// HTTP/2 cleartext (prior knowledge) `POST /metrics`, requests multiplexed.
    H2c,
    /// HTTP/2 over TLS (ALPN h2) `POST /metrics`.
    H2tls,
    /// One long HTTP/2 cleartext `POST /metrics/stream` per agent, NDJSON, acknowledged in order.
    Stream,
    /// WebSocket `/ingest`, one JSON frame per message.
    Ws,
    /// WebSocket over TLS.
    Wss,
    /// OTLP over gRPC (`MetricsService/Export`) on HTTP/2 cleartext, as an OpenTelemetry
    /// exporter sends (System 1).
    OtlpGrpc,
    /// Prometheus remote write 1.0 (`POST /api/v1/write`, snappy protobuf) on HTTP/2
    /// cleartext (System 1).
    RemoteWrite,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::H1 => "h1",
            Transport::H2c => "h2c",
            Transport::H2tls => "h2tls",
            Transport::Stream => "stream",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::OtlpGrpc => "otlp-grpc",
            Transport::RemoteWrite => "remote-write",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Transport::H1 => "HTTP/1.1 POST /metrics",
            Transport::H2c => "HTTP/2 cleartext POST /metrics",
            Transport::H2tls => "HTTP/2 over TLS POST /metrics",
            Transport::Stream => "HTTP/2 streaming POST /metrics/stream",
            Transport::Ws => "WebSocket /ingest",
            Transport::Wss => "WebSocket over TLS /ingest",
            Transport::OtlpGrpc => "OTLP/gRPC MetricsService/Export over HTTP/2 cleartext",
            Transport::RemoteWrite => {
                "Prometheus remote write POST /api/v1/write over HTTP/2 cleartext"
            }
        }
    }

    /// Whether the embedded system must listen with TLS for this transport.
    pub fn tls(self) -> bool {
        matches!(self, Transport::H2tls | Transport::Wss)
    }

    pub fn websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// Whether the system acknowledges each message (HTTP) or not (WebSocket).
    pub fn acks(self) -> bool {
        !self.websocket()
    }
}

/// Why a target could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is not a URL like http://127.0.0.1:8081 or ws://127.0.0.1:8080")]
    Url(String),
    #[error("`{0}`: cannot resolve the host: {1}")]
    Resolve(String, String),
    #[error("`{url}`: transport {transport} needs a {need} URL")]
    Scheme {
        url: String,
        transport: &'static str,
        need: &'static str,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("reading the CA file {0}: {1}")]
    Ca(String, std::io::Error),
}

/// A host to connect to.
#[derive(Clone, Debug)]
pub struct Host {
    pub addr: SocketAddr,
    /// Host name for `Host`, `:authority` and TLS server name.
    pub name: String,
    /// TLS client configuration, when the scheme is https or wss.
    pub tls: Option<Arc<ClientConfig>>,
}

/// One system under test, as the bench reaches it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub transport: Transport,
    pub ingest: Host,
    /// Path agents send to (`/metrics`, `/metrics/stream`, `/ingest`), with any base path.
    pub ingest_path: String,
    pub dashboard: Host,
    /// Dashboard stream path with query (`/ws`, `/ws?token=...`).
    pub dashboard_path: String,
    pub tokens: Tokens,
}

/// The bearer tokens the bench presents: agents and dashboards may need different ones (a
/// deployment with `--agent-token` and `--dashboard-token`).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// Sent by agents (`Authorization: Bearer`).
    pub agent: Option<String>,
    /// Sent by dashboards (header and `?token=`).
    pub dashboard: Option<String>,
}

impl Tokens {
    /// The same token for both roles.
    pub fn both(token: Option<String>) -> Self {
        Self {
            agent: token.clone(),
            dashboard: token,
        }
    }
}

/// The URL text a user gave, split.
struct Parsed {
    tls: bool,
    host: String,
    port: u16,
    base: String,
}

fn parse_url(url: &str) -> Result<Parsed, TargetError> {
    let bad = || TargetError::Url(url.to_string());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("http" | "ws") => false,
        Some("https" | "wss") => true,
        _ => return Err(bad()),
    };
    let host = uri
        .host()
        .ok_or_else(bad)?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let base = uri.path().trim_end_matches('/').to_string();
    Ok(Parsed {
        tls,
        host,
        port,
        base,
    })
}

/// The host's address, IPv4 first (`localhost` often lists `::1` first, and most local
/// servers listen on 127.0.0.1).
fn resolve(url: &str, host: &str, port: u16) -> Result<SocketAddr, TargetError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| TargetError::Resolve(url.to_string(), e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| TargetError::Resolve(url.to_string(), "no address".into()))
}

/// TLS trust: the CA in `ca_pem`, offering `alpn`.
pub fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TargetError> {
    client::tls_config(ca_pem, alpn).map_err(|e| TargetError::Tls(e.to_string()))
}

impl Endpoint {
    /// The endpoint for `url` (ingest) and `dashboard_url` (defaults to the same host), sending
    /// with `transport`, trusting `ca_pem` for TLS.
    pub fn from_url(
        url: &str,
        dashboard_url: Option<&str>,
        transport: Transport,
        ca_pem: Option<&[u8]>,
        tokens: Tokens,
    ) -> Result<Self, TargetError> {
        let p = parse_url(url)?;
        let need_tls = transport.tls();
        if transport != Transport::H1 && transport != Transport::Stream && p.tls != need_tls {
            return Err(TargetError::Scheme {
                url: url.to_string(),
                transport: transport.label(),
                need: match (transport.websocket(), need_tls) {
                    (true, true) => "wss://",
                    (true, false) => "ws://",
                    (false, true) => "https://",
                    (false, false) => "http://",
                },
            });
        }
        let ca = || {
            ca_pem.ok_or_else(|| {
                TargetError::Tls(format!(
                    "{url} needs a CA to trust: pass --ca FILE (the development CA is certs/ca.pem)"
                ))
            })
        };
        let ingest_alpn: &[&[u8]] = match transport {
            Transport::H1 | Transport::Ws | Transport::Wss => &[b"http/1.1"],
            _ => &[b"h2"],
        };
        let ingest_tls = if p.tls {
            Some(tls_config(ca()?, ingest_alpn)?)
        } else {
            None
        };
        let ingest = Host {
            addr: resolve(url, &p.host, p.port)?,
            name: p.host.clone(),
            tls: ingest_tls,
        };
        let d = match dashboard_url {
            Some(d) => parse_url(d)?,
            None => Parsed {
                base: p.base.clone(),
                host: p.host.clone(),
                ..p
            },
        };
        let dash_url = dashboard_url.unwrap_or(url);
        let dashboard = Host {
            addr: resolve(dash_url, &d.host, d.port)?,
            name: d.host.clone(),
            tls: if d.tls {
                Some(tls_config(ca()?, &[b"http/1.1"])?)
            } else {
                None
            },
        };
        let ingest_path = format!(
            "{}{}",
            p.base,
            match transport {
                Transport::Stream => "/metrics/stream",
                Transport::Ws | Transport::Wss => "/ingest",
                Transport::OtlpGrpc => ingest::front::protocols::grpc::EXPORT,
                Transport::RemoteWrite => "/api/v1/write",
                _ => "/metrics",
            }
        );
        let mut dashboard_path = if dashboard_url.is_some() && !d.base.is_empty() {
            d.base.clone()
        } else {
            format!("{}/ws", d.base)
        };
        if let Some(t) = &tokens.dashboard {
            dashboard_path.push_str(if dashboard_path.contains('?') {
                "&"
            } else {
                "?"
            });
            dashboard_path.push_str("token=");
            dashboard_path.push_str(t);
        }
        Ok(Self {
            transport,
            ingest,
            ingest_path,
            dashboard,
            dashboard_path,
            tokens,
        })
    }
}

/// The request body type of every HTTP request the bench sends.
pub type Body = BoxBody<Bytes, Infallible>;

/// An HTTP connection of one agent.
pub enum HttpConn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Tls(SocketAddr, String),
    #[error("HTTP handshake with {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("WebSocket {0}: {1}")]
    Ws(SocketAddr, client::ClientError),
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| ConnectError::Tcp(addr, e))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn handshake<IO>(io: IO, h2: bool, addr: SocketAddr) -> Result<HttpConn, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(io)
            .await
            .map_err(|e| ConnectError::Http(addr, e))?;
        tokio::spawn(conn);
        Ok(HttpConn::H2(send))
    } else {
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| ConnectError::Http(addr, e))?;
        tokio::spawn(conn);
        Ok(HttpConn::H1(send))
    }
}

/// Opens an HTTP connection to `host`: HTTP/2 when `h2`, over TLS when the host has it.
pub async fn connect_http(host: &Host, h2: bool) -> Result<HttpConn, ConnectError> {
    let s = tcp(host.addr).await?;
    match &host.tls {
        None => handshake(s, h2, host.addr).await,
        Some(cfg) => {
            let name = ServerName::try_from(host.name.clone())
                .map_err(|e| ConnectError::Tls(host.addr, e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, s)
                .await
                .map_err(|e| ConnectError::Tls(host.addr, e.to_string()))?;
            handshake(s, h2, host.addr).await
        }
    }
}

/// Opens a WebSocket to `host` at `path`, with the bearer token when there is one.
pub async fn connect_ws(
    host: &Host,
    path: &str,
    token: Option<&str>,
) -> Result<ClientSocket, ConnectError> {
    let s = tcp(host.addr).await?;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    client::handshake_on(s, &host.name, path, host.tls.clone(), &headers)
        .await
        .map_err(|e| ConnectError::Ws(host.addr, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_paths_and_refuse_mismatched_schemes() {
        let e = Endpoint::from_url(
            "http://127.0.0.1:9/api",
            None,
            Transport::H2c,
            None,
            Tokens::default(),
        )
        .expect("valid");
        assert_eq!(e.ingest_path, "/api/metrics");
        assert_eq!(e.dashboard_path, "/api/ws");
        assert_eq!(e.ingest.addr, "127.0.0.1:9".parse().expect("addr"));
        let e = Endpoint::from_url(
            "ws://127.0.0.1:9",
            Some("ws://127.0.0.1:10/live"),
            Transport::Ws,
            None,
            Tokens {
                agent: Some("agent".into()),
                dashboard: Some("s3cret".into()),
            },
        )
        .expect("valid");
        assert_eq!(e.ingest_path, "/ingest");
        assert_eq!(e.dashboard_path, "/live?token=s3cret");
        assert_eq!(e.tokens.agent.as_deref(), Some("agent"));
        assert_eq!(e.dashboard.addr.port(), 10);
        let err = Endpoint::from_url(
            "http://127.0.0.1:9",
            None,
            Transport::Wss,
            None,
            Tokens::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`http://127.0.0.1:9`: transport wss needs a wss:// URL"
        );
        let err = Endpoint::from_url(
            "https://127.0.0.1:9",
            None,
            Transport::H2tls,
            None,
            Tokens::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--ca"), "{err}");
        assert!(
            Endpoint::from_url("127.0.0.1:9", None, Transport::H1, None, Tokens::default())
                .is_err()
        );
    }
}
