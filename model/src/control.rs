//! Control messages: what a WebSocket text frame that is not a sample asks for (`register`,
//! `subscribe`, `snapshot.request`), per `docs/API.md`.
//!
//! [`crate::decode`] parses the frame and hands the object here when its `type` names a control
//! message; the errors are [`DecodeError::Control`] and [`DecodeError::UnknownType`], worded for
//! the client like every decode error. The register message's roles are the protocol of agents
//! already deployed: `"producer"` (an agent, [`Role::Agent`]) and `"dashboard"`.

use simd_json::prelude::*;
use simd_json::tape::Value;

use crate::decode::{truncate, type_name, valid_name, DecodeError};

/// Role a WebSocket peer registers as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An agent sending samples (the wire value is `"producer"`, as existing agents send it).
    Agent,
    Dashboard,
}

/// A server filter: `None` is every server.
pub type ServerFilter = Option<Vec<String>>;

/// A control message on System 2's ingest socket or on a dashboard socket.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// `{"type":"register","role":"producer"|"dashboard","serverId":S|null}`
    Register { role: Role, filter: ServerFilter },
    /// `{"type":"subscribe","serverId":S|[S,...]|null}`
    Subscribe { filter: ServerFilter },
    /// `{"type":"snapshot.request","serverId":S}` (serverId optional)
    SnapshotRequest { server_id: Option<String> },
}

/// The control message in `v`, an object whose `type` is `kind`: its fields checked against
/// what `kind` allows, its filter parsed.
pub(crate) fn control_from_value(v: Value<'_, '_>, kind: &str) -> Result<Control, DecodeError> {
    let Some(obj) = v.as_object() else {
        return Err(DecodeError::NotSample(type_name(v)));
    };
    let allowed: &[&str] = match kind {
        "register" => &["type", "role", "serverId"],
        "subscribe" => &["type", "serverId"],
        "snapshot.request" => &["type", "serverId"],
        other => return Err(DecodeError::UnknownType(truncate(other))),
    };
    for (key, _) in obj.iter() {
        if !allowed.contains(&key) {
            return Err(DecodeError::Control(format!(
                "unknown field `{}` in a {kind} message (allowed: {})",
                truncate(key),
                allowed.join(", ")
            )));
        }
    }
    let filter = match obj.get("serverId") {
        None => None,
        Some(s) => parse_filter(s)?,
    };
    match kind {
        "register" => {
            let role = match obj.get("role").map(|r| r.into_string()) {
                Some(Some("producer")) => Role::Agent,
                Some(Some("dashboard")) => Role::Dashboard,
                _ => {
                    return Err(DecodeError::Control(
                        "register needs \"role\": \"producer\" or \"dashboard\"".into(),
                    ))
                }
            };
            Ok(Control::Register { role, filter })
        }
        "subscribe" => Ok(Control::Subscribe { filter }),
        _ => {
            let server_id = match filter {
                None => None,
                Some(mut ids) if ids.len() == 1 => ids.pop(),
                Some(_) => {
                    return Err(DecodeError::Control(
                        "snapshot.request takes one serverId or none".into(),
                    ))
                }
            };
            Ok(Control::SnapshotRequest { server_id })
        }
    }
}

/// Parses a filter: null (all servers), a string (`"a"` or `"a,b"`), or an array of strings.
fn parse_filter(v: Value<'_, '_>) -> Result<ServerFilter, DecodeError> {
    let bad = || {
        DecodeError::Control(
            "serverId must be null, a server id, a comma-separated list, or an array of ids".into(),
        )
    };
    if v.is_null() {
        return Ok(None);
    }
    let mut ids = Vec::new();
    if let Some(s) = v.as_str() {
        ids.extend(parse_filter_list(s)?);
    } else if let Some(arr) = v.as_array() {
        for item in arr.iter() {
            ids.extend(parse_filter_list(item.as_str().ok_or_else(bad)?)?);
        }
    } else {
        return Err(bad());
    }
    Ok(if ids.is_empty() { None } else { Some(ids) })
}

/// Parses `a,b,c` into server ids; an empty list means every server.
pub fn parse_filter_list(s: &str) -> Result<Vec<String>, DecodeError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if valid_name(p) {
                Ok(p.to_string())
            } else {
                Err(DecodeError::Control(format!(
                    "server id `{}` in filter is invalid: 1 to 128 bytes of A-Z a-z 0-9 _ . : -",
                    truncate(p)
                )))
            }
        })
        .collect()
}
