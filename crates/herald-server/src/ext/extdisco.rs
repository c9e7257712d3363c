//! XEP-0215: External Service Discovery — the STUN/TURN servers of `[[external_service]]`,
//! with static or TURN REST API style time-limited credentials, for local users only.
//!
//! For an entry with a `secret` the username is `"<expiry unix time>:<bare JID>"` and the
//! password `base64(HMAC-SHA1(secret, username))`, which a TURN server configured with the
//! same secret (coturn `use-auth-secret`) verifies without talking to Herald.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use herald_core::{Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;
use hmac::{Hmac, Mac};

use super::disco::ServerInfo;
use super::{IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::config::ExternalServiceSection;
use crate::Server;

pub const NS: &str = "urn:xmpp:extdisco:2";

pub fn register(r: &mut IqRegistry) {
    r.register(NS, ExtDisco);
    r.server_info.push(server_info);
}

/// The feature is announced when there is something to discover.
fn server_info(server: &Server, _domain: &str, info: &mut ServerInfo) {
    if !server.settings.raw.external_services.is_empty() {
        info.features.push(NS);
    }
}

struct ExtDisco;

#[async_trait]
impl IqHandler for ExtDisco {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.target == Target::OtherAccount {
            return Err(StanzaError::new(Cond::ServiceUnavailable));
        }
        if req.set {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        // Credentials are handed only to this server's own authenticated users.
        if req.from.node().is_none() || !server.serves(req.from.domain()) {
            return Err(StanzaError::new(Cond::Forbidden));
        }
        let services = &server.settings.raw.external_services;
        let now = unix_now();
        let user = req.from.bare();
        match req.payload.name.as_str() {
            "services" => {
                let filter = req.payload.attr("type");
                let mut out = Element::new("services", NS);
                if let Some(t) = filter {
                    out.set_attr("type", t);
                }
                for s in services
                    .iter()
                    .filter(|s| filter.is_none() || filter == Some(s.kind.as_str()))
                {
                    out.push(service_element(s, &user, now));
                }
                Ok(Some(out))
            }
            "credentials" => {
                let wanted = req
                    .payload
                    .child("service", NS)
                    .ok_or_else(|| bad("<credentials/> needs a <service/>"))?;
                let (Some(host), Some(kind)) = (wanted.attr("host"), wanted.attr("type")) else {
                    return Err(bad("<service/> needs 'host' and 'type'"));
                };
                let port = match wanted.attr("port") {
                    Some(p) => Some(p.parse::<u16>().map_err(|_| bad("invalid 'port'"))?),
                    None => None,
                };
                let mut out = Element::new("credentials", NS);
                for s in services.iter().filter(|s| {
                    s.host.eq_ignore_ascii_case(host)
                        && s.kind == kind
                        && (port.is_none() || port == Some(s.port))
                        && (s.secret.is_some() || s.username.is_some())
                }) {
                    out.push(service_element(s, &user, now));
                }
                if out.elements().next().is_none() {
                    return Err(StanzaError::new(Cond::ItemNotFound)
                        .with_text("no service with credentials matches"));
                }
                Ok(Some(out))
            }
            _ => Err(StanzaError::new(Cond::BadRequest)),
        }
    }
}

fn bad(text: &str) -> StanzaError {
    StanzaError::new(Cond::BadRequest).with_text(text)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// TURN REST API credentials valid until `expires` (unix seconds) for `user`.
pub fn rest_credentials(secret: &str, user: &Jid, expires: u64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

fn service_element(s: &ExternalServiceSection, user: &Jid, now: u64) -> Element {
    let mut e = Element::new("service", NS)
        .with_attr("type", s.kind.as_str())
        .with_attr("host", s.host.as_str())
        .with_attr("port", s.port.to_string());
    if let Some(t) = &s.transport {
        e.set_attr("transport", t.as_str());
    }
    if let Some(n) = &s.name {
        e.set_attr("name", n.as_str());
    }
    if s.restricted {
        e.set_attr("restricted", "1");
    }
    if let Some(secret) = &s.secret {
        let expires = now + s.ttl_secs;
        let (username, password) = rest_credentials(secret, user, expires);
        e.set_attr("username", username);
        e.set_attr("password", password);
        e.set_attr(
            "expires",
            super::stamp_from_micros((expires as i64).saturating_mul(1_000_000)),
        );
    } else if let (Some(u), Some(p)) = (&s.username, &s.password) {
        e.set_attr("username", u.as_str());
        e.set_attr("password", p.as_str());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_turn_rest_api() {
        // HMAC-SHA1("secret-secret-secret", "1700000000:alice@example.test"), computed
        // independently with `openssl dgst -sha1 -hmac ... -binary | base64`.
        let user = Jid::parse("alice@example.test").unwrap();
        let (u, p) = rest_credentials("secret-secret-secret", &user, 1_700_000_000);
        assert_eq!(u, "1700000000:alice@example.test");
        assert_eq!(p, EXPECTED);
    }

    const EXPECTED: &str = "ZsaK5caPJJgKTdXQJDMf35ADpfM=";
}
