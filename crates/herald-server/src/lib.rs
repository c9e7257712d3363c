//! Herald server: listeners, stream negotiation, sessions, the router and one module per
//! protocol extension (see `ext/`).
//!
//! `run` is a library function taking validated settings, an opened store and a shutdown
//! signal, so tests start a real server on 127.0.0.1:0 and talk bytes to it.

pub mod accounts;
pub mod c2s;
pub mod component;
pub mod config;
pub mod ext;
pub mod http;
pub mod router;
pub mod sasl2;
pub mod session;
pub mod sm;
pub mod stream;
pub mod throttle;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_storage::Storage;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{Config, ConfigError, Settings};

/// Everything a connection task or handler needs, shared behind one `Arc`.
pub struct Server {
    pub settings: Settings,
    pub storage: Arc<dyn Storage>,
    pub tls: tls::TlsContext,
    pub registry: session::Registry,
    pub components: component::ComponentTable,
    pub iq: ext::IqRegistry,
    pub throttle: throttle::AuthThrottle,
    pub started: Instant,
    pub shutdown: watch::Receiver<bool>,
    /// Session tasks still running (they outlive their accept loop's bookkeeping).
    pub live_sessions: std::sync::atomic::AtomicUsize,
    /// XEP-0115 capabilities cache and the server's outgoing-IQ tracker.
    pub caps: ext::caps::Caps,
    /// XEP-0163 per-owner write serialization.
    pub pep: ext::pep::Pep,
    /// XEP-0357 per-owner write serialization, publishes awaiting answers, throttling.
    pub push: ext::push::Push,
    /// XEP-0077 accounts created per client IP.
    pub registrations: ext::register::RateLimit,
    /// XEP-0045 rooms.
    pub muc: ext::muc::Muc,
    /// XEP-0363 upload service: blob store, URL signing key, uploads in progress.
    pub upload: ext::upload::Upload,
    /// XEP-0065 proxy: announced address, connections awaiting activation.
    pub proxy65: ext::proxy65::Proxy65,
    /// Base URL of the HTTP service in links the server hands out (no trailing slash):
    /// `[http] public_url`, else the first https listener, else the first http one; empty
    /// when there is no HTTP listener.
    pub http_base: String,
    /// XEP-0124 BOSH sessions by sid.
    pub bosh: http::bosh::Sessions,
}

impl Server {
    pub fn outbox_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.raw.c2s.outbox_timeout_secs)
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.settings.serves(domain)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({what}): {reason}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("upload service: {0}")]
    Upload(#[from] ext::upload::InitError),
    #[error("cannot load chat rooms: {0}")]
    Rooms(herald_storage::StorageError),
}

/// Addresses actually bound (ports resolved when the config said `:0`).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub c2s: Vec<SocketAddr>,
    pub c2s_direct_tls: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub component: Vec<SocketAddr>,
    pub proxy65: Vec<SocketAddr>,
}

/// A started server: its addresses, and a future that ends when it has shut down.
pub struct Running {
    pub bound: Bound,
    pub server: Arc<Server>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until every listener and session has ended (after the shutdown signal).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        // Session tasks close their streams on the same signal; give them the grace period.
        let grace = Duration::from_secs(self.server.settings.raw.server.shutdown_grace_secs);
        let deadline = Instant::now() + grace;
        while self
            .server
            .live_sessions
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn bind_all(addrs: &[SocketAddr], what: &'static str) -> Result<Vec<TcpListener>, RunError> {
    let mut out = Vec::new();
    for &addr in addrs {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| RunError::Bind {
            addr,
            what,
            reason: e.to_string(),
        })?;
        let _ = socket.set_reuseaddr(true);
        socket.bind(addr).map_err(|e| RunError::Bind {
            addr,
            what,
            reason: describe_bind(&e),
        })?;
        let l = socket.listen(4096).map_err(|e| RunError::Bind {
            addr,
            what,
            reason: describe_bind(&e),
        })?;
        out.push(l);
    }
    Ok(out)
}

fn describe_bind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "address already in use (is another server running?)".into()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".into()
        }
        std::io::ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        _ => e.to_string(),
    }
}

/// Binds every listener, then serves until `shutdown` turns true. Binding errors are
/// returned before anything is served, so a port in use is one clear error.
pub async fn start(
    settings: Settings,
    storage: Arc<dyn Storage>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running, RunError> {
    let tls = tls::TlsContext::load(&settings)?;
    let c2s = bind_all(&settings.c2s, "c2s").await?;
    let direct = bind_all(&settings.c2s_direct_tls, "c2s_direct_tls").await?;
    let http = bind_all(&settings.http, "http").await?;
    let https = bind_all(&settings.https, "https").await?;
    let comp = bind_all(&settings.component, "component").await?;
    let proxy65 = bind_all(&settings.proxy65, "proxy65").await?;
    let addr = |ls: &[TcpListener]| {
        ls.iter()
            .filter_map(|l| l.local_addr().ok())
            .collect::<Vec<_>>()
    };
    let bound = Bound {
        c2s: addr(&c2s),
        c2s_direct_tls: addr(&direct),
        http: addr(&http),
        https: addr(&https),
        component: addr(&comp),
        proxy65: addr(&proxy65),
    };

    let throttle = throttle::AuthThrottle::new(
        settings.raw.auth.max_failures,
        Duration::from_secs(settings.raw.auth.failure_window_secs),
    );
    let http_base = match &settings.raw.http.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => match (bound.https.first(), bound.http.first()) {
            (Some(a), _) => format!("https://{a}"),
            (None, Some(a)) => format!("http://{a}"),
            (None, None) => String::new(),
        },
    };
    let upload = ext::upload::Upload::open(&settings).await?;
    let proxy = ext::proxy65::Proxy65::new(&settings, &bound.proxy65);
    let server = Arc::new(Server {
        upload,
        proxy65: proxy,
        http_base,
        bosh: http::bosh::Sessions::default(),
        components: component::ComponentTable::new(&settings.components),
        iq: ext::IqRegistry::standard(),
        settings,
        storage,
        tls,
        registry: session::Registry::default(),
        throttle,
        started: Instant::now(),
        shutdown: shutdown.clone(),
        live_sessions: std::sync::atomic::AtomicUsize::new(0),
        caps: ext::caps::Caps::default(),
        pep: ext::pep::Pep::default(),
        push: ext::push::Push::default(),
        registrations: ext::register::RateLimit::default(),
        muc: ext::muc::Muc::default(),
    });

    let rooms = ext::muc::load(&server).await.map_err(RunError::Rooms)?;
    let mut tasks = JoinSet::new();
    tasks.spawn(ext::mam::retention_task(server.clone()));
    tasks.spawn(ext::upload::expiry_task(server.clone()));
    for l in proxy65 {
        tasks.spawn(ext::proxy65::accept_loop(server.clone(), l));
    }
    for l in c2s {
        tasks.spawn(accept_loop(server.clone(), l, Kind::C2s));
    }
    for l in direct {
        tasks.spawn(accept_loop(server.clone(), l, Kind::DirectTls));
    }
    for l in http {
        tasks.spawn(accept_loop(server.clone(), l, Kind::Http));
    }
    for l in https {
        tasks.spawn(accept_loop(server.clone(), l, Kind::Https));
    }
    for l in comp {
        tasks.spawn(accept_loop(server.clone(), l, Kind::Component));
    }
    tracing::info!(
        domains = ?server.settings.domains,
        c2s = ?bound.c2s,
        direct_tls = ?bound.c2s_direct_tls,
        http = ?bound.http,
        https = ?bound.https,
        component = ?bound.component,
        proxy65 = ?bound.proxy65,
        storage = server.storage.backend_name(),
        rooms,
        "herald started"
    );
    Ok(Running {
        bound,
        server,
        tasks,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    C2s,
    DirectTls,
    Http,
    Https,
    Component,
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener, kind: Kind) {
    let mut shutdown = server.shutdown.clone();
    let mut conns = JoinSet::new();
    // The HTTP service's routes and TLS settings, built once per listener.
    let web = matches!(kind, Kind::Http | Kind::Https).then(|| http::router(server.clone()));
    let tls = matches!(kind, Kind::Https).then(|| http::tls_acceptor(&server));
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    if let Err(e) = keepalive(&tcp, server.settings.raw.c2s.tcp_keepalive_secs) {
                        tracing::debug!(error = %e, %peer, "cannot set TCP keepalive");
                    }
                    let s = server.clone();
                    match kind {
                        Kind::C2s => { conns.spawn(c2s::serve(s, tcp, peer, false)); }
                        Kind::DirectTls => { conns.spawn(c2s::serve(s, tcp, peer, true)); }
                        Kind::Http | Kind::Https => if let Some(router) = &web {
                            conns.spawn(http::serve(s, router.clone(), tcp, peer, tls.clone()));
                        },
                        Kind::Component => { conns.spawn(component::serve(s, tcp, peer)); }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    // Sessions see the same signal and close with system-shutdown; give them the grace period.
    let grace = Duration::from_secs(server.settings.raw.server.shutdown_grace_secs);
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// Probes for this long after the first, at most.
const KEEPALIVE_INTERVAL_MAX: u64 = 10;
/// Unanswered probes before the kernel drops a connection.
const KEEPALIVE_PROBES: u32 = 6;

/// Dead-peer detection (`c2s.tcp_keepalive_secs`): the kernel probes a connection silent
/// for `idle` seconds and drops it when `KEEPALIVE_PROBES` probes go unanswered. The same
/// bound, as `TCP_USER_TIMEOUT`, drops a connection whose sent data stays unacknowledged:
/// without it a write to a vanished peer is retried for about 15 minutes. Costs nothing
/// in user space; the kernel's timer is per socket already.
fn keepalive(tcp: &tokio::net::TcpStream, idle: u64) -> std::io::Result<()> {
    if idle == 0 {
        return Ok(());
    }
    let interval = idle.min(KEEPALIVE_INTERVAL_MAX);
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(idle))
            .with_interval(Duration::from_secs(interval))
            .with_retries(KEEPALIVE_PROBES),
    )?;
    // Linux only; elsewhere a write to a vanished peer takes the system's retry time.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(Duration::from_secs(
        idle + interval * u64::from(KEEPALIVE_PROBES),
    )))?;
    Ok(())
}

/// Resolves once the shutdown signal is set (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
