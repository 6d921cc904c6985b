//! The agent side of System 2: a WebSocket on `/` or `/ingest` whose text frames are samples,
//! arrays of samples, or control messages.
//!
//! Per frame: stamp the arrival time, decode and validate (all-or-nothing), publish one `sample`
//! event per sample to the dashboards straight away, then hand the batch to the aggregator
//! through its lock-free ring. A bad frame gets an `error` event naming the problem and is
//! dropped whole; the socket stays open.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metrics_edge::dashboard::{handle_control, DashboardContext};
use metrics_edge::hub::{Audience, Client, Event, EventKind, Hub};
use metrics_edge::ws::MessageHandler;
use metrics_model::decode::{with_decoder, Limits, Message};
use metrics_model::{event, now_ms};

use crate::aggregate::{Aggregator, Batch};

/// Handles an agent's frames.
pub struct AgentHandler {
    ctx: DashboardContext,
    hub: Arc<Hub>,
    aggregator: Arc<Aggregator>,
    limits: Limits,
    events: Vec<Event>,
    /// The last server id seen on this socket, to skip re-allocating it per sample.
    last_server: Option<Arc<str>>,
    /// Whether this socket was told its filter is full (told once, not per sample).
    told_full: bool,
}

impl AgentHandler {
    pub fn new(ctx: DashboardContext, aggregator: Arc<Aggregator>, limits: Limits) -> Self {
        Self {
            hub: ctx.hub.clone(),
            ctx,
            aggregator,
            limits,
            events: Vec::new(),
            last_server: None,
            told_full: false,
        }
    }

    fn server_arc(&mut self, client: &Client, id: &str) -> Arc<str> {
        match &self.last_server {
            Some(s) if &**s == id => s.clone(),
            _ => {
                let s: Arc<str> = Arc::from(id);
                if client.audience() == Audience::Agent {
                    if let Err(e) = self.hub.note_server(client, id) {
                        if !std::mem::replace(&mut self.told_full, true) {
                            client.send(event::to_vec(|b| event::error(b, &e.to_string())));
                        }
                    }
                }
                self.last_server = Some(s.clone());
                s
            }
        }
    }
}

impl MessageHandler for AgentHandler {
    async fn on_message(&mut self, client: &Arc<Client>, data: &mut BytesMut) {
        let arrival = now_ms();
        let limits = self.limits;
        let decoded = with_decoder(|d| {
            d.set_limits(limits);
            d.decode_message(data, arrival)
        });
        match decoded {
            Ok(Message::Samples(samples)) => {
                let mut events = std::mem::take(&mut self.events);
                for s in &samples {
                    let server = self.server_arc(client, &s.server_id);
                    let mut json = Vec::with_capacity(64 + s.metrics.len() * 24);
                    event::sample(&mut json, s, None);
                    events.push(Event {
                        kind: EventKind::Sample,
                        server,
                        json: Bytes::from(json),
                        position: None,
                    });
                }
                self.hub.publish(&events);
                events.clear();
                self.events = events;
                self.aggregator
                    .submit(Batch {
                        arrival_ms: arrival,
                        samples,
                        from: Some(client.clone()),
                    })
                    .await;
            }
            Ok(Message::Control(c)) => handle_control(&self.ctx, client, c).await,
            Err(e) => {
                self.aggregator
                    .stats()
                    .frames_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                client.send(event::to_vec(|b| event::error(b, &e.to_string())))
            }
        }
    }
}
