//! XEP-0357: Push Notifications — a user's App Clients register XMPP Push Services
//! (`<enable/>` / `<disable/>` on their own account) and the server publishes a
//! `urn:xmpp:push:summary` notification to each registration when a message waits for them.
//!
//! The App Server's push service is reached through the router like any other JID: an
//! XEP-0114 component today, a remote domain once server-to-server exists.
//!
//! Registrations are kept per account in the private store under `push:registrations`
//! (one `<registration jid node>` per service and node, with the publish-options form the
//! client gave). Every read-modify-write of one owner's list runs under that owner's stripe
//! lock. Nothing is cached, so there is nothing to keep coherent between nodes.
//!
//! When a notification is sent:
//! - a notifiable message (a body, an encrypted OMEMO/OpenPGP payload, a call proposal or a
//!   MUC invitation; not chat states, receipts, markers, carbons or groupchat) is stored
//!   offline for the user ([`on_offline`]);
//! - such a message is queued for a session whose connection is lost and waits to be
//!   resumed, or whose client said it is inactive ([`on_session_queued`], called by c2s).
//!
//! All of the user's registrations are notified (the server cannot tell which App Client
//! belongs to which session). A message is notified once: the same message reaching offline
//! storage after a hibernating session expired does not notify again (remembered by its
//! XEP-0359 stanza-id, else sender and id, for the user's last few messages).
//!
//! The summary always carries `message-count` (offline messages plus messages queued for
//! waiting sessions) and `last-message-sender`; `last-message-body` only with
//! `push.include_body = true` (the body goes through the App Server and the platform's push
//! service, XEP-0357 §9), never for encrypted messages, cut to 256 characters.
//!
//! Throttling: with `push.min_interval_secs = N > 0`, a registration gets at most one
//! notification per N seconds; what arrives meanwhile is folded into one trailing
//! notification at the end of the interval (with the count at that moment), so the last
//! message is never left without one. The default 0 publishes for every message.
//!
//! Errors (§7.1): an error reply of type `cancel` or `auth` (item-not-found, not-authorized,
//! forbidden, …) disables that registration at once. Errors that say the path is down
//! rather than the registration is wrong (`wait`/`modify`, service-unavailable,
//! remote-server-not-found/-timeout, internal-server-error) are counted; five in a row
//! disable it, a success resets the count.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{
    parse_fragment, storage_error, to_stored, IqHandler, IqRegistry, IqRequest, IqResult, Target,
};
use crate::Server;

pub const NS: &str = "urn:xmpp:push:0";
const SUMMARY: &str = "urn:xmpp:push:summary";
const STORE_KEY: &str = "push:registrations";
const STORE_NS: &str = "urn:herald:push:0";
/// Registrations per account (one per device and App Server is the normal case).
pub const MAX_REGISTRATIONS: usize = 32;
/// Serialized size of one registration's publish-options form.
const MAX_FORM_BYTES: usize = 8 * 1024;
const MAX_NODE_BYTES: usize = 1024;
/// Characters of a body put into a notification (with `include_body`).
const MAX_BODY_CHARS: usize = 256;
/// Transient errors in a row before a registration is disabled.
pub const MAX_TRANSIENT_FAILURES: u32 = 5;
/// How long an answer to a publish is waited for (it is only used for error handling).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_PENDING: usize = 20_000;
/// Messages per user remembered as already notified.
const RECENT_PER_USER: usize = 32;
/// Sizes beyond which the in-memory maps are pruned of entries that no longer matter.
const PRUNE_AT: usize = 50_000;

const ENCRYPTED: &[(&str, &str)] = &[
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    ("openpgp", "urn:xmpp:openpgp:0"),
    ("x", "jabber:x:encrypted"),
];

pub fn register(r: &mut IqRegistry) {
    r.register(NS, PushHandler);
    // Clients look for push support on their own bare JID.
    r.account_features.push(NS);
}

/// One enabled push service of an account.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub jid: Jid,
    /// `None` when the client gave no node (the publish then carries none either).
    pub node: Option<String>,
    /// The client's `jabber:x:data` publish-options form, sent with every publish.
    pub options: Option<Element>,
}

impl Registration {
    fn same(&self, jid: &Jid, node: Option<&str>) -> bool {
        self.jid == *jid && self.node.as_deref() == node
    }
}

type RegKey = (String, String, String);

fn reg_key(owner: &str, r: &Registration) -> RegKey {
    (
        owner.to_string(),
        r.jid.as_str().to_string(),
        r.node.clone().unwrap_or_default(),
    )
}

/// What the newest notifiable message said, for a notification sent now or later.
#[derive(Clone, Debug)]
struct Latest {
    sender: Option<String>,
    body: Option<String>,
}

#[derive(Default)]
struct RegState {
    last_sent: Option<Instant>,
    /// A trailing notification is scheduled; it will carry this.
    deferred: Option<Latest>,
    failures: u32,
}

struct PendingPublish {
    key: RegKey,
    sent: Instant,
}

#[derive(Default)]
struct State {
    /// Publishes awaiting their answer, by IQ id.
    pending: HashMap<String, PendingPublish>,
    /// Throttle and error state per registration (only where there is some).
    regs: HashMap<RegKey, RegState>,
    /// Notified messages queued for waiting sessions: owner → full JID → (count, last).
    queued: HashMap<String, HashMap<String, (u64, Instant)>>,
    /// Keys of the last messages notified per owner.
    recent: HashMap<String, VecDeque<String>>,
}

/// Server-wide push state: per-owner write locks, the answers awaited, throttling.
pub struct Push {
    locks: Vec<tokio::sync::Mutex<()>>,
    state: Mutex<State>,
}

impl Default for Push {
    fn default() -> Push {
        Push {
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            state: Mutex::new(State::default()),
        }
    }
}

impl Push {
    async fn lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        owner.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().await
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes sent and not yet answered (for tests and metrics).
    pub fn pending_len(&self) -> usize {
        self.state().pending.len()
    }

    /// Errors in a row from a registration's service (for tests and metrics).
    pub fn failures(&self, owner: &str, service: &str, node: &str) -> u32 {
        let key = (owner.to_string(), service.to_string(), node.to_string());
        self.state().regs.get(&key).map_or(0, |s| s.failures)
    }
}

// ---------------------------------------------------------------------------------------
// Storage

fn parse_registrations(xml: &str) -> Vec<Registration> {
    let Some(root) = parse_fragment(xml) else {
        tracing::warn!("unreadable push registrations ignored");
        return Vec::new();
    };
    root.elements()
        .filter(|e| e.is("registration", STORE_NS))
        .filter_map(|e| {
            let jid = Jid::parse(e.attr("jid")?).ok()?;
            Some(Registration {
                jid,
                node: e.attr("node").map(str::to_string),
                options: e.child("x", ns::DATA_FORMS).cloned(),
            })
        })
        .collect()
}

fn serialize_registrations(list: &[Registration]) -> String {
    let mut root = Element::new("registrations", STORE_NS);
    for r in list {
        let mut e = Element::new("registration", STORE_NS).with_attr("jid", r.jid.as_str());
        if let Some(n) = &r.node {
            e.set_attr("node", n.as_str());
        }
        if let Some(x) = &r.options {
            e.push(x.clone());
        }
        root.push(e);
    }
    to_stored(&root)
}

/// The account's registrations (empty when none or on a storage error, which is logged).
pub async fn registrations(server: &Server, owner: &str) -> Vec<Registration> {
    match server.storage.get_private(owner, STORE_KEY).await {
        Ok(Some(xml)) => parse_registrations(&xml),
        Ok(None) => Vec::new(),
        Err(e) => {
            storage_error(e);
            Vec::new()
        }
    }
}

async fn load(server: &Server, owner: &str) -> Result<Vec<Registration>, StanzaError> {
    match server.storage.get_private(owner, STORE_KEY).await {
        Ok(Some(xml)) => Ok(parse_registrations(&xml)),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(storage_error(e)),
    }
}

async fn save(server: &Server, owner: &str, list: &[Registration]) -> Result<(), StanzaError> {
    server
        .storage
        .set_private(owner, STORE_KEY, &serialize_registrations(list))
        .await
        .map_err(storage_error)
}

/// Removes the registrations of `owner` for `jid` (and `node`, when given); returns how
/// many were removed. Forgets their throttle and error state.
async fn remove(
    server: &Server,
    owner: &str,
    jid: &Jid,
    node: Option<&str>,
) -> Result<usize, StanzaError> {
    let _g = server.push.lock(owner).await;
    let mut list = load(server, owner).await?;
    let before = list.len();
    list.retain(|r| !(r.jid == *jid && node.is_none_or(|n| r.node.as_deref() == Some(n))));
    let removed = before - list.len();
    if removed > 0 {
        save(server, owner, &list).await?;
        let mut st = server.push.state();
        st.regs
            .retain(|k, _| !(k.0 == owner && k.1 == jid.as_str() && node.is_none_or(|n| k.2 == n)));
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------
// enable / disable

struct PushHandler;

#[async_trait]
impl IqHandler for PushHandler {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::OwnAccount {
            return Err(StanzaError::new(Cond::Forbidden)
                .with_text("push notifications are configured on one's own account"));
        }
        if !req.set {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        let owner = req.to.bare();
        match req.payload.name.as_str() {
            "enable" => enable(server, owner.as_str(), req.payload).await,
            "disable" => disable(server, owner.as_str(), req.payload).await,
            _ => Err(StanzaError::new(Cond::BadRequest)),
        }
    }
}

fn service_jid(payload: &Element) -> Result<Jid, StanzaError> {
    let raw = payload.attr("jid").ok_or_else(|| {
        StanzaError::new(Cond::BadRequest).with_text("the push service 'jid' is required")
    })?;
    Jid::parse(raw).map_err(|_| StanzaError::new(Cond::JidMalformed))
}

fn node_attr(payload: &Element) -> Result<Option<String>, StanzaError> {
    match payload.attr("node") {
        None | Some("") => Ok(None),
        Some(n) if n.len() > MAX_NODE_BYTES => {
            Err(StanzaError::new(Cond::NotAcceptable).with_text("node name too long"))
        }
        Some(n) => Ok(Some(n.to_string())),
    }
}

/// The publish-options form of an `<enable/>`: a submitted form whose FORM_TYPE, if any,
/// is XEP-0060's publish-options.
fn options_form(payload: &Element) -> Result<Option<Element>, StanzaError> {
    let Some(x) = payload.child("x", ns::DATA_FORMS) else {
        return Ok(None);
    };
    if !matches!(x.attr("type"), Some("submit") | None) {
        return Err(StanzaError::new(Cond::BadRequest)
            .with_text("publish options must be a submitted data form"));
    }
    let form_type = x
        .elements()
        .find(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.child("value", ns::DATA_FORMS).map(|v| v.text()));
    if form_type.is_some_and(|t| t.trim() != ns::PUBSUB_PUBLISH_OPTIONS) {
        return Err(StanzaError::new(Cond::BadRequest).with_text(format!(
            "the form's FORM_TYPE must be {}",
            ns::PUBSUB_PUBLISH_OPTIONS
        )));
    }
    let mut form = x.clone();
    form.set_attr("type", "submit");
    if to_stored(&form).len() > MAX_FORM_BYTES {
        return Err(StanzaError::new(Cond::NotAcceptable).with_text("publish options too large"));
    }
    Ok(Some(form))
}

/// §5: registers (or, for a known service and node, updates the options of) a service.
async fn enable(server: &Arc<Server>, owner: &str, payload: &Element) -> IqResult {
    let jid = service_jid(payload)?;
    let node = node_attr(payload)?;
    let options = options_form(payload)?;
    let reg = Registration { jid, node, options };
    let _g = server.push.lock(owner).await;
    let mut list = load(server, owner).await?;
    list.retain(|r| !r.same(&reg.jid, reg.node.as_deref()));
    if list.len() >= MAX_REGISTRATIONS {
        return Err(StanzaError::new(Cond::NotAllowed).with_text(format!(
            "at most {MAX_REGISTRATIONS} push registrations per account; disable one first"
        )));
    }
    let key = reg_key(owner, &reg);
    list.push(reg);
    save(server, owner, &list).await?;
    server.push.state().regs.remove(&key);
    tracing::debug!(owner, service = %key.1, node = %key.2, "push enabled");
    Ok(None)
}

/// §6: removes one service node, or every node of a service.
async fn disable(server: &Arc<Server>, owner: &str, payload: &Element) -> IqResult {
    let jid = service_jid(payload)?;
    let node = node_attr(payload)?;
    let n = remove(server, owner, &jid, node.as_deref()).await?;
    tracing::debug!(owner, service = %jid, removed = n, "push disabled");
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// What is notified

/// Whether a message is worth waking a device for.
pub fn notifiable(el: &Element) -> bool {
    if el.name != "message" {
        return false;
    }
    if matches!(el.attr("type"), Some("groupchat" | "headline" | "error")) {
        return false;
    }
    let mut any = false;
    for c in el.elements() {
        if c.ns == ns::CARBONS || c.is("result", ns::MAM) {
            // Copies of the user's own traffic and archive results are never news.
            return false;
        }
        let worth = (c.is("body", ns::CLIENT) && !c.text().trim().is_empty())
            || ENCRYPTED.iter().any(|(n, x)| c.is(n, x))
            || c.is("propose", "urn:xmpp:jingle-message:0")
            || c.is("x", "jabber:x:conference")
            || (c.is("x", "http://jabber.org/protocol/muc#user")
                && c.child("invite", "http://jabber.org/protocol/muc#user")
                    .is_some());
        any |= worth;
    }
    any
}

fn is_encrypted(el: &Element) -> bool {
    el.elements()
        .any(|c| ENCRYPTED.iter().any(|(n, x)| c.is(n, x)))
}

fn latest(server: &Server, el: &Element) -> Latest {
    let body = if server.settings.raw.push.include_body && !is_encrypted(el) {
        el.child("body", ns::CLIENT).map(|b| {
            let t = b.text();
            let t = t.trim();
            match t.char_indices().nth(MAX_BODY_CHARS) {
                Some((i, _)) => format!("{}…", &t[..i]),
                None => t.to_string(),
            }
        })
    } else {
        None
    };
    Latest {
        sender: el.attr("from").map(str::to_string),
        body: body.filter(|b| !b.is_empty()),
    }
}

/// A key identifying one message for this owner, to notify it once.
fn message_key(owner: &str, el: &Element) -> Option<String> {
    if let Some(id) = el
        .elements()
        .find(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(owner))
        .and_then(|c| c.attr("id"))
    {
        return Some(format!("sid:{id}"));
    }
    Some(format!("{}\u{0}{}", el.attr("from")?, el.attr("id")?))
}

/// Remembers the message as notified; false when it already was.
fn first_time(state: &mut State, owner: &str, key: Option<String>) -> bool {
    let Some(key) = key else { return true };
    if state.recent.len() > PRUNE_AT && !state.recent.contains_key(owner) {
        state.recent.clear();
    }
    let seen = state.recent.entry(owner.to_string()).or_default();
    if seen.contains(&key) {
        return false;
    }
    if seen.len() >= RECENT_PER_USER {
        seen.pop_front();
    }
    seen.push_back(key);
    true
}

/// A message was stored offline for `owner_bare` (after the store succeeded).
pub async fn on_offline(server: &Arc<Server>, owner_bare: &Jid, stanza: &Element) {
    if !notifiable(stanza) {
        return;
    }
    let owner = owner_bare.bare();
    let key = message_key(owner.as_str(), stanza);
    if !first_time(&mut server.push.state(), owner.as_str(), key) {
        return;
    }
    let info = latest(server, stanza);
    tokio::spawn(notify(server.clone(), owner, info));
}

/// A message was queued for the session `session_jid` while nobody reads it: its
/// connection is lost and it waits for resumption (XEP-0198), or its client is inactive
/// (XEP-0352). Call [`on_session_active`] when the client is back.
pub async fn on_session_queued(server: &Arc<Server>, session_jid: &Jid, stanza: &Element) {
    if !notifiable(stanza) {
        return;
    }
    let owner = session_jid.bare();
    let key = message_key(owner.as_str(), stanza);
    {
        let mut st = server.push.state();
        let now = Instant::now();
        let entry = st
            .queued
            .entry(owner.as_str().to_string())
            .or_default()
            .entry(session_jid.as_str().to_string())
            .or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        if !first_time(&mut st, owner.as_str(), key) {
            return;
        }
    }
    let info = latest(server, stanza);
    tokio::spawn(notify(server.clone(), owner, info));
}

/// The session's client is reading again (resumed, active, or the session ended and
/// what it held went back to the router): its queued messages no longer count.
pub fn on_session_active(server: &Server, session_jid: &Jid) {
    let mut st = server.push.state();
    let bare = session_jid.bare_str();
    if let Some(m) = st.queued.get_mut(bare) {
        m.remove(session_jid.as_str());
        if m.is_empty() {
            st.queued.remove(bare);
        }
    }
}

/// Messages waiting for the owner: offline ones plus those queued for waiting sessions.
async fn message_count(server: &Server, owner: &str) -> u64 {
    let offline = match server.storage.count_offline(owner).await {
        Ok(n) => n,
        Err(e) => {
            storage_error(e);
            0
        }
    };
    // A waiting session lives at most resume_timeout_secs; older counts are leftovers.
    let stale = Duration::from_secs(server.settings.raw.c2s.resume_timeout_secs + 60);
    let mut st = server.push.state();
    let queued = match st.queued.get_mut(owner) {
        Some(m) => {
            m.retain(|_, (_, t)| t.elapsed() < stale);
            m.values().map(|(n, _)| n).sum()
        }
        None => 0,
    };
    if st.queued.get(owner).is_some_and(|m| m.is_empty()) {
        st.queued.remove(owner);
    }
    if st.queued.len() > PRUNE_AT {
        st.queued.retain(|_, m| {
            m.retain(|_, (_, t)| t.elapsed() < stale);
            !m.is_empty()
        });
    }
    offline + queued
}

// ---------------------------------------------------------------------------------------
// Publishing

enum Decision {
    Now,
    Later(Duration),
    Folded,
}

fn decide(state: &mut State, key: &RegKey, interval: Duration, info: &Latest) -> Decision {
    if interval.is_zero() {
        return Decision::Now;
    }
    if state.regs.len() > PRUNE_AT {
        state.regs.retain(|_, s| {
            s.deferred.is_some()
                || s.failures > 0
                || s.last_sent.is_some_and(|t| t.elapsed() < interval)
        });
    }
    let now = Instant::now();
    let s = state.regs.entry(key.clone()).or_default();
    match s.last_sent {
        Some(t) if now < t + interval => {
            let first = s.deferred.is_none();
            s.deferred = Some(info.clone());
            if first {
                Decision::Later(t + interval - now)
            } else {
                Decision::Folded
            }
        }
        _ => {
            s.last_sent = Some(now);
            Decision::Now
        }
    }
}

async fn notify(server: Arc<Server>, owner: Jid, info: Latest) {
    let list = registrations(&server, owner.as_str()).await;
    if list.is_empty() {
        return;
    }
    let interval = Duration::from_secs(server.settings.raw.push.min_interval_secs);
    let count = message_count(&server, owner.as_str()).await;
    for reg in list {
        let key = reg_key(owner.as_str(), &reg);
        let d = decide(&mut server.push.state(), &key, interval, &info);
        match d {
            Decision::Now => publish(&server, &owner, &reg, key, count, &info).await,
            Decision::Later(wait) => {
                tokio::spawn(trailing(server.clone(), owner.clone(), key, wait));
            }
            Decision::Folded => {}
        }
    }
}

/// The trailing notification of a throttled registration, with the count at that time.
async fn trailing(server: Arc<Server>, owner: Jid, key: RegKey, wait: Duration) {
    tokio::time::sleep(wait).await;
    let info = {
        let mut st = server.push.state();
        let Some(s) = st.regs.get_mut(&key) else {
            return;
        };
        s.last_sent = Some(Instant::now());
        s.deferred.take()
    };
    let Some(info) = info else { return };
    // Still enabled? (It may have been disabled or changed meanwhile.)
    let Some(reg) = registrations(&server, owner.as_str())
        .await
        .into_iter()
        .find(|r| reg_key(owner.as_str(), r) == key)
    else {
        return;
    };
    let count = message_count(&server, owner.as_str()).await;
    publish(&server, &owner, &reg, key, count, &info).await;
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

/// §7: the publish of one notification to one registration.
pub fn notification_iq(
    owner: &Jid,
    reg: &Registration,
    id: &str,
    count: u64,
    sender: Option<&str>,
    body: Option<&str>,
) -> Element {
    let mut form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", SUMMARY).with_attr("type", "hidden"))
        .with_child(field("message-count", &count.to_string()));
    if let Some(s) = sender {
        form.push(field("last-message-sender", s));
    }
    if let Some(b) = body {
        form.push(field("last-message-body", b));
    }
    let mut publish = Element::new("publish", ns::PUBSUB);
    if let Some(n) = &reg.node {
        publish.set_attr("node", n.as_str());
    }
    publish.push(
        Element::new("item", ns::PUBSUB)
            .with_child(Element::new("notification", NS).with_child(form)),
    );
    let mut pubsub = Element::new("pubsub", ns::PUBSUB).with_child(publish);
    if let Some(x) = &reg.options {
        pubsub.push(Element::new("publish-options", ns::PUBSUB).with_child(x.clone()));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_attr("from", owner.bare_str())
        .with_attr("to", reg.jid.as_str())
        .with_child(pubsub)
}

async fn publish(
    server: &Arc<Server>,
    owner: &Jid,
    reg: &Registration,
    key: RegKey,
    count: u64,
    info: &Latest,
) {
    let id = format!("push-{}", crate::stream::random_id());
    {
        let mut st = server.push.state();
        if st.pending.len() >= MAX_PENDING {
            st.pending
                .retain(|_, p| p.sent.elapsed() < RESPONSE_TIMEOUT);
        }
        // Still full: the answer is not tracked (only error handling needs it).
        if st.pending.len() < MAX_PENDING {
            st.pending.insert(
                id.clone(),
                PendingPublish {
                    key,
                    sent: Instant::now(),
                },
            );
        }
    }
    let iq = notification_iq(
        owner,
        reg,
        &id,
        count,
        info.sender.as_deref(),
        info.body.as_deref(),
    );
    tracing::debug!(owner = %owner, service = %reg.jid, count, "push notification");
    crate::router::route(server, iq).await;
}

/// Whether an error reply means the registration itself is wrong (disable at once) rather
/// than the way to the App Server being down for now.
fn permanent(error: &Element) -> bool {
    let kind = error.attr("type").unwrap_or("cancel");
    let cond = error
        .elements()
        .find(|c| c.ns == ns::STANZAS && c.name != "text")
        .map(|c| c.name.as_str())
        .unwrap_or("undefined-condition");
    let transient = matches!(
        cond,
        "service-unavailable"
            | "remote-server-not-found"
            | "remote-server-timeout"
            | "internal-server-error"
            | "resource-constraint"
    );
    matches!(kind, "cancel" | "auth") && !transient
}

/// An IQ result or error addressed to a local bare JID: if it answers one of our
/// publishes, a success clears the registration's error count and an error may disable
/// it (§7.1). Returns whether it was such an answer.
pub async fn on_iq_response(server: &Arc<Server>, el: &Element) -> bool {
    let (Some(id), Some(from), Some(to)) = (el.attr("id"), el.attr("from"), el.attr("to")) else {
        return false;
    };
    if !id.starts_with("push-") {
        return false;
    }
    let key = {
        let mut st = server.push.state();
        let Some(p) = st.pending.get(id) else {
            return false;
        };
        let from_ok = Jid::parse(from).is_ok_and(|f| f.as_str() == p.key.1);
        let to_ok = Jid::parse(to).is_ok_and(|t| t.bare_str() == p.key.0);
        if !from_ok || !to_ok {
            return false;
        }
        st.pending.remove(id).map(|p| p.key).expect("present")
    };
    let disable = match el.attr("type") {
        Some("result") => {
            let mut st = server.push.state();
            if let Some(s) = st.regs.get_mut(&key) {
                s.failures = 0;
            }
            false
        }
        Some("error") => {
            let hard = el.child("error", ns::CLIENT).is_none_or(permanent);
            let mut st = server.push.state();
            let s = st.regs.entry(key.clone()).or_default();
            s.failures += 1;
            hard || s.failures >= MAX_TRANSIENT_FAILURES
        }
        _ => false,
    };
    if disable {
        let (owner, service, node) = &key;
        tracing::info!(
            owner,
            service,
            node,
            "push service answered with an error; registration disabled"
        );
        if let Ok(jid) = Jid::parse(service) {
            let node = (!node.is_empty()).then_some(node.as_str());
            // Only the exact registration: a node-less one must not take the others along.
            let _ = remove_exact(server, owner, &jid, node).await;
        }
    }
    true
}

async fn remove_exact(
    server: &Server,
    owner: &str,
    jid: &Jid,
    node: Option<&str>,
) -> Result<(), StanzaError> {
    let _g = server.push.lock(owner).await;
    let mut list = load(server, owner).await?;
    let before = list.len();
    list.retain(|r| !r.same(jid, node));
    if list.len() != before {
        save(server, owner, &list).await?;
    }
    let key = (
        owner.to_string(),
        jid.as_str().to_string(),
        node.unwrap_or_default().to_string(),
    );
    server.push.state().regs.remove(&key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        parse_fragment(xml).expect("parses")
    }

    #[test]
    fn what_is_notifiable() {
        assert!(notifiable(&el(
            "<message from='a@x/r' type='chat'><body>hi</body></message>"
        )));
        assert!(notifiable(&el(
            "<message from='a@x/r'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"
        )));
        assert!(!notifiable(&el(
            "<message from='a@x/r' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!notifiable(&el(
            "<message from='a@x/r' type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>"
        )));
        assert!(!notifiable(&el(
            "<message from='a@x/r' type='groupchat'><body>hi</body></message>"
        )));
        assert!(!notifiable(&el(
            "<message from='a@x' type='chat'><sent xmlns='urn:xmpp:carbons:2'/><body>x</body></message>"
        )));
        assert!(!notifiable(&el(
            "<message from='a@x/r'><body> </body></message>"
        )));
        assert!(!notifiable(&el("<presence from='a@x/r'/>")));
    }

    #[test]
    fn registrations_round_trip() {
        let list = vec![
            Registration {
                jid: Jid::parse("push.example").unwrap(),
                node: Some("n1".into()),
                options: Some(el(
                    "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x>",
                )),
            },
            Registration {
                jid: Jid::parse("push.example").unwrap(),
                node: None,
                options: None,
            },
        ];
        let back = parse_registrations(&serialize_registrations(&list));
        assert_eq!(back, list);
    }

    #[test]
    fn error_classification() {
        let e = |t: &str, c: &str| {
            el(&format!(
                "<error type='{t}'><{c} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
            ))
        };
        assert!(permanent(&e("cancel", "item-not-found")));
        assert!(permanent(&e("auth", "not-authorized")));
        assert!(!permanent(&e("cancel", "service-unavailable")));
        assert!(!permanent(&e("wait", "resource-constraint")));
        assert!(!permanent(&e("modify", "bad-request")));
    }

    #[test]
    fn throttle_folds_into_one_trailing_notification() {
        let mut st = State::default();
        let key = ("o@x".to_string(), "p".to_string(), "n".to_string());
        let info = Latest {
            sender: None,
            body: None,
        };
        let i = Duration::from_secs(60);
        assert!(matches!(decide(&mut st, &key, i, &info), Decision::Now));
        assert!(matches!(
            decide(&mut st, &key, i, &info),
            Decision::Later(_)
        ));
        assert!(matches!(decide(&mut st, &key, i, &info), Decision::Folded));
        assert!(matches!(
            decide(&mut st, &key, Duration::ZERO, &info),
            Decision::Now
        ));
    }

    #[test]
    fn notified_once() {
        let mut st = State::default();
        let m = el("<message from='a@x/r' id='m1'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='o@x' id='S1'/></message>");
        let k = message_key("o@x", &m);
        assert_eq!(k.as_deref(), Some("sid:S1"));
        assert!(first_time(&mut st, "o@x", k.clone()));
        assert!(!first_time(&mut st, "o@x", k));
        assert!(first_time(&mut st, "o@x", None));
    }
}
