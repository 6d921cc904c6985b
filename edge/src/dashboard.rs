//! The dashboard stream, `GET /ws`, the same in both systems.
//!
//! A dashboard connects (optionally `?serverId=a,b`), gets a `hello`, then every matching
//! `sample` and `window` event. It may change its filter live with
//! `{"type":"subscribe","serverId":S|null}` and ask for `{"type":"snapshot.request"}`; where the
//! snapshot comes from is the system's business ([`SnapshotSource`]). A client has at most one
//! snapshot queued: a request while one waits for the writer gets an `error` event instead
//! (once; further requests until it is written are folded into that one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::{Grant, Role};
use crate::http::{self, Body, Refusal};
use crate::hub::{Audience, Client, Hub, SnapshotTurn};
use crate::lifecycle::Lifecycle;
use crate::ws::{self, MessageHandler, WsConfig};
use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::{Request, Response};
use metrics_model::decode::{parse_filter_list, with_decoder, Control, Message, ServerFilter};
use metrics_model::{event, now_ms};

/// A boxed future, for the snapshot source.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a `snapshot.request` could not be answered; the text goes to the client in an `error`
/// event.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no data for server `{0}`")]
    UnknownServer(String),
    #[error("snapshot unavailable: {0}")]
    Unavailable(String),
}

impl From<metrics_model::rollup::UnknownServer> for SnapshotError {
    fn from(e: metrics_model::rollup::UnknownServer) -> Self {
        SnapshotError::UnknownServer(e.0)
    }
}

/// Answers `snapshot.request` with the encoded `snapshot` event (`metrics_model::event`'s
/// [`SnapshotEncoder`](metrics_model::event::SnapshotEncoder)).
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self, server_id: Option<String>) -> BoxFuture<Result<Bytes, SnapshotError>>;
}

/// Everything a dashboard session needs from its system.
#[derive(Clone)]
pub struct DashboardContext {
    pub system: &'static str,
    pub windows: Vec<String>,
    pub hub: Arc<Hub>,
    pub ws: WsConfig,
    pub snapshots: Arc<dyn SnapshotSource>,
    pub life: Lifecycle,
    /// What this socket's credential allows ([`Auth::admit`](crate::auth::Auth::admit) at the
    /// upgrade): [`Grant::ALL`] in the system's context, narrowed per socket with
    /// [`DashboardContext::for_socket`]. Only control messages consult it.
    pub grant: Grant,
}

impl DashboardContext {
    /// This context for one socket admitted with `grant`.
    pub fn for_socket(&self, grant: Grant) -> Self {
        Self {
            grant,
            ..self.clone()
        }
    }

    /// The `hello` event for a client with `filter`.
    pub fn hello(&self, filter: Option<&[String]>) -> Vec<u8> {
        event::to_vec(|b| event::hello(b, self.system, &self.windows, now_ms(), filter))
    }
}

/// The filter in a request's `serverId` query parameter, or a 400 naming the bad id.
pub fn filter_from_query(req: &Request<Incoming>) -> Result<ServerFilter, Refusal> {
    let Some(q) = crate::auth::query_param(req.uri().query().unwrap_or(""), "serverId") else {
        return Ok(None);
    };
    match parse_filter_list(&q) {
        Ok(ids) if ids.is_empty() => Ok(None),
        Ok(ids) => Ok(Some(ids)),
        Err(e) => Err(e.into()),
    }
}

/// Upgrades `req` and spawns a session of `audience`; `make` builds its message handler.
/// With `held`, the client's live events wait until the caller releases them (for a replay).
pub fn upgrade<H, F>(
    mut req: Request<Incoming>,
    ctx: &DashboardContext,
    audience: Audience,
    filter: ServerFilter,
    held: bool,
    make: F,
) -> Response<Body>
where
    H: MessageHandler + 'static,
    F: FnOnce(Arc<Client>) -> H,
{
    if let Err(e) = ctx.hub.check_filter(filter.as_deref()) {
        return Refusal::BadRequest(format!("serverId: {e}")).into_response();
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        // Checked last: a plain request learns every other reason first.
        return Refusal::UpgradeRequired(
            "this endpoint speaks WebSocket: send an Upgrade: websocket request (the token, Origin and query of this one are accepted)".into(),
        )
        .into_response();
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return Refusal::BadRequest(ws::upgrade_error(&e)).into_response(),
    };
    let reg = ctx.hub.register_with(audience, filter.clone(), held);
    let client = reg.client().clone();
    if audience == Audience::Dashboard {
        client.send(ctx.hello(filter.as_deref()));
    }
    let handler = make(client.clone());
    let cfg = ctx.ws;
    let life = ctx.life.clone();
    ctx.life.spawn(async move {
        let upgraded = match fut.await {
            Ok(ws) => ws.into_inner().into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        ws::run_session(upgraded, client, cfg, &life, handler).await;
        drop(reg);
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, http::empty())
}

/// Handles what a dashboard may send: `subscribe`, `register` and `snapshot.request`.
pub struct DashboardHandler {
    ctx: DashboardContext,
}

impl DashboardHandler {
    pub fn new(ctx: DashboardContext) -> Self {
        Self { ctx }
    }
}

impl MessageHandler for DashboardHandler {
    async fn on_message(&mut self, client: &Arc<Client>, data: &mut BytesMut) {
        let decoded = with_decoder(|d| d.decode_message(data, now_ms()));
        match decoded {
            Ok(Message::Control(c)) => handle_control(&self.ctx, client, c).await,
            Ok(Message::Samples(_)) => client.send(event::to_vec(|b| {
                event::error(
                    b,
                    "dashboards do not send samples; agents connect to /ingest with the agent token",
                )
            })),
            Err(e) => client.send(event::to_vec(|b| event::error(b, &e.to_string()))),
        }
    }
}

/// Applies a control message on any socket (dashboard or agent). Becoming a dashboard and
/// reading a snapshot need the dashboard role, becoming an agent the agent role
/// (`ctx.grant`): an agent's token does not read other servers' data.
pub async fn handle_control(ctx: &DashboardContext, client: &Arc<Client>, c: Control) {
    let needs = match &c {
        Control::Subscribe { .. } => None,
        Control::Register { role, .. } => Some(match role {
            metrics_model::decode::Role::Dashboard => Role::Dashboard,
            metrics_model::decode::Role::Agent => Role::Agent,
        }),
        Control::SnapshotRequest { .. } => Some(Role::Dashboard),
    };
    if let Some(role) = needs.filter(|&r| !ctx.grant.allows(r)) {
        let message = match role {
            Role::Dashboard => "not allowed on this socket: dashboards need the dashboard token (and, from a browser, an allowed Origin)",
            Role::Agent => "not allowed on this socket: agents need the agent token",
        };
        client.send(event::to_vec(|b| event::error(b, message)));
        return;
    }
    let refuse = |e: crate::hub::FilterError| {
        client.send(event::to_vec(|b| event::error(b, &e.to_string())));
    };
    match c {
        Control::Subscribe { filter } => match ctx.hub.set_filter(client, filter.clone()) {
            Ok(()) => client.send(event::to_vec(|b| event::subscribed(b, filter.as_deref()))),
            Err(e) => refuse(e),
        },
        Control::Register { role, filter } => {
            let audience = match role {
                metrics_model::decode::Role::Dashboard => Audience::Dashboard,
                metrics_model::decode::Role::Agent => Audience::Agent,
            };
            // An agent's ids are the servers it will send: its windows come back for them.
            match ctx.hub.set_audience(client, audience, filter.clone()) {
                Err(e) => refuse(e),
                Ok(()) if audience == Audience::Dashboard => {
                    client.send(ctx.hello(filter.as_deref()))
                }
                Ok(()) => client.send(event::to_vec(event::registered_agent)),
            }
        }
        Control::SnapshotRequest { server_id } => match client.snapshot_slot() {
            SnapshotTurn::Build => match ctx.snapshots.snapshot(server_id).await {
                Ok(json) => client.send_snapshot(json),
                Err(e) => client.send(event::to_vec(|b| event::error(b, &e.to_string()))),
            },
            SnapshotTurn::Refuse => client.send(event::to_vec(|b| {
                event::error(
                    b,
                    "snapshot.request refused: a snapshot is already on its way to this client \
                     (one at a time); ask again once it has arrived",
                )
            })),
            SnapshotTurn::Folded => {}
        },
    }
}
