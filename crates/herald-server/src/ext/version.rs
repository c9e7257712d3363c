//! XEP-0092: Software Version of the server.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::VERSION, Version);
    r.server_features.push(ns::VERSION);
}

struct Version;

#[async_trait]
impl IqHandler for Version {
    async fn handle(&self, _server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::Server {
            return Err(StanzaError::new(Cond::ServiceUnavailable));
        }
        if req.set {
            return Err(StanzaError::new(Cond::NotAllowed));
        }
        Ok(Some(
            Element::new("query", ns::VERSION)
                .with_child(Element::new("name", ns::VERSION).with_text("Herald"))
                .with_child(
                    Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")),
                ),
        ))
    }
}
