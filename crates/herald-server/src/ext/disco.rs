//! XEP-0030: Service Discovery — the server identity (`server/im`) with every feature the
//! registered modules announce, components as items, and account identities.

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
            return Err(StanzaError::new(Cond::ItemNotFound));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        match req.target {
            Target::Server => {
                q.push(identity("server", "im", Some("Herald")));
                for f in &server.iq.server_features {
                    q.push(feature(f));
                }
            }
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
