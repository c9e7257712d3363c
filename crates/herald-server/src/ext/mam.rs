//! XEP-0313: Message Archive Management for 1:1 chats (being written).

use std::sync::Arc;

use herald_core::Jid;
use herald_xml::Element;

use super::IqRegistry;
use crate::c2s::Session;
use crate::Server;

pub fn register(_r: &mut IqRegistry) {}

/// Archives a message arriving for `to` and stamps it with its stanza-id.
pub async fn on_inbound(_server: &Arc<Server>, _el: &mut Element, _to: &Jid) {}

/// Archives the sender's copy of a message a local client sends.
pub async fn on_outbound(_server: &Arc<Server>, _session: &Session, _el: &mut Element, _to: &Jid) {}
