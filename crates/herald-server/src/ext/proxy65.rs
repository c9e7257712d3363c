//! XEP-0065: SOCKS5 Bytestreams proxy (not yet implemented: every request is answered service-unavailable).

use std::sync::Arc;

use herald_core::{Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use crate::router::bounce;
use crate::Server;

/// A stanza addressed to the service at `to` (a service domain of served domain `host`).
pub async fn route(server: &Arc<Server>, el: Element, to: &Jid, host: &str) {
    let _ = (to, host);
    bounce(server, el, StanzaError::new(Cond::ServiceUnavailable)).await
}
