//! RFC 6120 client-to-server streams: negotiation (STARTTLS or direct TLS, SASL, resource
//! binding, legacy session) and then the session loop.
//!
//! Negotiation is a straight-line async function: each step either yields the next state's
//! data or ends the stream with a typed error. One task per connection owns the socket; other
//! tasks reach the session only through its bounded outbox.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use herald_core::sasl::{self, ScramCredential, ScramHash, ScramServer};
use herald_core::{
    ns, Jid, StanzaError, StanzaErrorCondition as Cond, StreamErrorCondition as SErr,
};
use herald_xml::{Element, StreamEvent, StreamHeader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::ext::csi::{self, Csi, Verdict};
use crate::ext::{self, presence};
use crate::session::{Outbound, SessionHandle};
use crate::sm::{self, SmState};
use crate::stream::{self, stream_error, Conn, StreamEnd};
use crate::Server;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// SASL attempts per stream before the stream is closed (RFC 6120 §6.4.5 suggests 2 to 5).
const MAX_SASL_ATTEMPTS: u32 = 3;

/// Entry point for an accepted TCP connection.
pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    tracing::info!(%peer, direct_tls, "c2s connection");
    let conn = Conn::new(&server, stream::plain(tcp), peer);
    serve_conn(server, conn, direct_tls).await
}

/// Runs a client stream on any transport: negotiation here, then the session in a task of
/// its own. WebSocket and BOSH connections enter here with a framed [`Conn`].
pub async fn serve_conn(server: Arc<Server>, mut conn: Conn, direct_tls: bool) {
    let preauth = Duration::from_secs(server.settings.raw.c2s.preauth_timeout_secs);
    let mut shutdown = server.shutdown.clone();
    let negotiated = tokio::select! {
        r = tokio::time::timeout(preauth, Box::pin(negotiate(&server, &mut conn, direct_tls))) => match r {
            Ok(r) => r,
            Err(_) => Err(stream_error(SErr::ConnectionTimeout, "negotiation took too long")),
        },
        _ = crate::stopped(&mut shutdown) => Err(StreamEnd::Error(SErr::SystemShutdown, None)),
    };
    match negotiated {
        // The session gets a task of its own: the negotiation task's state is freed, so a
        // long-lived idle session costs only what it needs.
        Ok(Negotiated::Bound(bound)) => spawn_session(server, conn, bound),
        Ok(Negotiated::Resume { jid, previd, h }) => {
            Box::pin(resume(server, conn, jid, previd, h)).await
        }
        Ok(Negotiated::HandedOff) => {}
        Err(end) => finish(&mut conn, end, None).await,
    }
}

/// XEP-0198 §5: hands this authenticated connection to the session it resumes; if there
/// is none, says so and lets the client bind a new session instead.
async fn resume(server: Arc<Server>, mut conn: Conn, jid: Jid, previd: String, h: u32) {
    if let Some(slot) = server.registry.resumable(&previd, jid.bare_str()) {
        match slot
            .tx
            .send(sm::Handoff {
                conn,
                h,
                success: None,
            })
            .await
        {
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::SendError(back)) => conn = back.conn,
        }
    }
    tracing::info!(peer = %conn.peer, jid = %jid, "c2s resumption refused: unknown or expired id");
    conn.queue(&sm::failed("item-not-found", None));
    let r = match conn.flush().await {
        Ok(()) => bind_loop(&server, &mut conn, jid).await,
        Err(e) => Err(StreamEnd::Io(e)),
    };
    match r {
        // The session gets a task of its own: the negotiation task's state is freed, so a
        // long-lived idle session costs only what it needs.
        Ok(Negotiated::Bound(bound)) => spawn_session(server, conn, bound),
        Ok(Negotiated::Resume { .. }) | Ok(Negotiated::HandedOff) => {
            finish(
                &mut conn,
                stream_error(SErr::PolicyViolation, "one resumption attempt per stream"),
                None,
            )
            .await
        }
        Err(end) => finish(&mut conn, end, None).await,
    }
}

/// Ends a stream, logging one line.
async fn finish(conn: &mut Conn, end: StreamEnd, jid: Option<&Jid>) {
    let peer = conn.peer;
    let who = jid.map(|j| j.to_string()).unwrap_or_default();
    match end {
        StreamEnd::Closed => {
            tracing::info!(%peer, jid = %who, "c2s closed by peer");
            conn.close().await;
        }
        StreamEnd::Io(e) => tracing::info!(%peer, jid = %who, error = %e, "c2s connection lost"),
        StreamEnd::Error(cond, text) => {
            tracing::info!(%peer, jid = %who, error = cond.as_str(), detail = text.as_deref().unwrap_or(""), "c2s stream error");
            conn.close_with_error(cond, text.as_deref()).await;
        }
    }
}

struct Bound {
    jid: Jid,
    handle: SessionHandle,
    rx: mpsc::Receiver<Outbound>,
    /// Enabled during negotiation (XEP-0386 Bind 2 inline features).
    sm: Option<SmState>,
    handoff: Option<mpsc::Receiver<sm::Handoff>>,
    csi_inactive: bool,
}

/// Waits for the client's stream header and answers with ours. Errors found in the header
/// are sent after our header (RFC 6120 §4.9.1.1: an error needs an open stream).
async fn open_stream(server: &Server, conn: &mut Conn) -> Result<String, StreamEnd> {
    let header = {
        match conn.next_event().await {
            Ok(StreamEvent::Open(h)) => h,
            Ok(_) => {
                return Err(header_error(
                    server,
                    conn,
                    SErr::NotWellFormed,
                    "expected a stream header",
                    None,
                ))
            }
            Err(StreamEnd::Error(c, t)) => {
                let text = t.unwrap_or_default();
                return Err(header_error(server, conn, c, &text, None));
            }
            Err(e) => return Err(e),
        }
    };
    let to = header_attr(&header, "to");
    let domain = match to.as_deref().map(Jid::parse) {
        Some(Ok(j))
            if j.node().is_none() && j.resource().is_none() && server.serves(j.domain()) =>
        {
            j.domain().to_string()
        }
        Some(_) => {
            return Err(header_error(
                server,
                conn,
                SErr::HostUnknown,
                "this server does not serve that domain",
                None,
            ))
        }
        None => {
            return Err(header_error(
                server,
                conn,
                SErr::HostUnknown,
                "the stream header needs a 'to' address",
                None,
            ))
        }
    };
    if header.name != "stream" || header.ns != ns::STREAM {
        return Err(header_error(
            server,
            conn,
            SErr::InvalidNamespace,
            "not an XMPP stream",
            Some(&domain),
        ));
    }
    if header.default_ns.as_deref() != Some(ns::CLIENT) {
        return Err(header_error(
            server,
            conn,
            SErr::InvalidNamespace,
            "expected xmlns='jabber:client'",
            Some(&domain),
        ));
    }
    match header_attr(&header, "version").as_deref() {
        Some(v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()) == Some(1) => {}
        Some(v)
            if v.split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                .unwrap_or(0)
                > 1 =>
        {
            return Err(header_error(
                server,
                conn,
                SErr::UnsupportedVersion,
                "only XMPP 1.0 is supported",
                Some(&domain),
            ))
        }
        _ => {
            return Err(header_error(
                server,
                conn,
                SErr::UnsupportedVersion,
                "pre-XMPP 1.0 streams are not supported",
                Some(&domain),
            ))
        }
    }
    let client_from = header_attr(&header, "from").filter(|f| Jid::parse(f).is_ok());
    conn.queue_header(&domain, &stream::random_id(), client_from.as_deref());
    Ok(domain)
}

fn header_attr(h: &StreamHeader, name: &str) -> Option<String> {
    h.attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn header_error(
    server: &Server,
    conn: &mut Conn,
    cond: SErr,
    text: &str,
    domain: Option<&str>,
) -> StreamEnd {
    let from = domain.unwrap_or(&server.settings.domains[0]).to_string();
    conn.queue_header(&from, &stream::random_id(), None);
    stream_error(cond, text)
}

fn features() -> Element {
    Element::new("features", ns::STREAM)
}

async fn negotiate(
    server: &Arc<Server>,
    conn: &mut Conn,
    direct_tls: bool,
) -> Result<Negotiated, StreamEnd> {
    if direct_tls {
        conn.upgrade_tls(server).await?;
    }
    let require_tls = server.settings.raw.c2s.require_encryption;
    // Stage 1: TLS.
    let domain = loop {
        let domain = open_stream(server, conn).await?;
        if conn.secure {
            break domain;
        }
        if !conn.is_byte_stream() {
            // WebSocket and BOSH: encryption belongs to the HTTP layer (https); there is
            // no STARTTLS to offer.
            if require_tls {
                return Err(stream_error(
                    SErr::PolicyViolation,
                    "encryption required: connect over https (wss://)",
                ));
            }
            break domain;
        }
        let mut f = features();
        let mut starttls = Element::new("starttls", ns::TLS);
        if require_tls {
            starttls.push(Element::new("required", ns::TLS));
        }
        f.push(starttls);
        if !require_tls {
            f.push(mechanisms(server, conn));
        }
        conn.queue_stream_element(&f);
        conn.flush().await?;
        let el = conn.next_stanza().await?;
        if el.is("starttls", ns::TLS) {
            conn.send(&Element::new("proceed", ns::TLS)).await?;
            conn.upgrade_tls(server).await.map_err(StreamEnd::Io)?;
            continue;
        }
        if el.is("auth", ns::SASL) && !require_tls {
            // Unencrypted auth allowed by configuration: fall through with this element.
            return match authenticate(server, conn, &domain, Some(el)).await? {
                Authed::Legacy(jid) => bind_stage(server, conn, jid).await,
                Authed::Sasl2 { jid, req, success } => {
                    sasl2_complete(server, conn, jid, *req, success).await
                }
            };
        }
        let text = if el.is("auth", ns::SASL) {
            conn.send(&sasl_failure(
                "encryption-required",
                Some("use STARTTLS first"),
            ))
            .await?;
            "encryption required"
        } else {
            "STARTTLS is required first"
        };
        return Err(stream_error(SErr::PolicyViolation, text));
    };
    // Stage 2: SASL (RFC 6120 or XEP-0388 SASL2).
    let mut f = features();
    let mechs = mechanisms(server, conn);
    f.push(crate::sasl2::feature(conn, &mechs));
    f.push(mechs);
    if let Some(cb) = channel_binding_types(conn) {
        f.push(cb);
    }
    // XEP-0077: accounts are only created on encrypted streams.
    let registration = conn.secure;
    if registration {
        if let Some(reg) = ext::register::stream_feature(server, &domain) {
            f.push(reg);
        }
    }
    conn.queue_stream_element(&f);
    conn.flush().await?;
    // XEP-0077: in-band registration requests may come before authentication.
    let mut requests = 0;
    let first = loop {
        let el = conn.next_stanza().await?;
        if !registration || !ext::register::is_pre_auth_request(&el) {
            break el;
        }
        requests += 1;
        if requests > ext::register::PRE_AUTH_MAX_REQUESTS {
            return Err(stream_error(
                SErr::PolicyViolation,
                "too many registration requests",
            ));
        }
        let reply = ext::register::pre_auth(server, conn.peer.ip(), &domain, &el).await;
        conn.send(&reply).await?;
    };
    match authenticate(server, conn, &domain, Some(first)).await? {
        Authed::Legacy(jid) => bind_stage(server, conn, jid).await,
        Authed::Sasl2 { jid, req, success } => {
            sasl2_complete(server, conn, jid, *req, success).await
        }
    }
}

/// What authentication produced.
enum Authed {
    /// RFC 6120 SASL: the stream restarts, then the client binds.
    Legacy(Jid),
    /// XEP-0388: no restart; `success` is still to be sent, after inline features ran.
    Sasl2 {
        jid: Jid,
        req: Box<crate::sasl2::Request>,
        success: Element,
    },
}

/// XEP-0388 / XEP-0386 / XEP-0484: after a successful SASL2 exchange, hands out a FAST
/// token if asked, resumes or binds inline, then sends `<success/>` and the features of
/// the authenticated stream.
async fn sasl2_complete(
    server: &Arc<Server>,
    conn: &mut Conn,
    jid: Jid,
    req: crate::sasl2::Request,
    mut success: Element,
) -> Result<Negotiated, StreamEnd> {
    use crate::sasl2;
    if let Some(mech) = req.request_token.as_deref() {
        if let Some((token, expiry)) =
            sasl2::issue_token(server, &jid, req.agent.as_deref(), mech).await
        {
            success.push(sasl2::token_element(&token, expiry));
        }
    }
    if let Some((previd, h)) = req.resume.as_ref().filter(|_| conn.supports_sm()) {
        if let Some(slot) = server.registry.resumable(previd, jid.bare_str()) {
            // The session task writes <success><resumed/></success> on the moved connection.
            let moved = std::mem::replace(conn, Conn::placeholder(server, conn.peer));
            let handoff = sm::Handoff {
                conn: moved,
                h: *h,
                success: Some(success.clone()),
            };
            match slot.tx.send(handoff).await {
                Ok(()) => return Ok(Negotiated::HandedOff),
                Err(tokio::sync::mpsc::error::SendError(back)) => *conn = back.conn,
            }
        }
        success.push(sm::failed("item-not-found", None));
    } else if req.resume.is_some() {
        success.push(sm::failed("feature-not-implemented", None));
    }
    let Some(bind) = req.bind else {
        conn.queue(&success);
        conn.queue_stream_element(&post_auth_features(server, conn, jid.domain()));
        conn.flush().await?;
        return bind_loop(server, conn, jid).await;
    };
    let full = jid
        .with_resource(&sasl2::resource(bind.tag.as_deref()))
        .or_else(|_| jid.with_resource(&stream::random_id()))
        .map_err(|_| stream_error(SErr::InternalServerError, "cannot make a resource"))?;
    let (tx, rx) = mpsc::channel(server.settings.raw.c2s.outbox_capacity);
    let handle = SessionHandle::new(server.registry.next_id(), full.clone(), tx);
    if let Some(old) = server.registry.bind(handle.clone()) {
        old.close(SErr::Conflict, Some("replaced by a new session"));
    }
    handle.shared.carbons.store(bind.carbons, Ordering::Release);
    let mut bound = Element::new("bound", sasl2::BIND2);
    let mut sm_state = None;
    let mut handoff = None;
    if let Some(resume) = bind.sm.filter(|_| conn.supports_sm()) {
        let (enabled, state, rx_h) = enable_sm(server, &full, resume);
        bound.push(enabled);
        sm_state = Some(state);
        handoff = rx_h;
    }
    success.push(bound);
    // The identity is now the full JID (XEP-0386 §3).
    if let Some(id) = success.child_mut("authorization-identifier", sasl2::NS) {
        id.children.clear();
        id.push_text(full.as_str());
    }
    conn.queue(&success);
    conn.queue_stream_element(&features());
    conn.flush().await?;
    tracing::info!(peer = %conn.peer, jid = %full, "c2s session bound (bind 2)");
    Ok(Negotiated::Bound(Bound {
        jid: full,
        handle,
        rx,
        sm: sm_state,
        handoff,
        csi_inactive: bind.csi_inactive.unwrap_or(false),
    }))
}

/// Features after authentication, before a resource is bound.
fn post_auth_features(server: &Server, conn: &Conn, domain: &str) -> Element {
    let mut f = features();
    f.push(Element::new("bind", ns::BIND));
    f.push(Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)));
    f.push(Element::new("ver", ns::ROSTER_VER));
    f.push(Element::new("sub", ns::PRE_APPROVAL));
    if conn.supports_sm() {
        f.push(Element::new("sm", ns::SM));
    }
    f.push(Element::new("csi", ns::CSI));
    if let Some(c) = ext::disco::caps_feature(server, domain) {
        f.push(c);
    }
    f
}

/// XEP-0198 `<enable/>`: the `<enabled/>` answer, the state, and the handoff receiver
/// when resumption was granted.
fn enable_sm(
    server: &Server,
    jid: &Jid,
    wants_resume: bool,
) -> (Element, SmState, Option<mpsc::Receiver<sm::Handoff>>) {
    let timeout = server.settings.raw.c2s.resume_timeout_secs;
    let mut enabled = Element::new("enabled", ns::SM);
    if wants_resume && timeout > 0 {
        let id = stream::random_id();
        let (tx, rx) = mpsc::channel(1);
        server.registry.register_resumable(
            id.clone(),
            sm::ResumeSlot {
                bare: jid.bare_str().to_string(),
                tx,
            },
        );
        enabled.set_attr("id", id.clone());
        enabled.set_attr("resume", "true");
        enabled.set_attr("max", timeout.to_string());
        (enabled, SmState::new(Some(id)), Some(rx))
    } else {
        (enabled, SmState::new(None), None)
    }
}

fn mechanisms(server: &Server, conn: &Conn) -> Element {
    let mut m = Element::new("mechanisms", ns::SASL);
    let mut add = |name: &str| m.push(Element::new("mechanism", ns::SASL).with_text(name));
    if plus_offered(conn) {
        for h in [ScramHash::Sha512, ScramHash::Sha256, ScramHash::Sha1] {
            add(h.plus_mechanism());
        }
    }
    for h in [ScramHash::Sha512, ScramHash::Sha256, ScramHash::Sha1] {
        add(h.mechanism());
    }
    if conn.secure && server.settings.raw.auth.allow_plain {
        add("PLAIN");
    }
    m
}

/// SCRAM `-PLUS` is offered: the stream is encrypted and we have channel-binding data
/// (not so for a WebSocket on plain HTTP from loopback, which counts as secure).
fn plus_offered(conn: &Conn) -> bool {
    conn.secure && conn.can_bind_channel()
}

/// XEP-0440: which channel-binding types this connection supports.
fn channel_binding_types(conn: &Conn) -> Option<Element> {
    if !plus_offered(conn) {
        return None;
    }
    let mut e = Element::new("sasl-channel-binding", "urn:xmpp:sasl-cb:0");
    if conn.binding.tls_exporter.is_some() {
        e.push(
            Element::new("channel-binding", "urn:xmpp:sasl-cb:0").with_attr("type", "tls-exporter"),
        );
    }
    if conn.binding.tls_server_end_point.is_some() {
        e.push(
            Element::new("channel-binding", "urn:xmpp:sasl-cb:0")
                .with_attr("type", "tls-server-end-point"),
        );
    }
    Some(e)
}

fn sasl_failure(cond: &str, text: Option<&str>) -> Element {
    let mut f = Element::new("failure", ns::SASL).with_child(Element::new(cond, ns::SASL));
    if let Some(t) = text {
        f.push(
            Element::new("text", ns::SASL)
                .with_attr("xml:lang", "en")
                .with_text(t),
        );
    }
    f
}

fn decode_b64(el: &Element) -> Result<Vec<u8>, sasl::SaslError> {
    let t = el.text();
    let t = t.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    B64.decode(t)
        .map_err(|_| sasl::SaslError::MalformedRequest("invalid base64"))
}

/// Runs SASL until success; failures are reported and retried up to a limit.
async fn authenticate(
    server: &Arc<Server>,
    conn: &mut Conn,
    domain: &str,
    first: Option<Element>,
) -> Result<Authed, StreamEnd> {
    let mut pending = first;
    let mut attempts = 0;
    loop {
        let el = match pending.take() {
            Some(e) => e,
            None => conn.next_stanza().await?,
        };
        if el.is("authenticate", crate::sasl2::NS) {
            attempts += 1;
            match sasl2_exchange(server, conn, domain, &el).await? {
                Ok(done) => return Ok(done),
                Err((err, account)) => {
                    tracing::info!(peer = %conn.peer, account = account.as_deref().unwrap_or(""), reason = err.condition(), "c2s authentication failed (sasl2)");
                    let text = matches!(err, AuthFail::Throttled)
                        .then_some("too many failed attempts; try again later");
                    conn.send(&crate::sasl2::failure(err.condition(), text))
                        .await?;
                    if attempts >= MAX_SASL_ATTEMPTS {
                        return Err(stream_error(
                            SErr::PolicyViolation,
                            "too many failed authentication attempts",
                        ));
                    }
                    continue;
                }
            }
        }
        if !el.is("auth", ns::SASL) {
            return Err(stream_error(SErr::NotAuthorized, "authenticate first"));
        }
        attempts += 1;
        let mech = el.attr("mechanism").unwrap_or("").to_string();
        let initial = match decode_b64(&el) {
            Ok(d) => d,
            Err(e) => {
                conn.send(&sasl_failure(e.condition(), None)).await?;
                continue;
            }
        };
        match sasl_exchange(server, conn, domain, &mech, initial, ns::SASL).await? {
            Ok((jid, data)) => {
                let mut success = Element::new("success", ns::SASL);
                if let Some(d) = data {
                    success.push_text(B64.encode(d));
                }
                conn.queue(&success);
                conn.flush().await?;
                conn.reset();
                tracing::info!(peer = %conn.peer, jid = %jid, "c2s authenticated");
                return Ok(Authed::Legacy(jid));
            }
            Err((err, account)) => {
                tracing::info!(peer = %conn.peer, account = account.as_deref().unwrap_or(""), reason = err.condition(), "c2s authentication failed");
                let (cond, text) = match &err {
                    AuthFail::Throttled => (
                        "temporary-auth-failure",
                        Some("too many failed attempts; try again later"),
                    ),
                    AuthFail::Sasl(e) => (e.condition(), None),
                };
                conn.send(&sasl_failure(cond, text)).await?;
                if attempts >= MAX_SASL_ATTEMPTS {
                    return Err(stream_error(
                        SErr::PolicyViolation,
                        "too many failed authentication attempts",
                    ));
                }
            }
        }
    }
}

/// One XEP-0388 exchange: the RFC 6120 mechanisms with SASL2 framing, plus the XEP-0484
/// HT token mechanisms. On success returns the `<success/>` to send once inline features
/// have run.
async fn sasl2_exchange(
    server: &Arc<Server>,
    conn: &mut Conn,
    domain: &str,
    el: &Element,
) -> Result<Result<Authed, (AuthFail, Option<String>)>, StreamEnd> {
    use crate::sasl2;
    let req = match sasl2::parse(el) {
        Ok(r) => r,
        Err(_) => {
            return Ok(Err((
                sasl::SaslError::MalformedRequest("bad authenticate").into(),
                None,
            )))
        }
    };
    let ip = conn.peer.ip();
    if sasl2::is_ht(&req.mechanism) {
        if server.throttle.is_throttled(ip, None) {
            return Ok(Err((AuthFail::Throttled, None)));
        }
        let cb = sasl2::ht_binding(conn, &req.mechanism).map(<[u8]>::to_vec);
        return Ok(
            match sasl2::verify_ht(server, cb.as_deref(), domain, &req).await {
                Some(ok) => {
                    server.throttle.success(ok.jid.bare_str());
                    let mut success = sasl2::success(&ok.jid, Some(&ok.additional));
                    if let Some((t, e)) = &ok.rotated {
                        success.push(sasl2::token_element(t, *e));
                    }
                    tracing::info!(peer = %conn.peer, jid = %ok.jid, "c2s authenticated (fast token)");
                    Ok(Authed::Sasl2 {
                        jid: ok.jid,
                        req: Box::new(req),
                        success,
                    })
                }
                None => {
                    server.throttle.failure(ip, None);
                    Err((sasl::SaslError::NotAuthorized.into(), None))
                }
            },
        );
    }
    let initial = req.initial.clone();
    match sasl_exchange(server, conn, domain, &req.mechanism, initial, sasl2::NS).await? {
        Ok((jid, data)) => {
            let success = sasl2::success(&jid, data.as_deref());
            tracing::info!(peer = %conn.peer, jid = %jid, "c2s authenticated (sasl2)");
            Ok(Ok(Authed::Sasl2 {
                jid,
                req: Box::new(req),
                success,
            }))
        }
        Err(e) => Ok(Err(e)),
    }
}

enum AuthFail {
    Throttled,
    Sasl(sasl::SaslError),
}

impl AuthFail {
    fn condition(&self) -> &'static str {
        match self {
            AuthFail::Throttled => "temporary-auth-failure",
            AuthFail::Sasl(e) => e.condition(),
        }
    }
}

impl From<sasl::SaslError> for AuthFail {
    fn from(e: sasl::SaslError) -> Self {
        AuthFail::Sasl(e)
    }
}

/// Success carries the JID and RFC 6120 §6.3.10 additional data (SCRAM's server-final).
type Exchange = Result<(Jid, Option<Vec<u8>>), (AuthFail, Option<String>)>;

/// One SASL exchange. Outer error: the stream broke; inner: authentication failed.
async fn sasl_exchange(
    server: &Arc<Server>,
    conn: &mut Conn,
    domain: &str,
    mech: &str,
    initial: Vec<u8>,
    // The SASL profile's namespace: challenges and responses are in it (RFC 6120 or SASL2).
    profile: &'static str,
) -> Result<Exchange, StreamEnd> {
    let ip = conn.peer.ip();
    if server.throttle.is_throttled(ip, None) {
        return Ok(Err((AuthFail::Throttled, None)));
    }
    if mech == "PLAIN" {
        if !conn.secure || !server.settings.raw.auth.allow_plain {
            let e = if conn.secure {
                sasl::SaslError::InvalidMechanism
            } else {
                sasl::SaslError::EncryptionRequired
            };
            return Ok(Err((e.into(), None)));
        }
        let (authzid, authcid, password) = match sasl::parse_plain(&initial) {
            Ok(p) => p,
            Err(e) => return Ok(Err((e.into(), None))),
        };
        let jid = match Jid::new(Some(&authcid), domain, None) {
            Ok(j) => j,
            Err(_) => return Ok(Err((sasl::SaslError::NotAuthorized.into(), Some(authcid)))),
        };
        let account = jid.bare_str().to_string();
        if server.throttle.is_throttled(ip, Some(&account)) {
            return Ok(Err((AuthFail::Throttled, Some(account))));
        }
        if let Some(z) = authzid {
            if Jid::parse(&z).ok().map(|z| z.bare()) != Some(jid.bare()) {
                return Ok(Err((sasl::SaslError::InvalidAuthzid.into(), Some(account))));
            }
        }
        let creds = load_creds(server, &jid).await;
        let ok = match creds.into_iter().next() {
            // PBKDF2 is deliberately slow: keep it off the async workers.
            Some(c) => tokio::task::spawn_blocking(move || c.verify_password(&password))
                .await
                .unwrap_or(false),
            None => false,
        };
        return Ok(auth_result(server, ip, jid, ok));
    }
    let Some((hash, plus)) = ScramHash::from_mechanism(mech) else {
        return Ok(Err((sasl::SaslError::InvalidMechanism.into(), None)));
    };
    if plus && !plus_offered(conn) {
        return Ok(Err((sasl::SaslError::InvalidMechanism.into(), None)));
    }
    let mut scram = ScramServer::new(hash, plus, conn.binding.clone(), plus_offered(conn));
    let first = match scram.client_first(&initial) {
        Ok(f) => f,
        Err(e) => return Ok(Err((e.into(), None))),
    };
    let jid = Jid::new(Some(&first.username), domain, None).ok();
    let account = jid
        .as_ref()
        .map(|j| j.bare_str().to_string())
        .unwrap_or_else(|| first.username.clone());
    if server.throttle.is_throttled(ip, Some(&account)) {
        return Ok(Err((AuthFail::Throttled, Some(account))));
    }
    if let (Some(z), Some(j)) = (&first.authzid, &jid) {
        if Jid::parse(z).ok().map(|z| z.bare()) != Some(j.bare()) {
            return Ok(Err((sasl::SaslError::InvalidAuthzid.into(), Some(account))));
        }
    }
    let cred = match &jid {
        Some(j) => load_creds(server, j)
            .await
            .into_iter()
            .find(|c| c.hash == hash),
        None => None,
    };
    let challenge = scram.server_first(cred.as_ref());
    conn.send(&Element::new("challenge", profile).with_text(B64.encode(&challenge)))
        .await?;
    let resp = conn.next_stanza().await?;
    if resp.is("abort", profile) {
        return Ok(Err((sasl::SaslError::Aborted.into(), Some(account))));
    }
    if !resp.is("response", profile) {
        return Err(stream_error(
            SErr::NotAuthorized,
            "expected a SASL response",
        ));
    }
    let data = match decode_b64(&resp) {
        Ok(d) => d,
        Err(e) => return Ok(Err((e.into(), Some(account)))),
    };
    match (scram.client_final(&data), jid) {
        (Ok(server_final), Some(jid)) if cred.is_some() => {
            Ok(auth_result(server, ip, jid, true).map(|(j, _)| (j, Some(server_final))))
        }
        (Err(e), _) => {
            server.throttle.failure(ip, Some(&account));
            Ok(Err((e.into(), Some(account))))
        }
        _ => {
            server.throttle.failure(ip, Some(&account));
            Ok(Err((sasl::SaslError::NotAuthorized.into(), Some(account))))
        }
    }
}

fn auth_result(server: &Server, ip: std::net::IpAddr, jid: Jid, ok: bool) -> Exchange {
    let account = jid.bare_str().to_string();
    if ok {
        server.throttle.success(&account);
        Ok((jid, None))
    } else {
        server.throttle.failure(ip, Some(&account));
        Err((sasl::SaslError::NotAuthorized.into(), Some(account)))
    }
}

async fn load_creds(server: &Server, jid: &Jid) -> Vec<ScramCredential> {
    let node = jid.node().unwrap_or("");
    match server.storage.credentials(jid.domain(), node).await {
        Ok(Some(list)) => list
            .iter()
            .filter_map(crate::accounts::from_stored)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::error!(error = %e, "credential lookup failed");
            Vec::new()
        }
    }
}

/// What negotiation ends in: a new session, or a request to resume an old one.
enum Negotiated {
    Bound(Bound),
    Resume {
        jid: Jid,
        previd: String,
        h: u32,
    },
    /// The connection went to the session it resumed (XEP-0388 inline resumption).
    HandedOff,
}

async fn bind_stage(
    server: &Arc<Server>,
    conn: &mut Conn,
    jid: Jid,
) -> Result<Negotiated, StreamEnd> {
    open_stream(server, conn).await?;
    let f = post_auth_features(server, conn, jid.domain());
    conn.queue_stream_element(&f);
    conn.flush().await?;
    bind_loop(server, conn, jid).await
}

async fn bind_loop(
    server: &Arc<Server>,
    conn: &mut Conn,
    jid: Jid,
) -> Result<Negotiated, StreamEnd> {
    loop {
        let el = conn.next_stanza().await?;
        if el.is("resume", ns::SM) && !conn.supports_sm() {
            conn.send(&sm::failed("feature-not-implemented", None))
                .await?;
            continue;
        }
        if el.is("resume", ns::SM) {
            let (Some(previd), Some(h)) = (el.attr("previd"), sm::parse_h(&el)) else {
                conn.send(&sm::failed("bad-request", None)).await?;
                continue;
            };
            return Ok(Negotiated::Resume {
                jid,
                previd: previd.to_string(),
                h,
            });
        }
        if el.ns == ns::SM {
            // <enable/> before a resource is bound (XEP-0198 §3).
            conn.send(&sm::failed("unexpected-request", None)).await?;
            continue;
        }
        let Some(bind) = el
            .child("bind", ns::BIND)
            .filter(|_| el.name == "iq" && el.attr("type") == Some("set"))
        else {
            if el.name == "iq" && el.attr("type").is_some_and(|t| t == "get" || t == "set") {
                conn.send(
                    &StanzaError::new(Cond::NotAuthorized)
                        .with_text("bind a resource first")
                        .reply_to(&el),
                )
                .await?;
                continue;
            }
            return Err(stream_error(SErr::NotAuthorized, "bind a resource first"));
        };
        let requested = bind
            .child("resource", ns::BIND)
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let full = match requested.as_deref().map(|r| jid.with_resource(r)) {
            Some(Ok(j)) => j,
            Some(Err(_)) => {
                conn.send(
                    &StanzaError::new(Cond::BadRequest)
                        .with_text("invalid resource")
                        .reply_to(&el),
                )
                .await?;
                continue;
            }
            None => jid
                .with_resource(&stream::random_id())
                .expect("generated resource is valid"),
        };
        let (tx, rx) = mpsc::channel(server.settings.raw.c2s.outbox_capacity);
        let handle = SessionHandle::new(server.registry.next_id(), full.clone(), tx);
        if let Some(old) = server.registry.bind(handle.clone()) {
            old.close(SErr::Conflict, Some("replaced by a new session"));
        }
        let mut reply = Element::new("iq", ns::CLIENT).with_attr("type", "result");
        if let Some(id) = el.attr("id") {
            reply.set_attr("id", id);
        }
        reply.push(
            Element::new("bind", ns::BIND)
                .with_child(Element::new("jid", ns::BIND).with_text(full.to_string())),
        );
        conn.send(&reply).await?;
        tracing::info!(peer = %conn.peer, jid = %full, "c2s session bound");
        return Ok(Negotiated::Bound(Bound {
            jid: full,
            handle,
            rx,
            sm: None,
            handoff: None,
            csi_inactive: false,
        }));
    }
}

/// State of a bound session that lives in its task.
pub struct Session {
    pub jid: Jid,
    pub handle: SessionHandle,
    /// Full JIDs we sent directed presence to, owed an unavailable on logout.
    pub directed: Vec<Jid>,
    /// XEP-0198 state once the client enabled it.
    sm: Option<SmState>,
    /// New connections for this session (resumption or takeover).
    handoff: Option<mpsc::Receiver<sm::Handoff>>,
    /// XEP-0352 state.
    csi: Csi,
    /// Stanzas for this client that a handler produced (archive results, offline messages,
    /// presence on login): written straight to the connection after the handler, before
    /// an IQ reply. Not through the outbox: the handler runs in this session's task, which
    /// alone drains the outbox, so waiting there for room would wait on itself.
    pub before_reply: std::sync::Mutex<Vec<Element>>,
}

impl Session {
    /// Queues stanzas for this client, written after the current handler (see
    /// `before_reply`).
    pub fn to_client(&self, els: impl IntoIterator<Item = Element>) {
        self.before_reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(els);
    }

    fn take_for_client(&self) -> Vec<Element> {
        std::mem::take(&mut *self.before_reply.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Writes what the handler just run left for this client (`Session::to_client`).
fn emit_for_client(conn: &mut Conn, session: &mut Session) {
    for e in session.take_for_client() {
        emit(conn, session, e);
    }
}

/// Writes a stanza to the client, counting it for XEP-0198.
fn emit(conn: &mut Conn, session: &mut Session, el: Element) {
    conn.queue(&el);
    if let Some(sm) = session.sm.as_mut() {
        sm.sent(&el);
    }
}

/// Writes an outbound stanza through the CSI filter.
fn deliver_out(server: &Server, conn: &mut Conn, session: &mut Session, el: Element) {
    match session.csi.filter(el, server.settings.raw.c2s.csi_max_held) {
        Verdict::Send(el) => emit(conn, session, el),
        Verdict::FlushThenSend(held, el) => {
            for h in held {
                emit(conn, session, h);
            }
            emit(conn, session, el);
        }
        Verdict::Held => {}
    }
}

/// Why the connected part of a session's life ended.
enum LoopEnd {
    End(StreamEnd),
    /// A new connection took the session over.
    Handoff(Box<sm::Handoff>),
}

/// Everything a session task owns, built before the task starts and kept in one heap
/// block: the task's own future then holds a pointer instead of several moved copies of
/// the connection (an idle session's memory is mostly this task).
struct Live {
    conn: Conn,
    session: Session,
    rx: mpsc::Receiver<Outbound>,
    /// Stanzas queued while hibernating (XEP-0198), written on resumption.
    pending: VecDeque<Element>,
}

/// Starts the task of a bound session.
fn spawn_session(server: Arc<Server>, conn: Conn, bound: Bound) {
    let Bound {
        jid,
        handle,
        rx,
        sm,
        handoff,
        csi_inactive,
    } = bound;
    let live = Box::new(Live {
        conn,
        session: Session {
            jid,
            handle,
            directed: Vec::new(),
            sm,
            handoff,
            csi: Csi::starting(csi_inactive),
            before_reply: std::sync::Mutex::new(Vec::new()),
        },
        rx,
        pending: VecDeque::new(),
    });
    server.live_sessions.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(run_session(server, live));
}

async fn run_session(server: Arc<Server>, mut live: Box<Live>) {
    let end = {
        let Live {
            conn,
            session,
            rx,
            pending,
        } = &mut *live;
        loop {
            let handoff = match Box::pin(connected(&server, conn, session, rx, pending)).await {
                LoopEnd::Handoff(h) => {
                    // Takeover of a live connection: the old one is gone for the client.
                    // Boxed (rare path): keeps the long-lived session task small.
                    Box::pin(
                        conn.close_with_error(SErr::Conflict, Some("session resumed elsewhere")),
                    )
                    .await;
                    *h
                }
                LoopEnd::End(end) => {
                    let resumable = session.sm.as_ref().is_some_and(|s| s.id.is_some())
                        && matches!(
                            end,
                            StreamEnd::Io(_) | StreamEnd::Error(SErr::ConnectionTimeout, _)
                        );
                    if !resumable {
                        break end;
                    }
                    tracing::info!(peer = %conn.peer, jid = %session.jid, "c2s connection lost; session hibernating");
                    match Box::pin(hibernate(&server, session, rx, pending)).await {
                        Some(h) => h,
                        None => break StreamEnd::Io(std::io::Error::other("resumption timed out")),
                    }
                }
            };
            *conn = handoff.conn;
            resumed(&server, conn, session, handoff.h, handoff.success, pending);
            tracing::info!(peer = %conn.peer, jid = %session.jid, "c2s session resumed");
        }
    };
    let Live {
        conn,
        session,
        rx,
        pending,
    } = *live;
    Box::pin(end_session(&server, session, conn, rx, pending, end)).await;
    server.live_sessions.fetch_sub(1, Ordering::AcqRel);
}

/// Unbinds first so nothing new is routed here, then announces unavailability and hands
/// what never reached the client back to the router (other resources or offline storage)
/// so nothing is lost. Boxed by the caller: its state exists only while a session ends.
async fn end_session(
    server: &Arc<Server>,
    mut session: Session,
    mut conn: Conn,
    mut rx: mpsc::Receiver<Outbound>,
    mut pending: VecDeque<Element>,
    end: StreamEnd,
) {
    server.registry.unbind(&session.jid, session.handle.id);
    if let Some(id) = session.sm.as_ref().and_then(|s| s.id.as_deref()) {
        server.registry.forget_resumable(id);
    }
    rx.close();
    let mut leftovers: Vec<Element> = Vec::new();
    if let Some(sm) = session.sm.as_mut() {
        leftovers.extend(sm.unacked.drain(..));
    }
    leftovers.extend(pending.drain(..));
    while let Ok(Outbound::Stanza(el)) = rx.try_recv() {
        leftovers.push(*el);
    }
    crate::ext::push::on_session_active(server, &session.jid);
    presence::session_ended(server, &mut session).await;
    for el in leftovers {
        crate::router::reroute_undelivered(server, el).await;
    }
    let jid = session.jid.clone();
    finish(&mut conn, end, Some(&jid)).await;
}

/// Runs a client stanza's handler while moving this session's own outbox into `held`
/// (up to `cap` stanzas), and returns the handler's result with a close request taken
/// from the outbox meanwhile.
///
/// A handler may wait for room in another session's full outbox. If this session's outbox
/// went undrained meanwhile, two busy sessions writing to each other would each wait for
/// the other until the outbox timeout (and a ring of them would stall everyone in it), so
/// the session keeps accepting what is routed to it while it waits. Once the handler is
/// done, the held stanzas are written in the order they arrived.
async fn hold_outbox_while<F: std::future::Future>(
    handler: F,
    rx: &mut mpsc::Receiver<Outbound>,
    held: &mut VecDeque<Element>,
    cap: usize,
) -> (F::Output, Option<Box<(SErr, Option<String>)>>) {
    tokio::pin!(handler);
    let mut close = None;
    loop {
        tokio::select! {
            // The handler first: most finish on their first poll and never touch `rx`.
            biased;
            r = &mut handler => return (r, close),
            m = rx.recv(), if close.is_none() && held.len() < cap => match m {
                Some(Outbound::Stanza(el)) => held.push_back(*el),
                Some(Outbound::Close(c)) => close = Some(c),
                None => close = Some(Box::new((SErr::InternalServerError, None))),
            },
        }
    }
}

/// Writes one stanza taken from the outbox to the client.
async fn deliver_queued(server: &Arc<Server>, conn: &mut Conn, session: &mut Session, el: Element) {
    // XEP-0357 with XEP-0352: an inactive client may be asleep.
    if session.csi.inactive && el.name == "message" {
        crate::ext::push::on_session_queued(server, &session.jid, &el).await;
    }
    deliver_out(server, conn, session, el)
}

/// The session while a connection is attached. `held` is empty on entry and on a normal return; when the
/// stream ends while a handler ran, it keeps what was taken from the outbox meanwhile,
/// which the caller delivers after a resumption or reroutes (nothing is lost).
async fn connected(
    server: &Arc<Server>,
    conn: &mut Conn,
    session: &mut Session,
    rx: &mut mpsc::Receiver<Outbound>,
    held: &mut VecDeque<Element>,
) -> LoopEnd {
    let mut shutdown = server.shutdown.clone();
    loop {
        // Drain everything already parsed before reading more.
        match conn.poll_event() {
            Ok(Some(StreamEvent::Stanza(el))) => {
                // Boxed: the handler's state exists only while a stanza is processed,
                // keeping the idle session's task small.
                let handler = Box::pin(handle_client_element(server, conn, session, el));
                let cap = server.settings.raw.c2s.outbox_capacity;
                let (r, close) = hold_outbox_while(handler, rx, held, cap).await;
                if let Err(e) = r {
                    return LoopEnd::End(e);
                }
                while let Some(el) = held.pop_front() {
                    deliver_queued(server, conn, session, el).await;
                }
                if let Some(c) = close {
                    return LoopEnd::End(StreamEnd::Error(c.0, c.1));
                }
                continue;
            }
            Ok(Some(StreamEvent::Close)) => return LoopEnd::End(StreamEnd::Closed),
            Ok(Some(StreamEvent::Open(_))) => {
                return LoopEnd::End(stream_error(SErr::BadFormat, "unexpected stream header"))
            }
            Ok(None) => {}
            Err(e) => return LoopEnd::End(e),
        }
        if let Some(sm) = session.sm.as_mut() {
            if sm.unacked.len() > server.settings.raw.c2s.max_unacked {
                return LoopEnd::End(stream_error(
                    SErr::ResourceConstraint,
                    "too many unacknowledged stanzas",
                ));
            }
            if sm.should_request() {
                conn.queue(&sm::request());
            }
        }
        // A client that does not read blocks this write; a close request must still end it.
        tokio::select! {
            r = conn.flush() => if let Err(e) = r { return LoopEnd::End(StreamEnd::Io(e)); },
            (cond, text) = session.handle.shared.kicked() => return LoopEnd::End(StreamEnd::Error(cond, text)),
        }
        conn.release_idle_buffers();
        let handoff = async {
            match session.handoff.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.read_some() => if let Err(e) = r { return LoopEnd::End(e); },
            msg = rx.recv() => {
                let mut next = msg;
                let mut batch = 0;
                // Batch whatever else is already queued into one write.
                loop {
                    match next {
                        Some(Outbound::Stanza(el)) => deliver_queued(server, conn, session, *el).await,
                        Some(Outbound::Close(c)) => return LoopEnd::End(StreamEnd::Error(c.0, c.1)),
                        None => return LoopEnd::End(StreamEnd::Error(SErr::InternalServerError, None)),
                    }
                    batch += 1;
                    // Stop before taking another one out of the queue: a stanza taken and
                    // not written would be lost.
                    if batch == 64 {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(m) => next = Some(m),
                        Err(_) => break,
                    }
                }
            }
            h = handoff => if let Some(h) = h { return LoopEnd::Handoff(Box::new(h)); },
            (cond, text) = session.handle.shared.kicked() => return LoopEnd::End(StreamEnd::Error(cond, text)),
            _ = crate::stopped(&mut shutdown) => return LoopEnd::End(StreamEnd::Error(SErr::SystemShutdown, None)),
        }
    }
}

/// XEP-0198 §5: no connection; keep the session (it stays bound and available) until a
/// client resumes it or the timeout passes. Stanzas for it wait in `pending`.
async fn hibernate(
    server: &Arc<Server>,
    session: &mut Session,
    rx: &mut mpsc::Receiver<Outbound>,
    pending: &mut VecDeque<Element>,
) -> Option<sm::Handoff> {
    let timeout = tokio::time::sleep(Duration::from_secs(
        server.settings.raw.c2s.resume_timeout_secs,
    ));
    tokio::pin!(timeout);
    let mut shutdown = server.shutdown.clone();
    let cap = server.settings.raw.c2s.max_unacked;
    loop {
        let handoff = async {
            match session.handoff.as_mut() {
                Some(h) => h.recv().await,
                None => None,
            }
        };
        tokio::select! {
            h = handoff => return h,
            msg = rx.recv() => match msg {
                Some(Outbound::Stanza(el)) => {
                    // XEP-0357: the device is away; wake it.
                    crate::ext::push::on_session_queued(server, &session.jid, &el).await;
                    pending.push_back(*el);
                    if pending.len() > cap {
                        return None;
                    }
                }
                Some(Outbound::Close(..)) | None => return None,
            },
            _ = session.handle.shared.kicked() => return None,
            _ = &mut timeout => return None,
            _ = crate::stopped(&mut shutdown) => return None,
        }
    }
}

/// Completes a resumption on the new connection: `<resumed/>`, then what the client has
/// not acknowledged, then what queued up meanwhile.
fn resumed(
    server: &Server,
    conn: &mut Conn,
    session: &mut Session,
    h: u32,
    success: Option<Element>,
    pending: &mut VecDeque<Element>,
) {
    crate::ext::push::on_session_active(server, &session.jid);
    let Some(sm) = session.sm.as_mut() else {
        return;
    };
    if sm.ack(h).is_err() {
        // The client claims more than we sent: treat everything as received.
        sm.unacked.clear();
    }
    let resumed = Element::new("resumed", ns::SM)
        .with_attr("h", sm.h_in.to_string())
        .with_attr("previd", sm.id.clone().unwrap_or_default());
    match success {
        // XEP-0388: resumed inside the SASL2 success, then the features of the stream.
        Some(mut success) => {
            success.push(resumed);
            conn.queue(&success);
            conn.queue_stream_element(&features());
        }
        None => conn.queue(&resumed),
    }
    for el in sm.unacked.iter() {
        conn.queue(el);
    }
    sm.requested = false;
    for el in pending.drain(..) {
        deliver_out(server, conn, session, el);
    }
}

/// A top-level element from a bound client: XEP-0198 and XEP-0352 nonzas, or a stanza.
async fn handle_client_element(
    server: &Arc<Server>,
    conn: &mut Conn,
    session: &mut Session,
    el: Element,
) -> Result<(), StreamEnd> {
    if el.ns == ns::SM {
        return stream_management(server, conn, session, &el);
    }
    if csi::is_csi(&el) {
        if el.name == "active" {
            crate::ext::push::on_session_active(server, &session.jid);
            for h in session.csi.activate() {
                emit(conn, session, h);
            }
        } else {
            session.csi.inactive = true;
        }
        return Ok(());
    }
    handle_client_stanza(server, conn, session, el).await?;
    if let Some(sm) = session.sm.as_mut() {
        sm.h_in = sm.h_in.wrapping_add(1);
    }
    Ok(())
}

fn stream_management(
    server: &Arc<Server>,
    conn: &mut Conn,
    session: &mut Session,
    el: &Element,
) -> Result<(), StreamEnd> {
    match (el.name.as_str(), session.sm.as_mut()) {
        ("enable", None) if !conn.supports_sm() => {
            // BOSH: acknowledgements and retransmission are the binding's job.
            conn.queue(&sm::failed("feature-not-implemented", None));
            Ok(())
        }
        ("enable", None) => {
            let wants_resume = matches!(el.attr("resume"), Some("true" | "1"));
            let (enabled, state, handoff) = enable_sm(server, &session.jid, wants_resume);
            session.sm = Some(state);
            session.handoff = handoff;
            conn.queue(&enabled);
            Ok(())
        }
        ("enable", Some(_)) => {
            conn.queue(&sm::failed("unexpected-request", None));
            Ok(())
        }
        ("r", Some(sm)) => {
            let a = sm.ack_element();
            conn.queue(&a);
            Ok(())
        }
        ("a", Some(sm)) => {
            let Some(h) = sm::parse_h(el) else {
                return Err(stream_error(SErr::InvalidXml, "<a/> needs a numeric 'h'"));
            };
            match sm.ack(h) {
                Ok(()) => Ok(()),
                Err(sm::AckError::TooHigh { h, sent }) => Err(stream_error(
                    SErr::UndefinedCondition,
                    &format!("acknowledged {h} stanzas but only {sent} were sent (handled-count-too-high)"),
                )),
            }
        }
        ("resume", _) => {
            conn.queue(&sm::failed("unexpected-request", None));
            Ok(())
        }
        _ => Err(stream_error(
            SErr::UnsupportedStanzaType,
            "stream management is not enabled",
        )),
    }
}

/// Validates addressing of a stanza from the client and hands it to the right module.
async fn handle_client_stanza(
    server: &Arc<Server>,
    conn: &mut Conn,
    session: &mut Session,
    mut el: Element,
) -> Result<(), StreamEnd> {
    if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
        return Err(stream_error(
            SErr::UnsupportedStanzaType,
            "only message, presence and iq",
        ));
    }
    if let Some(from) = el.attr("from") {
        let ok = Jid::parse(from)
            .map(|f| f == session.jid || f == session.jid.bare())
            .unwrap_or(false);
        if !ok {
            return Err(stream_error(
                SErr::InvalidFrom,
                "'from' does not match this session",
            ));
        }
    }
    el.set_attr("from", session.jid.as_str());
    let to = match el.attr("to").map(Jid::parse) {
        None => None,
        Some(Ok(j)) => Some(j),
        Some(Err(_)) => {
            if el.attr("type") != Some("error") {
                emit(
                    conn,
                    session,
                    StanzaError::new(Cond::JidMalformed).reply_to(&el),
                );
            }
            return Ok(());
        }
    };
    if let Some(t) = &to {
        el.set_attr("to", t.as_str());
    }
    match el.name.as_str() {
        "iq" => {
            // Legacy session establishment (RFC 3921 §3), still sent by old clients.
            if el.attr("type") == Some("set")
                && el.child("session", ns::SESSION).is_some()
                && to
                    .as_ref()
                    .is_none_or(|t| t.is_bare() && t.node().is_none())
            {
                emit(conn, session, ext::iq_result(&el, None));
                return Ok(());
            }
            let reply = ext::client_iq(server, session, el, to).await;
            emit_for_client(conn, session);
            if let Some(reply) = reply {
                emit(conn, session, reply);
            }
        }
        "presence" => {
            // RFC 6121 §4.2.2 / §4.4.2: broadcast presence also goes back to its sender.
            // Written straight to this connection: our own outbox could be full.
            if to.is_none() && el.attr("type").is_none() {
                let mut copy = el.clone();
                copy.set_attr("to", session.jid.as_str());
                emit(conn, session, copy);
            }
            presence::from_client(server, session, el, to).await;
            emit_for_client(conn, session);
        }
        _ => crate::router::message_from_client(server, session, el, to).await,
    }
    Ok(())
}

/// Marks the session as interested in roster pushes.
pub fn set_interested(session: &Session) {
    session
        .handle
        .shared
        .interested
        .store(true, Ordering::Release);
}
