//! Protocol extensions, one module per feature, and the typed IQ registry that dispatches
//! requests to them by payload namespace.
//!
//! A module registers an [`IqHandler`] for its namespace plus the disco features it adds;
//! message and presence processing call the modules' functions directly (typed calls, no
//! string-named hooks that could silently never fire).

pub mod avatar;
pub mod blocking;
pub mod bookmarks;
pub mod caps;
pub mod carbons;
pub mod contact_info;
pub mod csi;
pub mod disco;
pub mod extdisco;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod proxy65;
pub mod push;
pub mod register;
pub mod roster;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod version;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::{Element, Limits, StreamEvent, StreamParser};

use crate::c2s::Session;
use crate::Server;

/// Whom an IQ request is addressed to, from the server's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A served domain.
    Server,
    /// The requester's own account (bare JID or no 'to').
    OwnAccount,
    /// Another local account's bare JID; the server answers on its behalf.
    OtherAccount,
}

pub struct IqRequest<'a> {
    pub from: &'a Jid,
    pub to: &'a Jid,
    pub target: Target,
    pub set: bool,
    pub payload: &'a Element,
    pub stanza: &'a Element,
    /// The requesting session when the request came from a local client.
    pub session: Option<&'a Session>,
}

/// `Ok(Some(payload))` = result with a child, `Ok(None)` = empty result.
pub type IqResult = Result<Option<Element>, StanzaError>;

#[async_trait]
pub trait IqHandler: Send + Sync {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult;
}

/// Handlers by payload namespace, and the features they announce in disco#info.
#[derive(Default)]
pub struct IqRegistry {
    handlers: HashMap<&'static str, Arc<dyn IqHandler>>,
    pub server_features: Vec<&'static str>,
    pub account_features: Vec<&'static str>,
    /// Configuration-dependent additions to the server's disco#info (features, forms).
    pub server_info: Vec<disco::ServerInfoFn>,
}

impl IqRegistry {
    pub fn register(&mut self, namespace: &'static str, handler: impl IqHandler + 'static) {
        self.handlers.insert(namespace, Arc::new(handler));
    }

    /// Every module of the core server.
    pub fn standard() -> IqRegistry {
        let mut r = IqRegistry::default();
        disco::register(&mut r);
        roster::register(&mut r);
        version::register(&mut r);
        ping::register(&mut r);
        vcard::register(&mut r);
        blocking::register(&mut r);
        private::register(&mut r);
        last::register(&mut r);
        time::register(&mut r);
        offline::register(&mut r);
        carbons::register(&mut r);
        mam::register(&mut r);
        pep::register(&mut r);
        push::register(&mut r);
        bookmarks::register(&mut r);
        avatar::register(&mut r);
        extdisco::register(&mut r);
        contact_info::register(&mut r);
        register::register(&mut r);
        r.server_features.sort_unstable();
        r.server_features.dedup();
        r.account_features.sort_unstable();
        r.account_features.dedup();
        r
    }

    async fn dispatch(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        match self.handlers.get(req.payload.ns.as_str()) {
            Some(h) => h.handle(server, req).await,
            None => Err(StanzaError::new(Cond::ServiceUnavailable)),
        }
    }
}

/// A 1:1 message arriving for local user `to` (from anywhere), before the delivery rules
/// run; once per message. Extensions may annotate it (MAM adds its stanza-id).
pub async fn message_inbound(server: &Arc<Server>, el: &mut Element, to: &Jid) {
    mam::on_inbound(server, el, to).await;
}

/// A message a local client sends, before routing: MAM archives the sender's copy,
/// carbons copy it to the sender's other resources.
pub async fn message_outbound(server: &Arc<Server>, session: &Session, el: &mut Element, to: &Jid) {
    mam::on_outbound(server, session, el, to).await;
    carbons::on_sent(server, session, el).await;
    upload::on_outbound_message(server, session, el, to).await;
}

/// An inbound message reached the sessions `delivered` of user `to`: carbons send
/// "received" copies to the user's other enabled resources.
pub async fn message_delivered(server: &Arc<Server>, el: &Element, to: &Jid, delivered: &[u64]) {
    carbons::on_received(server, el, to, delivered).await;
}

/// An empty or payload-carrying result for a request.
pub fn iq_result(req: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = req.attr("id") {
        r.set_attr("id", id);
    }
    if let Some(from) = req.attr("from") {
        r.set_attr("to", from);
    }
    if let Some(to) = req.attr("to") {
        r.set_attr("from", to);
    }
    if let Some(p) = payload {
        r.push(p);
    }
    r
}

/// The reply to an IQ request: a result with the payload, or the error.
pub fn iq_reply(req: &Element, res: IqResult) -> Element {
    match res {
        Ok(p) => iq_result(req, p),
        Err(e) => e.reply_to(req),
    }
}

/// RFC 6120 §8.2.3: get/set carry exactly one payload element.
pub(crate) fn payload_of(el: &Element) -> Result<&Element, StanzaError> {
    let mut it = el.elements();
    match (it.next(), it.next()) {
        (Some(p), None) => Ok(p),
        _ => Err(StanzaError::new(Cond::BadRequest)
            .with_text("an IQ request carries exactly one payload")),
    }
}

async fn run(
    server: &Arc<Server>,
    from: &Jid,
    el: &Element,
    to: &Jid,
    target: Target,
    session: Option<&Session>,
) -> Element {
    let set = el.attr("type") == Some("set");
    let res = match payload_of(el) {
        Ok(payload) => {
            let req = IqRequest {
                from,
                to,
                target,
                set,
                payload,
                stanza: el,
                session,
            };
            server.iq.dispatch(server, &req).await
        }
        Err(e) => Err(e),
    };
    iq_reply(el, res)
}

/// An IQ request addressed to a served domain.
pub async fn server_iq(server: &Arc<Server>, from: &Jid, el: &Element, to: &Jid) -> Element {
    run(server, from, el, to, Target::Server, None).await
}

/// An IQ request addressed to a local account's bare JID by someone else (or the account
/// itself through the router).
pub async fn account_iq(server: &Arc<Server>, from: &Jid, el: &Element, to: &Jid) -> Element {
    let target = if from.bare() == to.bare() {
        Target::OwnAccount
    } else {
        Target::OtherAccount
    };
    run(server, from, el, to, target, None).await
}

/// An IQ from a bound client. Returns the reply to write when the server answers it
/// directly; routes it otherwise.
pub async fn client_iq(
    server: &Arc<Server>,
    session: &mut Session,
    el: Element,
    to: Option<Jid>,
) -> Option<Element> {
    let kind = el.attr("type").unwrap_or("");
    let request = matches!(kind, "get" | "set");
    if !request && !matches!(kind, "result" | "error") {
        return Some(
            StanzaError::new(Cond::BadRequest)
                .with_text("invalid IQ type")
                .reply_to(&el),
        );
    }
    if el.attr("id").is_none() {
        return (request).then(|| {
            StanzaError::new(Cond::BadRequest)
                .with_text("IQ needs an id")
                .reply_to(&el)
        });
    }
    let own = session.jid.bare();
    match &to {
        None if request => Some(
            run(
                server,
                &session.jid,
                &el,
                &own,
                Target::OwnAccount,
                Some(session),
            )
            .await,
        ),
        Some(t) if request && t.is_bare() && *t == own => Some(
            run(
                server,
                &session.jid,
                &el,
                t,
                Target::OwnAccount,
                Some(session),
            )
            .await,
        ),
        Some(t) if request && t.is_bare() && t.node().is_none() && server.serves(t.domain()) => {
            Some(run(server, &session.jid, &el, t, Target::Server, Some(session)).await)
        }
        None => None,
        Some(t) => {
            if blocking::blocks(server, session.jid.bare_str(), t).await && request {
                let err = StanzaError::new(Cond::NotAcceptable)
                    .with_app(Element::new("blocked", ns::BLOCKING_ERRORS));
                return Some(err.reply_to(&el));
            }
            crate::router::route(server, el).await;
            None
        }
    }
}

/// Parses one stored stanza back into an element (offline messages, pending subscriptions).
pub fn parse_fragment(xml: &str) -> Option<Element> {
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: xml.len() + 64,
        ..Limits::default()
    });
    p.feed(b"<s xmlns='jabber:client'>");
    p.feed(xml.as_bytes());
    p.feed(b"</s>");
    loop {
        match p.next_event() {
            Ok(Some(StreamEvent::Stanza(e))) => return Some(e),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// Serialises a stanza for storage, in jabber:client.
pub fn to_stored(el: &Element) -> String {
    let mut out = Vec::with_capacity(256);
    el.write_to(&mut out, ns::CLIENT);
    String::from_utf8(out).unwrap_or_default()
}

/// Logs a storage failure and maps it to the stanza error a client sees.
pub fn storage_error(e: herald_storage::StorageError) -> StanzaError {
    tracing::error!(error = %e, "storage operation failed");
    StanzaError::new(Cond::InternalServerError)
        .with_type(herald_core::ErrorType::Wait)
        .with_text("storage temporarily unavailable")
}

/// Current time as XEP-0082 UTC datetime with millisecond precision.
pub fn now_stamp() -> String {
    stamp_from_micros(now_micros())
}

pub fn now_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

pub fn stamp_from_micros(micros: i64) -> String {
    let t = ::time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .unwrap_or(::time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}
