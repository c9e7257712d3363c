//! XEP-0191: Blocking Command. A blocked JID's messages, presence and IQs never reach the
//! user, the user's presence never reaches it, and stanzas the user sends to it bounce with
//! `<blocked/>`. Checked on the routing path from the online user's in-memory cache.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::Subscription;
use herald_xml::Element;

use super::roster::load_item;
use super::{storage_error, IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::BLOCKING, Blocking);
    r.server_features.push(ns::BLOCKING);
}

/// Limit per account, so a block list stays a cheap in-memory set.
const MAX_ITEMS: usize = 10_000;

/// XEP-0191 §3.2 / XEP-0016 matching: full JID, bare JID, domain/resource or domain.
fn matches(list: &HashSet<String>, jid: &Jid) -> bool {
    if list.is_empty() {
        return false;
    }
    if list.contains(jid.as_str()) || list.contains(jid.bare_str()) || list.contains(jid.domain()) {
        return true;
    }
    match jid.resource() {
        Some(r) if jid.node().is_some() => list.contains(&format!("{}/{}", jid.domain(), r)),
        _ => false,
    }
}

/// Does `owner` block `other`?
pub async fn blocks(server: &Server, owner: &str, other: &Jid) -> bool {
    if let Some(cache) = server.registry.cache(owner) {
        {
            let guard = cache.blocklist.read().unwrap_or_else(|p| p.into_inner());
            if let Some(set) = guard.as_ref() {
                return matches(set, other);
            }
        }
        let set: HashSet<String> = match server.storage.blocklist(owner).await {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                storage_error(e);
                return false;
            }
        };
        let hit = matches(&set, other);
        cache
            .blocklist
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(set);
        return hit;
    }
    match server.storage.blocklist(owner).await {
        Ok(l) => matches(&l.into_iter().collect(), other),
        Err(e) => {
            storage_error(e);
            false
        }
    }
}

struct Blocking;

fn items_of(el: &Element) -> Result<Vec<String>, StanzaError> {
    el.elements()
        .filter(|e| e.is("item", ns::BLOCKING))
        .map(|e| {
            e.attr("jid")
                .and_then(|j| Jid::parse(j).ok())
                .map(|j| j.to_string())
                .ok_or_else(|| StanzaError::new(Cond::JidMalformed))
        })
        .collect()
}

fn with_items(name: &str, items: &[String]) -> Element {
    let mut e = Element::new(name, ns::BLOCKING);
    for i in items {
        e.push(Element::new("item", ns::BLOCKING).with_attr("jid", i.clone()));
    }
    e
}

#[async_trait]
impl IqHandler for Blocking {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::OwnAccount {
            return Err(StanzaError::new(Cond::Forbidden));
        }
        let owner = req.from.bare_str();
        let p = req.payload;
        match (req.set, p.name.as_str()) {
            (false, "blocklist") => {
                let list = server
                    .storage
                    .blocklist(owner)
                    .await
                    .map_err(storage_error)?;
                Ok(Some(with_items("blocklist", &list)))
            }
            (true, "block") => {
                let items = items_of(p)?;
                if items.is_empty() {
                    return Err(
                        StanzaError::new(Cond::BadRequest).with_text("block at least one JID")
                    );
                }
                let current = server
                    .storage
                    .blocklist(owner)
                    .await
                    .map_err(storage_error)?;
                if current.len() + items.len() > MAX_ITEMS {
                    return Err(
                        StanzaError::new(Cond::ResourceConstraint).with_text("block list is full")
                    );
                }
                server
                    .storage
                    .block(owner, &items)
                    .await
                    .map_err(storage_error)?;
                update_cache(server, owner, |s| s.extend(items.iter().cloned()));
                // The newly blocked stop seeing us (§3.3).
                for i in &items {
                    if let Ok(j) = Jid::parse(i) {
                        let sub = load_item(server, owner, j.bare_str()).await.ok().flatten();
                        if sub.is_some_and(|it| {
                            matches!(it.subscription, Subscription::From | Subscription::Both)
                        }) {
                            super::presence::send_unavailable_from_all(server, owner, j.as_str())
                                .await;
                        }
                    }
                }
                push(server, owner, with_items("block", &items)).await;
                Ok(None)
            }
            (true, "unblock") => {
                let items = items_of(p)?;
                if items.is_empty() {
                    server
                        .storage
                        .unblock_all(owner)
                        .await
                        .map_err(storage_error)?;
                    update_cache(server, owner, |s| s.clear());
                } else {
                    server
                        .storage
                        .unblock(owner, &items)
                        .await
                        .map_err(storage_error)?;
                    update_cache(server, owner, |s| {
                        for i in &items {
                            s.remove(i);
                        }
                    });
                }
                push(server, owner, with_items("unblock", &items)).await;
                Ok(None)
            }
            _ => Err(StanzaError::new(Cond::BadRequest)),
        }
    }
}

fn update_cache(server: &Server, owner: &str, f: impl FnOnce(&mut HashSet<String>)) {
    if let Some(cache) = server.registry.cache(owner) {
        if let Some(set) = cache
            .blocklist
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(set);
        }
    }
}

/// §3.3: every resource of the user learns the change.
async fn push(server: &Server, owner: &str, payload: Element) {
    for s in server.registry.sessions(owner) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("block{}", crate::stream::random_id()))
            .with_attr("to", s.jid.as_str())
            .with_child(payload.clone());
        let _ = s.send(iq, server.outbox_timeout()).await;
    }
}
