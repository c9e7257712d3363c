//! XEP-0012: Last Activity — server uptime, and for an account the time since its last
//! logout (zero while online), visible to the owner and to contacts subscribed to it.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::Subscription;
use herald_xml::Element;

use super::roster::load_item;
use super::{storage_error, IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::router::account_exists;
use crate::Server;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::LAST, Last);
    r.server_features.push(ns::LAST);
}

struct Last;

fn answer(seconds: u64, status: &str) -> Element {
    let mut q = Element::new("query", ns::LAST).with_attr("seconds", seconds.to_string());
    if !status.is_empty() {
        q.push_text(status);
    }
    q
}

#[async_trait]
impl IqHandler for Last {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.set {
            return Err(StanzaError::new(Cond::NotAllowed));
        }
        if req.target == Target::Server {
            return Ok(Some(answer(server.started.elapsed().as_secs(), "")));
        }
        let owner = req.to.bare();
        if req.target == Target::OtherAccount {
            if !account_exists(server, &owner).await {
                return Err(StanzaError::new(Cond::ServiceUnavailable));
            }
            let item = load_item(server, owner.as_str(), req.from.bare_str())
                .await
                .map_err(storage_error)?;
            if !item
                .is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
            {
                return Err(StanzaError::new(Cond::Forbidden));
            }
        }
        if server
            .registry
            .sessions(owner.as_str())
            .iter()
            .any(|s| s.available())
        {
            return Ok(Some(answer(0, "")));
        }
        match server
            .storage
            .last_activity(owner.as_str())
            .await
            .map_err(storage_error)?
        {
            Some((stamp, status)) => {
                let now = super::now_micros() / 1_000_000;
                Ok(Some(answer(
                    now.saturating_sub(stamp).max(0) as u64,
                    &status,
                )))
            }
            None => Err(StanzaError::new(Cond::ItemNotFound)),
        }
    }
}
