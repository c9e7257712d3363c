//! Test harness: a real Herald server started in-process on 127.0.0.1:0, and a raw XMPP
//! client that speaks bytes to it (STARTTLS or direct TLS, SCRAM with channel binding,
//! PLAIN, resource binding) and parses what comes back with `herald_xml::StreamParser`.
//!
//! Every wait is bounded so a misbehaving server fails a test instead of hanging it.

#![allow(dead_code)]

pub mod web;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use herald_core::ns;
use herald_server::{Config, Running};
use herald_storage::Storage;
use herald_xml::{Element, Limits, StreamEvent, StreamHeader, StreamParser};
use hmac::{Hmac, Mac};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub const DOMAIN: &str = "example.test";
/// Upper bound for any single expected event.
pub const WAIT: Duration = Duration::from_secs(5);
pub const PASSWORD: &str = "correct horse battery staple";

pub const STREAM_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>";

// ---------------------------------------------------------------------------------------
// Server

/// A running server with its own data directory, database and listeners.
pub struct TestServer {
    pub c2s: SocketAddr,
    pub direct_tls: SocketAddr,
    /// The HTTP service, plain and inside TLS.
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub store: Arc<dyn Storage>,
    pub shutdown: watch::Sender<bool>,
    pub running: Option<Running>,
    pub domains: Vec<String>,
    /// The PostgreSQL database made for this server, dropped with it.
    pub pg_db: Option<String>,
    // Last: removed after everything above is dropped.
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_config("").await
    }

    /// `extra` is appended to the base configuration; it may add any section except
    /// `[server]` and `[listen]`.
    pub async fn with_config(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("create temp dir");
        let data_dir = dir.path().join("data");
        let text = format!(
            "[server]\n\
             domains = [\"{DOMAIN}\"]\n\
             data_dir = {data:?}\n\
             [listen]\n\
             c2s = [\"127.0.0.1:0\"]\n\
             c2s_direct_tls = [\"127.0.0.1:0\"]\n\
             http = [\"127.0.0.1:0\"]\n\
             https = [\"127.0.0.1:0\"]\n\
             component = [\"127.0.0.1:0\"]\n\
             proxy65 = [\"127.0.0.1:0\"]\n\
             {extra}\n",
            data = data_dir.display().to_string(),
        );
        let settings = Config::parse(&text, "test")
            .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
            .validate("test")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
        let (url, pg_db) = storage_url(&dir);
        let store = herald_storage::open(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        let domains = settings.domains.clone();
        let (tx, rx) = watch::channel(false);
        let running = herald_server::start(settings, store.clone(), rx)
            .await
            .unwrap_or_else(|e| panic!("server does not start: {e}"));
        let c2s = running.bound.c2s[0];
        let direct_tls = running.bound.c2s_direct_tls[0];
        let http = running.bound.http[0];
        let https = running.bound.https[0];
        assert_ne!(c2s.port(), 0, "c2s port was resolved");
        TestServer {
            c2s,
            direct_tls,
            http,
            https,
            store,
            shutdown: tx,
            running: Some(running),
            domains,
            pg_db,
            dir,
        }
    }

    pub fn jid(user: &str) -> String {
        format!("{user}@{DOMAIN}")
    }

    /// Creates `user@example.test` with `password`.
    pub async fn add_user_with(&self, user: &str, password: &str) {
        let jid = herald_server::accounts::user_jid(&TestServer::jid(user), &self.domains)
            .expect("valid user jid");
        herald_server::accounts::add(&*self.store, &jid, password, 4096)
            .await
            .unwrap_or_else(|e| panic!("cannot create {jid}: {e}"));
    }

    pub async fn add_user(&self, user: &str) {
        self.add_user_with(user, PASSWORD).await
    }

    /// Full negotiation over STARTTLS with SCRAM-SHA-256 and the given resource.
    pub async fn login(&self, user: &str, resource: &str) -> Client {
        Client::login(self.c2s, user, PASSWORD, Mech::SHA256, Some(resource)).await
    }

    /// A fresh client logs in and gets an answer to a ping: the server still serves.
    pub async fn assert_still_serving(&self, user: &str) {
        let mut c = self.login(user, "probe").await;
        c.ping_server().await;
        c.close().await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(db) = &self.pg_db {
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

/// The store a test server uses: SQLite in its temp dir, or with
/// `HERALD_TEST_STORAGE=postgres` a fresh PostgreSQL database on 127.0.0.1:5432 (the test
/// command runs the whole suite once per backend). A missing PostgreSQL fails the test.
fn storage_url(dir: &tempfile::TempDir) -> (String, Option<String>) {
    match std::env::var("HERALD_TEST_STORAGE").as_deref() {
        Ok("postgres") => {
            let db = format!("herald_it_{:016x}", rand_u64());
            psql(&format!("CREATE DATABASE {db}"));
            (format!("postgres://postgres@127.0.0.1:5432/{db}"), Some(db))
        }
        Ok("sqlite") | Err(_) => (
            format!("sqlite://{}", dir.path().join("h.db").display()),
            None,
        ),
        Ok(other) => panic!("HERALD_TEST_STORAGE={other}: expected sqlite or postgres"),
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qtAc",
            sql,
        ])
        .output()
        .expect("psql (PostgreSQL client) must be installed for HERALD_TEST_STORAGE=postgres");
    assert!(
        out.status.success(),
        "psql failed: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// TLS

/// Accepts any server certificate: the test server's is self-signed.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The client's transport: plain TCP until STARTTLS, TLS after.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Gone => Poll::Ready(Err(io::Error::other("transport taken"))),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Gone => Poll::Ready(Err(io::Error::other("transport taken"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }
}

// ---------------------------------------------------------------------------------------
// SASL

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cb {
    TlsExporter,
    TlsServerEndPoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mech {
    Plain,
    Scram(Hash, Option<Cb>),
}

impl Mech {
    pub const SHA1: Mech = Mech::Scram(Hash::Sha1, None);
    pub const SHA256: Mech = Mech::Scram(Hash::Sha256, None);
    pub const SHA512: Mech = Mech::Scram(Hash::Sha512, None);

    pub fn name(self) -> String {
        match self {
            Mech::Plain => "PLAIN".into(),
            Mech::Scram(h, cb) => {
                let base = match h {
                    Hash::Sha1 => "SCRAM-SHA-1",
                    Hash::Sha256 => "SCRAM-SHA-256",
                    Hash::Sha512 => "SCRAM-SHA-512",
                };
                if cb.is_some() {
                    format!("{base}-PLUS")
                } else {
                    base.into()
                }
            }
        }
    }
}

fn hmac(h: Hash, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as Mac>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    match h {
        Hash::Sha1 => run::<Hmac<sha1::Sha1>>(key, data),
        Hash::Sha256 => run::<Hmac<sha2::Sha256>>(key, data),
        Hash::Sha512 => run::<Hmac<sha2::Sha512>>(key, data),
    }
}

fn digest(h: Hash, data: &[u8]) -> Vec<u8> {
    match h {
        Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

fn salted_password(h: Hash, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    match h {
        Hash::Sha1 => {
            let mut out = vec![0u8; 20];
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password.as_bytes(), salt, iterations, &mut out);
            out
        }
        Hash::Sha256 => {
            let mut out = vec![0u8; 32];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt, iterations, &mut out);
            out
        }
        Hash::Sha512 => {
            let mut out = vec![0u8; 64];
            pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut out);
            out
        }
    }
}

fn random_nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

/// The first condition child of a SASL `<failure/>` or a stanza/stream `<error/>`.
pub fn condition_of(el: &Element, cond_ns: &str) -> Option<String> {
    el.elements()
        .find(|c| c.ns == cond_ns && c.name != "text")
        .map(|c| c.name.clone())
}

/// `(type, condition)` of a stanza error reply.
pub fn stanza_error(el: &Element) -> Option<(String, String)> {
    if el.attr("type") != Some("error") {
        return None;
    }
    let e = el.child("error", ns::CLIENT)?;
    Some((
        e.attr("type").unwrap_or("").to_string(),
        condition_of(e, ns::STANZAS)?,
    ))
}

// ---------------------------------------------------------------------------------------
// Client

/// What the client read.
#[derive(Debug)]
pub enum Event {
    Open(StreamHeader),
    Stanza(Element),
    /// `</stream:stream>`.
    Close,
    /// The socket was closed (or reset).
    Eof,
}

pub struct Client {
    pub io: Transport,
    parser: StreamParser,
    /// Stanzas read while looking for something else, in arrival order.
    pending: VecDeque<Element>,
    pub header: Option<StreamHeader>,
    pub features: Option<Element>,
    /// RFC 9266 tls-exporter value of this connection.
    pub exporter: Option<Vec<u8>>,
    /// RFC 5929 tls-server-end-point value (SHA-256 of the server certificate).
    pub end_point: Option<Vec<u8>>,
    /// The bound full JID.
    pub jid: String,
    next_id: u64,
    /// A web transport (WebSocket, BOSH) instead of `io`; see `web.rs`.
    pub web: Option<web::Wire>,
}

fn client_parser() -> StreamParser {
    StreamParser::new(Limits {
        max_stanza_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    })
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        tcp.set_nodelay(true).ok();
        let mut c = Client::unconnected();
        c.io = Transport::Plain(tcp);
        c
    }

    fn unconnected() -> Client {
        Client {
            io: Transport::Gone,
            parser: client_parser(),
            pending: VecDeque::new(),
            header: None,
            features: None,
            exporter: None,
            end_point: None,
            jid: String::new(),
            next_id: 0,
            web: None,
        }
    }

    /// TLS from the first byte (XEP-0368).
    pub async fn connect_direct_tls(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        c.upgrade_tls().await;
        c
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io, Transport::Tls(_))
    }

    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    /// Writes raw bytes and flushes.
    pub async fn send_bytes(&mut self, data: &[u8]) {
        if let Some(w) = self.web.as_mut() {
            return w.send(data).await;
        }
        let io = &mut self.io;
        tokio::time::timeout(WAIT, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await
        .expect("writing to the server timed out")
        .expect("writing to the server failed");
    }

    pub async fn send(&mut self, xml: &str) {
        self.send_bytes(xml.as_bytes()).await
    }

    /// Writes, tolerating a connection the server already closed.
    pub async fn send_lossy(&mut self, data: &[u8]) {
        if let Some(w) = self.web.as_mut() {
            return w.send(data).await;
        }
        let io = &mut self.io;
        let _ = tokio::time::timeout(WAIT, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await;
    }

    /// Next event from the socket (ignores the pending queue), bounded by `t`.
    pub async fn next_event_within(&mut self, t: Duration) -> Option<Event> {
        if let Some(w) = self.web.as_mut() {
            return w.next_event_within(t).await;
        }
        let deadline = tokio::time::Instant::now() + t;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Open(h))) => return Some(Event::Open(h)),
                Ok(Some(StreamEvent::Stanza(e))) => return Some(Event::Stanza(e)),
                Ok(Some(StreamEvent::Close)) => return Some(Event::Close),
                Ok(None) => {}
                Err(e) => panic!("the server sent XML the client cannot parse: {e}"),
            }
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(n)) => n,
                Ok(Err(e)) if is_disconnect(&e) => 0,
                Ok(Err(e)) => panic!("reading from the server failed: {e}"),
            };
            if n == 0 {
                return Some(Event::Eof);
            }
            self.parser.feed(&buf[..n]);
        }
    }

    pub async fn next_event(&mut self) -> Event {
        self.next_event_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event from the server within {WAIT:?}"))
    }

    /// The next stanza: pending ones first. Panics on timeout, close or a stream error.
    pub async fn expect_stanza(&mut self) -> Element {
        self.expect_stanza_within(WAIT).await
    }

    pub async fn expect_stanza_within(&mut self, t: Duration) -> Element {
        if let Some(e) = self.pending.pop_front() {
            return e;
        }
        match self.next_event_within(t).await {
            Some(Event::Stanza(e)) => {
                if e.is("error", ns::STREAM) {
                    panic!("expected a stanza, got a stream error: {}", e.to_xml());
                }
                e
            }
            Some(other) => panic!("expected a stanza, got {other:?}"),
            None => panic!("no stanza from the server within {t:?}"),
        }
    }

    /// The first stanza (pending or new) that `pred` accepts; others are kept, in order,
    /// for later expectations.
    pub async fn expect_match(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index is valid");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event_within(left).await {
                Some(Event::Stanza(e)) if pred(&e) => return e,
                Some(Event::Stanza(e)) if e.is("error", ns::STREAM) => {
                    panic!("waiting for {what}, got a stream error: {}", e.to_xml())
                }
                Some(Event::Stanza(e)) => self.pending.push_back(e),
                Some(other) => panic!("waiting for {what}, got {other:?}"),
                None => panic!(
                    "no {what} within {WAIT:?}; other stanzas received: {:?}",
                    self.pending.iter().map(|e| e.to_xml()).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Asserts that no stanza accepted by `pred` arrives within `t` (others are kept).
    pub async fn expect_no_match(
        &mut self,
        what: &str,
        t: Duration,
        pred: impl Fn(&Element) -> bool,
    ) {
        if let Some(e) = self.pending.iter().find(|e| pred(e)) {
            panic!("unexpected {what}: {}", e.to_xml());
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event_within(left).await {
                Some(Event::Stanza(e)) if pred(&e) => panic!("unexpected {what}: {}", e.to_xml()),
                Some(Event::Stanza(e)) => self.pending.push_back(e),
                Some(other) => panic!("while checking for no {what}, got {other:?}"),
                None => return,
            }
        }
    }

    /// Reads until a `<stream:error/>`, returns its condition, and checks that the stream
    /// and then the socket are closed after it.
    pub async fn expect_stream_error(&mut self) -> String {
        self.expect_stream_error_within(WAIT).await
    }

    pub async fn expect_stream_error_within(&mut self, t: Duration) -> String {
        if let Some(i) = self.pending.iter().position(|e| e.is("error", ns::STREAM)) {
            let e = self.pending.remove(i).expect("index is valid");
            let cond = condition_of(&e, ns::STREAMS).unwrap_or_default();
            self.expect_closed().await;
            return cond;
        }
        let deadline = tokio::time::Instant::now() + t;
        let cond = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event_within(left).await {
                Some(Event::Open(_)) => {}
                Some(Event::Stanza(e)) if e.is("error", ns::STREAM) => {
                    break condition_of(&e, ns::STREAMS).unwrap_or_else(|| {
                        panic!("stream error without condition: {}", e.to_xml())
                    });
                }
                Some(Event::Stanza(e)) => self.pending.push_back(e),
                Some(other) => panic!(
                    "expected a stream error, got {other:?}; stanzas before: {:?}",
                    self.pending.iter().map(|e| e.to_xml()).collect::<Vec<_>>()
                ),
                None => panic!("no stream error within {t:?}"),
            }
        };
        self.expect_closed().await;
        cond
    }

    /// The stream ends (`</stream:stream>` and/or end of the socket) with no more stanzas.
    pub async fn expect_closed(&mut self) {
        loop {
            match self.next_event().await {
                Event::Close => {}
                Event::Eof => return,
                Event::Open(h) => panic!("expected the stream to close, got a header {h:?}"),
                Event::Stanza(e) => {
                    panic!("expected the stream to close, got {}", e.to_xml())
                }
            }
        }
    }

    /// Sends our stream header and reads the server's header and features.
    pub async fn open_stream(&mut self) -> Element {
        self.send(STREAM_HEADER).await;
        self.read_header_and_features().await
    }

    pub async fn read_header_and_features(&mut self) -> Element {
        match self.next_event().await {
            Event::Open(h) => {
                assert_eq!(h.ns, ns::STREAM, "server stream namespace");
                assert_eq!(h.default_ns.as_deref(), Some(ns::CLIENT));
                assert_eq!(h.attr("from"), Some(DOMAIN), "server header 'from'");
                assert!(h.attr("id").is_some_and(|i| !i.is_empty()), "stream id");
                self.header = Some(h);
            }
            other => panic!("expected the server's stream header, got {other:?}"),
        }
        let f = self.expect_stanza().await;
        assert!(
            f.is("features", ns::STREAM),
            "expected stream features, got {}",
            f.to_xml()
        );
        self.features = Some(f.clone());
        f
    }

    /// Mechanism names offered in the last features.
    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.child("mechanisms", ns::SASL))
            .map(|m| {
                m.elements()
                    .filter(|e| e.name == "mechanism")
                    .map(|e| e.text())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn upgrade_tls(&mut self) {
        let tcp = match std::mem::replace(&mut self.io, Transport::Gone) {
            Transport::Plain(t) => t,
            _ => panic!("TLS upgrade on a non-plain transport"),
        };
        let name = ServerName::try_from(DOMAIN)
            .expect("server name")
            .to_owned();
        let tls = tokio::time::timeout(WAIT, tls_connector().connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake failed");
        {
            let (_, conn) = tls.get_ref();
            self.exporter = conn
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", Some(&[]))
                .ok();
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .expect("server certificate");
            self.end_point = Some(sha2::Sha256::digest(cert.as_ref()).to_vec());
        }
        self.io = Transport::Tls(Box::new(tls));
        self.parser = client_parser();
    }

    /// Sends `<starttls/>`, expects `<proceed/>`, upgrades and reopens the stream.
    pub async fn starttls(&mut self) -> Element {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.expect_stanza().await;
        assert!(
            p.is("proceed", ns::TLS),
            "expected <proceed/>, got {}",
            p.to_xml()
        );
        self.upgrade_tls().await;
        self.open_stream().await
    }

    /// Runs one SASL exchange. `Ok(())` on a verified `<success/>`, `Err(condition)` on
    /// `<failure/>`. After success the client parser is reset for the stream restart.
    pub async fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        mech: Mech,
    ) -> Result<(), String> {
        match mech {
            Mech::Plain => {
                let msg = format!("\0{user}\0{password}");
                self.send(&format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
                    B64.encode(msg)
                ))
                .await;
                let r = self.expect_stanza().await;
                self.sasl_outcome(&r, None)
            }
            Mech::Scram(h, cb) => self.scram(user, password, h, cb).await,
        }
    }

    fn sasl_outcome(&mut self, r: &Element, expected_v: Option<&[u8]>) -> Result<(), String> {
        if r.is("failure", ns::SASL) {
            return Err(condition_of(r, ns::SASL).unwrap_or_default());
        }
        assert!(
            r.is("success", ns::SASL),
            "expected success or failure, got {}",
            r.to_xml()
        );
        if let Some(v) = expected_v {
            let data = B64.decode(r.text().trim()).expect("success data is base64");
            let text = String::from_utf8(data).expect("server-final is UTF-8");
            let sig = text
                .strip_prefix("v=")
                .unwrap_or_else(|| panic!("server-final without v=: {text:?}"));
            let sig = B64.decode(sig).expect("server signature is base64");
            assert_eq!(sig, v, "server signature in <success/> does not verify");
        }
        self.parser = client_parser();
        Ok(())
    }

    async fn scram(
        &mut self,
        user: &str,
        password: &str,
        h: Hash,
        cb: Option<Cb>,
    ) -> Result<(), String> {
        self.scram_framed(user, password, h, cb, None)
            .await
            .map(|_| ())
    }

    /// XEP-0388: SCRAM inside `<authenticate/>` with `inline` extra children (Bind 2,
    /// resumption, FAST requests). Returns the verified `<success/>` element.
    pub async fn scram_sasl2(
        &mut self,
        user: &str,
        password: &str,
        h: Hash,
        cb: Option<Cb>,
        inline: &str,
    ) -> Result<Element, String> {
        self.scram_framed(user, password, h, cb, Some(inline)).await
    }

    /// SCRAM with RFC 6120 framing (`sasl2` None) or XEP-0388 framing.
    async fn scram_framed(
        &mut self,
        user: &str,
        password: &str,
        h: Hash,
        cb: Option<Cb>,
        sasl2: Option<&str>,
    ) -> Result<Element, String> {
        let sasl_ns = if sasl2.is_some() {
            "urn:xmpp:sasl:2"
        } else {
            ns::SASL
        };
        let gs2 = match cb {
            None => "n,,".to_string(),
            Some(Cb::TlsExporter) => "p=tls-exporter,,".to_string(),
            Some(Cb::TlsServerEndPoint) => "p=tls-server-end-point,,".to_string(),
        };
        let cb_data = match cb {
            None => Vec::new(),
            Some(Cb::TlsExporter) => self.exporter.clone().expect("tls-exporter needs TLS 1.3"),
            Some(Cb::TlsServerEndPoint) => self.end_point.clone().expect("end point needs TLS"),
        };
        let nonce = random_nonce();
        let first_bare = format!(
            "n={},r={nonce}",
            user.replace('=', "=3D").replace(',', "=2C")
        );
        let initial = B64.encode(format!("{gs2}{first_bare}"));
        match sasl2 {
            None => {
                self.send(&format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{initial}</auth>",
                    Mech::Scram(h, cb).name(),
                ))
                .await
            }
            Some(inline) => {
                self.send(&format!(
                    "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{}'><initial-response>{initial}</initial-response>{inline}</authenticate>",
                    Mech::Scram(h, cb).name(),
                ))
                .await
            }
        }
        let ch = self.expect_stanza().await;
        if ch.is("failure", sasl_ns) {
            return Err(condition_of(&ch, ns::SASL).unwrap_or_default());
        }
        assert!(
            ch.is("challenge", sasl_ns),
            "expected a challenge, got {}",
            ch.to_xml()
        );
        let server_first =
            String::from_utf8(B64.decode(ch.text().trim()).expect("challenge is base64"))
                .expect("server-first is UTF-8");
        let mut snonce = None;
        let mut salt = None;
        let mut iters = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                snonce = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(B64.decode(v).expect("salt is base64"));
            } else if let Some(v) = part.strip_prefix("i=") {
                iters = Some(v.parse::<u32>().expect("iteration count"));
            }
        }
        let (snonce, salt, iters) = (
            snonce.expect("server nonce"),
            salt.expect("salt"),
            iters.expect("iterations"),
        );
        assert!(snonce.starts_with(&nonce), "server nonce extends ours");
        assert!(
            snonce.len() > nonce.len(),
            "server added its own nonce part"
        );
        let salted = salted_password(h, password, &salt, iters);
        let client_key = hmac(h, &salted, b"Client Key");
        let stored_key = digest(h, &client_key);
        let mut cbind = gs2.into_bytes();
        cbind.extend_from_slice(&cb_data);
        let without_proof = format!("c={},r={snonce}", B64.encode(&cbind));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac(h, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(h, &salted, b"Server Key");
        let server_sig = hmac(h, &server_key, auth_message.as_bytes());
        self.send(&format!(
            "<response xmlns='{sasl_ns}'>{}</response>",
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ))
        .await;
        let r = self.expect_stanza().await;
        if sasl2.is_none() {
            return self.sasl_outcome(&r, Some(&server_sig)).map(|_| r);
        }
        if r.is("failure", sasl_ns) {
            return Err(condition_of(&r, ns::SASL).unwrap_or_default());
        }
        assert!(
            r.is("success", sasl_ns),
            "expected SASL2 success, got {}",
            r.to_xml()
        );
        let data = r
            .child("additional-data", sasl_ns)
            .map(|d| {
                B64.decode(d.text().trim())
                    .expect("additional-data is base64")
            })
            .expect("SCRAM success carries server-final");
        let expected = format!("v={}", B64.encode(&server_sig));
        assert_eq!(
            String::from_utf8_lossy(&data),
            expected,
            "server signature verifies"
        );
        Ok(r)
    }

    /// Binds a resource (or lets the server pick one) and returns the full JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let inner = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{inner}</bind></iq>"
        ))
        .await;
        let r = self
            .expect_match("bind result", |e| e.attr("id") == Some("bind1"))
            .await;
        assert_eq!(
            r.attr("type"),
            Some("result"),
            "bind failed: {}",
            r.to_xml()
        );
        let jid = r
            .child("bind", ns::BIND)
            .and_then(|b| b.child("jid", ns::BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind result without jid: {}", r.to_xml()));
        self.jid = jid.clone();
        jid
    }

    /// Stream open, STARTTLS, SASL, restart, bind.
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        mech: Mech,
        resource: Option<&str>,
    ) -> Client {
        let mut c = Client::connect(addr).await;
        c.open_stream().await;
        c.starttls().await;
        c.authenticate(user, password, mech)
            .await
            .unwrap_or_else(|cond| panic!("{} login of {user} failed: {cond}", mech.name()));
        let f = c.open_stream().await;
        assert!(
            f.child("bind", ns::BIND).is_some(),
            "bind offered after auth"
        );
        c.bind(resource).await;
        c
    }

    /// Sends an IQ built from `payload` (get or set) and waits for its reply.
    pub async fn iq(&mut self, kind: &str, to: Option<&str>, payload: &str) -> Element {
        let id = self.new_id();
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(&format!("<iq type='{kind}' id='{id}'{to}>{payload}</iq>"))
            .await;
        self.expect_match("IQ reply", |e| {
            e.name == "iq" && e.attr("id") == Some(id.as_str())
        })
        .await
    }

    /// XEP-0199 ping to the server; asserts a result.
    pub async fn ping_server(&mut self) {
        let r = self
            .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
            .await;
        assert_eq!(r.attr("type"), Some("result"), "ping reply: {}", r.to_xml());
    }

    /// Sends `</stream:stream>` and waits for the server to close too.
    pub async fn close(mut self) {
        self.send_lossy(b"</stream:stream>").await;
        let _ = tokio::time::timeout(WAIT, async {
            loop {
                match self.next_event_within(WAIT).await {
                    Some(Event::Eof) | None => break,
                    _ => {}
                }
            }
        })
        .await;
    }

    /// Writes `data` from a separate task while reading, until `done` has seen enough
    /// stanzas. Returns the stanzas and the time from the first byte written to the last
    /// stanza read.
    pub async fn send_while_reading(
        &mut self,
        data: Vec<u8>,
        t: Duration,
        mut done: impl FnMut(&Element) -> bool,
    ) -> (Vec<Element>, Duration) {
        let io = std::mem::replace(&mut self.io, Transport::Gone);
        let (mut rd, mut wr) = tokio::io::split(io);
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for chunk in data.chunks(4096) {
                wr.write_all(chunk).await?;
            }
            wr.flush().await?;
            Ok::<_, io::Error>(wr)
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let res = tokio::time::timeout(t, async {
            loop {
                while let Some(ev) = self.parser.next_event().expect("parsable server XML") {
                    match ev {
                        StreamEvent::Stanza(e) => {
                            assert!(!e.is("error", ns::STREAM), "stream error: {}", e.to_xml());
                            let finished = done(&e);
                            got.push(e);
                            if finished {
                                return;
                            }
                        }
                        other => panic!("unexpected {other:?} while reading replies"),
                    }
                }
                let n = rd.read(&mut buf).await.expect("read replies");
                assert!(
                    n > 0,
                    "server closed the connection after {} replies",
                    got.len()
                );
                self.parser.feed(&buf[..n]);
            }
        })
        .await;
        let elapsed = start.elapsed();
        assert!(res.is_ok(), "only {} replies within {t:?}", got.len());
        let wr = tokio::time::timeout(WAIT, writer)
            .await
            .expect("writer finished")
            .expect("writer task")
            .expect("writing succeeded");
        self.io = rd.unsplit(wr);
        (got, elapsed)
    }
}
