//! XEP-0054: vcard-temp. Each account publishes its own vCard; anyone may read it
//! (it is the directory card, as in every deployed server).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::{
    parse_fragment, storage_error, to_stored, IqHandler, IqRegistry, IqRequest, IqResult, Target,
};
use crate::router::account_exists;
use crate::Server;

/// Storage key in the per-user private store.
const KEY: &str = "vcard-temp";
/// A vCard with an embedded photo is large; bound it well below the stanza limit.
const MAX_VCARD_BYTES: usize = 200 * 1024;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::VCARD, VCard);
    r.server_features.push(ns::VCARD);
}

struct VCard;

/// Stores `owner`'s vCard (size-checked).
pub(crate) async fn store(
    server: &Server,
    owner: &str,
    vcard: &Element,
) -> Result<(), StanzaError> {
    let xml = to_stored(vcard);
    if xml.len() > MAX_VCARD_BYTES {
        return Err(StanzaError::new(Cond::NotAcceptable).with_text("vCard too large"));
    }
    server
        .storage
        .set_private(owner, KEY, &xml)
        .await
        .map_err(storage_error)
}

/// `owner`'s stored vCard, if any.
pub(crate) async fn load(server: &Server, owner: &str) -> Result<Option<Element>, StanzaError> {
    let stored = server
        .storage
        .get_private(owner, KEY)
        .await
        .map_err(storage_error)?;
    Ok(stored.and_then(|x| parse_fragment(&x)))
}

#[async_trait]
impl IqHandler for VCard {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.payload.name != "vCard" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        match (req.target, req.set) {
            (Target::Server, _) => Err(StanzaError::new(Cond::ItemNotFound)),
            (Target::OtherAccount, true) => Err(StanzaError::new(Cond::Forbidden)),
            (Target::OwnAccount, true) => {
                store(server, req.from.bare_str(), req.payload).await?;
                // XEP-0398: the photo goes to the PEP avatar nodes too.
                super::avatar::vcard_stored(server, req.from.bare_str(), req.payload).await;
                Ok(None)
            }
            (_, false) => {
                let owner = req.to.bare();
                if req.target == Target::OtherAccount && !account_exists(server, &owner).await {
                    return Err(StanzaError::new(Cond::ServiceUnavailable));
                }
                let stored = server
                    .storage
                    .get_private(owner.as_str(), KEY)
                    .await
                    .map_err(storage_error)?;
                // XEP-0054 §3.1: no vCard yet is an empty vCard.
                Ok(Some(
                    stored
                        .and_then(|x| parse_fragment(&x))
                        .unwrap_or_else(|| Element::new("vCard", ns::VCARD)),
                ))
            }
        }
    }
}
