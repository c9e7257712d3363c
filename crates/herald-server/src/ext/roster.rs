//! RFC 6121 §2: roster management — get (with §2.6 versioning), set, remove, and pushes to
//! every interested resource. The subscription state machine that also edits roster items
//! lives in `presence.rs`; both write through [`save_item`] so storage, the online user's
//! cache and the pushes never disagree.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::{RosterItem, StorageError, Subscription};
use herald_xml::Element;

use super::{storage_error, IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::ROSTER, RosterHandler);
}

/// Longest roster item name and group name we accept (bytes).
const MAX_NAME: usize = 1024;
/// Groups per item.
const MAX_GROUPS: usize = 64;

struct RosterHandler;

#[async_trait]
impl IqHandler for RosterHandler {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::OwnAccount {
            // §2.1.5: a roster belongs to its owner alone.
            return Err(StanzaError::new(Cond::Forbidden));
        }
        if req.payload.name != "query" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        let owner = req.from.bare_str();
        if !req.set {
            if let Some(s) = req.session {
                s.handle.shared.interested.store(true, Ordering::Release);
            }
            let (ver, items) = server.storage.roster(owner).await.map_err(storage_error)?;
            // The initial presence that follows reads the roster again: fill the cache now.
            if let Some(cache) = server.registry.cache(owner) {
                let mut guard = cache.roster.write().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    *guard = Some(items.iter().map(|i| (i.jid.clone(), i.clone())).collect());
                }
            }
            let ver_s = ver.to_string();
            // §2.6.3: the client's copy is current; changes (none) would come as pushes.
            if req.payload.attr("ver") == Some(ver_s.as_str()) {
                return Ok(None);
            }
            let mut q = Element::new("query", ns::ROSTER).with_attr("ver", ver_s);
            for it in &items {
                q.push(item_element(it));
            }
            return Ok(Some(q));
        }
        let mut items = req.payload.elements().filter(|e| e.is("item", ns::ROSTER));
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(StanzaError::new(Cond::BadRequest)
                .with_text("a roster set carries exactly one item"));
        };
        let jid = item
            .attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .ok_or_else(|| {
                StanzaError::new(Cond::BadRequest).with_text("item needs a valid jid")
            })?;
        if !jid.is_bare() {
            return Err(StanzaError::new(Cond::BadRequest).with_text("roster items are bare JIDs"));
        }
        if item.attr("subscription") == Some("remove") {
            return remove(server, owner, jid.as_str()).await.map(|_| None);
        }
        let name = item
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
            return Err(StanzaError::new(Cond::NotAcceptable).with_text("name too long"));
        }
        let mut groups: Vec<String> = Vec::new();
        for g in item.elements().filter(|e| e.is("group", ns::ROSTER)) {
            let g = g.text();
            if g.is_empty() || g.len() > MAX_NAME {
                return Err(
                    StanzaError::new(Cond::NotAcceptable).with_text("empty or overlong group name")
                );
            }
            if groups.contains(&g) {
                return Err(StanzaError::new(Cond::BadRequest).with_text("duplicate group"));
            }
            groups.push(g);
        }
        if groups.len() > MAX_GROUPS {
            return Err(StanzaError::new(Cond::NotAcceptable).with_text("too many groups"));
        }
        // §2.1.5: subscription and ask are the server's to set; a client can't forge them.
        let _guard = server.registry.roster_lock(owner).await;
        let existing = load_item(server, owner, jid.as_str())
            .await
            .map_err(storage_error)?;
        let updated = match existing {
            Some(mut it) => {
                it.name = name;
                it.groups = groups;
                it
            }
            None => RosterItem {
                jid: jid.to_string(),
                name,
                subscription: Subscription::None,
                ask: false,
                approved: false,
                groups,
            },
        };
        save_item(server, owner, updated)
            .await
            .map_err(storage_error)?;
        Ok(None)
    }
}

/// §2.5: removing an item cancels subscriptions both ways and drops pending requests.
async fn remove(server: &Arc<Server>, owner: &str, contact: &str) -> Result<(), StanzaError> {
    let Some(item) = load_item(server, owner, contact)
        .await
        .map_err(storage_error)?
    else {
        return Err(StanzaError::new(Cond::ItemNotFound));
    };
    let _ = server.storage.remove_pending_in(owner, contact).await;
    let Some(ver) = server
        .storage
        .remove_roster_item(owner, contact)
        .await
        .map_err(storage_error)?
    else {
        return Err(StanzaError::new(Cond::ItemNotFound));
    };
    if let Some(cache) = server.registry.cache(owner) {
        if let Some(map) = cache
            .roster
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            map.remove(contact);
        }
    }
    push(server, owner, ver, &item, true).await;
    let sub = item.subscription;
    if matches!(sub, Subscription::To | Subscription::Both) || item.ask {
        let p = subscription_stanza("unsubscribe", owner, contact);
        crate::router::route(server, p).await;
    }
    if matches!(sub, Subscription::From | Subscription::Both) {
        let p = subscription_stanza("unsubscribed", owner, contact);
        crate::router::route(server, p).await;
        // They no longer see us: say so from each available resource.
        super::presence::send_unavailable_from_all(server, owner, contact).await;
    }
    Ok(())
}

pub fn subscription_stanza(kind: &str, from: &str, to: &str) -> Element {
    Element::new("presence", ns::CLIENT)
        .with_attr("type", kind)
        .with_attr("from", from)
        .with_attr("to", to)
}

pub fn item_element(it: &RosterItem) -> Element {
    let mut e = Element::new("item", ns::ROSTER)
        .with_attr("jid", it.jid.clone())
        .with_attr("subscription", it.subscription.as_str());
    if let Some(n) = &it.name {
        e.set_attr("name", n.clone());
    }
    if it.ask {
        e.set_attr("ask", "subscribe");
    }
    if it.approved {
        e.set_attr("approved", "true");
    }
    for g in &it.groups {
        e.push(Element::new("group", ns::ROSTER).with_text(g.clone()));
    }
    e
}

/// A roster item, from the online user's cache when loaded.
pub async fn load_item(
    server: &Server,
    owner: &str,
    contact: &str,
) -> Result<Option<RosterItem>, StorageError> {
    if let Some(found) = with_cached(server, owner, |m| m.get(contact).cloned()).await? {
        return Ok(found);
    }
    server.storage.roster_item(owner, contact).await
}

/// Runs `f` over an online user's cached roster, loading it on first use. `Ok(None)` for
/// offline users: callers then go to storage.
async fn with_cached<R>(
    server: &Server,
    owner: &str,
    f: impl FnOnce(&HashMap<String, RosterItem>) -> R,
) -> Result<Option<R>, StorageError> {
    let Some(cache) = server.registry.cache(owner) else {
        return Ok(None);
    };
    {
        let guard = cache.roster.read().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = guard.as_ref() {
            return Ok(Some(f(map)));
        }
    }
    let (_, items) = server.storage.roster(owner).await?;
    let map: HashMap<_, _> = items.into_iter().map(|i| (i.jid.clone(), i)).collect();
    let mut guard = cache.roster.write().unwrap_or_else(|p| p.into_inner());
    // Another task may have loaded it meanwhile (and applied later writes): keep theirs.
    let map = guard.get_or_insert(map);
    Ok(Some(f(map)))
}

/// Contacts matching a filter, for presence fan-out (from cache when online).
pub async fn contacts_where(
    server: &Server,
    owner: &str,
    f: impl Fn(&RosterItem) -> bool,
) -> Vec<String> {
    let pick = |items: &mut dyn Iterator<Item = &RosterItem>| {
        items.filter(|i| f(i)).map(|i| i.jid.clone()).collect()
    };
    let res = match with_cached(server, owner, |m| pick(&mut m.values())).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => server
            .storage
            .roster(owner)
            .await
            .map(|(_, items)| pick(&mut items.iter())),
        Err(e) => Err(e),
    };
    res.unwrap_or_else(|e| {
        tracing::error!(error = %e, "roster load failed");
        Vec::new()
    })
}

/// Writes an item (storage first, durable before anyone is told), updates the cache and
/// pushes it to the owner's interested resources.
pub async fn save_item(
    server: &Server,
    owner: &str,
    item: RosterItem,
) -> Result<u64, StorageError> {
    let ver = server.storage.put_roster_item(owner, &item).await?;
    if let Some(cache) = server.registry.cache(owner) {
        if let Some(map) = cache
            .roster
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            map.insert(item.jid.clone(), item.clone());
        }
    }
    push(server, owner, ver, &item, false).await;
    Ok(ver)
}

/// §2.1.6 roster push to every resource that requested the roster.
async fn push(server: &Server, owner: &str, ver: u64, item: &RosterItem, removed: bool) {
    let el = if removed {
        Element::new("item", ns::ROSTER)
            .with_attr("jid", item.jid.clone())
            .with_attr("subscription", "remove")
    } else {
        item_element(item)
    };
    for s in server.registry.sessions(owner) {
        if !s.shared.interested.load(Ordering::Acquire) {
            continue;
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{}", crate::stream::random_id()))
            .with_attr("to", s.jid.as_str())
            .with_child(
                Element::new("query", ns::ROSTER)
                    .with_attr("ver", ver.to_string())
                    .with_child(el.clone()),
            );
        let _ = s.send(iq, server.outbox_timeout()).await;
    }
}
