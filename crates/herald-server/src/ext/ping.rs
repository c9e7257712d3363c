//! XEP-0199: XMPP Ping, answered for the server and for the requester's own account.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};

use super::{IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::PING, Ping);
    r.server_features.push(ns::PING);
}

struct Ping;

#[async_trait]
impl IqHandler for Ping {
    async fn handle(&self, _server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.set || req.payload.name != "ping" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        match req.target {
            Target::Server | Target::OwnAccount => Ok(None),
            // A bare JID of someone else: the account, not a client, answers nothing here.
            Target::OtherAccount => Err(StanzaError::new(Cond::ServiceUnavailable)),
        }
    }
}
