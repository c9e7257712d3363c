//! XEP-0030: Service Discovery — the server identity (`server/im`) with every feature the
//! registered modules announce, components as items, and account identities.
//!
//! Features that depend on configuration, and XEP-0128 extension forms, come from
//! [`ServerInfoFn`] contributors that modules add to `IqRegistry::server_info`; they are
//! asked per served domain on each request (configuration is fixed while running).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::router::account_exists;
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::DISCO_INFO, Info);
    r.register(ns::DISCO_ITEMS, Items);
    r.server_features.push(ns::DISCO_INFO);
    r.server_features.push(ns::DISCO_ITEMS);
    r.account_features.push(ns::DISCO_INFO);
}

/// What a module adds to the server's disco#info for one served domain.
#[derive(Default)]
pub struct ServerInfo {
    /// Features enabled only by configuration (e.g. per domain).
    pub features: Vec<&'static str>,
    /// XEP-0128 extended information: `jabber:x:data` forms of type `result`, at most one
    /// per FORM_TYPE.
    pub forms: Vec<Element>,
}

/// A module's contribution to the server's disco#info for `domain`.
pub type ServerInfoFn = fn(&Server, &str, &mut ServerInfo);

/// A `jabber:x:data` result form with its hidden FORM_TYPE (XEP-0068).
pub fn result_form(form_type: &str) -> Element {
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(form_type)),
        )
}

struct Info;
struct Items;

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut e = Element::new("identity", ns::DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(n) = name {
        e.set_attr("name", n);
    }
    e
}

/// The node the server names in its own XEP-0115 capabilities.
pub const CAPS_NODE: &str = "https://herald.example/caps";

/// The server's disco#info for one of its domains: identity, features, extension forms.
pub fn server_info(server: &Server, domain: &str) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO);
    q.push(identity("server", "im", Some("Herald")));
    let mut extra = ServerInfo::default();
    for contribute in &server.iq.server_info {
        contribute(server, domain, &mut extra);
    }
    let mut features: Vec<&str> = server.iq.server_features.clone();
    features.extend(extra.features);
    features.sort_unstable();
    features.dedup();
    for f in features {
        q.push(feature(f));
    }
    for form in extra.forms {
        q.push(form);
    }
    q
}

fn caps_ver(info: &Element) -> Option<String> {
    super::caps::verification_string(info).map(|s| super::caps::sha1_ver(&s))
}

/// XEP-0115 §6.3: the server's capabilities, offered as a stream feature so clients know
/// its features without a disco round trip.
pub fn caps_feature(server: &Server, domain: &str) -> Option<Element> {
    let ver = caps_ver(&server_info(server, domain))?;
    Some(
        Element::new("c", ns::CAPS)
            .with_attr("hash", "sha-1")
            .with_attr("node", CAPS_NODE)
            .with_attr("ver", ver),
    )
}

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

#[async_trait]
impl IqHandler for Info {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.set || req.payload.name != "query" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        if let Some(node) = req.payload.attr("node") {
            // XEP-0060 §5.4: a PEP node of the account.
            if req.target != Target::Server {
                return super::pep::disco_node_info(server, req.to, req.from, node)
                    .await
                    .map(Some);
            }
            // XEP-0115 §6.2: the server's own capabilities node answers like the server.
            let caps_node = node
                .strip_prefix(CAPS_NODE)
                .and_then(|rest| rest.strip_prefix('#'));
            if let Some(ver) = caps_node {
                let q = server_info(server, req.to.domain());
                if caps_ver(&q).as_deref() == Some(ver) {
                    return Ok(Some(q.with_attr("node", node)));
                }
            }
            return Err(StanzaError::new(Cond::ItemNotFound));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        match req.target {
            Target::Server => q = server_info(server, req.to.domain()),
            Target::OwnAccount | Target::OtherAccount => {
                if req.target == Target::OtherAccount
                    && !account_exists(server, &req.to.bare()).await
                {
                    return Err(StanzaError::new(Cond::ServiceUnavailable));
                }
                q.push(identity("account", "registered", None));
                // XEP-0163 §6: every account is a PEP service.
                q.push(identity("pubsub", "pep", None));
                for f in &server.iq.account_features {
                    q.push(feature(f));
                }
            }
        }
        Ok(Some(q))
    }
}

#[async_trait]
impl IqHandler for Items {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.set || req.payload.name != "query" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        if req.payload.attr("node").is_some() {
            return Err(StanzaError::new(Cond::ItemNotFound));
        }
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        if req.target == Target::Server {
            for d in server.components.domains() {
                q.push(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", d));
            }
            let mut services: Vec<_> = server.settings.services_of(req.to.domain()).collect();
            services.sort_by(|a, b| a.domain.cmp(&b.domain));
            for s in services {
                q.push(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", &s.domain));
            }
        } else if req.target == Target::OtherAccount
            && !account_exists(server, &req.to.bare()).await
        {
            return Err(StanzaError::new(Cond::ServiceUnavailable));
        } else {
            // XEP-0163 §7.1: the account's PEP nodes the requester may see.
            for item in super::pep::disco_items(server, req.to, req.from).await {
                q.push(item);
            }
        }
        Ok(Some(q))
    }
}
