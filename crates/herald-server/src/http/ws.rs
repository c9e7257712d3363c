//! RFC 7395: XMPP over WebSocket at `/xmpp-websocket`.
//!
//! The `xmpp` subprotocol is required. Every text message carries one complete element
//! with its namespaces declared; `<open/>` and `<close/>` of
//! `urn:ietf:params:xml:ns:xmpp-framing` stand for the stream header and its end. The
//! [`Link`] turns messages into stream events and elements into messages, and the stream
//! runs through the same negotiation and session code as TCP (`c2s.rs`): SASL, SASL2 and
//! FAST, Bind 2, XEP-0198 and every stanza feature; only STARTTLS is absent (TLS is the
//! https listener's job).
//!
//! Memory: tungstenite keeps a read buffer per connection, set here to 4 KiB (its default
//! is 128 KiB) and writes each message as it comes (no write buffer kept).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use futures_util::SinkExt;
use herald_core::{ns, StreamErrorCondition as SErr};
use herald_xml::{Element, Limits, Node, StreamEvent, StreamHeader};

use super::ConnMeta;
use crate::stream::{stream_error, Conn, Framed, StreamEnd};
use crate::Server;

/// RFC 7395 §3.3.2: the framing namespace of `<open/>` and `<close/>`.
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The WebSocket subprotocol (RFC 7395 §3.1).
pub const SUBPROTOCOL: &str = "xmpp";
/// tungstenite's read buffer per connection.
const READ_BUFFER: usize = 4 * 1024;

/// `GET /xmpp-websocket`: upgrades to a WebSocket with the `xmpp` subprotocol and runs a
/// client stream on it.
pub async fn upgrade(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(meta): Extension<ConnMeta>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]);
    if ws.selected_protocol().is_none() {
        return super::plain_response(
            StatusCode::BAD_REQUEST,
            "the 'xmpp' WebSocket subprotocol is required (RFC 7395)\n",
        );
    }
    // Messages a bit beyond the stanza limit still reach the parser, which ends the
    // stream with a proper policy-violation; far bigger ones are cut by tungstenite.
    let max = server.settings.raw.c2s.max_stanza_bytes.saturating_mul(2);
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let (secure, binding) = meta.stream_security();
            tracing::info!(%peer, secure, "c2s connection (websocket)");
            let link = Framed::WebSocket(Box::new(Link { ws: socket }));
            let conn = Conn::framed(&server, link, peer, secure, binding);
            crate::c2s::serve_conn(server, conn, false).await;
        })
}

/// The session's side of one WebSocket.
pub struct Link {
    ws: WebSocket,
}

impl Link {
    /// Waits for the next message and appends its event to `inbox`; returns its size for
    /// the byte-rate limit. Cancel-safe: a message is either taken whole or left queued.
    pub async fn recv(
        &mut self,
        inbox: &mut VecDeque<StreamEvent>,
        limits: Limits,
    ) -> Result<usize, StreamEnd> {
        loop {
            let msg = match self.ws.recv().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(read_error(e)),
                None => return Err(lost("the WebSocket closed without <close/>")),
            };
            match msg {
                Message::Text(text) => {
                    inbox.push_back(frame_event(text.as_bytes(), limits)?);
                    return Ok(text.len());
                }
                Message::Binary(_) => {
                    return Err(stream_error(
                        SErr::BadFormat,
                        "XMPP over WebSocket uses text messages only",
                    ))
                }
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return Err(lost("the WebSocket closed without <close/>")),
            }
        }
    }

    /// Sends each queued element as one text message (`frames` are end offsets in `data`).
    pub async fn send(&mut self, data: &[u8], frames: &[usize]) -> io::Result<()> {
        let mut start = 0;
        for &end in frames {
            let text = std::str::from_utf8(&data[start..end]).map_err(io::Error::other)?;
            self.ws
                .feed(Message::Text(text.into()))
                .await
                .map_err(io::Error::other)?;
            start = end;
        }
        self.ws.flush().await.map_err(io::Error::other)
    }

    /// RFC 7395 §3.6: what is queued, the stream error if any, `<close/>`, then the
    /// WebSocket closing handshake. The caller bounds the time.
    pub async fn close(&mut self, data: &[u8], frames: &[usize], error: Option<Element>) {
        if self.send(data, frames).await.is_err() {
            return;
        }
        let mut tail = Vec::new();
        if let Some(e) = error {
            crate::stream::write_stream_element(&mut tail, &e, true);
            let _ = self
                .ws
                .feed(Message::Text(
                    String::from_utf8_lossy(&tail).as_ref().into(),
                ))
                .await;
        }
        let close = format!("<close xmlns='{FRAMING}'/>");
        let _ = self.ws.feed(Message::Text(close.into())).await;
        let _ = self.ws.flush().await;
        let _ = self.ws.send(Message::Close(None)).await;
        // Drain until the peer's close frame completes the handshake.
        while let Some(Ok(_)) = self.ws.recv().await {}
    }
}

fn lost(what: &'static str) -> StreamEnd {
    StreamEnd::Io(io::Error::new(io::ErrorKind::UnexpectedEof, what))
}

fn read_error(e: axum::Error) -> StreamEnd {
    // A message over the size limit is a policy matter; anything else is a broken
    // connection (protocol errors, resets).
    let inner = e.into_inner();
    if let Some(tungstenite::Error::Capacity(_)) = inner.downcast_ref::<tungstenite::Error>() {
        return stream_error(SErr::PolicyViolation, "message exceeds the size limit");
    }
    StreamEnd::Io(io::Error::other(inner))
}

/// One text message to a stream event: `<open/>` and `<close/>` are the stream's header and
/// end, anything else a top-level element.
fn frame_event(data: &[u8], limits: Limits) -> Result<StreamEvent, StreamEnd> {
    let mut el = herald_xml::parse_document(data, limits)?;
    if el.ns == FRAMING {
        return match el.name.as_str() {
            "open" => Ok(StreamEvent::Open(StreamHeader {
                name: "stream".into(),
                ns: ns::STREAM.into(),
                default_ns: Some(ns::CLIENT.into()),
                attrs: el.attrs,
            })),
            "close" => Ok(StreamEvent::Close),
            _ => Err(stream_error(
                SErr::UnsupportedStanzaType,
                "unknown framing element",
            )),
        };
    }
    if el.ns == ns::STREAM && el.name == "stream" {
        return Err(stream_error(
            SErr::BadFormat,
            "use <open/> and <close/> over WebSocket (RFC 7395)",
        ));
    }
    // RFC 7395 wants every namespace declared; elements sent without one are taken as
    // jabber:client, as a TCP stream's default namespace would make them.
    default_client_ns(&mut el);
    Ok(StreamEvent::Stanza(el))
}

fn default_client_ns(el: &mut Element) {
    if el.ns.is_empty() {
        el.ns = ns::CLIENT.into();
        for c in el.children.iter_mut() {
            if let Node::Element(e) = c {
                default_client_ns(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_to_events() {
        let lim = Limits::default();
        match frame_event(
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' version='1.0'/>",
            lim,
        ) {
            Ok(StreamEvent::Open(h)) => {
                assert_eq!(h.ns, ns::STREAM);
                assert_eq!(h.default_ns.as_deref(), Some(ns::CLIENT));
                assert_eq!(h.attr("to"), Some("example.test"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            frame_event(b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", lim),
            Ok(StreamEvent::Close)
        ));
        match frame_event(
            b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
            lim,
        ) {
            Ok(StreamEvent::Stanza(el)) => {
                assert_eq!(el.ns, ns::CLIENT, "undeclared means jabber:client");
                assert!(el.child("ping", "urn:xmpp:ping").is_some());
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"<message xmlns='jabber:client'>"[..],
            b"<a xmlns='jabber:client'/><b xmlns='jabber:client'/>",
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'/>",
            b"not xml",
        ] {
            assert!(
                matches!(frame_event(bad, lim), Err(StreamEnd::Error(..))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
