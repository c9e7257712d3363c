//! XEP-0065: SOCKS5 Bytestreams — the proxy (StreamHost) at `proxy.<domain>`.
//!
//! The XMPP side answers disco (identity `proxy/bytestreams`), the streamhost query
//! (`<streamhost jid host port/>`, from `[proxy65] host/port` or the listener) and the
//! activation request. The TCP side (`[listen] proxy65`) speaks the SOCKS5 subset of
//! XEP-0065 §6.3: no authentication, CONNECT to a domain name that is
//! `SHA1(SID + Requester JID + Target JID)` in hex, port 0. The first connection with a
//! hash waits (the Target), the second (the Requester) joins it; a third is refused. The
//! pair waits, reading nothing, until the Requester activates it: the proxy recomputes
//! the hash from the activation's `from`, its `sid` and the `<activate/>` Target, so only
//! the Requester whose JID is in the hash can start the relay. Bytes sent before activation
//! are discarded (§8.1 "ignore any bytes sent before the bytestream is activated").
//! Unactivated pairs are closed after `proxy65.activation_timeout_secs`, relays after
//! `proxy65.idle_timeout_secs` without data; `proxy65.max_bytes_per_sec` paces each
//! transfer (both directions together).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::Server;

/// XEP-0065 namespace.
pub const NS: &str = "http://jabber.org/protocol/bytestreams";

/// Time a client gets for the SOCKS5 greeting and request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting for a partner or an activation, at most.
const MAX_PENDING: usize = 10_000;
const RELAY_CHUNK: usize = 16 * 1024;

/// SOCKS5 reply codes (RFC 1928 §6).
const REP_OK: u8 = 0x00;
const REP_FAILURE: u8 = 0x01;
const REP_NOT_ALLOWED: u8 = 0x02;
const REP_COMMAND: u8 = 0x07;
const REP_ADDRESS_TYPE: u8 = 0x08;

/// The proxy's state: where clients are told to connect, and the connections waiting
/// for activation, by their hash.
pub struct Proxy65 {
    announce: Option<(String, u16)>,
    pending: Mutex<HashMap<String, Pending>>,
    next_gen: AtomicU64,
    /// Relays running now.
    active: Arc<AtomicUsize>,
}

struct Pending {
    target: TcpStream,
    requester: Option<TcpStream>,
    generation: u64,
}

impl Proxy65 {
    /// `listeners`: the addresses actually bound (ports resolved).
    pub fn new(settings: &crate::Settings, listeners: &[SocketAddr]) -> Proxy65 {
        let cfg = &settings.raw.proxy65;
        let announce = listeners.first().map(|a| {
            (
                cfg.host.clone().unwrap_or_else(|| a.ip().to_string()),
                cfg.port.unwrap_or(a.port()),
            )
        });
        Proxy65 {
            announce,
            pending: Mutex::new(HashMap::new()),
            next_gen: AtomicU64::new(1),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Connections waiting for a partner or an activation.
    pub fn pending_count(&self) -> usize {
        let map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|p| 1 + usize::from(p.requester.is_some()))
            .sum()
    }

    /// Transfers being relayed.
    pub fn active_count(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// `SHA1(sid + requester + target)`, lowercase hex (XEP-0065 §5.3.2).
pub fn dst_addr(sid: &str, requester: &str, target: &str) -> String {
    let mut h = Sha1::new();
    h.update(sid.as_bytes());
    h.update(requester.as_bytes());
    h.update(target.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// XMPP side

/// An IQ to the service at `to` (a service domain of served domain `host`); the router
/// bounces messages and drops other stanzas (`router::iq_service`).
pub(crate) async fn handle_iq(
    server: &Arc<Server>,
    el: &Element,
    from: &Jid,
    to: &Jid,
    _host: &str,
) -> Result<Option<Element>, StanzaError> {
    if to.node().is_some() || to.resource().is_some() {
        return Err(StanzaError::new(Cond::ServiceUnavailable));
    }
    let payload = crate::ext::payload_of(el)?;
    let set = el.attr("type") == Some("set");
    match (payload.ns.as_str(), payload.name.as_str(), set) {
        (ns::DISCO_INFO, "query", false) => {
            if payload.attr("node").is_some() {
                return Err(StanzaError::new(Cond::ItemNotFound));
            }
            let feature = |v: &str| Element::new("feature", ns::DISCO_INFO).with_attr("var", v);
            Ok(Some(
                Element::new("query", ns::DISCO_INFO)
                    .with_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "proxy")
                            .with_attr("type", "bytestreams")
                            .with_attr("name", "SOCKS5 Bytestreams Proxy"),
                    )
                    .with_child(feature(ns::DISCO_INFO))
                    .with_child(feature(ns::DISCO_ITEMS))
                    .with_child(feature(ns::PING))
                    .with_child(feature(NS)),
            ))
        }
        (ns::DISCO_ITEMS, "query", false) => {
            if payload.attr("node").is_some() {
                return Err(StanzaError::new(Cond::ItemNotFound));
            }
            Ok(Some(Element::new("query", ns::DISCO_ITEMS)))
        }
        (ns::PING, "ping", false) => Ok(None),
        (NS, "query", _) => {
            // Users of the served domains only: the proxy relays their traffic.
            if from.node().is_none() || !server.serves(from.domain()) {
                return Err(StanzaError::new(Cond::Forbidden)
                    .with_text("only local users may use this proxy"));
            }
            if set {
                activate(server, payload, from).map(|()| None)
            } else {
                streamhost(server, to).map(Some)
            }
        }
        _ => Err(StanzaError::new(Cond::ServiceUnavailable)),
    }
}

/// §6.3.1: the proxy's network address.
fn streamhost(server: &Server, to: &Jid) -> Result<Element, StanzaError> {
    let Some((host, port)) = &server.proxy65.announce else {
        return Err(
            StanzaError::new(Cond::ServiceUnavailable).with_text("the proxy has no listener")
        );
    };
    Ok(Element::new("query", NS).with_child(
        Element::new("streamhost", NS)
            .with_attr("jid", to.as_str())
            .with_attr("host", host.as_str())
            .with_attr("port", port.to_string()),
    ))
}

/// §6.3.7: activation by the Requester.
fn activate(server: &Arc<Server>, query: &Element, from: &Jid) -> Result<(), StanzaError> {
    let sid = query
        .attr("sid")
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(|| {
            StanzaError::new(Cond::BadRequest).with_text("the sid attribute is missing")
        })?;
    let target = query
        .child("activate", NS)
        .map(|a| a.text())
        .ok_or_else(|| {
            StanzaError::new(Cond::BadRequest).with_text("the activate element is missing")
        })?;
    let target = Jid::parse(target.trim()).map_err(|_| {
        StanzaError::new(Cond::JidMalformed).with_text("the target is not a valid JID")
    })?;
    // The Requester may have used its full or its bare JID in the negotiation.
    let bare = from.bare();
    let hashes = [
        dst_addr(sid, from.as_str(), target.as_str()),
        dst_addr(sid, bare.as_str(), target.as_str()),
    ];
    let pair = {
        let mut map = server
            .proxy65
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(hash) = hashes.iter().find(|h| map.contains_key(*h)) else {
            return Err(StanzaError::new(Cond::ItemNotFound)
                .with_text("no connection with this session's hash"));
        };
        if map.get(hash).is_some_and(|p| p.requester.is_none()) {
            return Err(StanzaError::new(Cond::NotAllowed)
                .with_text("only one party is connected to the proxy"));
        }
        map.remove(hash)
    };
    let Some(Pending {
        target: a,
        requester: Some(b),
        ..
    }) = pair
    else {
        return Err(StanzaError::new(Cond::InternalServerError));
    };
    // Discard what was sent before activation; a party that left cannot be relayed.
    if !drain(&a) || !drain(&b) {
        return Err(
            StanzaError::new(Cond::NotAllowed).with_text("a party disconnected from the proxy")
        );
    }
    let cfg = &server.settings.raw.proxy65;
    let limiter = (cfg.max_bytes_per_sec > 0).then(|| Arc::new(Pacer::new(cfg.max_bytes_per_sec)));
    let idle = Duration::from_secs(cfg.idle_timeout_secs);
    let active = server.proxy65.active.clone();
    active.fetch_add(1, Ordering::Relaxed);
    let mut shutdown = server.shutdown.clone();
    tracing::info!(requester = %from, target = %target, "bytestream activated");
    tokio::spawn(async move {
        tokio::select! {
            _ = relay(a, b, limiter, idle) => {}
            _ = crate::stopped(&mut shutdown) => {}
        }
        active.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(())
}

/// Reads and discards whatever is waiting on a parked connection; `false` if the peer
/// has closed it.
fn drain(s: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// TCP side

/// Accepts proxy connections until shutdown.
pub async fn accept_loop(server: Arc<Server>, listener: TcpListener) {
    let mut shutdown = server.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(serve(server.clone(), tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy65 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    conns.abort_all();
    let _ = server.proxy65.pending.lock().map(|mut m| m.clear());
}

/// Why a SOCKS5 handshake failed: the reply code to send, if any.
struct Refused(Option<u8>);

/// One proxy connection: the SOCKS5 handshake, then it waits parked in the table.
async fn serve(server: Arc<Server>, mut tcp: TcpStream, peer: SocketAddr) {
    let hash = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut tcp)).await {
        Ok(Ok(h)) => h,
        Ok(Err(Refused(code))) => {
            if let Some(code) = code {
                let _ = tcp.write_all(&reply(code, "")).await;
            }
            return;
        }
        Err(_) => return,
    };
    let proxy = &server.proxy65;
    // Check before answering success, so a refused client hears why.
    let refusal = {
        let map = proxy.pending.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&hash) {
            Some(p) if p.requester.is_some() => Some(REP_NOT_ALLOWED),
            None if map.len() >= MAX_PENDING => Some(REP_FAILURE),
            _ => None,
        }
    };
    if let Some(code) = refusal {
        let _ = tcp.write_all(&reply(code, &hash)).await;
        return;
    }
    if tcp.write_all(&reply(REP_OK, &hash)).await.is_err() {
        return;
    }
    let generation = proxy.next_gen.fetch_add(1, Ordering::Relaxed);
    let new_entry = {
        let mut map = proxy.pending.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&hash) {
            Some(p) if p.requester.is_none() => {
                p.requester = Some(tcp);
                false
            }
            // Filled in the meantime: this connection is dropped (closed).
            Some(_) => return,
            None => {
                map.insert(
                    hash.clone(),
                    Pending {
                        target: tcp,
                        requester: None,
                        generation,
                    },
                );
                true
            }
        }
    };
    tracing::debug!(%peer, hash = %hash, "proxy65 connection waiting");
    if new_entry {
        // Close the pair if it is not activated in time.
        let timeout = Duration::from_secs(server.settings.raw.proxy65.activation_timeout_secs);
        tokio::time::sleep(timeout).await;
        let mut map = proxy.pending.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&hash).is_some_and(|p| p.generation == generation) {
            map.remove(&hash);
            tracing::debug!(hash = %hash, "proxy65 connection never activated; closed");
        }
    }
}

/// The SOCKS5 method negotiation and CONNECT request; returns the (lowercased) hash.
async fn handshake(tcp: &mut TcpStream) -> Result<String, Refused> {
    let io = |_| Refused(None);
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 || head[1] == 0 {
        return Err(Refused(None));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    tcp.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&0) {
        // No acceptable method (RFC 1928 §3).
        let _ = tcp.write_all(&[5, 0xff]).await;
        return Err(Refused(None));
    }
    tcp.write_all(&[5, 0]).await.map_err(io)?;
    let mut req = [0u8; 4];
    tcp.read_exact(&mut req).await.map_err(io)?;
    if req[0] != 5 {
        return Err(Refused(None));
    }
    if req[1] != 1 {
        return Err(Refused(Some(REP_COMMAND)));
    }
    if req[3] != 3 {
        return Err(Refused(Some(REP_ADDRESS_TYPE)));
    }
    let mut len = [0u8; 1];
    tcp.read_exact(&mut len).await.map_err(io)?;
    let mut addr = vec![0u8; usize::from(len[0])];
    tcp.read_exact(&mut addr).await.map_err(io)?;
    let mut port = [0u8; 2];
    tcp.read_exact(&mut port).await.map_err(io)?;
    if addr.len() != 40 || !addr.iter().all(u8::is_ascii_hexdigit) {
        return Err(Refused(Some(REP_NOT_ALLOWED)));
    }
    Ok(String::from_utf8_lossy(&addr).to_ascii_lowercase())
}

/// A SOCKS5 reply; BND.ADDR is the requested hash, BND.PORT 0 (§6.3.3).
fn reply(code: u8, hash: &str) -> Vec<u8> {
    let mut r = vec![5, code, 0, 3, hash.len() as u8];
    r.extend_from_slice(hash.as_bytes());
    r.extend_from_slice(&[0, 0]);
    r
}

// ---------------------------------------------------------------------------------------
// Relay

/// Spreads a transfer's bytes over time: each chunk gets the next free slot at the rate.
struct Pacer {
    rate: u64,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Chunk size that keeps pacing smooth (about an eighth of a second of data).
    fn chunk(&self) -> usize {
        usize::try_from(self.rate / 8)
            .unwrap_or(RELAY_CHUNK)
            .clamp(512, RELAY_CHUNK)
    }

    async fn take(&self, n: usize) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if *next < now {
                *next = now;
            }
            let start = *next;
            *next += Duration::from_secs_f64(n as f64 / self.rate as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Relays both directions until both ends have closed, an error, or `idle` without data
/// in either direction.
async fn relay(a: TcpStream, b: TcpStream, pacer: Option<Arc<Pacer>>, idle: Duration) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let chunk = pacer.as_ref().map_or(RELAY_CHUNK, |p| p.chunk());
    let one = pipe(ar, bw, pacer.clone(), idle, last.clone(), start, chunk);
    let two = pipe(br, aw, pacer, idle, last, start, chunk);
    tokio::join!(one, two);
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    pacer: Option<Arc<Pacer>>,
    idle: Duration,
    last: Arc<AtomicU64>,
    start: Instant,
    chunk: usize,
) {
    let mut buf = vec![0u8; chunk];
    let touch =
        |last: &AtomicU64| last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Err(_) => {
                // Quiet this way; the transfer is idle only if the other way is too.
                let since = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                if Duration::from_millis(since) >= idle {
                    break;
                }
                continue;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        if let Some(p) = &pacer {
            p.take(n).await;
        }
        match tokio::time::timeout(idle, w.write_all(&buf[..n])).await {
            Ok(Ok(())) => touch(&last),
            _ => break,
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_the_xep_example_form() {
        let h = dst_addr(
            "vxf9n471bn46",
            "requester@example.com/foo",
            "target@example.org/bar",
        );
        assert_eq!(h.len(), 40);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(
            h,
            dst_addr(
                "vxf9n471bn46",
                "target@example.org/bar",
                "requester@example.com/foo"
            ),
            "order matters"
        );
    }

    #[test]
    fn replies_carry_the_hash() {
        let r = reply(REP_OK, "ab");
        assert_eq!(r, vec![5, 0, 0, 3, 2, b'a', b'b', 0, 0]);
    }

    #[tokio::test]
    async fn pacer_spreads_bytes() {
        let p = Pacer::new(100_000);
        assert_eq!(p.chunk(), 12_500);
        let t = Instant::now();
        for _ in 0..4 {
            p.take(10_000).await;
        }
        // 40 kB at 100 kB/s: the last chunk starts after 0.3 s.
        assert!(
            t.elapsed() >= Duration::from_millis(290),
            "{:?}",
            t.elapsed()
        );
    }
}
