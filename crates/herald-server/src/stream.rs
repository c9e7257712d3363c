//! One XML stream over one transport: reading with the framing limits and a byte-rate limit,
//! writing stanzas without intermediate strings, and the TLS upgrade. The transport is a
//! byte stream (TCP, TLS) or a message-oriented one carrying whole elements (WebSocket,
//! BOSH); negotiation and sessions see the same events either way.
//!
//! The read path is cancel-safe (`read_some` may be dropped inside `select!`): bytes are fed
//! to the parser as soon as they arrive and events are pulled from it separately.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_core::sasl::ChannelBinding;
use herald_core::{ns, StreamErrorCondition};
use herald_xml::{Element, Limits, StreamEvent, StreamParser, XmlError};
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::Server;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The peer closed the socket or the stream (`</stream:stream>`).
    Closed,
    /// We end the stream with this error.
    Error(StreamErrorCondition, Option<String>),
    Io(std::io::Error),
}

impl From<std::io::Error> for StreamEnd {
    fn from(e: std::io::Error) -> Self {
        StreamEnd::Io(e)
    }
}

impl From<XmlError> for StreamEnd {
    fn from(e: XmlError) -> Self {
        StreamEnd::Error(
            StreamErrorCondition::from_wire(e.stream_condition()),
            Some(e.to_string()),
        )
    }
}

pub fn stream_error(cond: StreamErrorCondition, text: &str) -> StreamEnd {
    StreamEnd::Error(cond, Some(text.to_string()))
}

/// Token bucket for inbound bytes.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u64, burst: u64) -> RateLimit {
        RateLimit {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes; returns how long to pause reading to get back within the rate.
    fn take(&mut self, n: usize) -> Option<Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// How a stream's elements travel.
enum Transport {
    /// RFC 6120 over TCP, optionally inside TLS: one long XML document parsed as the bytes
    /// arrive, written as bytes.
    Stream {
        io: Box<dyn Io>,
        parser: StreamParser,
    },
    /// A message-oriented transport carrying whole elements (RFC 7395 WebSocket, XEP-0206
    /// BOSH). `frames` holds the end offset in `wbuf` of each queued element; `inbox` the
    /// events received and not yet taken. Both are empty (unallocated) while idle.
    Framed {
        link: Framed,
        frames: Vec<usize>,
        inbox: VecDeque<StreamEvent>,
    },
}

/// The message-oriented transports. Each turns its framing into stream events on input
/// (its own open and close elements become [`StreamEvent::Open`] and
/// [`StreamEvent::Close`]) and frames whole elements on output, so negotiation and the
/// session loop in `c2s.rs` run unchanged over it.
pub enum Framed {
    WebSocket(Box<crate::http::ws::Link>),
    Bosh(crate::http::bosh::Link),
}

pub struct Conn {
    transport: Transport,
    limits: Limits,
    wbuf: Vec<u8>,
    rate: RateLimit,
    pub peer: SocketAddr,
    /// The channel is encrypted (TLS here or, for HTTP transports, see `http.rs`).
    pub secure: bool,
    pub binding: ChannelBinding,
    /// The stream namespace stanzas are written in (`jabber:client` or the component one).
    pub stream_ns: &'static str,
}

const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

fn limits(server: &Server) -> Limits {
    let c = &server.settings.raw.c2s;
    Limits {
        max_stanza_bytes: c.max_stanza_bytes,
        max_depth: c.max_depth,
        max_attrs: c.max_attributes,
        ..Limits::default()
    }
}

impl Conn {
    pub fn new(server: &Server, io: Box<dyn Io>, peer: SocketAddr) -> Conn {
        let limits = limits(server);
        Conn::with_transport(
            server,
            Transport::Stream {
                io,
                parser: StreamParser::new(limits),
            },
            peer,
        )
    }

    /// A stream over a message-oriented transport. `secure` and `binding` describe the
    /// HTTP connection it arrived on.
    pub fn framed(
        server: &Server,
        link: Framed,
        peer: SocketAddr,
        secure: bool,
        binding: ChannelBinding,
    ) -> Conn {
        let mut c = Conn::with_transport(
            server,
            Transport::Framed {
                link,
                frames: Vec::new(),
                inbox: VecDeque::new(),
            },
            peer,
        );
        c.secure = secure;
        c.binding = binding;
        c
    }

    fn with_transport(server: &Server, transport: Transport, peer: SocketAddr) -> Conn {
        let c = &server.settings.raw.c2s;
        Conn {
            transport,
            limits: limits(server),
            wbuf: Vec::new(),
            rate: RateLimit::new(c.max_bytes_per_sec, c.burst_bytes),
            peer,
            secure: false,
            binding: ChannelBinding::default(),
            stream_ns: ns::CLIENT,
        }
    }

    /// A connection with no transport, left behind when the real one moves to another task.
    pub fn placeholder(server: &Server, peer: SocketAddr) -> Conn {
        Conn::new(server, Box::new(tokio::io::duplex(1).0), peer)
    }

    /// A byte stream (TCP): STARTTLS applies. Message-oriented transports get their
    /// security from the HTTP layer.
    pub fn is_byte_stream(&self) -> bool {
        matches!(self.transport, Transport::Stream { .. })
    }

    /// XEP-0198 makes sense on this transport (not on BOSH, which has its own acks and
    /// retransmission).
    pub fn supports_sm(&self) -> bool {
        !matches!(
            self.transport,
            Transport::Framed {
                link: Framed::Bosh(_),
                ..
            }
        )
    }

    /// Channel-binding data is available, so `-PLUS` mechanisms can be offered.
    pub fn can_bind_channel(&self) -> bool {
        self.binding.tls_exporter.is_some() || self.binding.tls_server_end_point.is_some()
    }

    /// A short name of the transport for logs.
    pub fn transport_name(&self) -> &'static str {
        match &self.transport {
            Transport::Stream { .. } => "tcp",
            Transport::Framed {
                link: Framed::WebSocket(_),
                ..
            } => "websocket",
            Transport::Framed {
                link: Framed::Bosh(_),
                ..
            } => "bosh",
        }
    }

    /// Starts a fresh parser (RFC 6120 §4.3.3: after TLS and SASL the stream restarts).
    /// Framed transports parse every element on its own and need nothing here.
    pub fn reset(&mut self) {
        if let Transport::Stream { parser, .. } = &mut self.transport {
            *parser = StreamParser::new(self.limits);
        }
    }

    /// Next parsed event, if one is already buffered.
    pub fn poll_event(&mut self) -> Result<Option<StreamEvent>, StreamEnd> {
        match &mut self.transport {
            Transport::Stream { parser, .. } => Ok(parser.next_event()?),
            Transport::Framed { inbox, .. } => Ok(inbox.pop_front()),
        }
    }

    /// Reads from the transport into the parser (or the inbox of a framed transport).
    /// Cancel-safe.
    ///
    /// The bytes of a byte stream land in a per-thread scratch buffer and go straight into
    /// the parser inside the same poll, so an idle session holds no read buffer at all
    /// (the per-session memory budget is 16 KiB and TLS takes most of it).
    pub async fn read_some(&mut self) -> Result<(), StreamEnd> {
        let n = match &mut self.transport {
            Transport::Stream { io, parser } => {
                let n = std::future::poll_fn(|cx| {
                    READ_BUF.with(|buf| {
                        let mut buf = buf.borrow_mut();
                        let mut rb = ReadBuf::new(&mut buf[..]);
                        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                            Poll::Ready(Ok(())) => {
                                parser.feed(rb.filled());
                                Poll::Ready(Ok(rb.filled().len()))
                            }
                            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                            Poll::Pending => Poll::Pending,
                        }
                    })
                })
                .await?;
                if n == 0 {
                    // End of the TCP stream without `</stream:stream>`: the connection was
                    // lost (an app killed, a network change), which XEP-0198 may resume.
                    return Err(StreamEnd::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed without closing the stream",
                    )));
                }
                n
            }
            Transport::Framed { link, inbox, .. } => match link {
                Framed::WebSocket(ws) => ws.recv(inbox, self.limits).await?,
                Framed::Bosh(b) => b.recv(inbox).await?,
            },
        };
        if let Some(pause) = self.rate.take(n) {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// Reads until the next event.
    pub async fn next_event(&mut self) -> Result<StreamEvent, StreamEnd> {
        loop {
            if let Some(ev) = self.poll_event()? {
                return Ok(ev);
            }
            self.read_some().await?;
        }
    }

    /// Next stanza; a stream close or a second stream header ends the stream.
    pub async fn next_stanza(&mut self) -> Result<Element, StreamEnd> {
        match self.next_event().await? {
            StreamEvent::Stanza(e) => Ok(e),
            StreamEvent::Close => Err(StreamEnd::Closed),
            StreamEvent::Open(_) => Err(stream_error(
                StreamErrorCondition::BadFormat,
                "unexpected stream header",
            )),
        }
    }

    /// Marks the end of one element on a framed transport.
    fn end_frame(&mut self) {
        if let Transport::Framed { frames, .. } = &mut self.transport {
            frames.push(self.wbuf.len());
        }
    }

    pub fn queue(&mut self, el: &Element) {
        match self.transport {
            // Stanzas are kept in jabber:client internally; the stream's default namespace
            // stands for it on the wire whatever that namespace is, so no xmlns is written.
            Transport::Stream { .. } => el.write_to(&mut self.wbuf, ns::CLIENT),
            // RFC 7395 §3.3.3, XEP-0206 §4: every element carries its namespace.
            Transport::Framed { .. } => el.write_to(&mut self.wbuf, ""),
        }
        self.end_frame();
    }

    /// Writes an element of the streams namespace with the `stream:` prefix the header
    /// declared (`<stream:features>`, `<stream:error>`): some clients match the prefix.
    /// Framed transports have no header, so the element declares the prefix itself.
    pub fn queue_stream_element(&mut self, el: &Element) {
        let declare = !self.is_byte_stream();
        write_stream_element(&mut self.wbuf, el, declare);
        self.end_frame();
    }

    /// Raw bytes; only byte streams have a place for them (`</stream:stream>`, component
    /// handshakes).
    pub fn queue_raw(&mut self, data: &[u8]) {
        debug_assert!(self.is_byte_stream(), "raw bytes on a framed transport");
        if self.is_byte_stream() {
            self.wbuf.extend_from_slice(data);
        }
    }

    /// Gives back buffer memory while the connection waits with nothing half-read or
    /// unwritten: most sessions are idle most of the time, and the per-session budget is
    /// 16 KiB. Costs one allocation per active read or write batch.
    pub fn release_idle_buffers(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = Vec::new();
        }
        match &mut self.transport {
            Transport::Stream { parser, .. } => parser.release_idle(),
            Transport::Framed { frames, inbox, .. } => {
                if frames.is_empty() && frames.capacity() > 0 {
                    *frames = Vec::new();
                }
                if inbox.is_empty() && inbox.capacity() > 0 {
                    *inbox = VecDeque::new();
                }
            }
        }
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.transport {
            Transport::Stream { io, .. } => {
                if !self.wbuf.is_empty() {
                    io.write_all(&self.wbuf).await?;
                }
                io.flush().await?;
            }
            Transport::Framed { link, frames, .. } => {
                if !frames.is_empty() {
                    match link {
                        Framed::WebSocket(ws) => ws.send(&self.wbuf, frames).await?,
                        Framed::Bosh(b) => b.send(&self.wbuf).await?,
                    }
                    frames.clear();
                }
            }
        }
        self.wbuf.clear();
        // Keep a small buffer for the common case; give back what a burst grew.
        if self.wbuf.capacity() > 4 * 1024 {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    pub async fn send(&mut self, el: &Element) -> std::io::Result<()> {
        self.queue(el);
        self.flush().await
    }

    /// Our stream header. `to` echoes the client's `from` when it gave one. Over WebSocket
    /// it is an `<open/>` element; BOSH puts it into its session attributes.
    pub fn queue_header(&mut self, from: &str, id: &str, to: Option<&str>) {
        match &mut self.transport {
            Transport::Stream { .. } => {
                let mut h = Vec::with_capacity(256);
                h.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
                h.extend_from_slice(self.stream_ns.as_bytes());
                h.extend_from_slice(b"' xmlns:stream='http://etherx.jabber.org/streams' id='");
                herald_xml::escape_attr(id, &mut h);
                h.extend_from_slice(b"' from='");
                herald_xml::escape_attr(from, &mut h);
                if let Some(to) = to {
                    h.extend_from_slice(b"' to='");
                    herald_xml::escape_attr(to, &mut h);
                }
                h.extend_from_slice(b"' version='1.0' xml:lang='en'>");
                self.queue_raw(&h);
            }
            Transport::Framed { link, frames, .. } => match link {
                Framed::WebSocket(_) => {
                    let mut open = Element::new("open", crate::http::ws::FRAMING)
                        .with_attr("from", from)
                        .with_attr("id", id);
                    if let Some(to) = to {
                        open.set_attr("to", to);
                    }
                    open.set_attr("version", "1.0");
                    open.set_attr("xml:lang", "en");
                    open.write_to(&mut self.wbuf, "");
                    frames.push(self.wbuf.len());
                }
                Framed::Bosh(b) => b.stream_opened(from, id),
            },
        }
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1).
    pub async fn close_with_error(&mut self, cond: StreamErrorCondition, text: Option<&str>) {
        let error = cond.to_element(text);
        if self.is_byte_stream() {
            self.queue_stream_element(&error);
            self.close().await;
        } else {
            self.close_framed(Some((cond, error))).await;
        }
    }

    /// `</stream:stream>` then shuts the socket down, bounded in time. Framed transports
    /// send their own close (`<close/>`, a BOSH `terminate`).
    pub async fn close(&mut self) {
        if !self.is_byte_stream() {
            return self.close_framed(None).await;
        }
        self.queue_raw(b"</stream:stream>");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            if let Transport::Stream { io, .. } = &mut self.transport {
                let _ = io.shutdown().await;
            }
        })
        .await;
    }

    async fn close_framed(&mut self, error: Option<(StreamErrorCondition, Element)>) {
        let Transport::Framed { link, frames, .. } = &mut self.transport else {
            return;
        };
        let wbuf = std::mem::take(&mut self.wbuf);
        let frames = std::mem::take(frames);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            match link {
                Framed::WebSocket(ws) => ws.close(&wbuf, &frames, error.map(|e| e.1)).await,
                Framed::Bosh(b) => b.close(&wbuf, error),
            }
        })
        .await;
    }

    /// Upgrades to TLS in place (STARTTLS or direct TLS) and records channel-binding data.
    pub async fn upgrade_tls(&mut self, server: &Server) -> std::io::Result<()> {
        let Transport::Stream { io, .. } = &mut self.transport else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "TLS is negotiated by the HTTP layer on this transport",
            ));
        };
        let plain = std::mem::replace(io, Box::new(tokio::io::duplex(1).0));
        let acceptor = tokio_rustls::TlsAcceptor::from(server.tls.config.clone());
        let tls = acceptor.accept(plain).await?;
        self.binding = channel_binding(server, tls.get_ref().1);
        *io = Box::new(tls);
        self.secure = true;
        self.reset();
        Ok(())
    }
}

/// Channel-binding data of a TLS connection we terminate: RFC 9266 tls-exporter (only safe
/// with TLS 1.3) and RFC 5929 tls-server-end-point.
pub fn channel_binding(server: &Server, conn: &rustls::ServerConnection) -> ChannelBinding {
    let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        let mut out = vec![0u8; 32];
        match conn.export_keying_material(&mut out[..], b"EXPORTER-Channel-Binding", Some(&[])) {
            Ok(_) => Some(out),
            Err(_) => None,
        }
    } else {
        None
    };
    ChannelBinding {
        tls_exporter: exporter,
        tls_server_end_point: Some(server.tls.end_point.clone()),
    }
}

/// `<stream:NAME>` with the element's children; `declare` adds the prefix declaration for
/// transports without a stream header.
pub fn write_stream_element(out: &mut Vec<u8>, el: &Element, declare: bool) {
    out.extend_from_slice(b"<stream:");
    out.extend_from_slice(el.name.as_bytes());
    if declare {
        out.extend_from_slice(b" xmlns:stream='");
        out.extend_from_slice(ns::STREAM.as_bytes());
        out.push(b'\'');
    }
    out.push(b'>');
    for c in el.elements() {
        c.write_to(out, ns::STREAM);
    }
    out.extend_from_slice(b"</stream:");
    out.extend_from_slice(el.name.as_bytes());
    out.push(b'>');
}

/// Wraps the accepted TCP stream.
pub fn plain(tcp: TcpStream) -> Box<dyn Io> {
    Box::new(tcp)
}

/// Random stream ids and resources: 128 bits, printable.
pub fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::thread_rng().gen();
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
