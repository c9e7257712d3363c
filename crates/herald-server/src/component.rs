//! XEP-0114: Jabber Component Protocol. Gateways and bots attach under their own domain
//! with a shared secret and exchange stanzas through the same router as clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::{ns, Jid, StreamErrorCondition as SErr};
use herald_xml::{Element, StreamEvent};
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::session::{Outbound, QueueError};
use crate::stream::{self, stream_error, Conn, StreamEnd};
use crate::Server;

pub struct ComponentEntry {
    secret: String,
    tx: RwLock<Option<mpsc::Sender<Outbound>>>,
}

impl ComponentEntry {
    /// Queues a stanza for the component; gives it back when the component is not attached.
    pub async fn send(&self, el: Element, timeout: Duration) -> Result<(), Element> {
        let tx = self.tx.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return Err(el) };
        match crate::session::queue(&tx, el, timeout).await {
            Ok(()) => Ok(()),
            Err(QueueError::Closed(el)) | Err(QueueError::TimedOut(el)) => Err(el),
        }
    }
}

/// Configured components by domain.
pub struct ComponentTable {
    entries: HashMap<String, ComponentEntry>,
}

impl ComponentTable {
    pub fn new(configured: &[(String, String)]) -> ComponentTable {
        let entries = configured
            .iter()
            .map(|(d, s)| {
                (
                    d.clone(),
                    ComponentEntry {
                        secret: s.clone(),
                        tx: RwLock::new(None),
                    },
                )
            })
            .collect();
        ComponentTable { entries }
    }

    pub fn get(&self, domain: &str) -> Option<&ComponentEntry> {
        self.entries.get(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// Rewrites the component stream namespace to the one stanzas are routed in.
fn normalize(el: &mut Element) {
    if el.ns == ns::COMPONENT {
        el.ns = ns::CLIENT.to_string();
    }
    for c in el.children.iter_mut() {
        if let herald_xml::Node::Element(e) = c {
            normalize(e);
        }
    }
}

pub async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let mut conn = Conn::new(&server, stream::plain(tcp), peer);
    conn.stream_ns = ns::COMPONENT;
    let timeout = Duration::from_secs(server.settings.raw.c2s.preauth_timeout_secs);
    let domain = match tokio::time::timeout(timeout, handshake(&server, &mut conn)).await {
        Ok(Ok(d)) => d,
        Ok(Err(end)) => return end_stream(&mut conn, end, "").await,
        Err(_) => {
            return end_stream(
                &mut conn,
                stream_error(SErr::ConnectionTimeout, "handshake took too long"),
                "",
            )
            .await
        }
    };
    let entry = server
        .components
        .get(&domain)
        .expect("handshake checked the domain");
    let (tx, mut rx) = mpsc::channel(server.settings.raw.c2s.outbox_capacity * 4);
    let attached = {
        let mut slot = entry.tx.write().unwrap_or_else(|p| p.into_inner());
        let busy = slot.as_ref().is_some_and(|t| !t.is_closed());
        if !busy {
            *slot = Some(tx);
        }
        !busy
    };
    if !attached {
        return end_stream(
            &mut conn,
            stream_error(SErr::Conflict, "component already connected"),
            &domain,
        )
        .await;
    }
    tracing::info!(%peer, component = %domain, "component connected");
    let mut shutdown = server.shutdown.clone();
    let end = loop {
        match conn.poll_event() {
            Ok(Some(StreamEvent::Stanza(mut el))) => {
                normalize(&mut el);
                if let Err(e) = check_from(&el, &domain) {
                    break e;
                }
                crate::router::route(&server, el).await;
                continue;
            }
            Ok(Some(StreamEvent::Close)) => break StreamEnd::Closed,
            Ok(Some(StreamEvent::Open(_))) => {
                break stream_error(SErr::BadFormat, "unexpected stream header")
            }
            Ok(None) => {}
            Err(e) => break e,
        }
        if let Err(e) = conn.flush().await {
            break StreamEnd::Io(e);
        }
        tokio::select! {
            r = conn.read_some() => if let Err(e) = r { break e; },
            m = rx.recv() => match m {
                Some(Outbound::Stanza(el)) => conn.queue(&el),
                Some(Outbound::Close(c)) => break StreamEnd::Error(c.0, c.1),
                None => break StreamEnd::Closed,
            },
            _ = crate::stopped(&mut shutdown) => break StreamEnd::Error(SErr::SystemShutdown, None),
        }
    };
    *entry.tx.write().unwrap_or_else(|p| p.into_inner()) = None;
    rx.close();
    while let Ok(Outbound::Stanza(el)) = rx.try_recv() {
        crate::router::bounce(
            &server,
            *el,
            herald_core::StanzaErrorCondition::ServiceUnavailable.into(),
        )
        .await;
    }
    end_stream(&mut conn, end, &domain).await;
}

fn check_from(el: &Element, domain: &str) -> Result<(), StreamEnd> {
    match el.attr("from").map(Jid::parse) {
        Some(Ok(j)) if j.domain() == domain => Ok(()),
        Some(_) => Err(stream_error(
            SErr::InvalidFrom,
            "'from' must be in the component's domain",
        )),
        None => Err(stream_error(
            SErr::ImproperAddressing,
            "stanzas from a component need 'from'",
        )),
    }
}

async fn end_stream(conn: &mut Conn, end: StreamEnd, domain: &str) {
    match end {
        StreamEnd::Error(c, t) => {
            tracing::info!(peer = %conn.peer, component = domain, error = c.as_str(), "component stream error");
            conn.close_with_error(c, t.as_deref()).await
        }
        StreamEnd::Closed => {
            tracing::info!(peer = %conn.peer, component = domain, "component disconnected");
            conn.close().await
        }
        StreamEnd::Io(e) => {
            tracing::info!(peer = %conn.peer, component = domain, error = %e, "component connection lost")
        }
    }
}

/// XEP-0114 §3: stream header naming the component's domain, then SHA-1(id + secret).
async fn handshake(server: &Server, conn: &mut Conn) -> Result<String, StreamEnd> {
    let header = match conn.next_event().await? {
        StreamEvent::Open(h) => h,
        _ => {
            return Err(stream_error(
                SErr::NotWellFormed,
                "expected a stream header",
            ))
        }
    };
    let id = stream::random_id();
    let to = header
        .attrs
        .iter()
        .find(|(k, _)| k == "to")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let domain = Jid::parse(&to)
        .map(|j| j.domain().to_string())
        .unwrap_or_default();
    conn.queue_header(
        if domain.is_empty() {
            "unknown"
        } else {
            &domain
        },
        &id,
        None,
    );
    if header.ns != ns::STREAM || header.default_ns.as_deref() != Some(ns::COMPONENT) {
        return Err(stream_error(
            SErr::InvalidNamespace,
            "expected jabber:component:accept",
        ));
    }
    let Some(entry) = server.components.get(&domain) else {
        return Err(stream_error(
            SErr::HostUnknown,
            "no such component configured",
        ));
    };
    conn.flush().await?;
    let el = conn.next_stanza().await?;
    if el.name != "handshake" || el.ns != ns::COMPONENT {
        return Err(stream_error(SErr::NotAuthorized, "handshake first"));
    }
    let expected = hex(&Sha1::digest(format!("{id}{}", entry.secret).as_bytes()));
    let given = el.text().trim().to_ascii_lowercase();
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(stream_error(SErr::NotAuthorized, "wrong secret"));
    }
    conn.queue_raw(b"<handshake/>");
    conn.flush().await?;
    Ok(domain)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
