//! XEP-0402: PEP Native Bookmarks, with `#compat` (XEP-0048 bookmarks in XEP-0049 private
//! XML storage) and `#compat-pep` (XEP-0048 bookmarks in a XEP-0223 PEP node).
//!
//! An account's bookmarks live in three places, and a client may write any of them:
//! - **native**: the `urn:xmpp:bookmarks:1` PEP node, one item per room (id = room JID);
//! - **legacy PEP**: the `storage:bookmarks` PEP node, one item holding a `<storage/>`;
//! - **legacy private**: `<storage xmlns='storage:bookmarks'/>` in XEP-0049 storage.
//!
//! After a client's write the others follow, under the owner's conversion lock (each sync
//! re-reads its source, so concurrent writes in different formats converge):
//! - native publish/retract → the native items are collated into one `<storage/>` (XEP-0402
//!   §5.3.1), written to both legacy places; `<url/>` and other non-conference children of
//!   the previous legacy list are kept, since the native format has no room for them.
//! - legacy write (either place) → the other legacy place gets the same `<storage/>`, and
//!   the native node is diffed against it (XEP-0402 §5.3.2): changed or new rooms are
//!   published, missing rooms retracted, unchanged items left alone (no notifications).
//!
//! The conversions keep name, autojoin, nick and password; the native `<extensions/>`
//! children travel as extra children of the legacy `<conference/>` and come back from there.
//! A legacy `<conference/>` without a jid has no native form and is skipped.

use std::sync::Arc;

use herald_core::ns;
use herald_xml::Element;

use super::pep::{node_snapshot, write_as_owner};
use super::private::storage_key;
use super::{parse_fragment, to_stored, IqRegistry};
use crate::Server;

/// XEP-0402 §Adding a bookmark: the node configuration clients ask for in publish-options.
const NATIVE_NODE: &[(&str, &str)] = &[
    ("pubsub#access_model", "whitelist"),
    ("pubsub#persist_items", "true"),
    ("pubsub#max_items", "max"),
    ("pubsub#send_last_published_item", "never"),
];

/// XEP-0048 §3.2 / XEP-0223: private, persistent, one item.
const LEGACY_NODE: &[(&str, &str)] = &[
    ("pubsub#access_model", "whitelist"),
    ("pubsub#persist_items", "true"),
];

/// XEP-0048's item id in the legacy PEP node.
const LEGACY_ITEM: &str = "current";

pub fn register(r: &mut IqRegistry) {
    r.account_features.push(ns::BOOKMARKS2_COMPAT);
    r.account_features.push(ns::BOOKMARKS2_COMPAT_PEP);
}

/// One bookmarked room, format-neutral.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bookmark {
    jid: String,
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
    extensions: Vec<Element>,
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some("1" | "true"))
}

fn text_child(e: &Element, name: &str, ns: &str) -> Option<String> {
    e.child(name, ns).map(|c| c.text())
}

impl Bookmark {
    /// A XEP-0048 `<conference/>`; `None` without a jid.
    fn from_legacy(c: &Element) -> Option<Bookmark> {
        let jid = c.attr("jid").map(str::trim).filter(|j| !j.is_empty())?;
        Some(Bookmark {
            jid: jid.to_string(),
            name: c.attr("name").map(str::to_string),
            autojoin: truthy(c.attr("autojoin")),
            nick: text_child(c, "nick", ns::BOOKMARKS),
            password: text_child(c, "password", ns::BOOKMARKS),
            extensions: c
                .elements()
                .filter(|e| {
                    !(e.ns == ns::BOOKMARKS && matches!(e.name.as_str(), "nick" | "password"))
                })
                .cloned()
                .collect(),
        })
    }

    /// A XEP-0402 item.
    fn from_native(id: &str, c: &Element) -> Bookmark {
        Bookmark {
            jid: id.to_string(),
            name: c.attr("name").map(str::to_string),
            autojoin: truthy(c.attr("autojoin")),
            nick: text_child(c, "nick", ns::BOOKMARKS2),
            password: text_child(c, "password", ns::BOOKMARKS2),
            extensions: c
                .child("extensions", ns::BOOKMARKS2)
                .map(|x| x.elements().cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn to_legacy(&self) -> Element {
        let mut c = Element::new("conference", ns::BOOKMARKS)
            .with_attr("jid", self.jid.as_str())
            .with_attr("autojoin", if self.autojoin { "true" } else { "false" });
        if let Some(n) = &self.name {
            c.set_attr("name", n.as_str());
        }
        if let Some(n) = &self.nick {
            c.push(Element::new("nick", ns::BOOKMARKS).with_text(n.as_str()));
        }
        if let Some(p) = &self.password {
            c.push(Element::new("password", ns::BOOKMARKS).with_text(p.as_str()));
        }
        for e in &self.extensions {
            c.push(e.clone());
        }
        c
    }

    fn to_native(&self) -> Element {
        let mut c = Element::new("conference", ns::BOOKMARKS2);
        if let Some(n) = &self.name {
            c.set_attr("name", n.as_str());
        }
        if self.autojoin {
            c.set_attr("autojoin", "true");
        }
        if let Some(n) = &self.nick {
            c.push(Element::new("nick", ns::BOOKMARKS2).with_text(n.as_str()));
        }
        if let Some(p) = &self.password {
            c.push(Element::new("password", ns::BOOKMARKS2).with_text(p.as_str()));
        }
        if !self.extensions.is_empty() {
            let mut x = Element::new("extensions", ns::BOOKMARKS2);
            for e in &self.extensions {
                x.push(e.clone());
            }
            c.push(x);
        }
        c
    }
}

/// The rooms of a legacy `<storage/>`, first occurrence of each jid.
fn legacy_bookmarks(storage: &Element) -> Vec<Bookmark> {
    let mut out: Vec<Bookmark> = Vec::new();
    for b in storage
        .elements()
        .filter(|e| e.is("conference", ns::BOOKMARKS))
        .filter_map(Bookmark::from_legacy)
    {
        if !out.iter().any(|o| o.jid == b.jid) {
            out.push(b);
        }
    }
    out
}

fn private_key() -> String {
    storage_key("storage", ns::BOOKMARKS)
}

async fn load_private(server: &Server, owner: &str) -> Option<Element> {
    match server.storage.get_private(owner, &private_key()).await {
        Ok(x) => x
            .and_then(|x| parse_fragment(&x))
            .filter(|e| e.is("storage", ns::BOOKMARKS)),
        Err(e) => {
            tracing::warn!(error = %e, owner, "bookmarks: private storage unreadable");
            None
        }
    }
}

async fn load_legacy_pep(server: &Server, owner: &str) -> Option<Element> {
    match node_snapshot(server, owner, ns::BOOKMARKS).await {
        Ok(Some(n)) => n
            .items
            .into_iter()
            .rev()
            .map(|(_, p)| p)
            .find(|p| p.is("storage", ns::BOOKMARKS)),
        _ => None,
    }
}

async fn store_private(server: &Server, owner: &str, storage: &Element) {
    if let Err(e) = server
        .storage
        .set_private(owner, &private_key(), &to_stored(storage))
        .await
    {
        tracing::warn!(error = %e, owner, "bookmarks: private storage not updated");
    }
}

async fn store_legacy_pep(server: &Arc<Server>, owner: &str, storage: &Element) {
    if load_legacy_pep(server, owner).await.as_ref() == Some(storage) {
        return;
    }
    let item = vec![(LEGACY_ITEM.to_string(), storage.clone())];
    if let Err(e) = write_as_owner(server, owner, ns::BOOKMARKS, LEGACY_NODE, item, vec![]).await {
        tracing::warn!(?e, owner, "bookmarks: legacy PEP node not updated");
    }
}

/// A client stored `<storage xmlns='storage:bookmarks'/>` in private XML storage.
pub async fn private_stored(server: &Arc<Server>, owner: &str) {
    let _guard = server.pep.conversion_lock(owner).await;
    let Some(storage) = load_private(server, owner).await else {
        return;
    };
    store_legacy_pep(server, owner, &storage).await;
    legacy_to_native(server, owner, &storage).await;
}

/// A client published to or retracted from one of the owner's PEP nodes.
pub async fn pep_changed(server: &Arc<Server>, owner: &str, node: &str) {
    if node == ns::BOOKMARKS2 {
        let _guard = server.pep.conversion_lock(owner).await;
        native_to_legacy(server, owner).await;
    } else if node == ns::BOOKMARKS {
        let _guard = server.pep.conversion_lock(owner).await;
        let Some(storage) = load_legacy_pep(server, owner).await else {
            return;
        };
        store_private(server, owner, &storage).await;
        legacy_to_native(server, owner, &storage).await;
    }
}

/// §5.3.2: the native node follows a legacy list, item by item.
async fn legacy_to_native(server: &Arc<Server>, owner: &str, storage: &Element) {
    let wanted = legacy_bookmarks(storage);
    let current: Vec<Bookmark> = match node_snapshot(server, owner, ns::BOOKMARKS2).await {
        Ok(n) => n
            .map(|n| {
                n.items
                    .iter()
                    .map(|(id, p)| Bookmark::from_native(id, p))
                    .collect()
            })
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(?e, owner, "bookmarks: native node unreadable");
            return;
        }
    };
    let publish: Vec<(String, Element)> = wanted
        .iter()
        .filter(|b| !current.contains(b))
        .map(|b| (b.jid.clone(), b.to_native()))
        .collect();
    let retract: Vec<String> = current
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.jid == c.jid))
        .map(|c| c.jid.clone())
        .collect();
    if let Err(e) =
        write_as_owner(server, owner, ns::BOOKMARKS2, NATIVE_NODE, publish, retract).await
    {
        tracing::warn!(?e, owner, "bookmarks: native node not updated");
    }
}

/// §5.3.1: the native items collated into one legacy list, for both legacy places.
async fn native_to_legacy(server: &Arc<Server>, owner: &str) {
    let items = match node_snapshot(server, owner, ns::BOOKMARKS2).await {
        Ok(n) => n.map(|n| n.items).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(?e, owner, "bookmarks: native node unreadable");
            return;
        }
    };
    let previous = match load_private(server, owner).await {
        Some(p) => Some(p),
        None => load_legacy_pep(server, owner).await,
    };
    let mut storage = Element::new("storage", ns::BOOKMARKS);
    for (id, payload) in &items {
        if payload.is("conference", ns::BOOKMARKS2) {
            storage.push(Bookmark::from_native(id, payload).to_legacy());
        }
    }
    if let Some(prev) = previous {
        for e in prev
            .elements()
            .filter(|e| !e.is("conference", ns::BOOKMARKS))
        {
            storage.push(e.clone());
        }
    }
    store_private(server, owner, &storage).await;
    store_legacy_pep(server, owner, &storage).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        parse_fragment(xml).expect("well-formed")
    }

    #[test]
    fn legacy_native_round_trip_keeps_everything() {
        let legacy = parse(
            "<storage xmlns='storage:bookmarks'>\
             <conference jid='a@muc.test' name='A' autojoin='1'><nick>N</nick>\
             <password>P</password><state xmlns='urn:x:client' minimized='true'/></conference>\
             <conference jid='b@muc.test'/><conference name='no jid'/>\
             <conference jid='a@muc.test' name='dup'/></storage>",
        );
        let list = legacy_bookmarks(&legacy);
        assert_eq!(list.len(), 2);
        let a = &list[0];
        assert_eq!(a.name.as_deref(), Some("A"));
        assert!(a.autojoin);
        assert_eq!(a.nick.as_deref(), Some("N"));
        assert_eq!(a.password.as_deref(), Some("P"));
        assert_eq!(a.extensions.len(), 1);
        let native = a.to_native();
        assert_eq!(native.attr("autojoin"), Some("true"));
        let ext = native
            .child("extensions", ns::BOOKMARKS2)
            .and_then(|x| x.child("state", "urn:x:client"));
        assert!(ext.is_some(), "{}", native.to_xml());
        let back = Bookmark::from_native("a@muc.test", &native);
        assert_eq!(&back, a);
        assert_eq!(Bookmark::from_legacy(&back.to_legacy()).as_ref(), Some(a));
        assert!(!list[1].autojoin);
        assert!(list[1].to_native().attr("autojoin").is_none());
    }
}
