//! XEP-0049: Private XML Storage, one blob per child namespace, readable only by its owner.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{
    parse_fragment, storage_error, to_stored, IqHandler, IqRegistry, IqRequest, IqResult, Target,
};
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::PRIVATE, Private);
}

/// Bound on what one account keeps per namespace.
const MAX_BYTES: usize = 128 * 1024;

struct Private;

fn key(el: &Element) -> String {
    storage_key(&el.name, &el.ns)
}

/// Where the private data `{ns}name` of an account is kept (also used by `bookmarks.rs`).
pub(crate) fn storage_key(name: &str, ns: &str) -> String {
    format!("private:{{{ns}}}{name}")
}

#[async_trait]
impl IqHandler for Private {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::OwnAccount {
            return Err(StanzaError::new(Cond::Forbidden));
        }
        if req.payload.name != "query" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        let children: Vec<&Element> = req.payload.elements().collect();
        if children.is_empty() {
            return Err(
                StanzaError::new(Cond::BadRequest).with_text("name a namespace to store or fetch")
            );
        }
        // §3: the jabber:* namespaces are reserved.
        if children
            .iter()
            .any(|c| c.ns.starts_with("jabber:") || c.ns.is_empty())
        {
            return Err(StanzaError::new(Cond::NotAcceptable));
        }
        let owner = req.from.bare_str();
        if req.set {
            for c in &children {
                let xml = to_stored(c);
                if xml.len() > MAX_BYTES {
                    return Err(
                        StanzaError::new(Cond::NotAcceptable).with_text("private data too large")
                    );
                }
                server
                    .storage
                    .set_private(owner, &key(c), &xml)
                    .await
                    .map_err(storage_error)?;
                if c.is("storage", ns::BOOKMARKS) {
                    // XEP-0402 #compat: PEP bookmarks follow.
                    super::bookmarks::private_stored(server, owner).await;
                }
            }
            return Ok(None);
        }
        if children.len() != 1 {
            return Err(
                StanzaError::new(Cond::BadRequest).with_text("fetch one namespace at a time")
            );
        }
        let c = children[0];
        let stored = server
            .storage
            .get_private(owner, &key(c))
            .await
            .map_err(storage_error)?;
        let data = stored
            .and_then(|x| parse_fragment(&x))
            .unwrap_or_else(|| Element::new(c.name.clone(), c.ns.clone()));
        Ok(Some(Element::new("query", ns::PRIVATE).with_child(data)))
    }
}
