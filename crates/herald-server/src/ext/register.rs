//! XEP-0077: In-Band Registration — new accounts before authentication on a TLS stream,
//! password change and account removal for the signed-in user; only on the domains of
//! `registration.enabled_domains`.
//!
//! New accounts are limited per client IP (`registration.max_per_ip` per
//! `registration.window_secs`) and, in "allowlist" mode, to the listed usernames. The
//! pre-authentication part is called from c2s negotiation (`pre_auth`); after
//! authentication requests go through the IQ registry like every other module.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::{
    ns, Jid, StanzaError, StanzaErrorCondition as Cond, StreamErrorCondition as SErr,
};
use herald_storage::StorageError;
use herald_xml::Element;

use super::disco::ServerInfo;
use super::{IqHandler, IqRegistry, IqRequest, IqResult, Target};
use crate::accounts;
use crate::Server;

pub const NS: &str = "jabber:iq:register";
/// Stream feature offered next to the SASL mechanisms.
pub const FEATURE_NS: &str = "http://jabber.org/features/iq-register";
/// Registration requests one unauthenticated stream may make before it is closed.
pub const PRE_AUTH_MAX_REQUESTS: u32 = 10;

pub fn register(r: &mut IqRegistry) {
    r.register(NS, Register);
    r.server_info.push(server_info);
}

fn server_info(server: &Server, domain: &str, info: &mut ServerInfo) {
    if enabled(server, domain) {
        info.features.push(NS);
    }
}

pub fn enabled(server: &Server, domain: &str) -> bool {
    server.settings.raw.registration.enabled_for(domain)
}

/// The `<register/>` stream feature when registration is on for `domain`.
pub fn stream_feature(server: &Server, domain: &str) -> Option<Element> {
    enabled(server, domain).then(|| Element::new("register", FEATURE_NS))
}

/// A `get`/`set` IQ whose payload is a `jabber:iq:register` query.
pub fn is_pre_auth_request(el: &Element) -> bool {
    el.is("iq", ns::CLIENT)
        && matches!(el.attr("type"), Some("get" | "set"))
        && el.elements().any(|c| c.is("query", NS))
}

/// Accounts created per client IP in a sliding window.
#[derive(Default)]
pub struct RateLimit {
    by_ip: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimit {
    /// Takes one slot for `ip`; false when its `max` slots in `window` are used.
    fn acquire(&self, ip: IpAddr, max: u32, window: Duration) -> bool {
        let now = Instant::now();
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = map.entry(ip).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= max as usize {
            return false;
        }
        q.push_back(now);
        true
    }

    /// Gives back the slot of an attempt that created nothing.
    fn release(&self, ip: IpAddr) {
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get_mut(&ip) {
            q.pop_back();
        }
    }
}

fn text_of(query: &Element, name: &str) -> Option<String> {
    query.child(name, NS).map(|e| e.text())
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::new(Cond::NotAcceptable).with_text(text)
}

fn check_password(server: &Server, password: &str) -> Result<(), StanzaError> {
    let min = server.settings.raw.registration.min_password_length;
    if password.chars().count() < min {
        return Err(not_acceptable(&format!(
            "the password must have at least {min} characters"
        )));
    }
    Ok(())
}

/// Salted keys for every SCRAM hash, derived on the blocking pool (PBKDF2 is slow by design).
async fn derive(
    server: &Server,
    password: String,
) -> Result<Vec<herald_storage::StoredCredential>, StanzaError> {
    let iterations = server.settings.raw.auth.scram_iterations;
    tokio::task::spawn_blocking(move || accounts::derive_all(&password, iterations))
        .await
        .map_err(|_| StanzaError::new(Cond::InternalServerError))?
        .map_err(|e| not_acceptable(&e.to_string()))
}

/// A `jabber:iq:register` request on an unauthenticated, TLS-secured stream for `domain`
/// (the stream's 'to'). Returns the reply to send.
pub async fn pre_auth(server: &Arc<Server>, ip: IpAddr, domain: &str, el: &Element) -> Element {
    super::iq_reply(el, pre_auth_inner(server, ip, domain, el).await)
}

async fn pre_auth_inner(server: &Arc<Server>, ip: IpAddr, domain: &str, el: &Element) -> IqResult {
    if !enabled(server, domain) {
        return Err(StanzaError::new(Cond::NotAllowed)
            .with_text("in-band registration is disabled on this server"));
    }
    let query = super::payload_of(el)?;
    if el.attr("type") == Some("get") {
        return Ok(Some(
            Element::new("query", NS)
                .with_child(
                    Element::new("instructions", NS)
                        .with_text("Choose a username and password to register with this server."),
                )
                .with_child(Element::new("username", NS))
                .with_child(Element::new("password", NS)),
        ));
    }
    if query.child("remove", NS).is_some() {
        return Err(StanzaError::new(Cond::Forbidden).with_text("authenticate first"));
    }
    let (Some(username), Some(password)) = (text_of(query, "username"), text_of(query, "password"))
    else {
        return Err(not_acceptable("username and password are required"));
    };
    if username.is_empty() || password.is_empty() {
        return Err(not_acceptable("username and password are required"));
    }
    let jid = Jid::new(Some(&username), domain, None)
        .map_err(|_| not_acceptable("the username is not a valid XMPP localpart"))?;
    let node = jid.node().unwrap_or("").to_string();
    let cfg = &server.settings.raw.registration;
    if cfg.mode == "allowlist" && !cfg.allowlist.contains(&node) {
        return Err(StanzaError::new(Cond::NotAllowed)
            .with_text("this username may not be registered here"));
    }
    check_password(server, &password)?;
    match server.storage.credentials(domain, &node).await {
        Ok(Some(_)) => {
            return Err(StanzaError::new(Cond::Conflict).with_text("the username is taken"))
        }
        Ok(None) => {}
        Err(e) => return Err(super::storage_error(e)),
    }
    if !server
        .registrations
        .acquire(ip, cfg.max_per_ip, Duration::from_secs(cfg.window_secs))
    {
        tracing::info!(%ip, "in-band registration refused: rate limit");
        return Err(StanzaError::new(Cond::ResourceConstraint)
            .with_type(herald_core::ErrorType::Wait)
            .with_text("too many registrations from this address; try again later"));
    }
    let created = match derive(server, password).await {
        Ok(creds) => server
            .storage
            .create_account(domain, &node, &creds)
            .await
            .map_err(|e| match e {
                StorageError::AlreadyExists => {
                    StanzaError::new(Cond::Conflict).with_text("the username is taken")
                }
                e => super::storage_error(e),
            }),
        Err(e) => Err(e),
    };
    match created {
        Ok(()) => {
            tracing::info!(%ip, jid = %jid, "account registered in-band");
            Ok(None)
        }
        Err(e) => {
            server.registrations.release(ip);
            Err(e)
        }
    }
}

/// Requests from an authenticated user about their own account.
struct Register;

#[async_trait]
impl IqHandler for Register {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        if req.payload.name != "query" {
            return Err(StanzaError::new(Cond::BadRequest));
        }
        let own = match req.target {
            Target::OwnAccount => true,
            Target::Server => {
                req.from.node().is_some()
                    && req.from.domain() == req.to.domain()
                    && server.serves(req.from.domain())
            }
            Target::OtherAccount => false,
        };
        if !own {
            return Err(StanzaError::new(Cond::Forbidden));
        }
        if !enabled(server, req.from.domain()) {
            return Err(StanzaError::new(Cond::NotAllowed)
                .with_text("in-band registration is disabled on this server"));
        }
        let node = req.from.node().unwrap_or("");
        if !req.set {
            return Ok(Some(
                Element::new("query", NS)
                    .with_child(Element::new("registered", NS))
                    .with_child(Element::new("username", NS).with_text(node))
                    .with_child(Element::new("password", NS)),
            ));
        }
        if req.payload.child("remove", NS).is_some() {
            if req.payload.elements().count() != 1 {
                return Err(StanzaError::new(Cond::BadRequest)
                    .with_text("<remove/> must be the only child"));
            }
            return remove(server, req.from).await;
        }
        let (Some(username), Some(password)) = (
            text_of(req.payload, "username"),
            text_of(req.payload, "password"),
        ) else {
            return Err(StanzaError::new(Cond::BadRequest)
                .with_text("a password change needs <username/> and <password/>"));
        };
        let same = Jid::new(Some(&username), req.from.domain(), None)
            .is_ok_and(|j| j.node() == Some(node));
        if !same {
            return Err(StanzaError::new(Cond::NotAllowed)
                .with_text("only your own password can be changed"));
        }
        if password.is_empty() {
            return Err(not_acceptable("the password must not be empty"));
        }
        check_password(server, &password)?;
        let creds = derive(server, password).await?;
        match server
            .storage
            .set_credentials(req.from.domain(), node, &creds)
            .await
        {
            Ok(true) => {
                tracing::info!(jid = %req.from.bare(), "password changed in-band");
                Ok(None)
            }
            Ok(false) => Err(StanzaError::new(Cond::ItemNotFound)),
            Err(e) => Err(super::storage_error(e)),
        }
    }
}

/// Deletes the account, then ends all its sessions with `not-authorized` (XEP-0077 §3.2).
/// The requesting session writes the result before it reads its close request.
async fn remove(server: &Arc<Server>, from: &Jid) -> IqResult {
    let bare = from.bare();
    match accounts::delete(&*server.storage, &bare).await {
        Ok(()) | Err(accounts::AccountError::NotFound(_)) => {}
        Err(accounts::AccountError::Storage(e)) => return Err(super::storage_error(e)),
        Err(e) => {
            tracing::error!(error = %e, "account removal failed");
            return Err(StanzaError::new(Cond::InternalServerError));
        }
    }
    tracing::info!(jid = %bare, "account removed in-band");
    for s in server.registry.sessions(bare.bare_str()) {
        s.close(SErr::NotAuthorized, Some("the account was removed"));
    }
    Ok(None)
}
