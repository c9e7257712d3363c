//! The HTTP(S) service: one axum [`router`] behind every `[listen] http` and `[listen] https`
//! listener. It carries XMPP for web clients (RFC 7395 WebSocket at `/xmpp-websocket`,
//! XEP-0124/XEP-0206 BOSH at `/http-bind`), their discovery (XEP-0156 host-meta), the
//! health check, and the routes other services merge in (XEP-0363 uploads).
//!
//! Each accepted TCP connection is served by hyper (HTTP/1.1, with upgrades for WebSocket),
//! inside TLS with the server's certificate on https listeners. Handlers can read the
//! client's address with `ConnectInfo<SocketAddr>` (behind a trusted reverse proxy, the
//! address it forwards: [`forwarded`]) and the connection's security with [`ConnMeta`];
//! both are inserted into every request.
//!
//! # When a web transport counts as encrypted
//!
//! Over https the stream is secure and channel binding (`tls-exporter` with TLS 1.3,
//! `tls-server-end-point`) is offered, as on TCP. Over plain http the stream counts as
//! secure only when the peer is on loopback: a TLS-terminating reverse proxy on the same
//! host, or local development. Any other plain-http stream is unencrypted: with
//! `c2s.require_encryption = true` (the default) it is closed with `policy-violation` right
//! after its header; with `false` it authenticates like unencrypted TCP (SCRAM without
//! `-PLUS`, no PLAIN, no in-band registration).

pub mod bosh;
pub mod forwarded;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use herald_core::sasl::ChannelBinding;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::stream::Io;
use crate::Server;

/// Largest request head (request line and headers); beyond it hyper answers 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// Time to receive a request head, and the longest a kept-alive connection stays idle.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to complete the TLS handshake on https listeners.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to receive a request body (BOSH).
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What handlers know about the connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    /// Channel-binding data when the request came over our TLS (an https listener).
    pub tls: Option<Arc<ChannelBinding>>,
}

impl ConnMeta {
    /// Whether an XMPP stream over this connection counts as encrypted, and its
    /// channel-binding data (see the module documentation).
    pub fn stream_security(&self) -> (bool, ChannelBinding) {
        match &self.tls {
            Some(binding) => (true, (**binding).clone()),
            None => (self.peer.ip().is_loopback(), ChannelBinding::default()),
        }
    }
}

/// The routes of the HTTP service, shared by every http and https listener.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/health", get(health))
        .route("/xmpp-websocket", get(ws::upgrade))
        .route(
            "/http-bind",
            // The body limit is applied while reading (`[bosh] max_body_bytes`).
            post(bosh::request).get(bosh::info).options(bosh::preflight),
        )
        .route("/.well-known/host-meta", get(host_meta_xrd))
        .route("/.well-known/host-meta.json", get(host_meta_jrd))
        // ---------------------------------------------------------------------------
        // Other services mount their routes here (each `fn routes() -> Router<Arc<Server>>`).
        // XEP-0363 uploads (`/upload/...`).
        .merge(crate::ext::upload::http::routes())
        // ---------------------------------------------------------------------------
        .fallback(not_found)
        .with_state(server)
}

/// Serves one accepted connection until the client closes it or the server shuts down
/// (then in-flight requests get the grace period). `tls` is set on https listeners.
pub async fn serve(
    server: Arc<Server>,
    router: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let (io, meta): (Box<dyn Io>, ConnMeta) = match tls {
        None => (Box::new(tcp), ConnMeta { peer, tls: None }),
        Some(acceptor) => match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let binding = crate::stream::channel_binding(&server, stream.get_ref().1);
                (
                    Box::new(stream),
                    ConnMeta {
                        peer,
                        tls: Some(Arc::new(binding)),
                    },
                )
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "https handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "https handshake timed out");
                return;
            }
        },
    };
    let srv = server.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // The client's address, as far as a trusted reverse proxy vouches for it; the
        // TCP peer stays in `ConnMeta` (it decides whether plain http counts as secure).
        let settings = &srv.settings;
        let client = forwarded::client_addr(
            peer,
            req.headers(),
            &settings.trusted_proxies,
            settings.forwarded_header,
        );
        req.extensions_mut().insert(ConnectInfo(client));
        req.extensions_mut().insert(meta.clone());
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(64 * 1024);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutdown = server.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
        }
        _ = crate::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let grace = Duration::from_secs(server.settings.raw.server.shutdown_grace_secs);
            let _ = tokio::time::timeout(grace, conn.as_mut()).await;
        }
    }
}

/// The TLS acceptor of https listeners: the server's certificate, ALPN `http/1.1`.
pub fn tls_acceptor(server: &Server) -> tokio_rustls::TlsAcceptor {
    let mut config = (*server.tls.config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn health(State(server): State<Arc<Server>>) -> Response {
    let body = format!(
        "{{\"status\":\"ok\",\"version\":\"{}\",\"sessions\":{},\"uptime_secs\":{}}}",
        env!("CARGO_PKG_VERSION"),
        server.registry.session_count(),
        server.started.elapsed().as_secs()
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "not found\n",
    )
        .into_response()
}

/// XEP-0156 link relations and their URLs, derived from `Server.http_base`.
fn alt_connections(server: &Server) -> [(&'static str, String); 2] {
    let base = &server.http_base;
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.clone()
    };
    [
        (
            "urn:xmpp:alt-connections:websocket",
            format!("{ws_base}/xmpp-websocket"),
        ),
        (
            "urn:xmpp:alt-connections:xbosh",
            format!("{base}/http-bind"),
        ),
    ]
}

const ALLOW_ANY_ORIGIN: (header::HeaderName, HeaderValue) = (
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    HeaderValue::from_static("*"),
);

/// XEP-0156 §3: host-meta in XRD (RFC 6415).
async fn host_meta_xrd(State(server): State<Arc<Server>>) -> Response {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        b"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in alt_connections(&server) {
        out.extend_from_slice(b"  <Link rel='");
        herald_xml::escape_attr(rel, &mut out);
        out.extend_from_slice(b"' href='");
        herald_xml::escape_attr(&href, &mut out);
        out.extend_from_slice(b"'/>\n");
    }
    out.extend_from_slice(b"</XRD>\n");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xrd+xml; charset=utf-8"),
            ),
            ALLOW_ANY_ORIGIN,
        ],
        out,
    )
        .into_response()
}

/// XEP-0156 §3: host-meta in JRD (RFC 6415 Appendix A).
async fn host_meta_jrd(State(server): State<Arc<Server>>) -> Response {
    let links: Vec<String> = alt_connections(&server)
        .iter()
        .map(|(rel, href)| {
            format!(
                "{{\"rel\":\"{}\",\"href\":\"{}\"}}",
                json_escape(rel),
                json_escape(href)
            )
        })
        .collect();
    let body = format!("{{\"links\":[{}]}}\n", links.join(","));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            ALLOW_ANY_ORIGIN,
        ],
        body,
    )
        .into_response()
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// An axum response from a status, content type and body (used by the transports).
pub(crate) fn plain_response(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_streams_count_as_secure_over_tls_or_from_loopback() {
        let binding = ChannelBinding {
            tls_exporter: None,
            tls_server_end_point: Some(vec![1, 2, 3]),
        };
        let https = ConnMeta {
            peer: "192.0.2.7:4000".parse().unwrap(),
            tls: Some(Arc::new(binding)),
        };
        let (secure, b) = https.stream_security();
        assert!(secure);
        assert_eq!(b.tls_server_end_point, Some(vec![1, 2, 3]));
        for (peer, expected) in [
            ("127.0.0.1:4000", true),
            ("[::1]:4000", true),
            ("192.0.2.7:4000", false),
            ("[2001:db8::1]:4000", false),
        ] {
            let meta = ConnMeta {
                peer: peer.parse().unwrap(),
                tls: None,
            };
            let (secure, b) = meta.stream_security();
            assert_eq!(secure, expected, "{peer}");
            assert!(b.tls_server_end_point.is_none() && b.tls_exporter.is_none());
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
