//! XEP-0124 BOSH with XEP-0206 (XMPP over BOSH) at `/http-bind`.
//!
//! A BOSH session runs the same negotiation and session task as a TCP stream (`c2s.rs`)
//! over a [`Link`]. HTTP requests hand the payloads of their `<body/>` to the session's
//! inbox, in `rid` order, and then wait (long polling) until the session writes something
//! or `wait` passes; what the session writes goes out in the response to the oldest
//! waiting request. One mutex-protected [`State`] per session holds that exchange; no lock
//! is held across an await.
//!
//! Implemented: session creation (`wait`, `hold` up to 1 with `requests` = hold + 1,
//! `inactivity`, `polling`, `maxpause`, `ver`, `content`, `ack`), `xmpp:version` and
//! `xmpp:restart` (XEP-0206), in-order processing of a window of `rid`s, response
//! acknowledgements, retransmission of recent responses for repeated `rid`s, session
//! pausing (§12), `type='terminate'`, overactivity and polling limits (`policy-violation`),
//! terminal conditions for unknown sessions (`item-not-found`), stream errors wrapped in
//! `remote-stream-error`, and CORS headers for browser clients. XEP-0198 is not offered:
//! BOSH has its own acknowledgements.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use dashmap::DashMap;
use herald_core::{ns, StreamErrorCondition as SErr};
use herald_xml::{Element, Limits, Node, StreamEvent, StreamHeader, StreamParser};
use http_body_util::BodyExt;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::ConnMeta;
use crate::stream::{Conn, Framed, StreamEnd};
use crate::Server;

/// The `<body/>` wrapper's namespace.
pub const NS: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 attributes.
pub const XBOSH: &str = "urn:xmpp:xbosh";
/// Highest protocol version implemented.
const VERSION: (u32, u32) = (1, 11);
/// `rid`s stay below 2^53 (XEP-0124 §14.1).
const MAX_RID: u64 = (1 << 53) - 1;
/// Output waiting for a client that does not poll, before the session waits for it
/// (backpressure: its outbox then fills and slow-session handling applies).
const OUT_LIMIT: usize = 1 << 20;
/// How long the terminal body of an ended session stays available to the next request.
const ENDED_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// Largest accepted request body: `[bosh] max_body_bytes`, else twice the stanza limit.
pub fn max_body_bytes(server: &Server) -> usize {
    let s = &server.settings.raw;
    s.bosh
        .max_body_bytes
        .unwrap_or_else(|| s.c2s.max_stanza_bytes.saturating_mul(2))
}

/// The live BOSH sessions by `sid`.
#[derive(Clone, Default)]
pub struct Sessions {
    map: Arc<DashMap<String, Arc<Shared>>>,
}

impl Sessions {
    /// Sessions in the table, including recently ended ones.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, sid: &str) -> Option<Arc<Shared>> {
        self.map.get(sid).map(|s| s.clone())
    }

    /// Removes `shared` (and not a newer session that reused the sid, which cannot
    /// happen with random sids but costs nothing to rule out).
    fn remove(&self, shared: &Arc<Shared>) {
        self.map
            .remove_if(&shared.sid, |_, v| Arc::ptr_eq(v, shared));
    }
}

/// Parameters fixed at session creation.
struct Params {
    wait: Duration,
    hold: usize,
    requests: usize,
    inactivity: Duration,
    polling: Duration,
    max_pause: u64,
    content_type: HeaderValue,
    /// The client uses acknowledgements (`ack='1'` at creation).
    acks: bool,
    /// Negotiated version; `None` for a legacy client that sent no `ver`.
    ver: Option<(u32, u32)>,
    /// The domain the session is for (`to` of the creation request).
    to: String,
    lang: Option<String>,
}

/// One BOSH session, shared by its request handlers and its session task.
struct Shared {
    sid: String,
    params: Params,
    state: Mutex<State>,
    /// Wakes the session task: new inbox events, the session ended, the inactivity
    /// deadline changed. One waiter (the session task); `notify_one` keeps a permit.
    to_session: Notify,
    /// Wakes a session task waiting for its output to be collected.
    drained: Notify,
}

struct Held {
    rid: u64,
    tx: oneshot::Sender<Bytes>,
}

/// A request that arrived before the ones preceding it (`rid` gap), with its waiter.
struct Early {
    req: Req,
    tx: oneshot::Sender<Bytes>,
}

struct State {
    /// Highest `rid` whose payload went to the session (requests are processed in order).
    rid: u64,
    /// Requests received ahead of `rid + 1`, within the window.
    ahead: BTreeMap<u64, Early>,
    /// Processed requests waiting for a response, oldest first.
    held: VecDeque<Held>,
    /// Events for the session task, and the request bytes they came from.
    inbox: VecDeque<StreamEvent>,
    inbox_bytes: usize,
    /// What the session wrote, waiting for a request to carry it.
    out: Vec<u8>,
    /// Recent responses by `rid`, for retransmission (XEP-0124 §14.3).
    sent: VecDeque<(u64, Bytes)>,
    /// The session creation attributes still have to go out (first response).
    first: bool,
    /// Stream id of the current stream, once the session opened it.
    stream_id: Option<String>,
    /// The session ended: the body later requests get.
    ended: Option<Bytes>,
    /// Since when no request has been held (inactivity is counted from here).
    idle_since: Instant,
    /// Inactivity period granted by a pause request, until the next request.
    pause: Option<Duration>,
    /// Arrival of the previous new request (polling limits).
    last_request: Instant,
    /// Polling sessions: the previous empty request got an empty response at this time.
    last_empty_poll: Option<Instant>,
}

/// A parsed request `<body/>`.
struct Req {
    attrs: Vec<(String, String)>,
    payload: Vec<Element>,
    bytes: usize,
}

impl Req {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn xbosh(&self, name: &str) -> Option<&str> {
        let key = format!("{{{XBOSH}}}{name}");
        self.attr(&key)
    }

    fn num(&self, name: &str) -> Option<u64> {
        self.attr(name).and_then(|v| v.trim().parse().ok())
    }

    fn is_terminate(&self) -> bool {
        self.attr("type") == Some("terminate")
    }

    fn is_restart(&self) -> bool {
        matches!(self.xbosh("restart"), Some("true" | "1"))
    }

    /// Carries nothing for the session: an empty poll.
    fn is_empty_poll(&self) -> bool {
        self.payload.is_empty()
            && !self.is_terminate()
            && !self.is_restart()
            && self.attr("pause").is_none()
    }
}

/// Why a request body was refused.
#[derive(Debug, PartialEq, Eq)]
enum BadBody {
    /// Not a well-formed BOSH `<body/>`.
    Malformed(String),
    /// A payload over the stanza limits.
    TooBig,
}

/// Parses a request: one `<body/>` of the BOSH namespace, its children as payloads.
/// Payloads in the `httpbind` namespace are taken as `jabber:client` (XEP-0206 §3: many
/// clients rely on that).
fn parse_body(data: &[u8], limits: Limits) -> Result<Req, BadBody> {
    let xml_err = |e: herald_xml::XmlError| {
        if e.stream_condition() == "policy-violation" {
            BadBody::TooBig
        } else {
            BadBody::Malformed(e.to_string())
        }
    };
    let mut p = StreamParser::new(limits);
    p.feed(data);
    let header = match p.next_event().map_err(xml_err)? {
        Some(StreamEvent::Open(h)) if h.name == "body" && h.ns == NS => h,
        Some(_) => return Err(BadBody::Malformed("not a BOSH <body/>".into())),
        None => return Err(BadBody::Malformed("incomplete <body/>".into())),
    };
    let mut payload = Vec::new();
    loop {
        match p.next_event().map_err(xml_err)? {
            Some(StreamEvent::Stanza(mut el)) => {
                client_ns(&mut el);
                payload.push(el);
            }
            Some(StreamEvent::Close) => break,
            Some(StreamEvent::Open(_)) => return Err(BadBody::Malformed("nested <body/>".into())),
            None => return Err(BadBody::Malformed("incomplete <body/>".into())),
        }
    }
    match p.next_event() {
        Ok(None) if p.buffered() == 0 => {}
        _ => return Err(BadBody::Malformed("data after </body>".into())),
    }
    Ok(Req {
        attrs: header.attrs,
        payload,
        bytes: data.len(),
    })
}

fn client_ns(el: &mut Element) {
    if el.ns == NS {
        el.ns = ns::CLIENT.into();
    }
    for c in el.children.iter_mut() {
        if let Node::Element(e) = c {
            client_ns(e);
        }
    }
}

fn parse_ver(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// A `<body type='terminate'/>` with an optional condition and payload.
fn terminate_body(condition: Option<&str>, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(160 + payload.len());
    out.extend_from_slice(b"<body xmlns='");
    out.extend_from_slice(NS.as_bytes());
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.extend_from_slice(b"' type='terminate'");
    if let Some(c) = condition {
        out.extend_from_slice(b" condition='");
        herald_xml::escape_attr(c, &mut out);
        out.push(b'\'');
    }
    if payload.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        out.extend_from_slice(payload);
        out.extend_from_slice(b"</body>");
    }
    Bytes::from(out)
}

/// XEP-0124 §14.3: a recoverable binding error (the request was superseded by a repeat).
fn recoverable_error_body() -> Bytes {
    Bytes::from(format!("<body xmlns='{NS}' type='error'/>"))
}

/// The HTTP response for a BOSH body, with the CORS headers browser clients need.
fn http_response(status: StatusCode, content_type: &HeaderValue, body: Bytes) -> Response {
    let mut r = (status, Body::from(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(h);
    r
}

fn cors(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

/// A terminal binding condition for a request that has no (valid) session. Legacy
/// clients (no `ver`) get the HTTP status XEP-0124 §17.1 gives them.
fn terminal(condition: &str, legacy: bool) -> Response {
    let status = match (legacy, condition) {
        (true, "bad-request") => StatusCode::BAD_REQUEST,
        (true, "policy-violation") => StatusCode::FORBIDDEN,
        (true, "item-not-found") => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    http_response(
        status,
        &HeaderValue::from_static(DEFAULT_CONTENT_TYPE),
        terminate_body(Some(condition), b""),
    )
}

/// `OPTIONS /http-bind`: CORS preflight.
pub async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    cors(r.headers_mut());
    r
}

/// `GET /http-bind`: a pointer for humans.
pub async fn info() -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, "text/plain")],
        "XMPP over BOSH (XEP-0206): POST <body/> elements here.\n",
    )
        .into_response();
    cors(r.headers_mut());
    r
}

/// `POST /http-bind`: session creation or a request of an existing session.
pub async fn request(
    AxState(server): AxState<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(meta): Extension<ConnMeta>,
    body: Body,
) -> Response {
    let limit = max_body_bytes(&server);
    let data = match tokio::time::timeout(
        super::BODY_TIMEOUT,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => {
            if e.is::<http_body_util::LengthLimitError>() {
                let mut r = terminal("policy-violation", false);
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return r;
            }
            tracing::debug!(%peer, error = %e, "bosh request body failed");
            return terminal("bad-request", false);
        }
        Err(_) => {
            let mut r = terminal("bad-request", false);
            *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
            return r;
        }
    };
    let c = &server.settings.raw.c2s;
    let limits = Limits {
        max_stanza_bytes: c.max_stanza_bytes,
        max_depth: c.max_depth,
        max_attrs: c.max_attributes,
        ..Limits::default()
    };
    let req = match parse_body(&data, limits) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%peer, error = ?e, "bosh request refused");
            let cond = match e {
                BadBody::TooBig => "policy-violation",
                BadBody::Malformed(_) => "bad-request",
            };
            return terminal(cond, false);
        }
    };
    match req.attr("sid") {
        None => create(server, peer, meta, req).await,
        Some(sid) => match server.bosh.get(sid) {
            Some(shared) => shared.request(req).await,
            None => terminal("item-not-found", false),
        },
    }
}

/// XEP-0124 §7, XEP-0206 §3: a new session. The creation request is held until the
/// session task has written the stream features (or `wait` passes).
async fn create(server: Arc<Server>, peer: SocketAddr, meta: ConnMeta, req: Req) -> Response {
    let legacy = req.attr("ver").is_none();
    let Some(rid) = req.num("rid").filter(|r| *r <= MAX_RID) else {
        return terminal("bad-request", legacy);
    };
    let Some(to) = req.attr("to").filter(|t| !t.trim().is_empty()) else {
        return terminal("improper-addressing", legacy);
    };
    let cfg = &server.settings.raw.bosh;
    let max_wait = cfg.max_wait_secs;
    let wait = req.num("wait").unwrap_or(max_wait).min(max_wait);
    let hold = req.num("hold").unwrap_or(1).min(1) as usize;
    let polling_session = hold == 0 || wait == 0;
    let inactivity = if polling_session {
        cfg.inactivity_secs + cfg.polling_secs
    } else {
        cfg.inactivity_secs
    };
    let ver = req.attr("ver").and_then(parse_ver).map(|v| v.min(VERSION));
    let content_type = req
        .attr("content")
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or_else(|| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    let params = Params {
        wait: Duration::from_secs(wait),
        hold,
        requests: hold + 1,
        inactivity: Duration::from_secs(inactivity),
        polling: Duration::from_secs(cfg.polling_secs),
        max_pause: cfg.max_pause_secs,
        content_type,
        acks: req.attr("ack") == Some("1"),
        ver,
        to: to.to_string(),
        lang: req.attr("xml:lang").map(str::to_string),
    };
    let now = Instant::now();
    let (tx, rx) = oneshot::channel();
    let mut state = State {
        rid,
        ahead: BTreeMap::new(),
        held: VecDeque::from([Held { rid, tx }]),
        inbox: VecDeque::new(),
        inbox_bytes: req.bytes,
        out: Vec::new(),
        sent: VecDeque::new(),
        first: true,
        stream_id: None,
        ended: None,
        idle_since: now,
        pause: None,
        last_request: now,
        last_empty_poll: None,
    };
    let version = req.xbosh("version").unwrap_or("1.0").to_string();
    state
        .inbox
        .push_back(StreamEvent::Open(stream_header(&params, &req, version)));
    let shared = Arc::new(Shared {
        sid: crate::stream::random_id(),
        params,
        state: Mutex::new(state),
        to_session: Notify::new(),
        drained: Notify::new(),
    });
    server.bosh.map.insert(shared.sid.clone(), shared.clone());
    let (secure, binding) = meta.stream_security();
    tracing::info!(%peer, secure, sid = %shared.sid, "c2s connection (bosh)");
    let link = Link {
        shared: shared.clone(),
        sessions: server.bosh.clone(),
    };
    let conn = Conn::framed(&server, Framed::Bosh(link), peer, secure, binding);
    tokio::spawn(crate::c2s::serve_conn(server.clone(), conn, false));
    // Features normally follow within milliseconds; a polling client still gets them soon.
    let wait = shared.params.wait.max(Duration::from_secs(1));
    shared.await_response(rid, rx, wait).await
}

/// The stream header a creation or restart request stands for.
fn stream_header(params: &Params, req: &Req, version: String) -> StreamHeader {
    let mut attrs = vec![
        (
            "to".to_string(),
            req.attr("to").unwrap_or(&params.to).to_string(),
        ),
        ("version".to_string(), version),
    ];
    if let Some(lang) = req.attr("xml:lang").or(params.lang.as_deref()) {
        attrs.push(("xml:lang".into(), lang.to_string()));
    }
    if let Some(from) = req.attr("from") {
        attrs.push(("from".into(), from.to_string()));
    }
    StreamHeader {
        name: "stream".into(),
        ns: ns::STREAM.into(),
        default_ns: Some(ns::CLIENT.into()),
        attrs,
    }
}

/// What a request gets right away or waits for.
enum Outcome {
    Reply(Bytes),
    Wait(oneshot::Receiver<Bytes>),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply(&self, body: Bytes) -> Response {
        http_response(StatusCode::OK, &self.params.content_type, body)
    }

    /// A request of this session: checks its `rid`, then processes it in order.
    async fn request(self: &Arc<Self>, req: Req) -> Response {
        let Some(rid) = req.num("rid").filter(|r| *r <= MAX_RID) else {
            self.abort("bad-request");
            return terminal("bad-request", self.params.ver.is_none());
        };
        let outcome = {
            let mut st = self.lock();
            if let Some(body) = &st.ended {
                return self.reply(body.clone());
            }
            self.receive(&mut st, rid, req)
        };
        match outcome {
            Ok(Outcome::Reply(body)) => self.reply(body),
            Ok(Outcome::Wait(rx)) => self.await_response(rid, rx, self.params.wait).await,
            Err(condition) => {
                tracing::info!(sid = %self.sid, condition, "bosh session terminated");
                self.abort(condition);
                terminal(condition, self.params.ver.is_none())
            }
        }
    }

    /// XEP-0124 §14: repeated, early, in-window and out-of-window `rid`s; overactivity.
    /// `Err` is the terminal condition the session ends with.
    fn receive(&self, st: &mut State, rid: u64, req: Req) -> Result<Outcome, &'static str> {
        let window = self.params.requests as u64;
        let (tx, rx) = oneshot::channel();
        if rid <= st.rid {
            // A repeat: the client lost the response (or gave up waiting for it).
            if let Some((_, body)) = st.sent.iter().find(|(r, _)| *r == rid) {
                return Ok(Outcome::Reply(body.clone()));
            }
            if let Some(h) = st.held.iter_mut().find(|h| h.rid == rid) {
                let old = std::mem::replace(&mut h.tx, tx);
                let _ = old.send(recoverable_error_body());
                return Ok(Outcome::Wait(rx));
            }
            return Err("item-not-found");
        }
        if rid > st.rid + window {
            return Err("item-not-found");
        }
        let exempt = req.is_terminate() || req.attr("pause").is_some();
        if let Some(e) = st.ahead.get_mut(&rid) {
            let old = std::mem::replace(&mut e.tx, tx);
            let _ = old.send(recoverable_error_body());
            return Ok(Outcome::Wait(rx));
        }
        // XEP-0124 §11: more simultaneous requests than `requests`.
        let unanswered = st.held.len() + st.ahead.len() + 1;
        if unanswered > self.params.requests && !exempt {
            return Err("policy-violation");
        }
        let now = Instant::now();
        if req.is_empty_poll() {
            // §11: all request slots taken by empty requests arriving too fast.
            if self.params.hold > 0
                && unanswered >= self.params.requests
                && now.duration_since(st.last_request) < self.params.polling
            {
                return Err("policy-violation");
            }
            // §11 polling sessions: two empty polls within `polling`, the first answered
            // with nothing.
            if self.params.hold == 0
                && st
                    .last_empty_poll
                    .is_some_and(|t| now.duration_since(t) < self.params.polling)
            {
                return Err("policy-violation");
            }
        }
        st.last_request = now;
        if rid > st.rid + 1 {
            st.ahead.insert(rid, Early { req, tx });
            return Ok(Outcome::Wait(rx));
        }
        self.process(st, rid, req, tx);
        while let Some(next) = st.ahead.remove(&(st.rid + 1)) {
            self.process(st, st.rid + 1, next.req, next.tx);
        }
        Ok(Outcome::Wait(rx))
    }

    /// Forwards one in-order request to the session and holds it (or answers it).
    fn process(&self, st: &mut State, rid: u64, req: Req, tx: oneshot::Sender<Bytes>) {
        st.rid = rid;
        if self.params.acks {
            if let Some(ack) = req.num("ack") {
                st.sent.retain(|(r, _)| *r > ack);
            }
        }
        if let Some(secs) = req.num("pause").filter(|_| self.params.max_pause > 0) {
            // §12: answer everything now (the pause request without payloads) and allow
            // the longer silence until the next request.
            while let Some(h) = st.held.pop_front() {
                self.respond(st, h);
            }
            let body = self.body(st, rid, b"");
            self.remember(st, rid, body.clone());
            let _ = tx.send(body);
            st.pause = Some(Duration::from_secs(secs.min(self.params.max_pause)));
            st.idle_since = Instant::now();
            self.to_session.notify_one();
            return;
        }
        st.pause = None;
        let before = st.inbox.len();
        if req.is_restart() {
            // XEP-0206 §5: a restart request's payload (there should be none) is ignored.
            let version = req.xbosh("version").unwrap_or("1.0").to_string();
            let header = stream_header(&self.params, &req, version);
            st.inbox.push_back(StreamEvent::Open(header));
        } else {
            let terminate = req.is_terminate();
            st.inbox
                .extend(req.payload.into_iter().map(StreamEvent::Stanza));
            if terminate {
                st.inbox.push_back(StreamEvent::Close);
            }
        }
        if st.inbox.len() > before {
            st.inbox_bytes += req.bytes;
            self.to_session.notify_one();
        }
        let empty_poll_reply = self.params.hold == 0 && st.out.is_empty();
        st.held.push_back(Held { rid, tx });
        while st.held.len() > self.params.hold {
            let h = st.held.pop_front().expect("non-empty");
            self.respond(st, h);
        }
        if !st.out.is_empty() {
            if let Some(h) = st.held.pop_front() {
                self.respond(st, h);
            }
        }
        if self.params.hold == 0 {
            st.last_empty_poll = empty_poll_reply.then(Instant::now);
        }
    }

    /// Answers `h` with everything the session wrote so far.
    fn respond(&self, st: &mut State, h: Held) {
        let payload = std::mem::take(&mut st.out);
        let body = self.body(st, h.rid, &payload);
        self.remember(st, h.rid, body.clone());
        let _ = h.tx.send(body);
        if st.held.is_empty() {
            st.idle_since = Instant::now();
            // The inactivity clock starts: let the session task see the deadline.
            self.to_session.notify_one();
        }
        self.drained.notify_one();
    }

    /// A response `<body/>`: the creation attributes on the first one, `ack` when the
    /// client uses acknowledgements and this is not the highest `rid` received.
    fn body(&self, st: &mut State, rid: u64, payload: &[u8]) -> Bytes {
        let p = &self.params;
        let mut out = Vec::with_capacity(512 + payload.len());
        out.extend_from_slice(b"<body xmlns='");
        out.extend_from_slice(NS.as_bytes());
        out.extend_from_slice(b"' xmlns:stream='");
        out.extend_from_slice(ns::STREAM.as_bytes());
        out.push(b'\'');
        let mut attr = |name: &str, value: &str| {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            herald_xml::escape_attr(value, &mut out);
            out.push(b'\'');
        };
        if st.first {
            st.first = false;
            attr("xmlns:xmpp", XBOSH);
            attr("sid", &self.sid);
            attr("wait", &p.wait.as_secs().to_string());
            attr("requests", &p.requests.to_string());
            attr("hold", &p.hold.to_string());
            attr("inactivity", &p.inactivity.as_secs().to_string());
            attr("polling", &p.polling.as_secs().to_string());
            if p.max_pause > 0 {
                attr("maxpause", &p.max_pause.to_string());
            }
            if let Some((major, minor)) = p.ver {
                attr("ver", &format!("{major}.{minor}"));
            }
            attr("from", &p.to);
            if let Some(id) = &st.stream_id {
                attr("authid", id);
            }
            attr("xmpp:version", "1.0");
            attr("xmpp:restartlogic", "true");
            if p.acks {
                attr("ack", &rid.to_string());
            }
        } else if p.acks && st.rid != rid {
            attr("ack", &st.rid.to_string());
        }
        if payload.is_empty() {
            out.extend_from_slice(b"/>");
        } else {
            out.push(b'>');
            out.extend_from_slice(payload);
            out.extend_from_slice(b"</body>");
        }
        Bytes::from(out)
    }

    /// Keeps a response for retransmission: the last `requests` + 1 of them (fewer once
    /// the client acknowledged them).
    fn remember(&self, st: &mut State, rid: u64, body: Bytes) {
        st.sent.push_back((rid, body));
        while st.sent.len() > self.params.requests + 1 {
            st.sent.pop_front();
        }
    }

    /// Waits for the response to `rid`; after `wait` it is answered with what there is
    /// (normally an empty body).
    async fn await_response(
        self: &Arc<Self>,
        rid: u64,
        mut rx: oneshot::Receiver<Bytes>,
        wait: Duration,
    ) -> Response {
        loop {
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(body)) => return self.reply(body),
                Ok(Err(_)) => {
                    // The session was dropped without answering: it is gone.
                    return terminal("item-not-found", self.params.ver.is_none());
                }
                Err(_) => {
                    if !self.expire(rid) {
                        // An early request whose gap never filled ended the session.
                        continue;
                    }
                }
            }
        }
    }

    /// `wait` passed for `rid`: answers it (and anything older) now. Returns false when
    /// the request waits in `ahead` for a missing predecessor; the session then ends with
    /// `item-not-found` (XEP-0124 §14.2: the lost request is not coming).
    fn expire(&self, rid: u64) -> bool {
        let mut st = self.lock();
        if let Some(i) = st.held.iter().position(|h| h.rid == rid) {
            for _ in 0..=i {
                let h = st.held.pop_front().expect("position found");
                self.respond(&mut st, h);
            }
            return true;
        }
        if st.ahead.contains_key(&rid) {
            self.finish(&mut st, Some("item-not-found"));
            return false;
        }
        true
    }

    /// Ends the session with a terminal condition found by the binding (bad `rid`,
    /// overactivity): held requests get it, the session task is told to stop.
    fn abort(&self, condition: &str) {
        let mut st = self.lock();
        self.finish(&mut st, Some(condition));
    }

    /// Marks the session ended: the oldest waiting request gets the terminal body with
    /// what is left to send, the others a bare one; later requests get it again until the
    /// session leaves the table.
    fn finish(&self, st: &mut State, condition: Option<&str>) {
        if st.ended.is_some() {
            return;
        }
        let payload = std::mem::take(&mut st.out);
        let full = terminate_body(condition, &payload);
        let bare = terminate_body(condition, b"");
        let mut waiting: Vec<(u64, oneshot::Sender<Bytes>)> =
            st.held.drain(..).map(|h| (h.rid, h.tx)).collect();
        waiting.extend(
            std::mem::take(&mut st.ahead)
                .into_iter()
                .map(|(rid, e)| (rid, e.tx)),
        );
        let mut bodies = std::iter::once(full.clone()).chain(std::iter::repeat(bare.clone()));
        let answered = !waiting.is_empty();
        for (rid, tx) in waiting {
            let body = bodies.next().unwrap_or_else(|| bare.clone());
            st.sent.push_back((rid, body.clone()));
            let _ = tx.send(body);
        }
        st.ended = Some(if answered { bare } else { full });
        st.inbox.clear();
        self.to_session.notify_one();
        self.drained.notify_one();
    }
}

/// The session task's side of a BOSH session.
pub struct Link {
    shared: Arc<Shared>,
    sessions: Sessions,
}

impl Link {
    /// Waits for events from requests; ends the stream when the client stays away longer
    /// than the inactivity period (XEP-0124 §12) or the binding terminated the session.
    /// Cancel-safe: events stay in the shared state until taken.
    pub async fn recv(&mut self, inbox: &mut VecDeque<StreamEvent>) -> Result<usize, StreamEnd> {
        let shared = &self.shared;
        loop {
            let deadline = {
                let mut st = shared.lock();
                if !st.inbox.is_empty() {
                    inbox.extend(st.inbox.drain(..));
                    return Ok(std::mem::take(&mut st.inbox_bytes).max(1));
                }
                if st.ended.is_some() {
                    return Err(StreamEnd::Io(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "BOSH session terminated",
                    )));
                }
                (st.held.is_empty() && st.ahead.is_empty())
                    .then(|| st.idle_since + st.pause.unwrap_or(shared.params.inactivity))
            };
            match deadline {
                None => shared.to_session.notified().await,
                Some(at) => {
                    if tokio::time::timeout_at(at, shared.to_session.notified())
                        .await
                        .is_err()
                    {
                        let mut st = shared.lock();
                        let idle = st.held.is_empty() && st.ahead.is_empty() && st.inbox.is_empty();
                        let limit = st.pause.unwrap_or(shared.params.inactivity);
                        if idle && Instant::now() >= st.idle_since + limit {
                            // §12: the client is gone; later requests find no session.
                            st.ended = Some(terminate_body(Some("item-not-found"), b""));
                            drop(st);
                            self.sessions.remove(shared);
                            return Err(StreamEnd::Io(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "BOSH client inactive",
                            )));
                        }
                    }
                }
            }
        }
    }

    /// The session opened a stream (creation or restart): its id goes into the creation
    /// response as `authid`.
    pub fn stream_opened(&mut self, _from: &str, id: &str) {
        self.shared.lock().stream_id = Some(id.to_string());
    }

    /// Hands written elements to the oldest waiting request, or keeps them for the next.
    /// Waits while more than [`OUT_LIMIT`] bytes are uncollected.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let shared = &self.shared;
        {
            let mut st = shared.lock();
            if st.ended.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "BOSH session terminated",
                ));
            }
            st.out.extend_from_slice(data);
            if let Some(h) = st.held.pop_front() {
                shared.respond(&mut st, h);
            }
        }
        let deadline = Instant::now() + shared.params.inactivity + shared.params.wait;
        loop {
            let drained = shared.drained.notified();
            {
                let st = shared.lock();
                if st.out.len() <= OUT_LIMIT || st.ended.is_some() {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "BOSH client does not collect its data",
                ));
            }
        }
    }

    /// Ends the session from the server side: a normal close (`</stream:stream>`) is a
    /// bare `terminate`; a stream error goes out as `remote-stream-error` with the
    /// `<stream:error/>` (XEP-0206 §7), except where BOSH has a condition of its own.
    pub fn close(&mut self, data: &[u8], error: Option<(SErr, Element)>) {
        let shared = &self.shared;
        let mut st = shared.lock();
        st.out.extend_from_slice(data);
        let condition = match &error {
            None => None,
            Some((SErr::HostUnknown, _)) => Some("host-unknown"),
            Some((SErr::SystemShutdown, _)) => Some("system-shutdown"),
            Some((_, el)) => {
                crate::stream::write_stream_element(&mut st.out, el, false);
                Some("remote-stream-error")
            }
        };
        shared.finish(&mut st, condition);
    }
}

impl Drop for Link {
    /// The session task is done with the BOSH session: requests still waiting learn that
    /// it ended, and the session leaves the table once its terminal body had a chance to
    /// reach the client.
    fn drop(&mut self) {
        let shared = self.shared.clone();
        {
            let mut st = shared.lock();
            if st.ended.is_none() {
                let cond = if st.held.is_empty() && st.ahead.is_empty() {
                    "item-not-found"
                } else {
                    "remote-connection-failed"
                };
                shared.finish(&mut st, Some(cond));
            }
        }
        let sessions = self.sessions.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(ENDED_GRACE).await;
                    sessions.remove(&shared);
                });
            }
            Err(_) => sessions.remove(&shared),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Req, BadBody> {
        parse_body(s.as_bytes(), Limits::default())
    }

    #[test]
    fn request_bodies() {
        let r = parse(
            "<body rid='10' sid='abc' xmlns='http://jabber.org/protocol/httpbind' \
             xmlns:xmpp='urn:xmpp:xbosh' xmpp:restart='true' to='example.test'/>",
        )
        .unwrap();
        assert_eq!(r.num("rid"), Some(10));
        assert_eq!(r.attr("sid"), Some("abc"));
        assert!(r.is_restart());
        assert!(r.payload.is_empty());

        let r = parse(
            "<?xml version='1.0'?><body rid='11' sid='abc' xmlns='http://jabber.org/protocol/httpbind'>\
             <message to='a@example.test'><body>hi</body></message>\
             <iq xmlns='jabber:client' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq></body>",
        )
        .unwrap();
        assert_eq!(r.payload.len(), 2);
        // Stanzas without a namespace of their own are jabber:client (XEP-0206 §3).
        assert!(r.payload[0].is("message", ns::CLIENT));
        assert!(r.payload[0].child("body", ns::CLIENT).is_some());
        assert!(r.payload[1].is("iq", ns::CLIENT));
        assert!(!r.is_empty_poll());

        for bad in [
            "",
            "<body xmlns='jabber:client'/>",
            "<body xmlns='http://jabber.org/protocol/httpbind'>",
            "<body xmlns='http://jabber.org/protocol/httpbind'/><x/>",
            "<body xmlns='http://jabber.org/protocol/httpbind'>text</body>",
            "<body xmlns='http://jabber.org/protocol/httpbind'><!-- c --></body>",
        ] {
            assert!(
                matches!(parse(bad), Err(BadBody::Malformed(_))),
                "{bad:?}: {:?}",
                parse(bad).err()
            );
        }
        let small = Limits {
            max_stanza_bytes: 64,
            ..Limits::default()
        };
        let big = format!(
            "<body xmlns='http://jabber.org/protocol/httpbind'><message>{}</message></body>",
            "x".repeat(100)
        );
        assert_eq!(
            parse_body(big.as_bytes(), small).err(),
            Some(BadBody::TooBig)
        );
    }

    #[test]
    fn versions_and_bodies() {
        assert_eq!(parse_ver("1.6"), Some((1, 6)));
        assert_eq!(parse_ver("1.11"), Some((1, 11)));
        assert_eq!(parse_ver("x"), None);
        assert!(parse_ver("1.20").map(|v| v.min(VERSION)) == Some(VERSION));
        let t = terminate_body(Some("item-not-found"), b"");
        let el = herald_xml::parse_document(&t, Limits::default()).unwrap();
        assert!(el.is("body", NS));
        assert_eq!(el.attr("type"), Some("terminate"));
        assert_eq!(el.attr("condition"), Some("item-not-found"));
    }
}
