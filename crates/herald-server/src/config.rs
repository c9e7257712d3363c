//! Configuration: one TOML file, a serde struct per section with defaults, and validation that
//! names the file, the key and the reason, so an operator error is one readable line.
//!
//! Every key is documented in `docs/config.md`; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use herald_core::Jid;
use serde::Deserialize;

pub use crate::http::forwarded::{ForwardedHeader, IpNet};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: [{key}]: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub storage: StorageSection,
    pub tls: TlsSection,
    pub listen: ListenSection,
    pub c2s: C2sSection,
    pub auth: AuthSection,
    pub offline: OfflineSection,
    pub mam: MamSection,
    #[serde(rename = "component")]
    pub components: Vec<ComponentSection>,
    /// XEP-0215 STUN/TURN services announced to clients.
    #[serde(rename = "external_service")]
    pub external_services: Vec<ExternalServiceSection>,
    /// XEP-0157 contact addresses in the server's disco#info.
    pub contact: ContactSection,
    /// XEP-0077 in-band registration.
    pub registration: RegistrationSection,
    /// XEP-0357 push notifications.
    pub push: PushSection,
    /// XEP-0045 multi-user chat service.
    pub muc: MucSection,
    /// XEP-0363 HTTP file upload service.
    pub upload: UploadSection,
    /// XEP-0065 SOCKS5 bytestream proxy.
    pub proxy65: Proxy65Section,
    /// The HTTP(S) service: WebSocket, BOSH, host-meta, uploads.
    pub http: HttpSection,
    /// XEP-0124/XEP-0206 BOSH sessions on the HTTP service.
    pub bosh: BoshSection,
    pub log: LogSection,
}

/// XEP-0045 multi-user chat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucSection {
    pub enabled: bool,
    /// The service's domain; `{domain}` is replaced by each served domain.
    pub domain: String,
    /// Who may create rooms: "local" (users of the served domain), "anyone" or "admins".
    pub create: String,
    /// Bare JIDs that own every room of the service (and may always create rooms).
    pub admins: Vec<String>,
    /// Occupants per room at most (a room's own limit can only be lower).
    pub max_users: u32,
    /// Join-time history length of new rooms.
    pub history_length: u32,
    /// Upper bound for a room's history length.
    pub max_history: u32,
    /// New rooms are persistent (kept when empty, survive restarts).
    pub default_persistent: bool,
    /// New rooms are listed in the service's disco#items.
    pub default_public: bool,
    /// New rooms archive their messages (XEP-0313) when persistent.
    pub default_logging: bool,
}

impl Default for MucSection {
    fn default() -> Self {
        MucSection {
            enabled: true,
            domain: "conference.{domain}".into(),
            create: "local".into(),
            admins: Vec::new(),
            max_users: 5000,
            history_length: 20,
            max_history: 200,
            default_persistent: false,
            default_public: true,
            default_logging: true,
        }
    }
}

/// XEP-0363 HTTP file upload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSection {
    pub enabled: bool,
    /// The service's domain; `{domain}` is replaced by each served domain.
    pub domain: String,
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Bytes one user may upload in 24 hours; 0 = unlimited.
    pub quota_daily_bytes: u64,
    /// Bytes one user may have stored at once; 0 = unlimited.
    pub quota_total_bytes: u64,
    /// Days an uploaded file is kept (then deleted, its links answer 404); 0 = forever.
    pub expire_after_days: u32,
    /// Seconds a granted slot's upload URL stays valid.
    pub slot_ttl_secs: u64,
    /// HMAC key signing upload and download URLs; default: generated into
    /// `data_dir/upload.secret` on first start.
    pub secret: Option<String>,
}

impl Default for UploadSection {
    fn default() -> Self {
        UploadSection {
            enabled: true,
            domain: "upload.{domain}".into(),
            max_file_size: 100 * 1024 * 1024,
            quota_daily_bytes: 1024 * 1024 * 1024,
            quota_total_bytes: 10 * 1024 * 1024 * 1024,
            expire_after_days: 30,
            slot_ttl_secs: 300,
            secret: None,
        }
    }
}

/// XEP-0065 SOCKS5 bytestream proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy65Section {
    pub enabled: bool,
    /// The service's domain; `{domain}` is replaced by each served domain.
    pub domain: String,
    /// Host name or IP address announced to clients; default: the first `listen.proxy65`
    /// address.
    pub host: Option<String>,
    /// Port announced to clients; default: the first `listen.proxy65` port (useful
    /// behind port forwarding).
    pub port: Option<u16>,
    /// Bytes per second relayed for one transfer (both directions together); 0 = unlimited.
    pub max_bytes_per_sec: u64,
    /// Seconds a connection may wait for its partner and the activation.
    pub activation_timeout_secs: u64,
    /// Seconds an activated transfer may pass no data before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for Proxy65Section {
    fn default() -> Self {
        Proxy65Section {
            enabled: true,
            domain: "proxy.{domain}".into(),
            host: None,
            port: None,
            max_bytes_per_sec: 0,
            activation_timeout_secs: 60,
            idle_timeout_secs: 300,
        }
    }
}

/// The HTTP(S) service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Base URL clients reach the HTTP service at (behind a reverse proxy); default: the
    /// first https listener, else the first http one.
    pub public_url: Option<String>,
    /// Reverse proxies (addresses or CIDR ranges) whose forwarding header names the client.
    pub trusted_proxies: Vec<String>,
    /// That header: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub forwarded_header: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            public_url: None,
            trusted_proxies: Vec::new(),
            forwarded_header: "x-forwarded-for".into(),
        }
    }
}

/// XEP-0124 BOSH session parameters (the server's side of the negotiation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoshSection {
    /// Longest time a request is held waiting for data; clients may ask for less.
    pub max_wait_secs: u64,
    /// How long a session survives with no request held before it ends.
    pub inactivity_secs: u64,
    /// Longest session pause (XEP-0124 §12) a client may ask for.
    pub max_pause_secs: u64,
    /// Shortest interval between empty polling requests.
    pub polling_secs: u64,
    /// Largest request body; default: twice `c2s.max_stanza_bytes`.
    pub max_body_bytes: Option<usize>,
}

impl Default for BoshSection {
    fn default() -> Self {
        BoshSection {
            max_wait_secs: 60,
            inactivity_secs: 60,
            max_pause_secs: 300,
            polling_secs: 2,
            max_body_bytes: None,
        }
    }
}

/// Which built-in service answers at a service domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Muc,
    Upload,
    Proxy65,
}

/// A built-in service's domain (e.g. `conference.example.org`) and the served domain it
/// belongs to (`example.org`).
#[derive(Debug, Clone)]
pub struct ServiceDomain {
    pub domain: String,
    pub kind: ServiceKind,
    pub host: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Virtual hosts; each is served fully.
    pub domains: Vec<String>,
    /// SQLite file, generated certificates, later uploads.
    pub data_dir: PathBuf,
    /// Seconds to wait for streams to close on SIGTERM before exiting anyway.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `sqlite:///path.db` or `postgres://user@host/db`; default: SQLite in data_dir.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    /// Client-to-server with STARTTLS.
    pub c2s: Vec<String>,
    /// Client-to-server with TLS from the first byte (XEP-0368).
    pub c2s_direct_tls: Vec<String>,
    /// HTTP: health check, WebSocket, BOSH, host-meta, uploads.
    pub http: Vec<String>,
    /// The same HTTP service inside TLS, with the server's certificate.
    pub https: Vec<String>,
    /// XEP-0114 external components.
    pub component: Vec<String>,
    /// XEP-0065 SOCKS5 bytestream proxy.
    pub proxy65: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sSection {
    /// Refuse SASL until the stream is encrypted (RFC 6120 §5.3.1 "mandatory-to-negotiate").
    pub require_encryption: bool,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    /// Seconds a connection may take from accept to a bound resource.
    pub preauth_timeout_secs: u64,
    /// Sustained inbound bytes per second per connection; reading pauses beyond it.
    pub max_bytes_per_sec: u64,
    /// Burst allowance for the byte-rate limit.
    pub burst_bytes: u64,
    /// Stanzas queued for a session before a sender waits (backpressure).
    pub outbox_capacity: usize,
    /// Seconds a sender waits on a full outbox before the slow session is dropped.
    pub outbox_timeout_secs: u64,
    /// XEP-0198: seconds a dropped session waits to be resumed before it ends.
    pub resume_timeout_secs: u64,
    /// XEP-0198: stanzas sent but not acknowledged before the stream is closed.
    pub max_unacked: usize,
    /// XEP-0352: presence updates held for an inactive client before they are flushed.
    pub csi_max_held: usize,
    /// Seconds a connection may be silent before the kernel probes it (TCP keepalive);
    /// a peer that answers no probe, or leaves data unacknowledged as long again, is
    /// dropped. 0: off. Applies to client, web and component connections.
    pub tcp_keepalive_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// PBKDF2 iterations for newly stored SCRAM keys (at least 4096).
    pub scram_iterations: u32,
    /// Failed logins allowed per window, per client IP and per account, before throttling.
    pub max_failures: u32,
    pub failure_window_secs: u64,
    /// Offer PLAIN (always only inside TLS).
    pub allow_plain: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineSection {
    /// Messages kept per user while offline; beyond it senders get an error.
    pub max_messages: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSection {
    pub domain: String,
    pub secret: String,
}

/// One `[[external_service]]`: a STUN/TURN server announced with XEP-0215.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalServiceSection {
    /// "stun", "turn" or "turns".
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// "udp" or "tcp"; omitted from the announcement when unset.
    #[serde(default)]
    pub transport: Option<String>,
    /// Human-readable label.
    #[serde(default)]
    pub name: Option<String>,
    /// Announce that credentials are needed (XEP-0215 `restricted`).
    #[serde(default)]
    pub restricted: bool,
    /// Shared secret of the TURN REST API: time-limited credentials are derived from it.
    #[serde(default)]
    pub secret: Option<String>,
    /// Lifetime of derived credentials.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Static credentials (instead of `secret`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn default_ttl_secs() -> u64 {
    86_400
}

/// XEP-0157 address lists (URIs such as `mailto:`, `xmpp:`, `https:`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactAddresses {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactAddresses {
    /// `(XEP-0157 field var, addresses)` in registry order.
    pub fn fields(&self) -> [(&'static str, &[String]); 7] {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_empty())
    }
}

/// `[contact]`: addresses for every domain, and `[contact.domain."example.org"]` tables
/// that replace them for one served domain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactSection {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
    pub domain: std::collections::BTreeMap<String, ContactAddresses>,
}

impl ContactSection {
    /// The addresses announced for a (normalized) served domain.
    pub fn for_domain(&self, domain: &str) -> ContactAddresses {
        match self.domain.get(domain) {
            Some(a) => a.clone(),
            None => ContactAddresses {
                abuse: self.abuse.clone(),
                admin: self.admin.clone(),
                feedback: self.feedback.clone(),
                sales: self.sales.clone(),
                security: self.security.clone(),
                status: self.status.clone(),
                support: self.support.clone(),
            },
        }
    }
}

/// XEP-0077 in-band registration; off unless a domain is listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    /// Served domains where in-band registration (and password change/removal) is on.
    pub enabled_domains: Vec<String>,
    /// "open" (any free name) or "allowlist" (only names in `allowlist`).
    pub mode: String,
    /// Localparts that may be registered in "allowlist" mode.
    pub allowlist: Vec<String>,
    /// Accounts one client IP may create per window.
    pub max_per_ip: u32,
    pub window_secs: u64,
    /// Shortest password accepted for new accounts and password changes.
    pub min_password_length: usize,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            enabled_domains: Vec::new(),
            mode: "open".into(),
            allowlist: Vec::new(),
            max_per_ip: 3,
            window_secs: 600,
            min_password_length: 8,
        }
    }
}

impl RegistrationSection {
    /// Whether registration is on for a (normalized) served domain.
    pub fn enabled_for(&self, domain: &str) -> bool {
        self.enabled_domains.iter().any(|d| d == domain)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// tracing filter, e.g. "info" or "herald_server=debug,info".
    pub level: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            domains: vec!["localhost".into()],
            data_dir: PathBuf::from("herald-data"),
            shutdown_grace_secs: 3,
        }
    }
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection {
            c2s: vec!["127.0.0.1:5222".into()],
            c2s_direct_tls: vec!["127.0.0.1:5223".into()],
            http: vec!["127.0.0.1:5280".into()],
            https: vec!["127.0.0.1:5443".into()],
            component: vec!["127.0.0.1:5347".into()],
            proxy65: vec!["127.0.0.1:7777".into()],
        }
    }
}

impl Default for C2sSection {
    fn default() -> Self {
        C2sSection {
            require_encryption: true,
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            max_attributes: 64,
            preauth_timeout_secs: 30,
            max_bytes_per_sec: 1024 * 1024,
            burst_bytes: 2 * 1024 * 1024,
            outbox_capacity: 256,
            outbox_timeout_secs: 10,
            resume_timeout_secs: 300,
            max_unacked: 5000,
            csi_max_held: 500,
            tcp_keepalive_secs: 300,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            scram_iterations: 4096,
            max_failures: 5,
            failure_window_secs: 60,
            allow_plain: true,
        }
    }
}

/// XEP-0313 message archives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamSection {
    /// Archiving default for users who set no preferences: "always", "never" or "roster".
    pub default: String,
    /// Days a message is kept; 0 keeps it forever.
    pub retention_days: u32,
    /// Per-domain override of `retention_days` (0 = forever), keyed by served domain.
    pub domain_retention_days: std::collections::BTreeMap<String, u32>,
    /// Page size when a query gives no RSM `<max/>`.
    pub default_page_size: usize,
    /// Largest page a query may ask for; bigger requests are cut to it.
    pub max_page_size: usize,
}

impl Default for MamSection {
    fn default() -> Self {
        MamSection {
            default: "always".into(),
            retention_days: 0,
            domain_retention_days: Default::default(),
            default_page_size: 50,
            max_page_size: 250,
        }
    }
}

impl MamSection {
    /// Retention for a (normalized) served domain, in days; 0 = forever.
    pub fn retention_for(&self, domain: &str) -> u32 {
        self.domain_retention_days
            .get(domain)
            .copied()
            .unwrap_or(self.retention_days)
    }
}

/// XEP-0357 push notifications to App Servers the users register.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// Put the message body into notifications (it then passes through the App Server and
    /// the platform's push service). Off: only the count and the sender.
    pub include_body: bool,
    /// At most one notification per registration per this many seconds; messages in
    /// between are folded into one trailing notification. 0: one per message.
    pub min_interval_secs: u64,
}

impl Default for OfflineSection {
    fn default() -> Self {
        OfflineSection { max_messages: 1000 }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
        }
    }
}

/// A validated configuration: domains normalised, addresses parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub domains: Vec<String>,
    pub storage_url: String,
    pub c2s: Vec<SocketAddr>,
    pub c2s_direct_tls: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub component: Vec<SocketAddr>,
    /// XEP-0065 proxy listeners (empty when `proxy65.enabled` is false).
    pub proxy65: Vec<SocketAddr>,
    pub components: Vec<(String, String)>,
    /// Built-in services by their domain.
    pub services: std::collections::HashMap<String, ServiceDomain>,
    /// `http.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<IpNet>,
    /// `http.forwarded_header`, parsed.
    pub forwarded_header: ForwardedHeader,
}

impl Config {
    /// Reads and validates a file; `None` means the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        match path {
            None => Config::default().validate("<defaults>"),
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    file: file.clone(),
                    reason: e.to_string(),
                })?;
                Config::parse(&text, &file)?.validate(&file)
            }
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // toml's message spans lines with a source excerpt; keep its first line plus location.
            let msg = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            let loc = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            ConfigError::Parse {
                file: file.to_string(),
                reason: format!("{loc}{msg}"),
            }
        })
    }

    pub fn validate(mut self, file: &str) -> Result<Settings, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        if self.server.domains.is_empty() {
            return Err(bad(
                "server.domains",
                "at least one domain is required".into(),
            ));
        }
        let mut domains = Vec::new();
        for d in &self.server.domains {
            let jid = Jid::parse(d)
                .ok()
                .filter(|j| j.node().is_none() && j.resource().is_none())
                .ok_or_else(|| {
                    bad(
                        "server.domains",
                        format!("{d:?} is not a valid domain name"),
                    )
                })?;
            let norm = jid.domain().to_string();
            if domains.contains(&norm) {
                return Err(bad("server.domains", format!("{d:?} is listed twice")));
            }
            domains.push(norm);
        }
        let addrs = |key: &str, list: &[String]| -> Result<Vec<SocketAddr>, ConfigError> {
            list.iter()
                .map(|a| {
                    a.parse::<SocketAddr>().map_err(|_| {
                        bad(
                            key,
                            format!("{a:?} is not an IP:port address (e.g. \"127.0.0.1:5222\")"),
                        )
                    })
                })
                .collect()
        };
        let c2s = addrs("listen.c2s", &self.listen.c2s)?;
        let c2s_direct_tls = addrs("listen.c2s_direct_tls", &self.listen.c2s_direct_tls)?;
        let http = addrs("listen.http", &self.listen.http)?;
        let https = addrs("listen.https", &self.listen.https)?;
        let component = addrs("listen.component", &self.listen.component)?;
        let mut proxy65 = addrs("listen.proxy65", &self.listen.proxy65)?;
        if !self.proxy65.enabled {
            proxy65.clear();
        }
        let mut seen = std::collections::HashSet::new();
        for a in c2s
            .iter()
            .chain(&c2s_direct_tls)
            .chain(&http)
            .chain(&https)
            .chain(&component)
            .chain(&proxy65)
        {
            if a.port() != 0 && !seen.insert(*a) {
                return Err(bad("listen", format!("{a} is used by two listeners")));
            }
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(bad("tls.key", "tls.cert is set but tls.key is not".into()))
            }
            (None, Some(_)) => {
                return Err(bad("tls.cert", "tls.key is set but tls.cert is not".into()))
            }
            (Some(c), Some(k)) => {
                for (key, p) in [("tls.cert", c), ("tls.key", k)] {
                    if !p.is_file() {
                        return Err(bad(
                            key,
                            format!("{} does not exist or is not a file", p.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        if self.auth.scram_iterations < 4096 {
            return Err(bad(
                "auth.scram_iterations",
                format!(
                    "{} is below the minimum of 4096 (RFC 7677)",
                    self.auth.scram_iterations
                ),
            ));
        }
        if self.auth.scram_iterations > 10_000_000 {
            return Err(bad(
                "auth.scram_iterations",
                "more than 10000000 would stall logins".into(),
            ));
        }
        if self.c2s.max_stanza_bytes < 10_000 {
            return Err(bad(
                "c2s.max_stanza_bytes",
                "must be at least 10000 (RFC 6120 §13.12)".into(),
            ));
        }
        if !(8..=1024).contains(&self.c2s.max_depth) {
            return Err(bad("c2s.max_depth", "must be between 8 and 1024".into()));
        }
        if !(8..=4096).contains(&self.c2s.max_attributes) {
            return Err(bad(
                "c2s.max_attributes",
                "must be between 8 and 4096".into(),
            ));
        }
        if self.c2s.resume_timeout_secs > 86_400 {
            return Err(bad(
                "c2s.resume_timeout_secs",
                "must be at most 86400 (a day)".into(),
            ));
        }
        if self.c2s.tcp_keepalive_secs > 7_200 {
            return Err(bad(
                "c2s.tcp_keepalive_secs",
                "must be at most 7200 (two hours, the kernel's own default); 0 turns it off".into(),
            ));
        }
        if self.c2s.max_unacked < 10 {
            return Err(bad("c2s.max_unacked", "must be at least 10".into()));
        }
        if self.c2s.outbox_capacity == 0 {
            return Err(bad("c2s.outbox_capacity", "must be at least 1".into()));
        }
        if self.c2s.max_bytes_per_sec == 0
            || self.c2s.burst_bytes < self.c2s.max_stanza_bytes as u64
        {
            return Err(bad(
                "c2s.burst_bytes",
                "must be at least c2s.max_stanza_bytes, and max_bytes_per_sec above 0".into(),
            ));
        }
        let storage_url = match &self.storage.url {
            Some(u) => {
                if !(u.starts_with("sqlite:")
                    || u.starts_with("postgres://")
                    || u.starts_with("postgresql://"))
                {
                    return Err(bad(
                        "storage.url",
                        format!("{u:?}: expected sqlite://PATH or postgres://..."),
                    ));
                }
                u.clone()
            }
            None => {
                let p = self.server.data_dir.join("herald.db");
                let abs = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
                };
                format!("sqlite://{}", abs.display())
            }
        };
        let mut components = Vec::new();
        for (i, c) in self.components.iter().enumerate() {
            let key = format!("component[{i}]");
            let d = Jid::parse(&c.domain)
                .ok()
                .filter(|j| j.node().is_none() && j.resource().is_none())
                .ok_or_else(|| {
                    bad(
                        &key,
                        format!("domain {:?} is not a valid domain name", c.domain),
                    )
                })?;
            if domains.iter().any(|x| x == d.domain()) {
                return Err(bad(
                    &key,
                    format!("{} is already a user domain", d.domain()),
                ));
            }
            if c.secret.len() < 8 {
                return Err(bad(&key, "secret must be at least 8 characters".into()));
            }
            components.push((d.domain().to_string(), c.secret.clone()));
        }
        if !matches!(self.mam.default.as_str(), "always" | "never" | "roster") {
            return Err(bad(
                "mam.default",
                format!(
                    "{:?}: expected \"always\", \"never\" or \"roster\"",
                    self.mam.default
                ),
            ));
        }
        if self.mam.max_page_size == 0 || self.mam.max_page_size > 10_000 {
            return Err(bad(
                "mam.max_page_size",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.mam.default_page_size == 0 || self.mam.default_page_size > self.mam.max_page_size {
            return Err(bad(
                "mam.default_page_size",
                "must be between 1 and mam.max_page_size".into(),
            ));
        }
        let mut retention = std::collections::BTreeMap::new();
        for (d, days) in &self.mam.domain_retention_days {
            let norm = Jid::parse(d)
                .ok()
                .filter(|j| j.node().is_none() && j.resource().is_none())
                .map(|j| j.domain().to_string())
                .filter(|n| domains.contains(n))
                .ok_or_else(|| {
                    bad(
                        "mam.domain_retention_days",
                        format!("{d:?} is not one of server.domains"),
                    )
                })?;
            retention.insert(norm, *days);
        }
        self.mam.domain_retention_days = retention;
        let served = |key: &str, d: &str| -> Result<String, ConfigError> {
            Jid::parse(d)
                .ok()
                .filter(|j| j.node().is_none() && j.resource().is_none())
                .map(|j| j.domain().to_string())
                .filter(|n| domains.contains(n))
                .ok_or_else(|| bad(key, format!("{d:?} is not one of server.domains")))
        };
        for (i, s) in self.external_services.iter().enumerate() {
            let key = format!("external_service[{i}]");
            if !matches!(s.kind.as_str(), "stun" | "turn" | "turns") {
                return Err(bad(
                    &key,
                    format!(
                        "type {:?}: expected \"stun\", \"turn\" or \"turns\"",
                        s.kind
                    ),
                ));
            }
            if s.host.is_empty() || s.host.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(bad(
                    &key,
                    format!("host {:?} is not a host name or IP address", s.host),
                ));
            }
            if s.port == 0 {
                return Err(bad(&key, "port must be between 1 and 65535".into()));
            }
            if let Some(t) = &s.transport {
                if !matches!(t.as_str(), "udp" | "tcp") {
                    return Err(bad(
                        &key,
                        format!("transport {t:?}: expected \"udp\" or \"tcp\""),
                    ));
                }
            }
            if s.username.is_some() != s.password.is_some() {
                return Err(bad(
                    &key,
                    "username and password must be set together".into(),
                ));
            }
            if let Some(secret) = &s.secret {
                if s.username.is_some() {
                    return Err(bad(
                        &key,
                        "set either secret (time-limited credentials) or username/password, not both"
                            .into(),
                    ));
                }
                if secret.len() < 16 {
                    return Err(bad(&key, "secret must be at least 16 characters".into()));
                }
            }
            if !(60..=30 * 86_400).contains(&s.ttl_secs) {
                return Err(bad(
                    &key,
                    "ttl_secs must be between 60 and 2592000 (30 days)".into(),
                ));
            }
            if s.restricted && s.secret.is_none() && s.username.is_none() {
                return Err(bad(
                    &key,
                    "restricted = true needs credentials: set secret or username/password".into(),
                ));
            }
        }
        let check_uris = |key: &str, a: &ContactAddresses| -> Result<(), ConfigError> {
            for (field, list) in a.fields() {
                for uri in list {
                    if !is_uri(uri) {
                        return Err(bad(
                            key,
                            format!(
                                "{}: {uri:?} is not a URI (e.g. \"mailto:abuse@example.org\", \"xmpp:admin@example.org\", \"https://example.org/contact\")",
                                field.trim_end_matches("-addresses")
                            ),
                        ));
                    }
                }
            }
            Ok(())
        };
        check_uris("contact", &self.contact.for_domain(""))?;
        let mut contact_domains = std::collections::BTreeMap::new();
        for (d, a) in &self.contact.domain {
            let norm = served("contact.domain", d)?;
            check_uris(&format!("contact.domain.{norm}"), a)?;
            contact_domains.insert(norm, a.clone());
        }
        self.contact.domain = contact_domains;
        let mut enabled = Vec::new();
        for d in &self.registration.enabled_domains {
            let norm = served("registration.enabled_domains", d)?;
            if !enabled.contains(&norm) {
                enabled.push(norm);
            }
        }
        self.registration.enabled_domains = enabled;
        match self.registration.mode.as_str() {
            "open" | "allowlist" => {}
            "invite" => {
                return Err(bad(
                    "registration.mode",
                    "\"invite\" is not supported yet; use \"open\" or \"allowlist\"".into(),
                ))
            }
            other => {
                return Err(bad(
                    "registration.mode",
                    format!("{other:?}: expected \"open\" or \"allowlist\""),
                ))
            }
        }
        let mut allow = Vec::new();
        for name in &self.registration.allowlist {
            let norm = Jid::new(Some(name), &domains[0], None)
                .ok()
                .and_then(|j| j.node().map(str::to_string))
                .ok_or_else(|| {
                    bad(
                        "registration.allowlist",
                        format!("{name:?} is not a valid username (localpart)"),
                    )
                })?;
            allow.push(norm);
        }
        self.registration.allowlist = allow;
        if self.registration.mode == "allowlist" && self.registration.allowlist.is_empty() {
            return Err(bad(
                "registration.allowlist",
                "mode = \"allowlist\" needs at least one name".into(),
            ));
        }
        if self.registration.max_per_ip == 0 || self.registration.window_secs == 0 {
            return Err(bad(
                "registration.max_per_ip",
                "max_per_ip and window_secs must be above 0".into(),
            ));
        }
        if !(1..=1024).contains(&self.registration.min_password_length) {
            return Err(bad(
                "registration.min_password_length",
                "must be between 1 and 1024".into(),
            ));
        }
        if self.push.min_interval_secs > 3600 {
            return Err(bad(
                "push.min_interval_secs",
                "must be at most 3600 (an hour)".into(),
            ));
        }
        if self.log.level.trim().is_empty() {
            return Err(bad("log.level", "must not be empty".into()));
        }
        if let Some(url) = &self.http.public_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let host = rest.map(|r| r.split('/').next().unwrap_or(""));
            if host.is_none_or(|h| h.is_empty())
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
                || url.contains(['?', '#'])
            {
                return Err(bad(
                    "http.public_url",
                    format!("{url:?} must be an http:// or https:// URL such as \"https://chat.example.org\""),
                ));
            }
            self.http.public_url = Some(url.trim_end_matches('/').to_string());
        }
        let trusted_proxies = self
            .http
            .trusted_proxies
            .iter()
            .map(|p| p.trim().parse::<IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| bad("http.trusted_proxies", reason))?;
        let forwarded_header = self
            .http
            .forwarded_header
            .trim()
            .parse::<ForwardedHeader>()
            .map_err(|reason| bad("http.forwarded_header", reason))?;
        let b = &self.bosh;
        if !(1..=3600).contains(&b.max_wait_secs) {
            return Err(bad(
                "bosh.max_wait_secs",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(b.max_wait_secs.max(5)..=86_400).contains(&b.inactivity_secs) {
            return Err(bad(
                "bosh.inactivity_secs",
                "must be at least max_wait_secs (and 5) and at most 86400".into(),
            ));
        }
        if b.max_pause_secs > 86_400 {
            return Err(bad("bosh.max_pause_secs", "must be at most 86400".into()));
        }
        if b.polling_secs > 60 {
            return Err(bad("bosh.polling_secs", "must be at most 60".into()));
        }
        if let Some(n) = b.max_body_bytes {
            if n < self.c2s.max_stanza_bytes {
                return Err(bad(
                    "bosh.max_body_bytes",
                    "must be at least c2s.max_stanza_bytes".into(),
                ));
            }
        }
        if !matches!(self.muc.create.as_str(), "local" | "anyone" | "admins") {
            return Err(bad(
                "muc.create",
                format!(
                    "{:?}: expected \"local\", \"anyone\" or \"admins\"",
                    self.muc.create
                ),
            ));
        }
        let mut muc_admins = Vec::new();
        for a in &self.muc.admins {
            let j = Jid::parse(a)
                .ok()
                .filter(|j| j.node().is_some() && j.resource().is_none())
                .ok_or_else(|| bad("muc.admins", format!("{a:?} is not a bare JID")))?;
            muc_admins.push(j.as_str().to_string());
        }
        self.muc.admins = muc_admins;
        if !(1..=100_000).contains(&self.muc.max_users) {
            return Err(bad("muc.max_users", "must be between 1 and 100000".into()));
        }
        if self.muc.max_history > 10_000 {
            return Err(bad("muc.max_history", "must be at most 10000".into()));
        }
        self.validate_upload(&bad)?;
        self.validate_proxy65(&bad, &proxy65)?;
        let mut services = std::collections::HashMap::new();
        for (key, enabled, template, kind) in [
            (
                "muc.domain",
                self.muc.enabled,
                &self.muc.domain,
                ServiceKind::Muc,
            ),
            (
                "upload.domain",
                self.upload.enabled,
                &self.upload.domain,
                ServiceKind::Upload,
            ),
            (
                "proxy65.domain",
                self.proxy65.enabled && !proxy65.is_empty(),
                &self.proxy65.domain,
                ServiceKind::Proxy65,
            ),
        ] {
            if !enabled {
                continue;
            }
            if domains.len() > 1 && !template.contains("{domain}") {
                return Err(bad(
                    key,
                    format!("{template:?} must contain {{domain}} when several domains are served"),
                ));
            }
            for host in &domains {
                let name = template.replace("{domain}", host);
                let d = Jid::parse(&name)
                    .ok()
                    .filter(|j| j.node().is_none() && j.resource().is_none())
                    .ok_or_else(|| bad(key, format!("{name:?} is not a valid domain name")))?;
                let d = d.domain().to_string();
                if domains.contains(&d) || components.iter().any(|(c, _)| *c == d) {
                    return Err(bad(
                        key,
                        format!("{d} is already a user domain or a component"),
                    ));
                }
                if services.contains_key(&d) {
                    return Err(bad(key, format!("{d} is used by two services")));
                }
                services.insert(
                    d.clone(),
                    ServiceDomain {
                        domain: d,
                        kind,
                        host: host.clone(),
                    },
                );
            }
        }
        Ok(Settings {
            raw: self,
            domains,
            storage_url,
            c2s,
            c2s_direct_tls,
            http,
            https,
            component,
            proxy65,
            components,
            services,
            trusted_proxies,
            forwarded_header,
        })
    }

    fn validate_upload(
        &self,
        bad: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let u = &self.upload;
        if !(1..=1 << 40).contains(&u.max_file_size) {
            return Err(bad(
                "upload.max_file_size",
                "must be between 1 and 1099511627776 bytes (1 TiB)".into(),
            ));
        }
        for (key, quota) in [
            ("upload.quota_daily_bytes", u.quota_daily_bytes),
            ("upload.quota_total_bytes", u.quota_total_bytes),
        ] {
            if quota != 0 && quota < u.max_file_size {
                return Err(bad(
                    key,
                    format!(
                        "{quota} is below upload.max_file_size ({}): use 0 for unlimited or at least max_file_size",
                        u.max_file_size
                    ),
                ));
            }
        }
        if u.expire_after_days > 36_500 {
            return Err(bad(
                "upload.expire_after_days",
                "must be at most 36500 (0 keeps files forever)".into(),
            ));
        }
        if !(10..=86_400).contains(&u.slot_ttl_secs) {
            return Err(bad(
                "upload.slot_ttl_secs",
                "must be between 10 and 86400 (a day)".into(),
            ));
        }
        if let Some(secret) = &u.secret {
            if secret.len() < 16 {
                return Err(bad(
                    "upload.secret",
                    "must be at least 16 characters (or leave it unset to generate one)".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_proxy65(
        &self,
        bad: &impl Fn(&str, String) -> ConfigError,
        listeners: &[SocketAddr],
    ) -> Result<(), ConfigError> {
        let p = &self.proxy65;
        // Without a listener there is no proxy (and no service domain for it).
        if !p.enabled || listeners.is_empty() {
            return Ok(());
        }
        match &p.host {
            Some(h) => {
                if h.is_empty()
                    || h.len() > 255
                    || h.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
                {
                    return Err(bad(
                        "proxy65.host",
                        format!("{h:?} is not a host name or IP address"),
                    ));
                }
            }
            None => {
                if listeners[0].ip().is_unspecified() {
                    return Err(bad(
                        "proxy65.host",
                        format!(
                            "must be set: the listener {} is not an address clients can connect to",
                            listeners[0]
                        ),
                    ));
                }
            }
        }
        if p.port == Some(0) {
            return Err(bad("proxy65.port", "must be between 1 and 65535".into()));
        }
        if !(1..=3600).contains(&p.activation_timeout_secs) {
            return Err(bad(
                "proxy65.activation_timeout_secs",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(1..=86_400).contains(&p.idle_timeout_secs) {
            return Err(bad(
                "proxy65.idle_timeout_secs",
                "must be between 1 and 86400".into(),
            ));
        }
        Ok(())
    }
}

/// RFC 3986 `scheme ":" rest`, without whitespace.
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Settings {
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    /// The built-in service at `domain`, if any.
    pub fn service(&self, domain: &str) -> Option<&ServiceDomain> {
        self.services.get(domain)
    }

    /// The built-in services of one served domain, for its disco#items.
    pub fn services_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a ServiceDomain> {
        self.services.values().filter(move |s| s.host == host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Settings, ConfigError> {
        Config::parse(text, "t.toml")?.validate("t.toml")
    }

    #[test]
    fn defaults_are_valid() {
        let s = Config::load(None).unwrap();
        assert_eq!(s.domains, vec!["localhost"]);
        assert!(s.storage_url.starts_with("sqlite://"));
        assert_eq!(s.c2s[0].port(), 5222);
    }

    #[test]
    fn http_listeners_and_public_url() {
        let s = Config::load(None).unwrap();
        assert_eq!(s.https[0].port(), 5443, "https listens by default");
        assert_eq!(s.raw.http.public_url, None);
        let s = check(
            "[listen]\nhttps = [\"127.0.0.1:8443\"]\n[http]\npublic_url = \"https://chat.example.org/\"\n",
        )
        .unwrap();
        assert_eq!(s.https[0].port(), 8443);
        assert_eq!(
            s.raw.http.public_url.as_deref(),
            Some("https://chat.example.org"),
            "a trailing slash is dropped"
        );
        assert!(check("[http]\npublic_url = \"http://127.0.0.1:5280/xmpp\"\n").is_ok());
        for bad in [
            "ftp://chat.example.org",
            "chat.example.org",
            "https://",
            "https:// x",
            "https://a.example/?q=1",
        ] {
            match check(&format!("[http]\npublic_url = {bad:?}\n")) {
                Err(e @ ConfigError::Invalid { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains("[http.public_url]"), "{text}");
                    assert!(!text.contains('\n'), "one line: {text}");
                }
                other => panic!("{bad}: expected an error, got {other:?}"),
            }
        }
        let e = check("[listen]\nhttp=[\"127.0.0.1:5000\"]\nhttps=[\"127.0.0.1:5000\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("used by two listeners"), "{e}");
        let e = check("[listen]\nhttps=[\"localhost:5443\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[listen.https]"), "{e}");
        for (bad, key) in [
            ("[bosh]\nmax_wait_secs = 0", "bosh.max_wait_secs"),
            ("[bosh]\ninactivity_secs = 10", "bosh.inactivity_secs"),
            ("[bosh]\nmax_body_bytes = 1000", "bosh.max_body_bytes"),
        ] {
            match check(bad) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: expected an error on {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn push_section() {
        let s = Config::load(None).unwrap();
        assert!(
            !s.raw.push.include_body,
            "bodies stay out of pushes by default"
        );
        assert_eq!(s.raw.push.min_interval_secs, 0);
        let s = check("[push]\ninclude_body = true\nmin_interval_secs = 30\n").unwrap();
        assert!(s.raw.push.include_body);
        assert_eq!(s.raw.push.min_interval_secs, 30);
        match check("[push]\nmin_interval_secs = 7200") {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "push.min_interval_secs"),
            other => panic!("expected an error on push.min_interval_secs, got {other:?}"),
        }
        assert!(
            check("[push]\nbody = true").is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn mam_section() {
        let s = Config::load(None).unwrap();
        assert_eq!(s.raw.mam.default, "always");
        assert_eq!(s.raw.mam.retention_for("localhost"), 0);
        let s = check(
            "[server]\ndomains = [\"a.example\", \"b.example\"]\n\
             [mam]\ndefault = \"roster\"\nretention_days = 30\n\
             default_page_size = 20\nmax_page_size = 100\n\
             domain_retention_days = { \"B.Example\" = 7 }\n",
        )
        .unwrap();
        assert_eq!(s.raw.mam.default, "roster");
        assert_eq!(s.raw.mam.retention_for("a.example"), 30);
        assert_eq!(
            s.raw.mam.retention_for("b.example"),
            7,
            "keys are normalized"
        );
        for (bad, key) in [
            ("[mam]\ndefault = \"sometimes\"", "mam.default"),
            ("[mam]\nmax_page_size = 0", "mam.max_page_size"),
            ("[mam]\ndefault_page_size = 300", "mam.default_page_size"),
            (
                "[mam]\ndomain_retention_days = { \"elsewhere.example\" = 1 }",
                "mam.domain_retention_days",
            ),
        ] {
            match check(bad) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: expected an error on {key}, got {other:?}"),
            }
        }
        assert!(
            check("[mam]\nkeep = 1").is_err(),
            "unknown keys are rejected"
        );
    }

    #[test]
    fn extras_sections() {
        let s = check(
            "[server]\ndomains = [\"a.example\", \"b.example\"]\n\
             [[external_service]]\ntype = \"turn\"\nhost = \"turn.a.example\"\nport = 3478\n\
             transport = \"udp\"\nsecret = \"0123456789abcdef\"\n\
             [contact]\nabuse = [\"mailto:abuse@a.example\"]\n\
             [contact.domain.\"B.Example\"]\nadmin = [\"xmpp:admin@b.example\"]\n\
             [registration]\nenabled_domains = [\"A.example\"]\nmode = \"allowlist\"\n\
             allowlist = [\"Alice\"]\n",
        )
        .unwrap();
        assert_eq!(s.raw.external_services[0].ttl_secs, 86_400);
        assert_eq!(s.raw.contact.for_domain("a.example").abuse.len(), 1);
        let b = s.raw.contact.for_domain("b.example");
        assert!(
            b.abuse.is_empty() && b.admin.len() == 1,
            "override replaces"
        );
        assert!(s.raw.registration.enabled_for("a.example"));
        assert!(!s.raw.registration.enabled_for("b.example"));
        assert_eq!(s.raw.registration.allowlist, vec!["alice"]);
        let d = Config::load(None).unwrap();
        assert!(
            d.raw.registration.enabled_domains.is_empty(),
            "off by default"
        );
        let svc = "[[external_service]]\ntype = \"turn\"\nhost = \"h\"\nport = 3478\n";
        for (bad, key) in [
            (
                "[[external_service]]\ntype = \"ftp\"\nhost = \"h\"\nport = 1".to_string(),
                "external_service[0]",
            ),
            (format!("{svc}transport = \"sctp\""), "external_service[0]"),
            (format!("{svc}secret = \"short\""), "external_service[0]"),
            (format!("{svc}username = \"u\""), "external_service[0]"),
            (format!("{svc}restricted = true"), "external_service[0]"),
            (
                format!("{svc}secret = \"0123456789abcdef\"\nttl_secs = 1"),
                "external_service[0]",
            ),
            (
                format!("{svc}secret = \"0123456789abcdef\"\nusername = \"u\"\npassword = \"p\""),
                "external_service[0]",
            ),
            ("[contact]\nabuse = [\"abuse@example\"]".into(), "contact"),
            (
                "[contact.domain.\"other.example\"]\nabuse = [\"mailto:x@y\"]".into(),
                "contact.domain",
            ),
            (
                "[registration]\nenabled_domains = [\"other.example\"]".into(),
                "registration.enabled_domains",
            ),
            (
                "[registration]\nmode = \"invite\"".into(),
                "registration.mode",
            ),
            (
                "[registration]\nmode = \"allowlist\"".into(),
                "registration.allowlist",
            ),
            (
                "[registration]\nallowlist = [\"a@b\"]".into(),
                "registration.allowlist",
            ),
            (
                "[registration]\nmax_per_ip = 0".into(),
                "registration.max_per_ip",
            ),
        ] {
            match check(&bad) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: expected an error on {key}, got {other:?}"),
            }
        }
        assert!(check("[[external_service]]\ntype = \"turn\"\nhost = \"h\"").is_err());
    }

    #[test]
    fn upload_and_proxy65_sections() {
        let s = Config::load(None).unwrap();
        assert_eq!(s.raw.upload.max_file_size, 100 * 1024 * 1024);
        assert_eq!(s.raw.upload.expire_after_days, 30);
        assert!(s.raw.upload.secret.is_none());
        assert_eq!(s.proxy65, vec!["127.0.0.1:7777".parse().unwrap()]);
        let s = check(
            "[upload]\nmax_file_size = 1000\nquota_daily_bytes = 0\nquota_total_bytes = 5000\n\
             expire_after_days = 0\nslot_ttl_secs = 60\nsecret = \"0123456789abcdef\"\n\
             [proxy65]\nhost = \"proxy.example.test\"\nport = 7000\nmax_bytes_per_sec = 1000\n\
             [listen]\nproxy65 = [\"0.0.0.0:7777\"]\n",
        )
        .unwrap();
        assert_eq!(s.raw.upload.quota_total_bytes, 5000);
        assert_eq!(s.raw.proxy65.port, Some(7000));
        assert!(s.service("proxy.localhost").is_some());
        let s = check("[proxy65]\nenabled = false\n").unwrap();
        assert!(s.proxy65.is_empty(), "no listener when disabled");
        assert!(s.service("proxy.localhost").is_none());
        let s = check("[listen]\nproxy65 = []\n").unwrap();
        assert!(
            s.service("proxy.localhost").is_none(),
            "no listener, no proxy service"
        );
        for (bad, key) in [
            ("[upload]\nmax_file_size = 0", "upload.max_file_size"),
            (
                "[upload]\nmax_file_size = 1000\nquota_daily_bytes = 999",
                "upload.quota_daily_bytes",
            ),
            (
                "[upload]\nmax_file_size = 1000\nquota_total_bytes = 10",
                "upload.quota_total_bytes",
            ),
            (
                "[upload]\nexpire_after_days = 100000",
                "upload.expire_after_days",
            ),
            ("[upload]\nslot_ttl_secs = 1", "upload.slot_ttl_secs"),
            ("[upload]\nsecret = \"short\"", "upload.secret"),
            ("[listen]\nproxy65 = [\"x\"]", "listen.proxy65"),
            ("[listen]\nproxy65 = [\"0.0.0.0:7777\"]", "proxy65.host"),
            ("[proxy65]\nhost = \"a b\"", "proxy65.host"),
            ("[proxy65]\nport = 0", "proxy65.port"),
            (
                "[http]\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "http.trusted_proxies",
            ),
            (
                "[http]\ntrusted_proxies = [\"proxy.example\"]",
                "http.trusted_proxies",
            ),
            (
                "[http]\nforwarded_header = \"x-real-ip\"",
                "http.forwarded_header",
            ),
            ("[c2s]\ntcp_keepalive_secs = 7201", "c2s.tcp_keepalive_secs"),
            (
                "[proxy65]\nactivation_timeout_secs = 0",
                "proxy65.activation_timeout_secs",
            ),
            (
                "[proxy65]\nidle_timeout_secs = 0",
                "proxy65.idle_timeout_secs",
            ),
            (
                "[listen]\nproxy65 = [\"127.0.0.1:5222\"]\nc2s = [\"127.0.0.1:5222\"]",
                "listen",
            ),
        ] {
            match check(bad) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: expected an error on {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn issue_keys_parse() {
        let s = check(
            r#"
[server]
domains = ["Example.test"]
data_dir = "/var/lib/herald"
[storage]
url = "sqlite:///var/lib/herald/herald.db"
[listen]
c2s = ["127.0.0.1:5222"]
c2s_direct_tls = ["127.0.0.1:5223"]
http = ["127.0.0.1:5280"]
"#,
        )
        .unwrap();
        assert_eq!(s.domains, vec!["example.test"]);
        assert_eq!(s.storage_url, "sqlite:///var/lib/herald/herald.db");
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = check("[server]\ndomains = []\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml: [server.domains]: at least one domain is required"
        );
        let e = check("[listen]\nc2s = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[listen.c2s]") && e.contains("nope"), "{e}");
        let e = check("[auth]\nscram_iterations = 100\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[auth.scram_iterations]"), "{e}");
        let e = check("[server]\nbogus = 1\n").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml: line 2") && e.contains("bogus"),
            "{e}"
        );
        let e = check("[tls]\ncert = \"/nonexistent.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[tls.key]"), "{e}");
        let e = check("[storage]\nurl = \"mysql://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[storage.url]"), "{e}");
        let e = check("[listen]\nc2s=[\"127.0.0.1:5000\"]\nhttp=[\"127.0.0.1:5000\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("used by two listeners"), "{e}");
        let e = check("[server]\ndomains = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid domain"), "{e}");
    }
}
