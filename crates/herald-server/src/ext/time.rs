//! XEP-0202: Entity Time of the server (UTC, XEP-0082 format).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{now_stamp, IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::TIME, Time);
    r.server_features.push(ns::TIME);
}

struct Time;

#[async_trait]
impl IqHandler for Time {
    async fn handle(&self, _server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target != Target::Server {
            return Err(StanzaError::new(Cond::ServiceUnavailable));
        }
        if req.set {
            return Err(StanzaError::new(Cond::NotAllowed));
        }
        Ok(Some(
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(Element::new("utc", ns::TIME).with_text(now_stamp())),
        ))
    }
}
