//! XEP-0045: Multi-User Chat — the group chat service at `conference.<domain>`, with
//! XEP-0249 direct invitations passed through, XEP-0313 archives of rooms, XEP-0421
//! occupant ids, XEP-0410 self-ping and XEP-0425 moderation.
//!
//! Each room is a task owning its state ([`room`]); this module finds or starts the task
//! for a stanza and answers the service itself (disco, unique room names). Persistent
//! rooms (configuration, subject, affiliations) live behind the storage seam
//! ([`herald_storage::MucStore`]) and their messages in the archive store under the room's
//! JID, so a later cluster can host a room on one node and serve occupants elsewhere by
//! replacing this lookup.

pub mod config;
pub mod iq;
pub mod manage;
pub mod room;

use std::sync::Arc;

use dashmap::DashMap;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;
use tokio::sync::mpsc;

use crate::router::bounce;
use crate::Server;
use config::*;

/// Stanzas queued for one room before senders wait.
const ROOM_QUEUE: usize = 1024;

/// What the service shows of a room without asking its task (kept current by the task).
#[derive(Clone, Debug, Default)]
pub struct RoomInfo {
    pub name: String,
    pub public: bool,
    pub persistent: bool,
    pub locked: bool,
    pub occupants: usize,
}

#[derive(Clone)]
pub struct RoomHandle {
    pub tx: mpsc::Sender<Element>,
    pub info: Arc<std::sync::RwLock<RoomInfo>>,
}

impl RoomHandle {
    pub fn info(&self) -> RoomInfo {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Live rooms of every MUC service of the server, by bare room JID.
#[derive(Default)]
pub struct Muc {
    pub rooms: DashMap<String, RoomHandle>,
}

impl Muc {
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

fn spawn(mut room: room::Room) -> RoomHandle {
    let (tx, rx) = mpsc::channel(ROOM_QUEUE);
    let handle = RoomHandle {
        tx: tx.clone(),
        info: room.info.clone(),
    };
    room.publish();
    tokio::spawn(room::run(room, rx, tx));
    handle
}

/// Starts every persistent room of every MUC service (at server start).
pub async fn load(server: &Arc<Server>) -> Result<usize, herald_storage::StorageError> {
    let mut n = 0;
    let services: Vec<_> = server
        .settings
        .services
        .values()
        .filter(|s| s.kind == crate::config::ServiceKind::Muc)
        .cloned()
        .collect();
    for svc in services {
        for stored in server.storage.load_rooms(&svc.domain).await? {
            let jid = stored.jid.clone();
            match room::Room::from_store(server.clone(), stored, svc.host.clone()).await {
                Some(r) => {
                    let h = spawn(r);
                    server.muc.rooms.insert(jid, h);
                    n += 1;
                }
                None => tracing::error!(room = %jid, "unreadable stored room skipped"),
            }
        }
    }
    Ok(n)
}

/// A stanza addressed to the MUC service at `to` (of served domain `host`).
pub async fn route(server: &Arc<Server>, el: Element, to: &Jid, host: &str) {
    if to.node().is_none() {
        return service_stanza(server, el, to).await;
    }
    reroute(server, el, host).await
}

/// Hands a stanza to its room's task, starting the task when needed.
pub(crate) async fn reroute(server: &Arc<Server>, el: Element, host: &str) {
    let Some(to) = el.attr("to").and_then(|t| Jid::parse(t).ok()) else {
        return;
    };
    let key = to.bare_str().to_string();
    let handle = match server.muc.rooms.get(&key).map(|h| h.clone()) {
        Some(h) => h,
        None => match start_room(server, &el, &to, host).await {
            Some(h) => h,
            None => return,
        },
    };
    if let Err(mpsc::error::SendError(back)) = handle.tx.send(el).await {
        // The room ended between lookup and send: start it again (or answer for it).
        server
            .muc
            .rooms
            .remove_if(&key, |_, h| h.tx.same_channel(&handle.tx));
        Box::pin(reroute_once(server, back, host)).await;
    }
}

async fn reroute_once(server: &Arc<Server>, el: Element, host: &str) {
    let Some(to) = el.attr("to").and_then(|t| Jid::parse(t).ok()) else {
        return;
    };
    if let Some(h) = start_room(server, &el, &to, host).await {
        let _ = h.tx.send(el).await;
    }
}

/// Finds a room that is not running: stored (created by the CLI meanwhile) or new. Only
/// an available presence to `room/nick` creates a room; anything else for an unknown
/// room gets `item-not-found`.
async fn start_room(
    server: &Arc<Server>,
    el: &Element,
    to: &Jid,
    host: &str,
) -> Option<RoomHandle> {
    let key = to.bare_str().to_string();
    let stored = match server.storage.load_room(&key).await {
        Ok(s) => s,
        Err(e) => {
            bounce(server, el.clone(), crate::ext::storage_error(e)).await;
            return None;
        }
    };
    let room = match stored {
        Some(s) => room::Room::from_store(server.clone(), s, host.to_string()).await,
        None => {
            let joins = el.name == "presence" && el.attr("type").is_none();
            if !joins {
                let err = StanzaError::new(Cond::ItemNotFound).with_text("no such room");
                if el.name != "presence" {
                    bounce(server, el.clone(), err).await;
                }
                return None;
            }
            if to.resource().is_none() {
                bounce(
                    server,
                    el.clone(),
                    StanzaError::new(Cond::JidMalformed).with_text("a nickname is required"),
                )
                .await;
                return None;
            }
            Some(room::Room::new(server.clone(), to.bare(), host.to_string()))
        }
    };
    let Some(room) = room else {
        // A stored room that cannot be read (logged by from_store): say so, not silence.
        let err =
            StanzaError::new(Cond::InternalServerError).with_text("the room cannot be loaded");
        if el.name != "presence" || el.attr("type").is_none() {
            bounce(server, el.clone(), err).await;
        }
        return None;
    };
    let handle = server
        .muc
        .rooms
        .entry(key)
        .or_insert_with(|| spawn(room))
        .clone();
    Some(handle)
}

fn identity(category: &str, kind: &str, name: &str) -> Element {
    Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind)
        .with_attr("name", name)
}

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

/// Stanzas to the service's own domain: disco, unique names, ping.
async fn service_stanza(server: &Arc<Server>, el: Element, to: &Jid) {
    if el.name != "iq" {
        if el.name == "message" {
            bounce(server, el, StanzaError::new(Cond::ServiceUnavailable)).await;
        }
        return;
    }
    if !matches!(el.attr("type"), Some("get" | "set")) {
        return;
    }
    let payload = match crate::ext::payload_of(&el) {
        Ok(p) => Some(p.clone()),
        Err(e) => return crate::router::route(server, e.reply_to(&el)).await,
    };
    let get = el.attr("type") == Some("get");
    let reply = match payload {
        Some(p) if get && p.is("query", ns::DISCO_INFO) && p.attr("node").is_none() => {
            let q = Element::new("query", ns::DISCO_INFO)
                .with_child(identity("conference", "text", "Chatrooms"))
                .with_child(feature(ns::DISCO_INFO))
                .with_child(feature(ns::DISCO_ITEMS))
                .with_child(feature(MUC))
                .with_child(feature(MUC_UNIQUE))
                .with_child(feature(ns::PING))
                .with_child(feature(OCCUPANT_ID))
                .with_child(feature(ns::MAM))
                .with_child(feature(MODERATE));
            Ok(Some(q))
        }
        Some(p) if get && p.is("query", ns::DISCO_ITEMS) && p.attr("node").is_none() => {
            Ok(Some(public_rooms(server, to, &p).await))
        }
        Some(p) if get && p.is("unique", MUC_UNIQUE) => {
            let mut b = [0u8; 9];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
            let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Ok(Some(Element::new("unique", MUC_UNIQUE).with_text(name)))
        }
        Some(p) if get && p.is("ping", ns::PING) => Ok(None),
        _ => Err(StanzaError::new(Cond::ServiceUnavailable)),
    };
    crate::router::route(server, crate::ext::iq_reply(&el, reply)).await
}

/// disco#items of the service: public rooms, asked of each room's task (their names and
/// occupancy are the rooms' own state). Paged with XEP-0059 `max`/`after`.
async fn public_rooms(server: &Arc<Server>, service: &Jid, query: &Element) -> Element {
    let suffix = format!("@{}", service.domain());
    let mut names: Vec<String> = server
        .muc
        .rooms
        .iter()
        .filter(|e| e.key().ends_with(&suffix))
        .map(|e| e.key().clone())
        .collect();
    names.sort();
    let set = query.child("set", ns::RSM);
    let max = set
        .and_then(|s| s.child("max", ns::RSM))
        .and_then(|m| m.text().trim().parse::<usize>().ok())
        .unwrap_or(500)
        .min(500);
    let after = set
        .and_then(|s| s.child("after", ns::RSM))
        .map(|a| a.text().trim().to_string());
    let mut q = Element::new("query", ns::DISCO_ITEMS);
    let mut listed = Vec::new();
    for jid in names
        .into_iter()
        .filter(|n| after.as_deref().is_none_or(|a| n.as_str() > a))
    {
        if listed.len() >= max {
            break;
        }
        let Some(info) = server.muc.rooms.get(&jid).map(|h| h.info()) else {
            continue;
        };
        if info.public && !info.locked {
            listed.push((jid, info.name));
        }
    }
    let last = listed.last().map(|(j, _): &(String, String)| j.clone());
    let first = listed.first().map(|(j, _)| j.clone());
    for (jid, name) in listed {
        let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid.as_str());
        if !name.is_empty() {
            item.set_attr("name", name);
        }
        q.push(item);
    }
    if set.is_some() {
        let mut s = Element::new("set", ns::RSM);
        if let (Some(f), Some(l)) = (first, last) {
            s.push(Element::new("first", ns::RSM).with_text(f));
            s.push(Element::new("last", ns::RSM).with_text(l));
        }
        q.push(s);
    }
    q
}
