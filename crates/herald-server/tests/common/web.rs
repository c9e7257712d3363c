//! Web transports for the test client: RFC 7395 WebSocket (tokio-tungstenite) and a small
//! XEP-0124/XEP-0206 BOSH client over raw HTTP/1.1, plus a raw HTTP request helper.
//!
//! A [`Client`] built here keeps its whole API (`open_stream`, `authenticate`, `bind`,
//! `expect_match`, `expect_stream_error`...): `send` maps the TCP stream header to
//! `<open/>` or a BOSH creation/restart request and `</stream:stream>` to `<close/>` or a
//! terminate request; received framing becomes the same [`Event`]s as on TCP.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::ns;
use herald_xml::{Element, Limits, StreamHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{tls_connector, Client, Event, Hash, Mech, Transport, DOMAIN, PASSWORD, WAIT};

pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
pub const BOSH_NS: &str = "http://jabber.org/protocol/httpbind";

/// A web transport under a [`Client`].
pub enum Wire {
    WebSocket(Box<WsWire>),
    Bosh(Box<BoshWire>),
}

impl Wire {
    pub async fn send(&mut self, data: &[u8]) {
        match self {
            Wire::WebSocket(w) => w.send(data).await,
            Wire::Bosh(b) => b.send(data).await,
        }
    }

    pub async fn next_event_within(&mut self, t: Duration) -> Option<Event> {
        match self {
            Wire::WebSocket(w) => w.next_event_within(t).await,
            Wire::Bosh(b) => b.next_event_within(t).await,
        }
    }
}

fn parse(data: &[u8]) -> Element {
    herald_xml::parse_document(
        data,
        Limits {
            max_stanza_bytes: 8 * 1024 * 1024,
            ..Limits::default()
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "the server sent XML the client cannot parse ({e}): {}",
            String::from_utf8_lossy(data)
        )
    })
}

fn is_stream_header(data: &[u8]) -> bool {
    data.starts_with(b"<?xml") || data.starts_with(b"<stream:stream")
}

// ---------------------------------------------------------------------------------------
// WebSocket

trait WsIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> WsIo for T {}

pub struct WsWire {
    ws: WebSocketStream<Box<dyn WsIo>>,
    closed: bool,
}

/// Connects a WebSocket to `/xmpp-websocket` offering `protocols` (`xmpp` for a normal
/// client). Returns the socket and the subprotocol the server selected, or the HTTP
/// status when the upgrade was refused.
pub async fn ws_connect(
    addr: SocketAddr,
    tls: bool,
    protocols: Option<&str>,
) -> Result<(WsWire, Option<String>, Option<(Vec<u8>, Vec<u8>)>), u16> {
    ws_connect_with(addr, tls, protocols, &[]).await
}

/// [`ws_connect`] with extra request headers (as a reverse proxy would add).
pub async fn ws_connect_with(
    addr: SocketAddr,
    tls: bool,
    protocols: Option<&str>,
    headers: &[(&'static str, &str)],
) -> Result<(WsWire, Option<String>, Option<(Vec<u8>, Vec<u8>)>), u16> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).ok();
    let mut binding = None;
    let io: Box<dyn WsIo> = if tls {
        let name = rustls::pki_types::ServerName::try_from(DOMAIN)
            .expect("server name")
            .to_owned();
        let s = tokio::time::timeout(WAIT, tls_connector().connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake failed");
        {
            use sha2::Digest;
            let (_, conn) = s.get_ref();
            let exporter = conn
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", Some(&[]))
                .expect("tls-exporter");
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .expect("server certificate");
            binding = Some((exporter, sha2::Sha256::digest(cert.as_ref()).to_vec()));
        }
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let scheme = if tls { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{addr}/xmpp-websocket")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header value"));
    }
    for (name, value) in headers {
        req.headers_mut()
            .append(*name, value.parse().expect("header value"));
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, io))
        .await
        .expect("WebSocket handshake timed out")
    {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((ws_wire(ws), proto, binding))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

fn ws_wire(ws: WebSocketStream<Box<dyn WsIo>>) -> WsWire {
    WsWire { ws, closed: false }
}

impl WsWire {
    /// Sends one text message as is.
    pub async fn send_text(&mut self, text: &str) {
        let _ = tokio::time::timeout(WAIT, self.ws.send(Message::Text(text.into()))).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        let _ =
            tokio::time::timeout(WAIT, self.ws.send(Message::Binary(data.to_vec().into()))).await;
    }

    async fn send(&mut self, data: &[u8]) {
        let text = std::str::from_utf8(data).expect("UTF-8");
        if is_stream_header(data) {
            let open = format!("<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>");
            self.send_text(&open).await;
        } else if text == "</stream:stream>" {
            self.send_text(&format!("<close xmlns='{FRAMING}'/>")).await;
        } else {
            self.send_text(text).await;
        }
    }

    /// The next message as an event; the WebSocket ending is `Eof`.
    pub async fn next_event_within(&mut self, t: Duration) -> Option<Event> {
        if self.closed {
            return Some(Event::Eof);
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.closed = true;
                    return Some(Event::Eof);
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let el = parse(t.as_bytes());
                    if el.ns == FRAMING && el.name == "open" {
                        return Some(Event::Open(StreamHeader {
                            name: "stream".into(),
                            ns: ns::STREAM.into(),
                            default_ns: Some(ns::CLIENT.into()),
                            attrs: el.attrs,
                        }));
                    }
                    if el.ns == FRAMING && el.name == "close" {
                        return Some(Event::Close);
                    }
                    return Some(Event::Stanza(el));
                }
                Message::Close(_) => {
                    self.closed = true;
                    return Some(Event::Eof);
                }
                Message::Binary(_) => panic!("the server sent a binary message"),
                _ => {}
            }
        }
    }
}

impl Client {
    /// A client over a WebSocket (no stream opened yet).
    pub async fn websocket(addr: SocketAddr, tls: bool) -> Client {
        Client::websocket_with(addr, tls, &[]).await
    }

    /// [`Client::websocket`] with extra upgrade request headers.
    pub async fn websocket_with(
        addr: SocketAddr,
        tls: bool,
        headers: &[(&'static str, &str)],
    ) -> Client {
        let (wire, proto, binding) = ws_connect_with(addr, tls, Some("xmpp"), headers)
            .await
            .unwrap_or_else(|status| panic!("WebSocket upgrade refused with {status}"));
        assert_eq!(proto.as_deref(), Some("xmpp"), "subprotocol selected");
        let mut c = Client::with_wire(Wire::WebSocket(Box::new(wire)));
        if let Some((exporter, end_point)) = binding {
            c.exporter = Some(exporter);
            c.end_point = Some(end_point);
        }
        c
    }

    /// Opens the stream, authenticates with SCRAM and binds `resource` over a WebSocket.
    pub async fn login_websocket(
        addr: SocketAddr,
        tls: bool,
        user: &str,
        resource: &str,
    ) -> Client {
        let mut c = Client::websocket(addr, tls).await;
        c.open_stream().await;
        c.authenticate(user, PASSWORD, Mech::Scram(Hash::Sha256, None))
            .await
            .unwrap_or_else(|cond| panic!("websocket login of {user} failed: {cond}"));
        c.open_stream().await;
        c.bind(Some(resource)).await;
        c
    }

    /// A client over BOSH (no session created yet).
    pub fn bosh(addr: SocketAddr) -> Client {
        Client::with_wire(Wire::Bosh(Box::new(BoshWire::new(addr))))
    }

    /// Creates a BOSH session, authenticates with SCRAM, restarts and binds `resource`.
    pub async fn login_bosh(addr: SocketAddr, user: &str, resource: &str) -> Client {
        let mut c = Client::bosh(addr);
        c.open_stream().await;
        c.authenticate(user, PASSWORD, Mech::Scram(Hash::Sha256, None))
            .await
            .unwrap_or_else(|cond| panic!("BOSH login of {user} failed: {cond}"));
        c.open_stream().await;
        c.bind(Some(resource)).await;
        c
    }

    fn with_wire(wire: Wire) -> Client {
        let mut c = Client::unconnected();
        c.io = Transport::Gone;
        c.web = Some(wire);
        c
    }

    /// The BOSH wire of this client.
    pub fn bosh_wire(&mut self) -> &mut BoshWire {
        match self.web.as_mut() {
            Some(Wire::Bosh(b)) => b,
            _ => panic!("not a BOSH client"),
        }
    }

    /// The WebSocket wire of this client.
    pub fn ws_wire(&mut self) -> &mut WsWire {
        match self.web.as_mut() {
            Some(Wire::WebSocket(w)) => w,
            _ => panic!("not a WebSocket client"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A response read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as one XML element.
    pub fn xml(&self) -> Element {
        parse(&self.body)
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), optionally over TLS.
pub async fn http_request(
    addr: SocketAddr,
    tls: bool,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    http_request_within(addr, tls, method, path, headers, body, WAIT)
        .await
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path} within {WAIT:?}"))
}

pub async fn http_request_within(
    addr: SocketAddr,
    tls: bool,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    t: Duration,
) -> Option<HttpResponse> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut data = req.into_bytes();
    data.extend_from_slice(body);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let raw = if tls {
        let name = rustls::pki_types::ServerName::try_from(DOMAIN)
            .expect("server name")
            .to_owned();
        let mut s = tls_connector()
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        exchange(&mut s, &data, t).await?
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp, &data, t).await?
    };
    Some(parse_response(&raw))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
    t: Duration,
) -> Option<Vec<u8>> {
    s.write_all(data).await.ok()?;
    s.flush().await.ok()?;
    let mut out = Vec::new();
    match tokio::time::timeout(t, s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
}

/// POSTs one BOSH body to `/http-bind` and returns the response.
pub async fn bosh_post(addr: SocketAddr, body: &str) -> HttpResponse {
    http_request(
        addr,
        false,
        "POST",
        "/http-bind",
        &[("Content-Type", "text/xml; charset=utf-8")],
        body.as_bytes(),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// BOSH

/// A BOSH client in the style of strophe.js: at most `requests` (2) requests outstanding,
/// each on its own connection, responses processed in `rid` order, a new empty request
/// whenever none is outstanding while the caller waits for something.
pub struct BoshWire {
    addr: SocketAddr,
    pub sid: Option<String>,
    pub rid: u64,
    /// The creation response's attributes.
    pub session: Vec<(String, String)>,
    pub wait: u64,
    outstanding: usize,
    next_to_process: u64,
    early: BTreeMap<u64, HttpResponse>,
    tx: mpsc::UnboundedSender<(u64, HttpResponse)>,
    rx: mpsc::UnboundedReceiver<(u64, HttpResponse)>,
    events: VecDeque<Event>,
    /// The response to this rid starts a stream (creation or restart): an `Open` event
    /// comes first.
    header_rid: Option<u64>,
    ended: bool,
    /// Every response body, in order.
    pub log: Vec<Element>,
}

impl BoshWire {
    pub fn new(addr: SocketAddr) -> BoshWire {
        let (tx, rx) = mpsc::unbounded_channel();
        let rid = 1_000_000 + u64::from(rand::random::<u32>());
        BoshWire {
            addr,
            sid: None,
            rid,
            session: Vec::new(),
            wait: 30,
            outstanding: 0,
            next_to_process: rid + 1,
            early: BTreeMap::new(),
            tx,
            rx,
            events: VecDeque::new(),
            header_rid: None,
            ended: false,
            log: Vec::new(),
        }
    }

    /// Takes the next rid for a request the test sends itself (nothing may be
    /// outstanding).
    pub fn reserve_rid(&mut self) -> u64 {
        assert_eq!(self.outstanding, 0, "requests outstanding");
        self.skip_rids(1);
        self.rid
    }

    /// Moves past `n` rids used by requests the test sent itself.
    pub fn skip_rids(&mut self, n: u64) {
        self.rid += n;
        self.next_to_process += n;
    }

    pub fn session_attr(&self, name: &str) -> Option<&str> {
        self.session
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Posts `<body {attrs}>{payload}</body>` with the next rid in the background.
    pub fn post(&mut self, attrs: &str, payload: &str) -> u64 {
        self.rid += 1;
        let rid = self.rid;
        let sid = self
            .sid
            .as_ref()
            .map(|s| format!(" sid='{s}'"))
            .unwrap_or_default();
        let body = format!(
            "<body xmlns='{BOSH_NS}' xmlns:xmpp='urn:xmpp:xbosh' rid='{rid}'{sid} {attrs}>{payload}</body>"
        );
        self.outstanding += 1;
        let addr = self.addr;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = http_request_within(
                addr,
                false,
                "POST",
                "/http-bind",
                &[("Content-Type", "text/xml; charset=utf-8")],
                body.as_bytes(),
                Duration::from_secs(120),
            )
            .await;
            if let Some(r) = r {
                let _ = tx.send((rid, r));
            }
        });
        rid
    }

    async fn send(&mut self, data: &[u8]) {
        let text = std::str::from_utf8(data).expect("UTF-8").to_string();
        if is_stream_header(data) {
            if self.sid.is_none() {
                let attrs = format!(
                    "to='{DOMAIN}' xml:lang='en' wait='{}' hold='1' ver='1.11' xmpp:version='1.0' ack='1'",
                    self.wait
                );
                self.header_rid = Some(self.post(&attrs, ""));
                // Everything after needs the sid.
                self.pump_until(|w| w.sid.is_some() || w.ended).await;
            } else {
                self.make_room().await;
                self.header_rid = Some(self.post(
                    &format!("to='{DOMAIN}' xml:lang='en' xmpp:restart='true'"),
                    "",
                ));
            }
            return;
        }
        self.make_room().await;
        if text == "</stream:stream>" {
            self.post("type='terminate'", "");
        } else {
            self.post("", &text);
        }
    }

    /// Waits until fewer than two requests are outstanding.
    async fn make_room(&mut self) {
        while self.outstanding >= 2 && !self.ended {
            if !self.pump_one(WAIT).await {
                panic!("no BOSH response within {WAIT:?} while two requests are outstanding");
            }
        }
    }

    async fn pump_until(&mut self, done: impl Fn(&BoshWire) -> bool) {
        while !done(self) {
            if !self.pump_one(WAIT).await {
                panic!("no BOSH response within {WAIT:?}");
            }
        }
    }

    /// Receives one response and processes whatever is now in order. False on timeout.
    async fn pump_one(&mut self, t: Duration) -> bool {
        match tokio::time::timeout(t, self.rx.recv()).await {
            Ok(Some((rid, resp))) => {
                self.early.insert(rid, resp);
                while let Some(resp) = self.early.remove(&self.next_to_process) {
                    let rid = self.next_to_process;
                    self.next_to_process += 1;
                    self.outstanding -= 1;
                    self.process(rid, resp);
                }
                true
            }
            _ => false,
        }
    }

    fn process(&mut self, rid: u64, resp: HttpResponse) {
        assert_eq!(resp.status, 200, "BOSH HTTP status: {}", resp.text());
        assert_eq!(
            resp.header("Access-Control-Allow-Origin"),
            Some("*"),
            "CORS header"
        );
        let body = resp.xml();
        assert!(body.is("body", BOSH_NS), "not a BOSH body: {}", resp.text());
        self.log.push(body.clone());
        if self.sid.is_none() {
            if let Some(sid) = body.attr("sid") {
                self.sid = Some(sid.to_string());
                self.session = body.attrs.clone();
            }
        }
        if self.header_rid == Some(rid) && body.attr("type") != Some("terminate") {
            self.header_rid = None;
            let id = self
                .session_attr("authid")
                .map(str::to_string)
                .or_else(|| self.sid.clone())
                .unwrap_or_default();
            let from = self.session_attr("from").unwrap_or("").to_string();
            self.events.push_back(Event::Open(StreamHeader {
                name: "stream".into(),
                ns: ns::STREAM.into(),
                default_ns: Some(ns::CLIENT.into()),
                attrs: vec![("from".into(), from), ("id".into(), id)],
            }));
        }
        for c in body.elements() {
            self.events.push_back(Event::Stanza(c.clone()));
        }
        if body.attr("type") == Some("terminate") && !self.ended {
            self.ended = true;
            self.events.push_back(Event::Close);
        }
    }

    async fn next_event_within(&mut self, t: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.ended {
                return Some(Event::Eof);
            }
            if self.outstanding == 0 && self.sid.is_some() {
                self.post("", "");
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.pump_one(left).await {
                return None;
            }
        }
    }
}
