//! XEP-0160: best practices for handling offline messages, with XEP-0203 delay stamps.
//!
//! A message for a user with no available resource is written to storage (durable before
//! this returns) with a `<delay/>` saying when the server received it, and delivered in
//! arrival order when the user next sends initial presence with a non-negative priority.
//! A full per-user quota is reported to the sender instead of silently dropping.

use std::sync::Arc;

use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::StorageError;
use herald_xml::Element;

use super::{parse_fragment, stamp_from_micros, storage_error, to_stored, IqRegistry};
use crate::c2s::Session;
use crate::router::bounce;
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.server_features.push(ns::OFFLINE);
}

/// Payloads that are worth keeping: a chat state or receipt alone is not (XEP-0160 §3).
fn worth_storing(el: &Element) -> bool {
    el.elements()
        .any(|c| c.ns != "http://jabber.org/protocol/chatstates" && !c.is("thread", ns::CLIENT))
}

pub async fn store(server: &Arc<Server>, mut el: Element, to: &Jid) {
    if !worth_storing(&el) {
        return;
    }
    let micros = super::now_micros();
    el.push(
        Element::new("delay", ns::DELAY)
            .with_attr("from", to.domain())
            .with_attr("stamp", stamp_from_micros(micros))
            .with_text("Offline Storage"),
    );
    let quota = server.settings.raw.offline.max_messages;
    let stored = to_stored(&el);
    // A bounce carries the message as sent, without our delay stamp.
    el.children.pop();
    match server
        .storage
        .store_offline(to.bare_str(), &stored, micros, quota)
        .await
    {
        Ok(_) => super::push::on_offline(server, &to.bare(), &el).await,
        Err(StorageError::QuotaExceeded) => {
            let err = StanzaError::new(Cond::ServiceUnavailable)
                .with_type(herald_core::ErrorType::Wait)
                .with_text(format!(
                    "the recipient's offline storage is full ({quota} messages)"
                ));
            bounce(server, el, err).await;
        }
        Err(e) => {
            let err = storage_error(e);
            bounce(server, el, err).await;
        }
    }
}

/// Sends stored messages to a session that just became available, then deletes them.
/// Runs in the session's own task, so they go straight to its connection after the
/// handler (`Session::to_client`), not through its outbox: a quota's worth of messages
/// would not fit there, and the task cannot wait for room it alone can make.
pub async fn deliver(server: &Arc<Server>, session: &Session) {
    let owner = session.jid.bare_str();
    let msgs = match server.storage.offline_messages(owner).await {
        Ok(m) => m,
        Err(e) => {
            storage_error(e);
            return;
        }
    };
    let Some(last) = msgs.last().map(|m| m.id) else {
        return;
    };
    let mut out = Vec::with_capacity(msgs.len());
    for m in msgs {
        let Some(mut el) = parse_fragment(&m.stanza) else {
            tracing::warn!(owner, id = m.id, "unreadable offline message skipped");
            continue;
        };
        el.set_attr("to", session.jid.as_str());
        out.push(el);
    }
    session.to_client(out);
    if let Err(e) = server.storage.delete_offline(owner, last).await {
        storage_error(e);
    }
}
