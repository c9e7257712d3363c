//! Configuration: one TOML file, a serde struct per section with defaults, and validation that
//! names the file, the key and the reason, so an operator error is one readable line.
//!
//! Every key is documented in `docs/config.md`; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use herald_core::Jid;
use serde::Deserialize;

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
    pub log: LogSection,
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
    pub http: Vec<String>,
    /// XEP-0114 external components.
    pub component: Vec<String>,
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
            component: vec!["127.0.0.1:5347".into()],
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
    pub component: Vec<SocketAddr>,
    pub components: Vec<(String, String)>,
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
        let component = addrs("listen.component", &self.listen.component)?;
        let mut seen = std::collections::HashSet::new();
        for a in c2s
            .iter()
            .chain(&c2s_direct_tls)
            .chain(&http)
            .chain(&component)
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
        if self.log.level.trim().is_empty() {
            return Err(bad("log.level", "must not be empty".into()));
        }
        Ok(Settings {
            raw: self,
            domains,
            storage_url,
            c2s,
            c2s_direct_tls,
            http,
            component,
            components,
        })
    }
}

impl Settings {
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
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
