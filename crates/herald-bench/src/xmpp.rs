//! One XMPP client connection: TCP (optionally from a chosen source address), STARTTLS or
//! direct TLS accepting any certificate, SASL, resource binding, roster get and initial
//! presence. Steps are pipelined by default: after TLS the stream header and `<auth/>` go
//! out in one write, and after SASL the header, bind, roster get and presence do too.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use herald_xml::{Element, Limits, StreamEvent, StreamParser};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::scram::{plain_initial, salted_password, Mech, ScramClient};

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_ROSTER: &str = "jabber:iq:roster";
pub const NS_PING: &str = "urn:xmpp:ping";

/// Bytes read per `read` call. Kept small: 100k idle connections each hold one.
const READ_BUF: usize = 4096;

/// Where and how to connect; shared by every client.
pub struct ConnectConfig {
    pub addr: SocketAddr,
    pub domain: String,
    pub direct_tls: bool,
    pub mech: Mech,
    /// Source addresses to spread connections over (empty: let the OS choose).
    pub source_ips: Vec<IpAddr>,
    pub pipeline: bool,
    pub resource: String,
    pub tls: tokio_rustls::TlsConnector,
    pub tls_name: ServerName<'static>,
    /// Bare JID of every user of the population, by index (message addressing).
    pub bare_jids: Arc<Vec<String>>,
    /// Token written into every test message of this run (see `scenarios`).
    pub run: u32,
}

/// What to do after binding.
#[derive(Debug, Clone, Copy)]
pub struct LoginSteps {
    pub roster: bool,
    pub presence: bool,
}

/// Why a login failed, by stage (the report counts each kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailKind {
    Connect,
    Tls,
    Stream,
    Auth,
    Bind,
    Roster,
    Timeout,
}

impl FailKind {
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::Tls => "tls",
            FailKind::Stream => "stream",
            FailKind::Auth => "auth",
            FailKind::Bind => "bind",
            FailKind::Roster => "roster",
            FailKind::Timeout => "timeout",
        }
    }
}

#[derive(Debug)]
pub struct LoginError {
    pub kind: FailKind,
    pub detail: String,
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

fn fail(kind: FailKind, detail: impl Into<String>) -> LoginError {
    LoginError {
        kind,
        detail: detail.into(),
    }
}

/// Accepts any server certificate: benchmarks run against self-signed test servers.
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

/// A TLS connector that accepts any certificate (TLS 1.2 and 1.3, aws-lc-rs provider).
pub fn insecure_tls() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A framed stream: socket plus parser plus read buffer.
pub struct Framed<S> {
    pub io: S,
    parser: StreamParser,
    buf: Box<[u8]>,
}

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 1 << 20,
        ..Limits::default()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub fn new(io: S) -> Framed<S> {
        Framed {
            io,
            parser: StreamParser::new(limits()),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
        }
    }

    /// Starts a new XML stream (after STARTTLS or SASL success).
    pub fn reset(&mut self) {
        self.parser = StreamParser::new(limits());
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// An event already parsed from buffered bytes, without reading.
    pub fn buffered_event(&mut self) -> Result<Option<StreamEvent>, String> {
        self.parser.next_event().map_err(|e| format!("XML: {e}"))
    }

    /// The next stream event; `Err` on EOF, I/O or XML errors.
    pub async fn next(&mut self) -> Result<StreamEvent, String> {
        loop {
            if let Some(ev) = self.buffered_event()? {
                return Ok(ev);
            }
            self.read_some().await?;
        }
    }

    /// Reads once from the socket into the parser (cancel-safe).
    pub async fn read_some(&mut self) -> Result<(), String> {
        let n = self
            .io
            .read(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by server".into());
        }
        self.parser.feed(&self.buf[..n]);
        Ok(())
    }

    /// The next stanza; a stream close or `<stream:error/>` is an error.
    pub async fn stanza(&mut self) -> Result<Element, String> {
        match self.next().await? {
            StreamEvent::Stanza(el) if el.is("error", NS_STREAM) => {
                Err(format!("stream error: {}", describe_error(&el)))
            }
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Open(_) => Err("unexpected stream header".into()),
            StreamEvent::Close => Err("stream closed by server".into()),
        }
    }

    /// Waits for the stream header and then `<stream:features/>`.
    async fn features(&mut self) -> Result<Element, String> {
        match self.next().await? {
            StreamEvent::Open(_) => {}
            other => return Err(format!("expected stream header, got {other:?}")),
        }
        let el = self.stanza().await?;
        if !el.is("features", NS_STREAM) {
            return Err(format!("expected features, got <{}>", el.name));
        }
        Ok(el)
    }
}

/// The first child element's name, for error messages.
pub fn describe_error(el: &Element) -> String {
    let cond = el
        .elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "?".into());
    match el.elements().find(|c| c.name == "text") {
        Some(t) => format!("{cond} ({})", t.text()),
        None => cond,
    }
}

pub fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
        domain
    )
}

/// Appends a stanza's serialization (in the `jabber:client` default namespace).
pub fn write_stanza(el: &Element, out: &mut Vec<u8>) {
    el.write_to(out, NS_CLIENT);
}

/// A logged-in client.
pub struct Session {
    pub io: Framed<TlsStream>,
    /// The bound full JID.
    pub jid: String,
    /// Roster items as (bare JID, subscription) when the roster was fetched.
    pub roster: Vec<(String, String)>,
    /// Stanzas that arrived during login, before the roster result (handled first).
    pub early: Vec<Element>,
}

impl Session {
    /// Ends the stream politely; errors are ignored (the server may already be gone).
    pub async fn close(mut self) {
        let _ = self.io.send(b"</stream:stream>").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = self.io.next().await {
                if ev == StreamEvent::Close {
                    break;
                }
            }
        })
        .await;
        let _ = self.io.io.shutdown().await;
    }
}

async fn tcp_connect(cfg: &ConnectConfig, idx: usize) -> Result<TcpStream, LoginError> {
    let socket = if cfg.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail(FailKind::Connect, format!("socket: {e}")))?;
    if !cfg.source_ips.is_empty() {
        let ip = cfg.source_ips[idx % cfg.source_ips.len()];
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| fail(FailKind::Connect, format!("bind {ip}: {e}")))?;
    }
    let s = socket
        .connect(cfg.addr)
        .await
        .map_err(|e| fail(FailKind::Connect, format!("{}: {e}", cfg.addr)))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Connects and logs in as `user` (the node part) with `password`. `idx` picks the
/// source address.
pub async fn login(
    cfg: &ConnectConfig,
    idx: usize,
    user: &str,
    password: &str,
    steps: LoginSteps,
) -> Result<Session, LoginError> {
    let tcp = tcp_connect(cfg, idx).await?;
    let header = stream_header(&cfg.domain);
    let stream_err = |e: String| fail(FailKind::Stream, e);

    let tcp = if cfg.direct_tls {
        tcp
    } else {
        let mut plain = Framed::new(tcp);
        plain
            .send(header.as_bytes())
            .await
            .map_err(|e| fail(FailKind::Connect, e.to_string()))?;
        let feats = plain.features().await.map_err(stream_err)?;
        if feats.child("starttls", NS_TLS).is_none() {
            return Err(fail(FailKind::Tls, "server does not offer STARTTLS"));
        }
        plain
            .send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .map_err(|e| fail(FailKind::Tls, e.to_string()))?;
        let el = plain.stanza().await.map_err(stream_err)?;
        if !el.is("proceed", NS_TLS) {
            return Err(fail(
                FailKind::Tls,
                format!("STARTTLS refused: <{}>", el.name),
            ));
        }
        plain.io
    };
    let tls = cfg
        .tls
        .connect(cfg.tls_name.clone(), tcp)
        .await
        .map_err(|e| fail(FailKind::Tls, e.to_string()))?;
    let mut io = Framed::new(tls);

    // SASL.
    let mut scram = match cfg.mech {
        Mech::Plain => None,
        m => Some(ScramClient::new(m, user, password)),
    };
    let initial = match &scram {
        None => plain_initial(user, password),
        Some(s) => s.client_first().into_bytes(),
    };
    let auth = format!(
        "<auth xmlns='{NS_SASL}' mechanism='{}'>{}</auth>",
        cfg.mech.name(),
        B64.encode(initial)
    );
    let io_err = |e: std::io::Error| fail(FailKind::Stream, e.to_string());
    if cfg.pipeline {
        io.send(format!("{header}{auth}").as_bytes())
            .await
            .map_err(io_err)?;
    } else {
        io.send(header.as_bytes()).await.map_err(io_err)?;
    }
    let feats = io.features().await.map_err(stream_err)?;
    let offered = feats
        .child("mechanisms", NS_SASL)
        .map(|m| {
            m.elements()
                .filter(|e| e.name == "mechanism")
                .any(|e| e.text().trim() == cfg.mech.name())
        })
        .unwrap_or(false);
    if !offered {
        return Err(fail(
            FailKind::Auth,
            format!("server does not offer {}", cfg.mech.name()),
        ));
    }
    if !cfg.pipeline {
        io.send(auth.as_bytes()).await.map_err(io_err)?;
    }
    loop {
        let el = io.stanza().await.map_err(stream_err)?;
        let data = || {
            B64.decode(el.text().trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| fail(FailKind::Auth, "bad base64 from server"))
        };
        if el.is("challenge", NS_SASL) {
            let s = scram
                .as_mut()
                .ok_or_else(|| fail(FailKind::Auth, "challenge to PLAIN"))?;
            let text = data()?;
            let reply = if text.starts_with("v=") || text.starts_with("e=") {
                // Some servers send server-final as a challenge and expect an empty reply.
                s.verify_server_final(&text)
                    .map_err(|e| fail(FailKind::Auth, e))?;
                scram = None;
                String::new()
            } else {
                let sf = s
                    .parse_server_first(&text)
                    .map_err(|e| fail(FailKind::Auth, e))?;
                let salted = salted_cached(s.mech(), s.password(), &sf.salt, sf.iterations).await;
                B64.encode(s.finish(&sf, &salted))
            };
            io.send(format!("<response xmlns='{NS_SASL}'>{reply}</response>").as_bytes())
                .await
                .map_err(io_err)?;
        } else if el.is("success", NS_SASL) {
            if let Some(s) = &scram {
                s.verify_server_final(&data()?)
                    .map_err(|e| fail(FailKind::Auth, e))?;
            }
            break;
        } else if el.is("failure", NS_SASL) {
            return Err(fail(FailKind::Auth, describe_error(&el)));
        } else {
            return Err(fail(
                FailKind::Auth,
                format!("unexpected <{}> during SASL", el.name),
            ));
        }
    }

    // Bind, roster, presence.
    io.reset();
    let bind = format!(
        "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        cfg.resource
    );
    let mut after = String::new();
    if steps.roster {
        after.push_str("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>");
    }
    if steps.presence {
        after.push_str("<presence/>");
    }
    if cfg.pipeline {
        io.send(format!("{header}{bind}{after}").as_bytes())
            .await
            .map_err(io_err)?;
    } else {
        io.send(header.as_bytes()).await.map_err(io_err)?;
    }
    let feats = io.features().await.map_err(stream_err)?;
    if feats.child("bind", NS_BIND).is_none() {
        return Err(fail(
            FailKind::Bind,
            "server does not offer resource binding",
        ));
    }
    if !cfg.pipeline {
        io.send(bind.as_bytes()).await.map_err(io_err)?;
    }
    let mut jid = None;
    let mut roster = Vec::new();
    let mut early = Vec::new();
    let mut need_roster = steps.roster;
    while jid.is_none() || need_roster {
        let el = io.stanza().await.map_err(stream_err)?;
        match (el.name.as_str(), el.attr("id")) {
            ("iq", Some("bind1")) => {
                if el.attr("type") != Some("result") {
                    return Err(fail(FailKind::Bind, stanza_error(&el)));
                }
                let j = el
                    .child("bind", NS_BIND)
                    .and_then(|b| b.child("jid", NS_BIND))
                    .map(|j| j.text())
                    .ok_or_else(|| fail(FailKind::Bind, "bind result without a JID"))?;
                jid = Some(j);
                if !cfg.pipeline {
                    let mut more = String::new();
                    if needs_session(&feats) {
                        more.push_str(&format!(
                            "<iq type='set' id='sess1'><session xmlns='{NS_SESSION}'/></iq>"
                        ));
                    }
                    more.push_str(&after);
                    if !more.is_empty() {
                        io.send(more.as_bytes()).await.map_err(io_err)?;
                    }
                }
            }
            ("iq", Some("roster1")) => {
                if el.attr("type") != Some("result") {
                    return Err(fail(FailKind::Roster, stanza_error(&el)));
                }
                if let Some(q) = el.child("query", NS_ROSTER) {
                    for item in q.elements().filter(|i| i.name == "item") {
                        if let Some(j) = item.attr("jid") {
                            let sub = item.attr("subscription").unwrap_or("none");
                            roster.push((j.to_string(), sub.to_string()));
                        }
                    }
                }
                need_roster = false;
            }
            ("iq", Some("sess1")) => {}
            _ => {
                if early.len() < 10_000 {
                    early.push(el);
                }
            }
        }
    }
    Ok(Session {
        io,
        jid: jid.unwrap_or_default(),
        roster,
        early,
    })
}

/// (mechanism, SHA-256 of the password, salt, iterations).
type SaltKey = (Mech, [u8; 32], Vec<u8>, u32);

/// Salted passwords already derived, so logging the same account in again (provisioning
/// passes, repeated scenarios in one process, or earlier runs through `--scram-cache`)
/// costs no PBKDF2, as with real clients that keep their SCRAM keys (RFC 5802 §5.1).
/// Bounded.
static SALTED: std::sync::OnceLock<std::sync::Mutex<HashMap<SaltKey, Arc<Vec<u8>>>>> =
    std::sync::OnceLock::new();
const SALTED_MAX: usize = 1 << 20;

fn salted_map() -> std::sync::MutexGuard<'static, HashMap<SaltKey, Arc<Vec<u8>>>> {
    SALTED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn password_digest(password: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(password.as_bytes()).into()
}

fn mech_tag(m: Mech) -> &'static str {
    match m {
        Mech::ScramSha1 => "sha1",
        Mech::ScramSha256 => "sha256",
        Mech::Plain => "plain",
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Loads salted passwords saved by [`save_salted`] (a missing file is an empty cache).
/// Returns how many entries were read.
pub fn load_salted(path: &std::path::Path) -> std::io::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut map = salted_map();
    let mut n = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [mech, pw, salt, iter, salted] = f[..] else {
            continue;
        };
        let mech = match mech {
            "sha1" => Mech::ScramSha1,
            "sha256" => Mech::ScramSha256,
            _ => continue,
        };
        let (Some(pw), Some(salt), Ok(iter), Some(salted)) = (
            from_hex(pw).and_then(|v| <[u8; 32]>::try_from(v).ok()),
            from_hex(salt),
            iter.parse::<u32>(),
            from_hex(salted),
        ) else {
            continue;
        };
        if map.len() < SALTED_MAX {
            map.insert((mech, pw, salt, iter), Arc::new(salted));
            n += 1;
        }
    }
    Ok(n)
}

/// Writes every salted password derived so far (a password-equivalent for these test
/// accounts: keep the file with the accounts' passwords).
pub fn save_salted(path: &std::path::Path) -> std::io::Result<usize> {
    let map = salted_map();
    let mut out = String::with_capacity(map.len() * 200);
    for ((mech, pw, salt, iter), salted) in map.iter() {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            mech_tag(*mech),
            to_hex(pw),
            to_hex(salt),
            iter,
            to_hex(salted)
        ));
    }
    let n = map.len();
    drop(map);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)?;
    Ok(n)
}

/// PBKDF2 runs on the blocking pool so it never stalls the tasks measuring latency.
async fn salted_cached(mech: Mech, password: &str, salt: &[u8], iterations: u32) -> Arc<Vec<u8>> {
    let key = (mech, password_digest(password), salt.to_vec(), iterations);
    if let Some(v) = salted_map().get(&key) {
        return v.clone();
    }
    let (pw, s) = (password.to_string(), key.2.clone());
    let v = tokio::task::spawn_blocking(move || salted_password(mech, &pw, &s, iterations))
        .await
        .map(Arc::new)
        .unwrap_or_else(|_| Arc::new(salted_password(mech, password, salt, iterations)));
    let mut c = salted_map();
    if c.len() < SALTED_MAX {
        c.insert(key, v.clone());
    }
    v
}

/// RFC 3921 sessions: only when offered and not marked optional.
fn needs_session(feats: &Element) -> bool {
    feats
        .child("session", NS_SESSION)
        .map(|s| s.elements().all(|c| c.name != "optional"))
        .unwrap_or(false)
}

/// The condition of a stanza error, for messages.
pub fn stanza_error(el: &Element) -> String {
    match el.elements().find(|c| c.name == "error") {
        Some(e) => describe_error(e),
        None => format!("type={:?}", el.attr("type")),
    }
}

/// The reply a client owes to an IQ get/set from the server or another entity: a result
/// for XEP-0199 pings, `service-unavailable` for everything else. `None` for results and
/// errors (nothing to answer).
pub fn iq_reply(el: &Element) -> Option<Element> {
    let ty = el.attr("type")?;
    if ty != "get" && ty != "set" {
        return None;
    }
    let mut reply = Element::new("iq", NS_CLIENT).with_attr("id", el.attr("id").unwrap_or(""));
    if let Some(from) = el.attr("from") {
        reply.set_attr("to", from);
    }
    if el.child("ping", NS_PING).is_some() {
        reply.set_attr("type", "result");
    } else {
        reply.set_attr("type", "error");
        reply.push(
            Element::new("error", NS_CLIENT)
                .with_attr("type", "cancel")
                .with_child(Element::new(
                    "service-unavailable",
                    "urn:ietf:params:xml:ns:xmpp-stanzas",
                )),
        );
    }
    Some(reply)
}

/// The bare part of a JID.
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scram_cache_survives_a_save_and_load() {
        let dir = std::env::temp_dir().join(format!("hb-scram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        assert_eq!(
            load_salted(&path).unwrap(),
            0,
            "a missing file is an empty cache"
        );
        let a = salted_cached(Mech::ScramSha1, "pass1", b"salt-a", 64).await;
        let b = salted_cached(Mech::ScramSha256, "pass2", b"salt-b", 64).await;
        assert_eq!(*a, salted_password(Mech::ScramSha1, "pass1", b"salt-a", 64));
        assert_eq!(save_salted(&path).unwrap(), 2);
        salted_map().clear();
        std::fs::write(
            dir.join("keys.extra"),
            std::fs::read_to_string(&path).unwrap() + "garbage line\nsha1\tzz\n",
        )
        .unwrap();
        assert_eq!(
            load_salted(&dir.join("keys.extra")).unwrap(),
            2,
            "bad lines skipped"
        );
        let key = (
            Mech::ScramSha256,
            password_digest("pass2"),
            b"salt-b".to_vec(),
            64,
        );
        assert_eq!(
            salted_map().get(&key).map(|v| (**v).clone()),
            Some((*b).clone())
        );
        // A different password with the same salt is not a hit.
        let other = (
            Mech::ScramSha256,
            password_digest("other"),
            b"salt-b".to_vec(),
            64,
        );
        assert!(salted_map().get(&other).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
