//! XEP-0280: Message Carbons — every resource of a user that enables carbons sees the
//! 1:1 chats its other resources send and receive, so all devices show one conversation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::c2s::Session;
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::CARBONS, Carbons);
    r.server_features.push(ns::CARBONS);
}

struct Carbons;

#[async_trait]
impl IqHandler for Carbons {
    async fn handle(&self, _server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::OwnAccount || !req.set {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        let Some(session) = req.session else {
            return Err(StanzaError::new(Cond::NotAllowed));
        };
        let on = match req.payload.name.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return Err(StanzaError::new(Cond::BadRequest)),
        };
        session.handle.shared.carbons.store(on, Ordering::Release);
        Ok(None)
    }
}

/// §6: which messages are copied — 1:1 chat traffic, not groupchat or headlines, not
/// what the sender marked private, and never a carbon itself.
pub fn wants_copies(el: &Element) -> bool {
    let kind = el.attr("type").unwrap_or("normal");
    let eligible_kind = match kind {
        "chat" => true,
        "normal" => el.child("body", ns::CLIENT).is_some(),
        "groupchat" | "headline" | "error" => false,
        _ => false,
    };
    let im_payload = el
        .elements()
        .any(|c| c.ns == ns::RECEIPTS || c.ns == ns::CHATSTATES || c.ns == ns::MARKERS);
    if !(eligible_kind || im_payload && kind != "groupchat") {
        return false;
    }
    !el.elements().any(|c| {
        c.is("private", ns::CARBONS)
            || c.is("no-copy", ns::HINTS)
            || c.is("sent", ns::CARBONS)
            || c.is("received", ns::CARBONS)
    })
}

fn wrap(kind: &str, owner: &str, to: &Jid, original: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", owner)
        .with_attr("to", to.as_str())
        .with_attr("type", original.attr("type").unwrap_or("normal"))
        .with_child(
            Element::new(kind, ns::CARBONS)
                .with_child(Element::new("forwarded", ns::FORWARD).with_child(original.clone())),
        )
}

/// The sender's other enabled resources get a "sent" copy.
pub async fn on_sent(server: &Arc<Server>, session: &Session, el: &Element) {
    if !wants_copies(el) {
        return;
    }
    let owner = session.jid.bare_str();
    for s in server.registry.sessions(owner) {
        if s.id != session.handle.id && s.shared.carbons.load(Ordering::Acquire) {
            let _ = s
                .send(wrap("sent", owner, &s.jid, el), server.outbox_timeout())
                .await;
        }
    }
}

/// The recipient's enabled resources that did not get the message itself get a
/// "received" copy.
pub async fn on_received(server: &Arc<Server>, el: &Element, to: &Jid, delivered: &[u64]) {
    let owner = to.bare_str();
    for s in server.registry.sessions(owner) {
        if !delivered.contains(&s.id) && s.shared.carbons.load(Ordering::Acquire) {
            let _ = s
                .send(wrap("received", owner, &s.jid, el), server.outbox_timeout())
                .await;
        }
    }
}
