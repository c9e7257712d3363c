//! XEP-0163: Personal Eventing Protocol — a XEP-0060 pubsub service on every account's bare
//! JID (publish with auto-create and publish-options, items retrieval, retract, purge, delete,
//! node configuration), with presence-based, caps-filtered (`+notify`) notifications and
//! last-item delivery. XEP-0223 private storage is the `whitelist` access model with
//! persistent items.
//!
//! Storage is the per-user private store: `pep:nodes` holds the node list with each node's
//! configuration, `pep:node:{name}` the node's items (newest last). Every write of one
//! owner's PEP data happens under that owner's stripe lock, so read-modify-write cycles do
//! not lose updates; nothing is cached, so there is nothing to keep coherent.
//!
//! Explicit XEP-0060 subscriptions are answered with `feature-not-implemented`: PEP's
//! presence subscription plus `+notify` (XEP-0163 §4) is what clients use, and a stored
//! subscription list would be state no client relies on.
//!
//! Last-item delivery runs from the interested side: when a local resource's caps resolve
//! (initial presence or a new `ver`), it gets the last item of each `+notify` node of its
//! own account and of every contact whose presence it receives. With only local users that
//! is the same moment its presence reaches those owners; s2s will need the owner-side hook.
//!
//! Conversions: after a client's publish or retract, `converted` hands the node to
//! `bookmarks.rs` (XEP-0402 ⇄ XEP-0048) and `avatar.rs` (XEP-0398); they write back through
//! [`write_as_owner`], which does not call them again.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::{RosterItem, Subscription};
use herald_xml::Element;

use super::caps::{wants_notify, Features};
use super::roster::{contacts_where, load_item};
use super::{
    blocking, parse_fragment, storage_error, to_stored, IqHandler, IqRegistry, IqRequest, IqResult,
    Target,
};
use crate::session::SessionHandle;
use crate::Server;

const INTERNAL_NS: &str = "urn:herald:pep:0";
/// Largest `max_items` a node may have; `max` means this.
pub const MAX_ITEMS_LIMIT: usize = 256;
/// Nodes per account.
const MAX_NODES: usize = 256;
/// One item's serialized size.
const MAX_ITEM_BYTES: usize = 256 * 1024;
/// A node's stored items together.
const MAX_NODE_BYTES: usize = 2 * 1024 * 1024;
const MAX_NAME_BYTES: usize = 1024;

const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#retrieve-default",
];

pub fn register(r: &mut IqRegistry) {
    r.register(ns::PUBSUB, PubSub);
    r.register(ns::PUBSUB_OWNER, Owner);
    r.account_features.extend_from_slice(FEATURES);
}

/// Per-owner write serialization (striped, fixed size).
pub struct Pep {
    locks: Vec<tokio::sync::Mutex<()>>,
    conversion_locks: Vec<tokio::sync::Mutex<()>>,
    /// XEP-0153 photo hashes of the accounts' vCards (see `avatar.rs`).
    pub(crate) avatar_hashes: super::avatar::PhotoHashes,
}

impl Default for Pep {
    fn default() -> Pep {
        Pep {
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            conversion_locks: (0..16).map(|_| tokio::sync::Mutex::new(())).collect(),
            avatar_hashes: Default::default(),
        }
    }
}

impl Pep {
    async fn lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks[stripe(owner, self.locks.len())].lock().await
    }

    /// Serializes one owner's format conversions (bookmarks, avatars): each reads its source
    /// and writes the other formats while holding it. Never held by PEP writes themselves,
    /// so a conversion may publish.
    pub(crate) async fn conversion_lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let n = self.conversion_locks.len();
        self.conversion_locks[stripe(owner, n)].lock().await
    }
}

fn stripe(owner: &str, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    (h.finish() as usize) % n
}

// ---------------------------------------------------------------------------------------
// Node configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Presence => "presence",
            Access::Roster => "roster",
            Access::Whitelist => "whitelist",
        }
    }
    fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "open" => Access::Open,
            "presence" => Access::Presence,
            "roster" => Access::Roster,
            "whitelist" => Access::Whitelist,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    fn parse(s: &str) -> Option<SendLast> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Config {
    access: Access,
    max_items: usize,
    persist: bool,
    send_last: SendLast,
    groups: Vec<String>,
    notify_retract: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            access: Access::Presence,
            max_items: 1,
            persist: true,
            send_last: SendLast::OnSubAndPresence,
            groups: Vec::new(),
            notify_retract: true,
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn single(values: &[String]) -> Option<&str> {
    match values {
        [v] => Some(v.as_str()),
        [] => Some(""),
        _ => None,
    }
}

impl Config {
    /// Applies one data-form field; `Err` for an unknown field or a value we can't honour.
    fn apply(&mut self, var: &str, values: &[String]) -> Result<(), ()> {
        let v = || single(values).ok_or(());
        match var {
            "FORM_TYPE" => {}
            "pubsub#access_model" => self.access = Access::parse(v()?).ok_or(())?,
            "pubsub#max_items" => {
                self.max_items = match v()? {
                    "max" => MAX_ITEMS_LIMIT,
                    n => match n.parse::<usize>() {
                        Ok(n) if (1..=MAX_ITEMS_LIMIT).contains(&n) => n,
                        _ => return Err(()),
                    },
                }
            }
            "pubsub#persist_items" => self.persist = parse_bool(v()?).ok_or(())?,
            "pubsub#send_last_published_item" => self.send_last = SendLast::parse(v()?).ok_or(())?,
            "pubsub#notify_retract" => self.notify_retract = parse_bool(v()?).ok_or(())?,
            "pubsub#roster_groups_allowed" => {
                let mut g: Vec<String> = values.to_vec();
                g.sort();
                g.dedup();
                self.groups = g;
            }
            // Fixed in PEP: accepted only with the value we have.
            "pubsub#deliver_notifications" | "pubsub#deliver_payloads" | "pubsub#notify_delete" => {
                if parse_bool(v()?) != Some(true) {
                    return Err(());
                }
            }
            "pubsub#publish_model" => {
                if v()? != "publishers" {
                    return Err(());
                }
            }
            _ => return Err(()),
        }
        Ok(())
    }

    fn to_stored(&self, name: &str) -> Element {
        let mut e = Element::new("node", INTERNAL_NS)
            .with_attr("name", name)
            .with_attr("access", self.access.as_str())
            .with_attr("max_items", self.max_items.to_string())
            .with_attr("persist", if self.persist { "1" } else { "0" })
            .with_attr("send_last", self.send_last.as_str())
            .with_attr(
                "notify_retract",
                if self.notify_retract { "1" } else { "0" },
            );
        for g in &self.groups {
            e.push(Element::new("group", INTERNAL_NS).with_text(g.clone()));
        }
        e
    }

    fn from_stored(e: &Element) -> Option<(String, Config)> {
        let d = Config::default();
        let cfg = Config {
            access: e.attr("access").and_then(Access::parse).unwrap_or(d.access),
            max_items: e
                .attr("max_items")
                .and_then(|m| m.parse().ok())
                .unwrap_or(d.max_items),
            persist: e.attr("persist").and_then(parse_bool).unwrap_or(d.persist),
            send_last: e
                .attr("send_last")
                .and_then(SendLast::parse)
                .unwrap_or(d.send_last),
            groups: e
                .elements()
                .filter(|g| g.is("group", INTERNAL_NS))
                .map(|g| g.text())
                .collect(),
            notify_retract: e
                .attr("notify_retract")
                .and_then(parse_bool)
                .unwrap_or(d.notify_retract),
        };
        Some((e.attr("name")?.to_string(), cfg))
    }

    /// The XEP-0060 §8.2 configuration form.
    fn form(&self, form_type: &str, kind: &str) -> Element {
        let field = |var: &str, ty: &str, vals: &[&str]| {
            let mut f = Element::new("field", ns::DATA_FORMS)
                .with_attr("var", var)
                .with_attr("type", ty);
            for v in vals {
                f.push(Element::new("value", ns::DATA_FORMS).with_text(*v));
            }
            f
        };
        let with_options = |mut f: Element, opts: &[&str]| {
            for o in opts {
                f.push(
                    Element::new("option", ns::DATA_FORMS)
                        .with_child(Element::new("value", ns::DATA_FORMS).with_text(*o)),
                );
            }
            f
        };
        let b = |v: bool| if v { "1" } else { "0" };
        let max = self.max_items.to_string();
        let groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        Element::new("x", ns::DATA_FORMS)
            .with_attr("type", kind)
            .with_child(field("FORM_TYPE", "hidden", &[form_type]))
            .with_child(with_options(
                field(
                    "pubsub#access_model",
                    "list-single",
                    &[self.access.as_str()],
                ),
                &["open", "presence", "roster", "whitelist"],
            ))
            .with_child(field("pubsub#max_items", "text-single", &[&max]))
            .with_child(field("pubsub#persist_items", "boolean", &[b(self.persist)]))
            .with_child(with_options(
                field(
                    "pubsub#send_last_published_item",
                    "list-single",
                    &[self.send_last.as_str()],
                ),
                &["never", "on_sub", "on_sub_and_presence"],
            ))
            .with_child(field("pubsub#roster_groups_allowed", "list-multi", &groups))
            .with_child(field(
                "pubsub#notify_retract",
                "boolean",
                &[b(self.notify_retract)],
            ))
            .with_child(field("pubsub#notify_delete", "boolean", &["1"]))
            .with_child(field("pubsub#deliver_notifications", "boolean", &["1"]))
            .with_child(field("pubsub#deliver_payloads", "boolean", &["1"]))
            .with_child(with_options(
                field("pubsub#publish_model", "list-single", &["publishers"]),
                &["publishers"],
            ))
    }
}

/// The fields of a data form, with its FORM_TYPE checked when present.
fn form_fields(x: &Element, form_type: &str) -> Result<Vec<(String, Vec<String>)>, StanzaError> {
    let mut out = Vec::new();
    for f in x.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
        let var = f.attr("var").unwrap_or("").to_string();
        let values: Vec<String> = f
            .elements()
            .filter(|e| e.is("value", ns::DATA_FORMS))
            .map(|v| v.text())
            .collect();
        if var == "FORM_TYPE" && values.first().map(String::as_str) != Some(form_type) {
            return Err(StanzaError::new(Cond::BadRequest).with_text("wrong FORM_TYPE"));
        }
        out.push((var, values));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Storage

struct Item {
    id: String,
    payload: Element,
}

fn items_key(node: &str) -> String {
    format!("pep:node:{node}")
}

const NODES_KEY: &str = "pep:nodes";

async fn load_nodes(server: &Server, owner: &str) -> Result<Vec<(String, Config)>, StanzaError> {
    let stored = server
        .storage
        .get_private(owner, NODES_KEY)
        .await
        .map_err(storage_error)?;
    Ok(stored
        .and_then(|x| parse_fragment(&x))
        .map(|root| root.elements().filter_map(Config::from_stored).collect())
        .unwrap_or_default())
}

async fn save_nodes(
    server: &Server,
    owner: &str,
    nodes: &[(String, Config)],
) -> Result<(), StanzaError> {
    if nodes.is_empty() {
        return server
            .storage
            .delete_private(owner, NODES_KEY)
            .await
            .map(|_| ())
            .map_err(storage_error);
    }
    let mut root = Element::new("nodes", INTERNAL_NS);
    for (n, c) in nodes {
        root.push(c.to_stored(n));
    }
    server
        .storage
        .set_private(owner, NODES_KEY, &to_stored(&root))
        .await
        .map_err(storage_error)
}

async fn load_items(server: &Server, owner: &str, node: &str) -> Result<Vec<Item>, StanzaError> {
    let stored = server
        .storage
        .get_private(owner, &items_key(node))
        .await
        .map_err(storage_error)?;
    Ok(stored
        .and_then(|x| parse_fragment(&x))
        .map(|root| {
            root.elements()
                .filter(|e| e.is("item", INTERNAL_NS))
                .filter_map(|e| {
                    Some(Item {
                        id: e.attr("id")?.to_string(),
                        payload: e.elements().next()?.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

async fn save_items(
    server: &Server,
    owner: &str,
    node: &str,
    items: &[Item],
) -> Result<(), StanzaError> {
    if items.is_empty() {
        return server
            .storage
            .delete_private(owner, &items_key(node))
            .await
            .map(|_| ())
            .map_err(storage_error);
    }
    let mut root = Element::new("items", INTERNAL_NS);
    for it in items {
        root.push(
            Element::new("item", INTERNAL_NS)
                .with_attr("id", it.id.as_str())
                .with_child(it.payload.clone()),
        );
    }
    let xml = to_stored(&root);
    if xml.len() > MAX_NODE_BYTES {
        return Err(pubsub_error(Cond::NotAcceptable, "payload-too-big"));
    }
    server
        .storage
        .set_private(owner, &items_key(node), &xml)
        .await
        .map_err(storage_error)
}

// ---------------------------------------------------------------------------------------
// Access

fn pubsub_error(cond: Cond, app: &str) -> StanzaError {
    StanzaError::new(cond).with_app(Element::new(app, ns::PUBSUB_ERRORS))
}

fn unsupported(feature: &str) -> StanzaError {
    StanzaError::new(Cond::FeatureNotImplemented)
        .with_app(Element::new("unsupported", ns::PUBSUB_ERRORS).with_attr("feature", feature))
}

fn is_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}

fn in_groups(item: &RosterItem, cfg: &Config) -> bool {
    item.groups.iter().any(|g| cfg.groups.contains(g))
}

/// XEP-0060 §6.5.7 / XEP-0163 §4: may `who` read the node?
async fn check_access(
    server: &Server,
    owner: &str,
    who: &Jid,
    cfg: &Config,
) -> Result<(), StanzaError> {
    if who.bare_str() == owner {
        return Ok(());
    }
    match cfg.access {
        Access::Open => Ok(()),
        Access::Presence => match load_item(server, owner, who.bare_str()).await {
            Ok(Some(i)) if is_from(i.subscription) => Ok(()),
            Ok(_) => Err(pubsub_error(
                Cond::NotAuthorized,
                "presence-subscription-required",
            )),
            Err(e) => Err(storage_error(e)),
        },
        Access::Roster => match load_item(server, owner, who.bare_str()).await {
            Ok(Some(i)) if in_groups(&i, cfg) => Ok(()),
            Ok(_) => Err(pubsub_error(Cond::NotAuthorized, "not-in-roster-group")),
            Err(e) => Err(storage_error(e)),
        },
        Access::Whitelist => Err(pubsub_error(Cond::NotAllowed, "closed-node")),
    }
}

// ---------------------------------------------------------------------------------------
// Notifications

fn event_message(owner: &str, to: &Jid, event: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", owner)
        .with_attr("to", to.as_str())
        .with_attr("type", "headline")
        .with_attr("id", crate::stream::random_id())
        .with_child(event.clone())
}

fn event_items(node: &str, items: &[&Item]) -> Element {
    let mut list = Element::new("items", ns::PUBSUB_EVENT).with_attr("node", node);
    for it in items {
        list.push(
            Element::new("item", ns::PUBSUB_EVENT)
                .with_attr("id", it.id.as_str())
                .with_child(it.payload.clone()),
        );
    }
    Element::new("event", ns::PUBSUB_EVENT).with_child(list)
}

/// Sends `event` to every available resource allowed to see the node that advertised
/// `node+notify`: the owner's own and those of contacts sharing presence (XEP-0163 §4.3).
async fn notify(server: &Arc<Server>, owner: &str, node: &str, cfg: &Config, event: &Element) {
    let Ok(owner_jid) = Jid::parse(owner) else {
        return;
    };
    let mut targets: Vec<SessionHandle> = server
        .registry
        .sessions(owner)
        .into_iter()
        .filter(|s| s.available() && wants_notify(s, node))
        .collect();
    let contacts = match cfg.access {
        Access::Whitelist => Vec::new(),
        Access::Roster => {
            contacts_where(server, owner, |i| {
                is_from(i.subscription) && in_groups(i, cfg)
            })
            .await
        }
        Access::Open | Access::Presence => {
            contacts_where(server, owner, |i| is_from(i.subscription)).await
        }
    };
    for c in contacts {
        let sessions: Vec<SessionHandle> = server
            .registry
            .sessions(&c)
            .into_iter()
            .filter(|s| s.available() && wants_notify(s, node))
            .collect();
        if sessions.is_empty() || blocking::blocks(server, &c, &owner_jid).await {
            continue;
        }
        if let Ok(cj) = Jid::parse(&c) {
            if blocking::blocks(server, owner, &cj).await {
                continue;
            }
        }
        targets.extend(sessions);
    }
    for s in targets {
        let _ = s
            .send(event_message(owner, &s.jid, event), server.outbox_timeout())
            .await;
    }
}

/// A resource's `+notify` interests appeared or grew (new caps, or initial presence with
/// `old = None`): send it the last item of each newly interesting node it may see, of its
/// own account and of every contact whose presence it receives (XEP-0163 §4.3.3).
pub async fn interest_changed(
    server: &Arc<Server>,
    handle: &SessionHandle,
    old: Option<Features>,
    new: Features,
) {
    let added: HashSet<&str> = new
        .iter()
        .filter(|f| !old.as_ref().is_some_and(|o| o.contains(*f)))
        .filter_map(|f| f.strip_suffix("+notify"))
        .collect();
    if added.is_empty() || !handle.available() {
        return;
    }
    let me = handle.jid.bare();
    let mut owners = vec![me.to_string()];
    owners.extend(
        contacts_where(server, me.as_str(), |i| {
            matches!(i.subscription, Subscription::To | Subscription::Both)
        })
        .await,
    );
    for owner in owners {
        if owner != me.as_str() {
            let Ok(oj) = Jid::parse(&owner) else { continue };
            if !server.serves(oj.domain())
                || blocking::blocks(server, me.as_str(), &oj).await
                || blocking::blocks(server, &owner, &me).await
            {
                continue;
            }
        }
        let Ok(nodes) = load_nodes(server, &owner).await else {
            continue;
        };
        for (name, cfg) in nodes {
            if !added.contains(name.as_str())
                || cfg.send_last != SendLast::OnSubAndPresence
                || !cfg.persist
                || check_access(server, &owner, &handle.jid, &cfg)
                    .await
                    .is_err()
            {
                continue;
            }
            let Ok(items) = load_items(server, &owner, &name).await else {
                continue;
            };
            if let Some(last) = items.last() {
                let ev = event_items(&name, &[last]);
                let _ = handle
                    .send(
                        event_message(&owner, &handle.jid, &ev),
                        server.outbox_timeout(),
                    )
                    .await;
            }
        }
    }
}

/// XEP-0163 §4.3.2: `subscriber` was just allowed to see `owner`'s presence; each of its
/// available resources gets the last item of every node it wants and may read.
pub async fn subscription_approved(server: &Arc<Server>, owner: &str, subscriber: &str) {
    let Ok(sub) = Jid::parse(subscriber) else {
        return;
    };
    if !server.serves(sub.domain()) {
        return;
    }
    let sessions: Vec<SessionHandle> = server
        .registry
        .sessions(subscriber)
        .into_iter()
        .filter(|s| s.available())
        .collect();
    if sessions.is_empty() {
        return;
    }
    let Ok(nodes) = load_nodes(server, owner).await else {
        return;
    };
    for (name, cfg) in nodes {
        if cfg.send_last != SendLast::OnSubAndPresence || !cfg.persist {
            continue;
        }
        let wanting: Vec<&SessionHandle> = sessions
            .iter()
            .filter(|s| super::caps::wants_notify(s, &name))
            .collect();
        if wanting.is_empty() || check_access(server, owner, &sub, &cfg).await.is_err() {
            continue;
        }
        let Ok(items) = load_items(server, owner, &name).await else {
            continue;
        };
        if let Some(last) = items.last() {
            let ev = event_items(&name, &[last]);
            for s in wanting {
                let _ = s
                    .send(event_message(owner, &s.jid, &ev), server.outbox_timeout())
                    .await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Service discovery

/// disco#items on an account: the nodes `who` may read (XEP-0163 §7.1).
pub async fn disco_items(server: &Server, owner: &Jid, who: &Jid) -> Vec<Element> {
    let mut out = Vec::new();
    let Ok(nodes) = load_nodes(server, owner.bare_str()).await else {
        return out;
    };
    for (name, cfg) in nodes {
        if check_access(server, owner.bare_str(), who, &cfg)
            .await
            .is_ok()
        {
            out.push(
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", owner.bare_str())
                    .with_attr("node", name),
            );
        }
    }
    out
}

/// disco#info on one of an account's nodes (XEP-0060 §5.4).
pub async fn disco_node_info(
    server: &Server,
    owner: &Jid,
    who: &Jid,
    node: &str,
) -> Result<Element, StanzaError> {
    let nodes = load_nodes(server, owner.bare_str()).await?;
    let Some((_, cfg)) = nodes.iter().find(|(n, _)| n == node) else {
        return Err(StanzaError::new(Cond::ItemNotFound));
    };
    check_access(server, owner.bare_str(), who, cfg).await?;
    Ok(Element::new("query", ns::DISCO_INFO)
        .with_attr("node", node)
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "pubsub")
                .with_attr("type", "leaf"),
        )
        .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::PUBSUB)))
}

// ---------------------------------------------------------------------------------------
// Handlers

struct PubSub;
struct Owner;

fn node_attr(e: &Element) -> Result<&str, StanzaError> {
    match e.attr("node") {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME_BYTES => Ok(n),
        Some(n) if !n.is_empty() => Err(StanzaError::new(Cond::NotAcceptable)),
        _ => Err(pubsub_error(Cond::BadRequest, "nodeid-required")),
    }
}

fn require_owner(req: &IqRequest<'_>) -> Result<(), StanzaError> {
    if req.target == Target::OwnAccount {
        Ok(())
    } else {
        Err(StanzaError::new(Cond::Forbidden))
    }
}

#[async_trait]
impl IqHandler for PubSub {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target == Target::Server {
            // No pubsub service on the domain itself (yet).
            return Err(StanzaError::new(Cond::ServiceUnavailable));
        }
        if req.payload.name != "pubsub" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        let mut children = req.payload.elements();
        let Some(first) = children.next() else {
            return Err(StanzaError::new(Cond::BadRequest));
        };
        let owner = req.to.bare();
        match (req.set, first.name.as_str()) {
            (true, "publish") => {
                require_owner(req)?;
                let options = req.payload.child("publish-options", ns::PUBSUB);
                let r = publish(server, owner.as_str(), first, options).await?;
                converted(server, owner.as_str(), node_attr(first)?).await;
                Ok(r)
            }
            (true, "retract") => {
                require_owner(req)?;
                let r = retract(server, owner.as_str(), first).await?;
                converted(server, owner.as_str(), node_attr(first)?).await;
                Ok(r)
            }
            (true, "create") => {
                require_owner(req)?;
                let configure = req.payload.child("configure", ns::PUBSUB);
                create(server, owner.as_str(), first, configure).await
            }
            (false, "items") => items(server, owner.as_str(), req.from, first).await,
            (true, "subscribe") => Err(unsupported("subscribe")),
            (true, "unsubscribe") => Err(unsupported("subscribe")),
            (false, "subscriptions") => Err(unsupported("retrieve-subscriptions")),
            (false, "affiliations") => Err(unsupported("retrieve-affiliations")),
            (_, "options") => Err(unsupported("subscription-options")),
            (false, "default") => Ok(Some(
                Element::new("pubsub", ns::PUBSUB).with_child(
                    Element::new("default", ns::PUBSUB)
                        .with_child(Config::default().form(ns::PUBSUB_NODE_CONFIG, "form")),
                ),
            )),
            _ => Err(StanzaError::new(Cond::BadRequest)),
        }
    }
}

#[async_trait]
impl IqHandler for Owner {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target == Target::Server {
            return Err(StanzaError::new(Cond::ServiceUnavailable));
        }
        if req.payload.name != "pubsub" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        require_owner(req)?;
        let Some(first) = req.payload.elements().next() else {
            return Err(StanzaError::new(Cond::BadRequest));
        };
        let owner = req.to.bare();
        let owner = owner.as_str();
        match (req.set, first.name.as_str()) {
            (false, "configure") => {
                let node = node_attr(first)?;
                let nodes = load_nodes(server, owner).await?;
                let Some((_, cfg)) = nodes.iter().find(|(n, _)| n == node) else {
                    return Err(StanzaError::new(Cond::ItemNotFound));
                };
                Ok(Some(
                    Element::new("pubsub", ns::PUBSUB_OWNER).with_child(
                        Element::new("configure", ns::PUBSUB_OWNER)
                            .with_attr("node", node)
                            .with_child(cfg.form(ns::PUBSUB_NODE_CONFIG, "form")),
                    ),
                ))
            }
            (true, "configure") => configure(server, owner, first).await,
            (false, "default") => Ok(Some(
                Element::new("pubsub", ns::PUBSUB_OWNER).with_child(
                    Element::new("default", ns::PUBSUB_OWNER)
                        .with_child(Config::default().form(ns::PUBSUB_NODE_CONFIG, "form")),
                ),
            )),
            (true, "delete") => delete(server, owner, first).await,
            (true, "purge") => purge(server, owner, first).await,
            (_, "subscriptions") => Err(unsupported("manage-subscriptions")),
            (_, "affiliations") => Err(unsupported("modify-affiliations")),
            _ => Err(StanzaError::new(Cond::BadRequest)),
        }
    }
}

/// A client's publish or retract on `node` succeeded: the formats the server keeps in sync
/// with it follow (XEP-0402 bookmarks, XEP-0398 avatars). Writes the server makes itself
/// ([`write_as_owner`]) do not come here, so conversions never loop.
async fn converted(server: &Arc<Server>, owner: &str, node: &str) {
    super::bookmarks::pep_changed(server, owner, node).await;
    super::avatar::pep_changed(server, owner, node).await;
}

/// A node's access model and items (oldest first), for the server's own conversions.
pub(crate) struct NodeSnapshot {
    pub access: &'static str,
    pub items: Vec<(String, Element)>,
}

/// Reads one of `owner`'s nodes; `None` when it does not exist.
pub(crate) async fn node_snapshot(
    server: &Server,
    owner: &str,
    node: &str,
) -> Result<Option<NodeSnapshot>, StanzaError> {
    let nodes = load_nodes(server, owner).await?;
    let Some((_, cfg)) = nodes.iter().find(|(n, _)| n == node) else {
        return Ok(None);
    };
    let items = load_items(server, owner, node).await?;
    Ok(Some(NodeSnapshot {
        access: cfg.access.as_str(),
        items: items.into_iter().map(|i| (i.id, i.payload)).collect(),
    }))
}

/// The server publishes and retracts items on `owner`'s behalf (one locked write, then the
/// usual notifications). `create` holds XEP-0060 node configuration fields used only when
/// the node does not exist yet; an existing node keeps its configuration.
pub(crate) async fn write_as_owner(
    server: &Arc<Server>,
    owner: &str,
    node: &str,
    create: &[(&str, &str)],
    publish: Vec<(String, Element)>,
    retract: Vec<String>,
) -> Result<(), StanzaError> {
    if publish.is_empty() && retract.is_empty() {
        return Ok(());
    }
    if publish
        .iter()
        .any(|(_, p)| to_stored(p).len() > MAX_ITEM_BYTES)
    {
        return Err(pubsub_error(Cond::NotAcceptable, "payload-too-big"));
    }
    let (cfg, retracted) = {
        let _guard = server.pep.lock(owner).await;
        let mut nodes = load_nodes(server, owner).await?;
        let existing = nodes.iter().position(|(n, _)| n == node);
        let cfg = match existing {
            Some(i) => nodes[i].1.clone(),
            None => {
                if publish.is_empty() {
                    return Ok(());
                }
                if nodes.len() >= MAX_NODES {
                    return Err(
                        StanzaError::new(Cond::ResourceConstraint).with_text("too many PEP nodes")
                    );
                }
                let mut cfg = Config::default();
                for (var, value) in create {
                    cfg.apply(var, &[value.to_string()])
                        .map_err(|_| StanzaError::new(Cond::InternalServerError))?;
                }
                cfg
            }
        };
        let mut stored = if existing.is_some() {
            load_items(server, owner, node).await?
        } else {
            Vec::new()
        };
        let retracted: Vec<String> = stored
            .iter()
            .filter(|it| retract.contains(&it.id))
            .map(|it| it.id.clone())
            .collect();
        stored.retain(|it| !retract.contains(&it.id));
        if cfg.persist {
            for (id, payload) in &publish {
                stored.retain(|it| &it.id != id);
                stored.push(Item {
                    id: id.clone(),
                    payload: payload.clone(),
                });
            }
            let excess = stored.len().saturating_sub(cfg.max_items);
            stored.drain(..excess);
        } else {
            stored.clear();
        }
        save_items(server, owner, node, &stored).await?;
        if existing.is_none() {
            nodes.push((node.to_string(), cfg.clone()));
            save_nodes(server, owner, &nodes).await?;
        }
        (cfg, retracted)
    };
    for (id, payload) in publish {
        let it = Item { id, payload };
        notify(server, owner, node, &cfg, &event_items(node, &[&it])).await;
    }
    if !retracted.is_empty() && cfg.notify_retract {
        let mut list = Element::new("items", ns::PUBSUB_EVENT).with_attr("node", node);
        for id in &retracted {
            list.push(Element::new("retract", ns::PUBSUB_EVENT).with_attr("id", id.as_str()));
        }
        let ev = Element::new("event", ns::PUBSUB_EVENT).with_child(list);
        notify(server, owner, node, &cfg, &ev).await;
    }
    Ok(())
}

/// XEP-0060 §7.1 publish, with §7.1.5 publish-options and auto-create.
async fn publish(
    server: &Arc<Server>,
    owner: &str,
    publish: &Element,
    options: Option<&Element>,
) -> IqResult {
    let node = node_attr(publish)?;
    let mut items = publish.elements().filter(|e| e.is("item", ns::PUBSUB));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(pubsub_error(Cond::BadRequest, "invalid-payload"));
    };
    let mut payloads = item.elements();
    let payload = match (payloads.next(), payloads.next()) {
        (Some(p), None) => p.clone(),
        (None, _) => return Err(pubsub_error(Cond::BadRequest, "payload-required")),
        _ => return Err(pubsub_error(Cond::BadRequest, "invalid-payload")),
    };
    if to_stored(&payload).len() > MAX_ITEM_BYTES {
        return Err(pubsub_error(Cond::NotAcceptable, "payload-too-big"));
    }
    let id = match item.attr("id") {
        Some(i) if !i.is_empty() && i.len() <= MAX_NAME_BYTES => i.to_string(),
        Some(i) if !i.is_empty() => return Err(StanzaError::new(Cond::NotAcceptable)),
        _ => crate::stream::random_id(),
    };
    let preconditions = match options.and_then(|o| o.child("x", ns::DATA_FORMS)) {
        Some(x) => form_fields(x, ns::PUBSUB_PUBLISH_OPTIONS)?,
        None => Vec::new(),
    };
    let precondition_failed = || {
        StanzaError::new(Cond::Conflict)
            .with_app(Element::new("precondition-not-met", ns::PUBSUB_ERRORS))
    };
    let cfg = {
        let _guard = server.pep.lock(owner).await;
        let mut nodes = load_nodes(server, owner).await?;
        let existing = nodes.iter().position(|(n, _)| n == node);
        let cfg = match existing {
            Some(i) => {
                let cfg = nodes[i].1.clone();
                for (var, values) in &preconditions {
                    let mut probe = cfg.clone();
                    if probe.apply(var, values).is_err() || probe != cfg {
                        return Err(precondition_failed());
                    }
                }
                cfg
            }
            None => {
                if nodes.len() >= MAX_NODES {
                    return Err(
                        StanzaError::new(Cond::ResourceConstraint).with_text("too many PEP nodes")
                    );
                }
                let mut cfg = Config::default();
                for (var, values) in &preconditions {
                    cfg.apply(var, values).map_err(|_| precondition_failed())?;
                }
                cfg
            }
        };
        let mut stored = if existing.is_some() {
            load_items(server, owner, node).await?
        } else {
            Vec::new()
        };
        if cfg.persist {
            stored.retain(|it| it.id != id);
            stored.push(Item {
                id: id.clone(),
                payload: payload.clone(),
            });
            let excess = stored.len().saturating_sub(cfg.max_items);
            stored.drain(..excess);
        } else {
            stored.clear();
        }
        // Items first: a node entry never points at someone else's leftovers.
        save_items(server, owner, node, &stored).await?;
        if existing.is_none() {
            nodes.push((node.to_string(), cfg.clone()));
            save_nodes(server, owner, &nodes).await?;
        }
        cfg
    };
    let it = Item {
        id: id.clone(),
        payload,
    };
    notify(server, owner, node, &cfg, &event_items(node, &[&it])).await;
    Ok(Some(
        Element::new("pubsub", ns::PUBSUB).with_child(
            Element::new("publish", ns::PUBSUB)
                .with_attr("node", node)
                .with_child(Element::new("item", ns::PUBSUB).with_attr("id", id)),
        ),
    ))
}

/// XEP-0060 §8.1 create (explicit), optionally configured.
async fn create(
    server: &Arc<Server>,
    owner: &str,
    create: &Element,
    configure: Option<&Element>,
) -> IqResult {
    let node = node_attr(create).map_err(|_| unsupported("instant-nodes"))?;
    let mut cfg = Config::default();
    if let Some(x) = configure.and_then(|c| c.child("x", ns::DATA_FORMS)) {
        for (var, values) in form_fields(x, ns::PUBSUB_NODE_CONFIG)? {
            cfg.apply(&var, &values)
                .map_err(|_| StanzaError::new(Cond::NotAcceptable))?;
        }
    }
    let _guard = server.pep.lock(owner).await;
    let mut nodes = load_nodes(server, owner).await?;
    if nodes.iter().any(|(n, _)| n == node) {
        return Err(StanzaError::new(Cond::Conflict));
    }
    if nodes.len() >= MAX_NODES {
        return Err(StanzaError::new(Cond::ResourceConstraint).with_text("too many PEP nodes"));
    }
    save_items(server, owner, node, &[]).await?;
    nodes.push((node.to_string(), cfg));
    save_nodes(server, owner, &nodes).await?;
    Ok(None)
}

/// XEP-0060 §6.5 items retrieval (all, by id, or the newest `max_items`).
async fn items(server: &Arc<Server>, owner: &str, who: &Jid, req: &Element) -> IqResult {
    let node = node_attr(req)?;
    let nodes = load_nodes(server, owner).await?;
    let Some((_, cfg)) = nodes.iter().find(|(n, _)| n == node) else {
        return Err(StanzaError::new(Cond::ItemNotFound));
    };
    check_access(server, owner, who, cfg).await?;
    let mut stored = load_items(server, owner, node).await?;
    let wanted: Vec<&str> = req
        .elements()
        .filter(|e| e.is("item", ns::PUBSUB))
        .filter_map(|e| e.attr("id"))
        .collect();
    if !wanted.is_empty() {
        stored.retain(|it| wanted.contains(&it.id.as_str()));
    } else if let Some(max) = req.attr("max_items") {
        let max: usize = max
            .parse()
            .map_err(|_| StanzaError::new(Cond::BadRequest).with_text("bad max_items"))?;
        let skip = stored.len().saturating_sub(max);
        stored.drain(..skip);
    }
    let mut list = Element::new("items", ns::PUBSUB).with_attr("node", node);
    for it in stored {
        list.push(
            Element::new("item", ns::PUBSUB)
                .with_attr("id", it.id)
                .with_child(it.payload),
        );
    }
    Ok(Some(Element::new("pubsub", ns::PUBSUB).with_child(list)))
}

/// XEP-0060 §7.2 retract, notifying when asked (`notify='true'`) and configured.
async fn retract(server: &Arc<Server>, owner: &str, req: &Element) -> IqResult {
    let node = node_attr(req)?;
    let ids: Vec<String> = req
        .elements()
        .filter(|e| e.is("item", ns::PUBSUB))
        .filter_map(|e| e.attr("id").map(str::to_string))
        .collect();
    if ids.is_empty() {
        return Err(pubsub_error(Cond::BadRequest, "item-required"));
    }
    let cfg = {
        let _guard = server.pep.lock(owner).await;
        let nodes = load_nodes(server, owner).await?;
        let Some((_, cfg)) = nodes.iter().find(|(n, _)| n == node) else {
            return Err(StanzaError::new(Cond::ItemNotFound));
        };
        let mut stored = load_items(server, owner, node).await?;
        let before = stored.len();
        stored.retain(|it| !ids.contains(&it.id));
        if stored.len() == before {
            return Err(StanzaError::new(Cond::ItemNotFound));
        }
        save_items(server, owner, node, &stored).await?;
        cfg.clone()
    };
    let asked = req.attr("notify").and_then(parse_bool).unwrap_or(false);
    if asked && cfg.notify_retract {
        let mut list = Element::new("items", ns::PUBSUB_EVENT).with_attr("node", node);
        for id in &ids {
            list.push(Element::new("retract", ns::PUBSUB_EVENT).with_attr("id", id.as_str()));
        }
        let ev = Element::new("event", ns::PUBSUB_EVENT).with_child(list);
        notify(server, owner, node, &cfg, &ev).await;
    }
    Ok(None)
}

/// XEP-0060 §8.2 configure (submit or cancel).
async fn configure(server: &Arc<Server>, owner: &str, req: &Element) -> IqResult {
    let node = node_attr(req)?;
    let Some(x) = req.child("x", ns::DATA_FORMS) else {
        return Err(StanzaError::new(Cond::BadRequest).with_text("configuration form required"));
    };
    let cancel = x.attr("type") == Some("cancel");
    if !cancel && x.attr("type") != Some("submit") {
        return Err(StanzaError::new(Cond::BadRequest).with_text("submit the form"));
    }
    let fields = form_fields(x, ns::PUBSUB_NODE_CONFIG)?;
    let _guard = server.pep.lock(owner).await;
    let mut nodes = load_nodes(server, owner).await?;
    let Some(i) = nodes.iter().position(|(n, _)| n == node) else {
        return Err(StanzaError::new(Cond::ItemNotFound));
    };
    if cancel {
        return Ok(None);
    }
    let mut cfg = nodes[i].1.clone();
    for (var, values) in &fields {
        cfg.apply(var, values).map_err(|_| {
            StanzaError::new(Cond::NotAcceptable).with_text(format!("unacceptable value for {var}"))
        })?;
    }
    let mut stored = load_items(server, owner, node).await?;
    let before = stored.len();
    if !cfg.persist {
        stored.clear();
    } else {
        let excess = stored.len().saturating_sub(cfg.max_items);
        stored.drain(..excess);
    }
    if stored.len() != before {
        save_items(server, owner, node, &stored).await?;
    }
    nodes[i].1 = cfg;
    save_nodes(server, owner, &nodes).await?;
    Ok(None)
}

/// XEP-0060 §8.4 delete, with a `<delete/>` notification.
async fn delete(server: &Arc<Server>, owner: &str, req: &Element) -> IqResult {
    let node = node_attr(req)?;
    let cfg = {
        let _guard = server.pep.lock(owner).await;
        let mut nodes = load_nodes(server, owner).await?;
        let Some(i) = nodes.iter().position(|(n, _)| n == node) else {
            return Err(StanzaError::new(Cond::ItemNotFound));
        };
        // Items first, so a node that comes back never shows old items.
        save_items(server, owner, node, &[]).await?;
        let (_, cfg) = nodes.remove(i);
        save_nodes(server, owner, &nodes).await?;
        cfg
    };
    let ev = Element::new("event", ns::PUBSUB_EVENT)
        .with_child(Element::new("delete", ns::PUBSUB_EVENT).with_attr("node", node));
    notify(server, owner, node, &cfg, &ev).await;
    Ok(None)
}

/// XEP-0060 §8.5 purge, with a `<purge/>` notification.
async fn purge(server: &Arc<Server>, owner: &str, req: &Element) -> IqResult {
    let node = node_attr(req)?;
    let cfg = {
        let _guard = server.pep.lock(owner).await;
        let nodes = load_nodes(server, owner).await?;
        let Some((_, cfg)) = nodes.iter().find(|(n, _)| n == node) else {
            return Err(StanzaError::new(Cond::ItemNotFound));
        };
        save_items(server, owner, node, &[]).await?;
        cfg.clone()
    };
    let ev = Element::new("event", ns::PUBSUB_EVENT)
        .with_child(Element::new("purge", ns::PUBSUB_EVENT).with_attr("node", node));
    notify(server, owner, node, &cfg, &ev).await;
    Ok(None)
}
