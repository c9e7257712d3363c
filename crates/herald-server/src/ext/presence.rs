//! RFC 6121 §3 and §4: presence subscriptions (the full state machine, with §3.4
//! pre-approval and pending requests kept across logins) and presence exchange (initial
//! presence, probes, broadcast, directed presence, unavailable on logout).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_core::{ns, Jid};
use herald_storage::{RosterItem, Subscription};
use herald_xml::Element;

use super::roster::{contacts_where, load_item, save_item, subscription_stanza};
use super::{offline, parse_fragment, storage_error, to_stored};
use crate::c2s::Session;
use crate::router::{account_exists, route};
use crate::Server;

fn is_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}

fn is_to(s: Subscription) -> bool {
    matches!(s, Subscription::To | Subscription::Both)
}

/// A presence stanza from a bound client.
pub async fn from_client(
    server: &Arc<Server>,
    session: &mut Session,
    mut el: Element,
    to: Option<Jid>,
) {
    let kind = el.attr("type").map(str::to_string);
    match kind.as_deref() {
        None | Some("unavailable") => match to {
            None => broadcast(server, session, el).await,
            Some(to) => directed(server, session, el, to).await,
        },
        Some(k @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
            let Some(to) = to else { return };
            let contact = to.bare();
            // §3.1.2: subscription stanzas travel between bare JIDs.
            el.set_attr("from", session.jid.bare_str());
            el.set_attr("to", contact.as_str());
            outbound_subscription(server, session.jid.bare_str(), contact.as_str(), k, el).await;
        }
        Some("error") if to.is_some() => route(server, el).await,
        // Probes are the server's business (§4.3); anything else is not a presence type.
        _ => {}
    }
}

/// §3: the user's server handling an outbound subscription stanza. The roster change is
/// made under the owner's roster lock; what must be routed is routed after releasing it (a
/// route can reach the contact's lock, and two users answering each other at once would
/// otherwise wait on each other).
async fn outbound_subscription(
    server: &Arc<Server>,
    owner: &str,
    contact: &str,
    kind: &str,
    el: Element,
) {
    let mut later = Vec::new();
    {
        let _guard = server.registry.roster_lock(owner).await;
        outbound_subscription_locked(server, owner, contact, kind, el, &mut later).await;
    }
    for p in later {
        route(server, p).await;
    }
    if kind == "subscribed" {
        pep_after_approval(server, owner, contact).await;
    }
}

/// A subscription approval lets the contact see the owner's PEP: send it the last items
/// (XEP-0163 §4.3.2) once the approval is stored.
async fn pep_after_approval(server: &Arc<Server>, owner: &str, contact: &str) {
    if matches!(load_item(server, owner, contact).await, Ok(Some(i)) if is_from(i.subscription)) {
        super::pep::subscription_approved(server, owner, contact).await;
    }
}

async fn outbound_subscription_locked(
    server: &Arc<Server>,
    owner: &str,
    contact: &str,
    kind: &str,
    el: Element,
    later: &mut Vec<Element>,
) {
    let item = match load_item(server, owner, contact).await {
        Ok(i) => i,
        Err(e) => {
            storage_error(e);
            return;
        }
    };
    let mut route_it = true;
    let mut updated = None;
    match kind {
        "subscribe" => {
            let mut it = item.unwrap_or_else(|| new_item(contact));
            if !is_to(it.subscription) && !it.ask {
                it.ask = true;
                updated = Some(it);
            }
        }
        "unsubscribe" => {
            if let Some(mut it) = item {
                if is_to(it.subscription) || it.ask {
                    it.subscription = match it.subscription {
                        Subscription::Both => Subscription::From,
                        _ => Subscription::None,
                    };
                    it.ask = false;
                    updated = Some(it);
                }
            }
        }
        "subscribed" => {
            let pending = server
                .storage
                .remove_pending_in(owner, contact)
                .await
                .unwrap_or(false);
            let mut it = item.unwrap_or_else(|| new_item(contact));
            if is_from(it.subscription) {
                route_it = false;
            } else if pending {
                it.subscription = if is_to(it.subscription) {
                    Subscription::Both
                } else {
                    Subscription::From
                };
                it.approved = false;
                updated = Some(it);
            } else if !it.approved {
                // §3.4 pre-approval: remembered, nothing is sent.
                it.approved = true;
                updated = Some(it);
                route_it = false;
            } else {
                route_it = false;
            }
        }
        "unsubscribed" => {
            let pending = server
                .storage
                .remove_pending_in(owner, contact)
                .await
                .unwrap_or(false);
            if let Some(mut it) = item {
                if is_from(it.subscription) || it.approved {
                    it.subscription = match it.subscription {
                        Subscription::Both => Subscription::To,
                        Subscription::From => Subscription::None,
                        s => s,
                    };
                    it.approved = false;
                    updated = Some(it);
                } else if !pending {
                    route_it = false;
                }
            } else if !pending {
                route_it = false;
            }
        }
        _ => return,
    }
    let was_from = updated.as_ref().map(|u| u.subscription);
    if let Some(it) = updated {
        if let Err(e) = save_item(server, owner, it).await {
            storage_error(e);
            return;
        }
    }
    if route_it {
        later.push(el);
    }
    match kind {
        // Approval: the contact now sees our presence (§3.1.5).
        "subscribed" if route_it => later.extend(current_presence(server, owner, contact)),
        // Cancellation: they stop seeing it (§3.2.2).
        "unsubscribed" if was_from.is_some() => {
            later.extend(unavailable_from_all(server, owner, contact))
        }
        _ => {}
    }
}

fn new_item(contact: &str) -> RosterItem {
    RosterItem {
        jid: contact.to_string(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        approved: false,
        groups: Vec::new(),
    }
}

/// A presence stanza arriving for a local user (from anyone, after block checks).
pub async fn inbound(server: &Arc<Server>, el: Element, to: &Jid) {
    let kind = el.attr("type").map(str::to_string);
    let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
        return;
    };
    match kind.as_deref() {
        Some(k @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
            inbound_subscription(server, el, to.bare_str(), &from.bare(), k).await
        }
        Some("probe") => probe(server, to, &from).await,
        _ => {
            if to.resource().is_some() {
                if let Some(s) = server.registry.session(to) {
                    let _ = s.send(el, server.outbox_timeout()).await;
                }
                return;
            }
            deliver_to_available(server, to.bare_str(), el).await;
        }
    }
}

async fn deliver_to_available(server: &Server, bare: &str, el: Element) {
    for s in server.registry.sessions(bare) {
        if s.available() {
            let _ = s.send(el.clone(), server.outbox_timeout()).await;
        }
    }
}

/// §3: the contact's server handling an inbound subscription stanza (locked like
/// [`outbound_subscription`]).
async fn inbound_subscription(
    server: &Arc<Server>,
    el: Element,
    owner: &str,
    from: &Jid,
    kind: &str,
) {
    let mut later = Vec::new();
    {
        let _guard = server.registry.roster_lock(owner).await;
        inbound_subscription_locked(server, el, owner, from, kind, &mut later).await;
    }
    for p in later {
        route(server, p).await;
    }
    if kind == "subscribe" {
        // Pre-approved (§3.4): the owner's server said yes on its own.
        pep_after_approval(server, owner, from.as_str()).await;
    }
}

async fn inbound_subscription_locked(
    server: &Arc<Server>,
    mut el: Element,
    owner: &str,
    from: &Jid,
    kind: &str,
    later: &mut Vec<Element>,
) {
    let owner_jid = Jid::parse(owner).expect("owner is a valid bare JID");
    if !account_exists(server, &owner_jid).await {
        if kind == "subscribe" {
            later.push(subscription_stanza("unsubscribed", owner, from.as_str()));
        }
        return;
    }
    el.set_attr("from", from.as_str());
    el.set_attr("to", owner);
    let contact = from.as_str();
    let item = match load_item(server, owner, contact).await {
        Ok(i) => i,
        Err(e) => {
            storage_error(e);
            return;
        }
    };
    match kind {
        "subscribe" => {
            if let Some(mut it) = item {
                if is_from(it.subscription) {
                    // Already subscribed: answer for the user (§3.1.3).
                    later.push(subscription_stanza("subscribed", owner, contact));
                    return;
                }
                if it.approved {
                    it.subscription = if is_to(it.subscription) {
                        Subscription::Both
                    } else {
                        Subscription::From
                    };
                    it.approved = false;
                    if save_item(server, owner, it)
                        .await
                        .map_err(storage_error)
                        .is_err()
                    {
                        return;
                    }
                    later.push(subscription_stanza("subscribed", owner, contact));
                    later.extend(current_presence(server, owner, contact));
                    return;
                }
            }
            // Kept until the user answers, across logins (§3.1.3).
            if let Err(e) = server
                .storage
                .add_pending_in(owner, contact, &to_stored(&el))
                .await
            {
                storage_error(e);
                return;
            }
            deliver_to_available(server, owner, el).await;
        }
        "subscribed" => {
            if let Some(mut it) = item.filter(|i| i.ask && !is_to(i.subscription)) {
                it.subscription = if is_from(it.subscription) {
                    Subscription::Both
                } else {
                    Subscription::To
                };
                it.ask = false;
                if save_item(server, owner, it)
                    .await
                    .map_err(storage_error)
                    .is_ok()
                {
                    deliver_to_available(server, owner, el).await;
                }
            }
        }
        "unsubscribe" => {
            let pending = server
                .storage
                .remove_pending_in(owner, contact)
                .await
                .unwrap_or(false);
            if let Some(mut it) = item {
                if is_from(it.subscription) || it.approved {
                    let had_from = is_from(it.subscription);
                    it.subscription = if is_to(it.subscription) {
                        Subscription::To
                    } else {
                        Subscription::None
                    };
                    it.approved = false;
                    if save_item(server, owner, it)
                        .await
                        .map_err(storage_error)
                        .is_err()
                    {
                        return;
                    }
                    deliver_to_available(server, owner, el).await;
                    if had_from {
                        later.extend(unavailable_from_all(server, owner, contact));
                    }
                    return;
                }
            }
            if pending {
                deliver_to_available(server, owner, el).await;
            }
        }
        "unsubscribed" => {
            if let Some(mut it) = item.filter(|i| is_to(i.subscription) || i.ask) {
                it.subscription = if is_from(it.subscription) {
                    Subscription::From
                } else {
                    Subscription::None
                };
                it.ask = false;
                if save_item(server, owner, it)
                    .await
                    .map_err(storage_error)
                    .is_ok()
                {
                    deliver_to_available(server, owner, el).await;
                }
            }
        }
        _ => {}
    }
}

/// §4.3: a probe for a local user's presence.
async fn probe(server: &Arc<Server>, user: &Jid, prober: &Jid) {
    let owner = user.bare_str();
    // The roster item first: a contact's roster only exists with its account, so the
    // usual case (a subscribed contact) needs no separate account lookup.
    let item = if prober.bare_str() == owner {
        None
    } else {
        match load_item(server, owner, prober.bare_str()).await {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!(error = %e, "roster load failed");
                return;
            }
        }
    };
    let allowed = match &item {
        None => true,
        Some(Some(i)) => is_from(i.subscription),
        Some(None) => false,
    };
    if !matches!(item, Some(Some(_))) && !account_exists(server, &user.bare()).await {
        route(
            server,
            subscription_stanza("unsubscribed", owner, prober.bare_str()),
        )
        .await;
        return;
    }
    if !allowed {
        return;
    }
    let mut sent = false;
    for s in server.registry.sessions(owner) {
        if let Some(mut p) = s.presence().filter(|_| s.available()) {
            p.set_attr("from", s.jid.as_str());
            p.set_attr("to", prober.as_str());
            route(server, p).await;
            sent = true;
        }
    }
    if !sent {
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", owner)
            .with_attr("to", prober.as_str());
        if let Ok(Some((_, status))) = server.storage.last_activity(owner).await {
            if !status.is_empty() {
                p.push(Element::new("status", ns::CLIENT).with_text(status));
            }
        }
        route(server, p).await;
    }
}

/// The user's current presence (each available resource), addressed to one contact.
fn current_presence(server: &Server, owner: &str, contact: &str) -> Vec<Element> {
    let mut out = Vec::new();
    for s in server.registry.sessions(owner) {
        if let Some(mut p) = s.presence().filter(|_| s.available()) {
            p.set_attr("from", s.jid.as_str());
            p.set_attr("to", contact);
            out.push(p);
        }
    }
    out
}

/// Unavailable presence from each of the user's available resources to one contact.
fn unavailable_from_all(server: &Server, owner: &str, contact: &str) -> Vec<Element> {
    server
        .registry
        .sessions(owner)
        .into_iter()
        .filter(|s| s.available())
        .map(|s| {
            Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", s.jid.as_str())
                .with_attr("to", contact)
        })
        .collect()
}

/// Unavailable presence from each of the user's available resources to one contact.
pub async fn send_unavailable_from_all(server: &Arc<Server>, owner: &str, contact: &str) {
    for p in unavailable_from_all(server, owner, contact) {
        route(server, p).await;
    }
}

fn parse_priority(el: &Element) -> i32 {
    el.child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i32>().ok())
        .map(|p| p.clamp(-128, 127))
        .unwrap_or(0)
}

/// §4.2 / §4.4 / §4.5: presence without a 'to' is broadcast to subscribers and to the
/// user's other resources.
async fn broadcast(server: &Arc<Server>, session: &mut Session, mut el: Element) {
    let owner = session.jid.bare_str().to_string();
    let shared = &session.handle.shared;
    let unavailable = el.attr("type") == Some("unavailable");
    let was_available = shared.available.load(Ordering::Acquire);
    if unavailable {
        if !was_available {
            return;
        }
        go_unavailable(server, session, el).await;
        return;
    }
    super::avatar::outgoing_presence(server, &owner, &mut el).await;
    let priority = parse_priority(&el);
    shared.priority.store(priority, Ordering::Release);
    *shared.presence.lock().unwrap_or_else(|p| p.into_inner()) = Some(el.clone());
    shared.available.store(true, Ordering::Release);
    // XEP-0115 caps, and XEP-0163 last items for what this resource now wants.
    super::caps::on_presence(server, &session.handle, &el, !was_available).await;

    let subscribers = contacts_where(server, &owner, |i| is_from(i.subscription)).await;
    fan_out(server, &el, &subscribers).await;
    for s in server.registry.sessions(&owner) {
        if s.id != session.handle.id && s.available() {
            let mut p = el.clone();
            p.set_attr("to", s.jid.as_str());
            let _ = s.send(p, server.outbox_timeout()).await;
        }
    }
    if was_available {
        return;
    }
    // Initial presence (§4.2): learn contacts' presence, see our other resources, get
    // subscription requests that waited, then offline messages (XEP-0160).
    for contact in contacts_where(server, &owner, |i| is_to(i.subscription)).await {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "probe")
            .with_attr("from", session.jid.as_str())
            .with_attr("to", contact);
        route(server, p).await;
    }
    for s in server.registry.sessions(&owner) {
        if s.id != session.handle.id {
            if let Some(mut p) = s.presence().filter(|_| s.available()) {
                p.set_attr("from", s.jid.as_str());
                p.set_attr("to", session.jid.as_str());
                session.to_client([p]);
            }
        }
    }
    match server.storage.pending_in(&owner).await {
        Ok(list) => {
            for (_, xml) in list {
                if let Some(p) = parse_fragment(&xml) {
                    session.to_client([p]);
                }
            }
        }
        Err(e) => {
            storage_error(e);
        }
    }
    if priority >= 0 {
        offline::deliver(server, session).await;
    }
}

/// Sends `el` (with 'from' set) to each contact's bare JID.
async fn fan_out(server: &Arc<Server>, el: &Element, contacts: &[String]) {
    for c in contacts {
        let mut p = el.clone();
        p.set_attr("to", c.as_str());
        route(server, p).await;
    }
}

async fn go_unavailable(server: &Arc<Server>, session: &mut Session, el: Element) {
    let owner = session.jid.bare_str().to_string();
    let shared = &session.handle.shared;
    shared.available.store(false, Ordering::Release);
    *shared.presence.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let subscribers = contacts_where(server, &owner, |i| is_from(i.subscription)).await;
    fan_out(server, &el, &subscribers).await;
    for s in server.registry.sessions(&owner) {
        if s.id != session.handle.id && s.available() {
            let mut p = el.clone();
            p.set_attr("to", s.jid.as_str());
            let _ = s.send(p, server.outbox_timeout()).await;
        }
    }
    // §4.6.3: directed presence recipients learn we left.
    for j in std::mem::take(&mut session.directed) {
        if !subscribers.iter().any(|s| s == j.bare_str()) {
            let mut p = el.clone();
            p.set_attr("to", j.as_str());
            route(server, p).await;
        }
    }
    if !server
        .registry
        .sessions(&owner)
        .iter()
        .any(|s| s.id != session.handle.id && s.available())
    {
        let status = el
            .child("status", ns::CLIENT)
            .map(|s| s.text())
            .unwrap_or_default();
        let now = super::now_micros() / 1_000_000;
        if let Err(e) = server.storage.set_last_activity(&owner, now, &status).await {
            storage_error(e);
        }
    }
}

/// §4.6: presence to one entity, remembered so it gets our unavailable later.
async fn directed(server: &Arc<Server>, session: &mut Session, mut el: Element, to: Jid) {
    let unavailable = el.attr("type") == Some("unavailable");
    super::avatar::outgoing_presence(server, session.jid.bare_str(), &mut el).await;
    if unavailable {
        session.directed.retain(|j| *j != to);
    } else if !session.directed.contains(&to) && session.directed.len() < 1000 {
        let subscribed = matches!(load_item(server, session.jid.bare_str(), to.bare_str()).await, Ok(Some(i)) if is_from(i.subscription));
        if !subscribed {
            session.directed.push(to.clone());
        }
    }
    route(server, el).await;
}

/// The session's stream ended: if it never said unavailable, say it for it (§4.6.3), and
/// record last activity.
pub async fn session_ended(server: &Arc<Server>, session: &mut Session) {
    // Replaced by a new session with the same full JID (conflict): the new one owns that
    // address now, and an unavailable from it would hide the new session's presence.
    let replaced = server
        .registry
        .session(&session.jid)
        .is_some_and(|s| s.id != session.handle.id);
    if replaced {
        session
            .handle
            .shared
            .available
            .store(false, Ordering::Release);
        return;
    }
    if session.handle.available() {
        let el = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", session.jid.as_str());
        go_unavailable(server, session, el).await;
        return;
    }
    // Directed presence without initial presence (a bot in group chats, say): those
    // recipients still learn that this client left.
    for j in std::mem::take(&mut session.directed) {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", session.jid.as_str())
            .with_attr("to", j.as_str());
        route(server, p).await;
    }
    if server.registry.sessions(session.jid.bare_str()).is_empty() {
        let now = super::now_micros() / 1_000_000;
        // Keep the status of an explicit unavailable sent earlier (XEP-0012 §4).
        let status = match server.storage.last_activity(session.jid.bare_str()).await {
            Ok(Some((_, s))) => s,
            _ => String::new(),
        };
        let _ = server
            .storage
            .set_last_activity(session.jid.bare_str(), now, &status)
            .await;
    }
}
