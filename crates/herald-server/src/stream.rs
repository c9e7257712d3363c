//! One XML stream over one transport: reading with the framing limits and a byte-rate limit,
//! writing stanzas without intermediate strings, and the TLS upgrade.
//!
//! The read path is cancel-safe (`read_some` may be dropped inside `select!`): bytes are fed
//! to the parser as soon as they arrive and events are pulled from it separately.

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

pub struct Conn {
    io: Box<dyn Io>,
    parser: StreamParser,
    limits: (usize, usize, usize),
    wbuf: Vec<u8>,
    rate: RateLimit,
    pub peer: SocketAddr,
    pub secure: bool,
    pub binding: ChannelBinding,
    /// The stream namespace stanzas are written in (`jabber:client` or the component one).
    pub stream_ns: &'static str,
}

const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

impl Conn {
    pub fn new(server: &Server, io: Box<dyn Io>, peer: SocketAddr) -> Conn {
        let c = &server.settings.raw.c2s;
        let limits = (c.max_stanza_bytes, c.max_depth, c.max_attributes);
        Conn {
            io,
            parser: new_parser(limits),
            limits,
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

    /// Starts a fresh parser (RFC 6120 §4.3.3: after TLS and SASL the stream restarts).
    pub fn reset(&mut self) {
        self.parser = new_parser(self.limits);
    }

    /// Next parsed event, if one is already buffered.
    pub fn poll_event(&mut self) -> Result<Option<StreamEvent>, StreamEnd> {
        Ok(self.parser.next_event()?)
    }

    /// Reads one chunk from the socket into the parser. Cancel-safe.
    ///
    /// The bytes land in a per-thread scratch buffer and go straight into the parser inside
    /// the same poll, so an idle session holds no read buffer at all (the per-session memory
    /// budget is 16 KiB and TLS takes most of it).
    pub async fn read_some(&mut self) -> Result<(), StreamEnd> {
        let n = std::future::poll_fn(|cx| {
            READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        self.parser.feed(rb.filled());
                        Poll::Ready(Ok(rb.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
        })
        .await?;
        if n == 0 {
            // End of the TCP stream without `</stream:stream>`: the connection was lost
            // (an app killed, a network change), which XEP-0198 may resume.
            return Err(StreamEnd::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed without closing the stream",
            )));
        }
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

    pub fn queue(&mut self, el: &Element) {
        // Stanzas are kept in jabber:client internally; the stream's default namespace stands
        // for it on the wire whatever that namespace is, so no xmlns is written.
        el.write_to(&mut self.wbuf, ns::CLIENT);
    }

    /// Writes an element of the streams namespace with the `stream:` prefix the header
    /// declared (`<stream:features>`, `<stream:error>`): some clients match the prefix.
    pub fn queue_stream_element(&mut self, el: &Element) {
        self.wbuf.extend_from_slice(b"<stream:");
        self.wbuf.extend_from_slice(el.name.as_bytes());
        self.wbuf.push(b'>');
        for c in el.elements() {
            c.write_to(&mut self.wbuf, ns::STREAM);
        }
        self.wbuf.extend_from_slice(b"</stream:");
        self.wbuf.extend_from_slice(el.name.as_bytes());
        self.wbuf.push(b'>');
    }

    pub fn queue_raw(&mut self, data: &[u8]) {
        self.wbuf.extend_from_slice(data);
    }

    /// Gives back buffer memory while the connection waits with nothing half-read or
    /// unwritten: most sessions are idle most of the time, and the per-session budget is
    /// 16 KiB. Costs one allocation per active read or write batch.
    pub fn release_idle_buffers(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = Vec::new();
        }
        self.parser.release_idle();
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            // Keep a small buffer for the common case; give back what a burst grew.
            if self.wbuf.capacity() > 4 * 1024 {
                self.wbuf = Vec::new();
            }
        }
        self.io.flush().await
    }

    pub async fn send(&mut self, el: &Element) -> std::io::Result<()> {
        self.queue(el);
        self.flush().await
    }

    /// Our stream header. `to` echoes the client's `from` when it gave one.
    pub fn queue_header(&mut self, from: &str, id: &str, to: Option<&str>) {
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

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1).
    pub async fn close_with_error(&mut self, cond: StreamErrorCondition, text: Option<&str>) {
        self.queue_stream_element(&cond.to_element(text));
        self.close().await;
    }

    /// `</stream:stream>` then shuts the socket down, bounded in time.
    pub async fn close(&mut self) {
        self.queue_raw(b"</stream:stream>");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Upgrades to TLS in place (STARTTLS or direct TLS) and records channel-binding data.
    pub async fn upgrade_tls(&mut self, server: &Server) -> std::io::Result<()> {
        let io = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let acceptor = tokio_rustls::TlsAcceptor::from(server.tls.config.clone());
        let tls = acceptor.accept(io).await?;
        let (_, conn) = tls.get_ref();
        // RFC 9266: tls-exporter is only safe with TLS 1.3 (or 1.2 with extended master secret).
        let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            let mut out = vec![0u8; 32];
            match conn.export_keying_material(&mut out[..], b"EXPORTER-Channel-Binding", Some(&[]))
            {
                Ok(_) => Some(out),
                Err(_) => None,
            }
        } else {
            None
        };
        self.binding = ChannelBinding {
            tls_exporter: exporter,
            tls_server_end_point: Some(server.tls.end_point.clone()),
        };
        self.io = Box::new(tls);
        self.secure = true;
        self.reset();
        Ok(())
    }
}

fn new_parser((max_stanza_bytes, max_depth, max_attrs): (usize, usize, usize)) -> StreamParser {
    StreamParser::new(Limits {
        max_stanza_bytes,
        max_depth,
        max_attrs,
        ..Limits::default()
    })
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
