//! XEP-0115: Entity Capabilities — what each client resource can do, learnt from the
//! `<c/>` element in its presence. The server resolves a `ver` to a feature list once
//! (asking the client with disco#info `node#ver`), verifies the SHA-1 verification string
//! (§5.4) before sharing the answer with other clients, and keeps the result per session
//! (PEP uses the `+notify` features for filtered notifications, XEP-0163 §4.3).
//!
//! Also home of the server's outgoing-IQ tracker: a request from a served domain to a
//! client, answered through the router (`to_server` hands results and errors here).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use herald_core::{ns, Jid};
use herald_xml::Element;
use sha1::Digest as _;
use tokio::sync::oneshot;

use crate::session::SessionHandle;
use crate::Server;

/// Verified `ver` strings kept server-wide.
const CACHE_ENTRIES: usize = 10_000;
/// Outstanding server-originated requests; beyond this, new ones are not sent.
const MAX_PENDING: usize = 10_000;
/// How long a client has to answer a server request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A feature set as announced by a client (disco#info `<feature var/>` values).
pub type Features = Arc<HashSet<String>>;

/// Per-session capabilities, kept in `SessionShared`.
#[derive(Debug, Default)]
pub struct ClientCaps {
    /// The announced capability (`hash ver`, or `legacy node#ver` without a hash).
    pub key: Option<String>,
    /// The resolved features, once known.
    pub features: Option<Features>,
}

/// Does this session want notifications for PEP node `node` (`node+notify`)?
pub fn wants_notify(s: &SessionHandle, node: &str) -> bool {
    let caps = s.shared.caps.lock().unwrap_or_else(|p| p.into_inner());
    caps.features
        .as_ref()
        .is_some_and(|f| f.contains(&format!("{node}+notify")))
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Features>,
    order: VecDeque<String>,
}

/// The server-wide caps cache and the outgoing-IQ tracker.
#[derive(Default)]
pub struct Caps {
    cache: Mutex<Cache>,
    pending: Mutex<HashMap<String, (Jid, oneshot::Sender<Element>)>>,
}

impl Caps {
    fn cached(&self, key: &str) -> Option<Features> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(key)
            .cloned()
    }

    fn insert(&self, key: String, features: Features) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.map.contains_key(&key) {
            return;
        }
        while c.map.len() >= CACHE_ENTRIES {
            match c.order.pop_front() {
                Some(old) => {
                    c.map.remove(&old);
                }
                None => break,
            }
        }
        c.order.push_back(key.clone());
        c.map.insert(key, features);
    }

    /// Number of cached verified capabilities (for tests and metrics).
    pub fn cached_len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// Sends an IQ get from the served domain to `to` and waits (bounded) for its result or
    /// error. `None` when it timed out or too many requests are outstanding.
    pub async fn request(
        &self,
        server: &Arc<Server>,
        to: &Jid,
        payload: Element,
    ) -> Option<Element> {
        let id = format!("herald-{}", crate::stream::random_id());
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.len() >= MAX_PENDING {
                return None;
            }
            p.insert(id.clone(), (to.clone(), tx));
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id.as_str())
            .with_attr("from", to.domain())
            .with_attr("to", to.as_str())
            .with_child(payload);
        crate::router::route(server, iq).await;
        let got = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        got.ok()?.ok()
    }

    /// An IQ result or error addressed to a served domain: completes the matching request
    /// (same id, answered by the entity it was sent to). Returns whether it matched.
    pub fn on_response(&self, el: &Element) -> bool {
        let (Some(id), Some(from)) = (el.attr("id"), el.attr("from")) else {
            return false;
        };
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let matches = p.get(id).is_some_and(|(who, _)| who.as_str() == from);
        if !matches {
            return false;
        }
        if let Some((_, tx)) = p.remove(id) {
            let _ = tx.send(el.clone());
        }
        true
    }
}

/// XEP-0115 §5.1: the verification string of a disco#info result; `None` when §5.4 calls
/// the response ill-formed (duplicate identities, features or form types).
pub fn verification_string(query: &Element) -> Option<String> {
    let mut ids: Vec<String> = query
        .elements()
        .filter(|e| e.is("identity", ns::DISCO_INFO))
        .map(|e| {
            format!(
                "{}/{}/{}/{}",
                e.attr("category").unwrap_or(""),
                e.attr("type").unwrap_or(""),
                e.attr("xml:lang").unwrap_or(""),
                e.attr("name").unwrap_or("")
            )
        })
        .collect();
    let mut feats: Vec<String> = query
        .elements()
        .filter(|e| e.is("feature", ns::DISCO_INFO))
        .filter_map(|e| e.attr("var").map(str::to_string))
        .collect();
    ids.sort();
    feats.sort();
    if has_dup(&ids) || has_dup(&feats) {
        return None;
    }
    let mut s = String::new();
    for i in &ids {
        s.push_str(i);
        s.push('<');
    }
    for f in &feats {
        s.push_str(f);
        s.push('<');
    }
    let mut forms: Vec<(String, Vec<Field>)> = Vec::new();
    for x in query.elements().filter(|e| e.is("x", ns::DATA_FORMS)) {
        let mut form_type = None;
        let mut fields = Vec::new();
        for f in x.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
            let var = f.attr("var").unwrap_or("").to_string();
            let mut values: Vec<String> = f
                .elements()
                .filter(|e| e.is("value", ns::DATA_FORMS))
                .map(|v| v.text())
                .collect();
            if var == "FORM_TYPE" {
                values.dedup();
                if values.len() != 1 {
                    return None;
                }
                if f.attr("type") == Some("hidden") {
                    form_type = values.pop();
                }
                continue;
            }
            values.sort();
            fields.push((var, values));
        }
        // §5.4: a form without a hidden FORM_TYPE is ignored.
        let Some(ft) = form_type else { continue };
        fields.sort();
        forms.push((ft, fields));
    }
    forms.sort();
    if forms.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    for (ft, fields) in forms {
        s.push_str(&ft);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    Some(s)
}

/// A data-form field: var and values.
type Field = (String, Vec<String>);

fn has_dup(sorted: &[String]) -> bool {
    sorted.windows(2).any(|w| w[0] == w[1])
}

/// Base64 SHA-1 of a verification string: the `ver` a client announces with `hash='sha-1'`.
pub fn sha1_ver(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// An available presence broadcast by a local resource (`initial`: the first since it was
/// unavailable). Resolves its capabilities and tells PEP which notifications it now wants.
pub async fn on_presence(
    server: &Arc<Server>,
    handle: &SessionHandle,
    el: &Element,
    initial: bool,
) {
    let announced = el.child("c", ns::CAPS).and_then(|c| {
        let node = c.attr("node")?.to_string();
        let ver = c.attr("ver")?.to_string();
        Some((node, ver, c.attr("hash").map(str::to_string)))
    });
    let Some((node, ver, hash)) = announced else {
        // No caps: whatever we knew stays; a new login still gets its last items.
        if initial {
            let known = handle
                .shared
                .caps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .features
                .clone();
            if let Some(f) = known {
                super::pep::interest_changed(server, handle, None, f).await;
            }
        }
        return;
    };
    let key = match &hash {
        Some(h) => format!("{h} {ver}"),
        None => format!("legacy {node}#{ver}"),
    };
    let (changed, old) = {
        let mut st = handle.shared.caps.lock().unwrap_or_else(|p| p.into_inner());
        let changed = st.key.as_deref() != Some(key.as_str());
        if changed {
            st.key = Some(key.clone());
        }
        (changed, if initial { None } else { st.features.clone() })
    };
    if !changed && !initial {
        return;
    }
    let shareable = hash.as_deref() == Some("sha-1");
    if shareable {
        if let Some(f) = server.caps.cached(&key) {
            set_features(handle, &key, f.clone());
            super::pep::interest_changed(server, handle, old, f).await;
            return;
        }
    }
    if !changed {
        // Same capability, still being resolved or resolved earlier: use what we have.
        let known = handle
            .shared
            .caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .features
            .clone();
        if let Some(f) = known {
            super::pep::interest_changed(server, handle, None, f).await;
        }
        return;
    }
    // Unknown: ask the client, off the session's stanza path.
    let server = server.clone();
    let handle = handle.clone();
    tokio::spawn(async move {
        let q = Element::new("query", ns::DISCO_INFO).with_attr("node", format!("{node}#{ver}"));
        let Some(reply) = server.caps.request(&server, &handle.jid, q).await else {
            return;
        };
        if reply.attr("type") != Some("result") {
            return;
        }
        let Some(q) = reply.child("query", ns::DISCO_INFO) else {
            return;
        };
        let features: Features = Arc::new(
            q.elements()
                .filter(|e| e.is("feature", ns::DISCO_INFO))
                .filter_map(|e| e.attr("var").map(str::to_string))
                .collect(),
        );
        let verified = shareable && verification_string(q).is_some_and(|s| sha1_ver(&s) == ver);
        if verified {
            server.caps.insert(key.clone(), features.clone());
        } else {
            tracing::debug!(jid = %handle.jid, "caps answer not verified; used for this resource only");
        }
        let old = {
            let st = handle.shared.caps.lock().unwrap_or_else(|p| p.into_inner());
            if st.key.as_deref() != Some(key.as_str()) {
                return;
            }
            if initial {
                None
            } else {
                st.features.clone()
            }
        };
        if set_features(&handle, &key, features.clone()) {
            super::pep::interest_changed(&server, &handle, old, features).await;
        }
    });
}

/// Stores the features if `key` is still the session's announced capability.
fn set_features(handle: &SessionHandle, key: &str, f: Features) -> bool {
    let mut st = handle.shared.caps.lock().unwrap_or_else(|p| p.into_inner());
    if st.key.as_deref() != Some(key) {
        return false;
    }
    st.features = Some(f);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2 simple example.
    #[test]
    fn simple_example_ver() {
        let q = Element::new("query", ns::DISCO_INFO)
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "client")
                    .with_attr("type", "pc")
                    .with_attr("name", "Exodus 0.9.1"),
            )
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::CAPS))
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO))
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS))
            .with_child(
                Element::new("feature", ns::DISCO_INFO)
                    .with_attr("var", "http://jabber.org/protocol/muc"),
            );
        let s = verification_string(&q).unwrap();
        assert_eq!(sha1_ver(&s), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn duplicate_feature_is_ill_formed() {
        let q = Element::new("query", ns::DISCO_INFO)
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", "a"))
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", "a"));
        assert!(verification_string(&q).is_none());
    }

    /// XEP-0115 §5.3 complex example (with an extended form).
    #[test]
    fn complex_example_ver() {
        let field = |var: &str, ty: Option<&str>, vals: &[&str]| {
            let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", var);
            if let Some(t) = ty {
                f.set_attr("type", t);
            }
            for v in vals {
                f.push(Element::new("value", ns::DATA_FORMS).with_text(*v));
            }
            f
        };
        let mut q = Element::new("query", ns::DISCO_INFO)
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("xml:lang", "en")
                    .with_attr("category", "client")
                    .with_attr("name", "Psi 0.11")
                    .with_attr("type", "pc"),
            )
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("xml:lang", "el")
                    .with_attr("category", "client")
                    .with_attr("name", "Ψ 0.11")
                    .with_attr("type", "pc"),
            );
        for f in [
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/muc",
        ] {
            q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q.push(
            Element::new("x", ns::DATA_FORMS)
                .with_attr("type", "result")
                .with_child(field(
                    "FORM_TYPE",
                    Some("hidden"),
                    &["urn:xmpp:dataforms:softwareinfo"],
                ))
                .with_child(field("ip_version", None, &["ipv4", "ipv6"]))
                .with_child(field("os", None, &["Mac"]))
                .with_child(field("os_version", None, &["10.5.1"]))
                .with_child(field("software", None, &["Psi"]))
                .with_child(field("software_version", None, &["0.11"])),
        );
        let s = verification_string(&q).unwrap();
        assert_eq!(sha1_ver(&s), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }
}
