//! herald-bench: a load generator that speaks real XMPP (STARTTLS or direct TLS, SASL
//! SCRAM-SHA-1 / SCRAM-SHA-256 / PLAIN, resource binding, roster, presence, XEP-0045
//! rooms, XEP-0313 archive queries) to any server, so Herald, ejabberd and Prosody are
//! measured the same way.
//!
//! The binary is a thin wrapper around [`run`], which integration tests call directly.
//! Scenarios live in [`scenarios`]; see `bench/README.md` for what each measures.

pub mod report;
pub mod runner;
pub mod scenarios;
pub mod scram;
pub mod stats;
pub mod xmpp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::pki_types::ServerName;

pub use report::Report;
pub use scram::Mech;

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for XMPP servers: logins, 1:1 chat, presence fan-out, multi-user chat, message archive queries"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: Command,
}

/// Options every scenario shares (accepted before or after the subcommand).
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server host name or IP.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// Server port (default 5222, or 5223 with --direct-tls).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// XMPP domain the accounts live on.
    #[arg(long, global = true, default_value = "localhost")]
    pub domain: String,
    /// Direct TLS (XEP-0368) instead of STARTTLS.
    #[arg(long, global = true)]
    pub direct_tls: bool,
    /// SASL mechanism.
    #[arg(long, global = true, value_enum, default_value = "SCRAM-SHA-1")]
    pub mech: Mech,
    /// Number of accounts (PREFIX<first> .. PREFIX<first+N-1>).
    #[arg(long, global = true, default_value_t = 100)]
    pub users: usize,
    /// Number of the first account.
    #[arg(long, global = true, default_value_t = 1)]
    pub first: usize,
    /// Account names are PREFIX<i>.
    #[arg(long, global = true, default_value = "user")]
    pub user_prefix: String,
    /// One password for every account (default: PASSWORD_PREFIX<i>).
    #[arg(long, global = true)]
    pub password: Option<String>,
    /// Per-account passwords are PASSWORD_PREFIX<i>.
    #[arg(long, global = true, default_value = "pass")]
    pub password_prefix: String,
    /// Resource to bind.
    #[arg(long, global = true, default_value = "bench")]
    pub resource: String,
    /// New logins started per second (0: all at once, bounded by --max-pending).
    #[arg(long, global = true, default_value_t = 200.0)]
    pub arrival_rate: f64,
    /// Most logins in progress at once.
    #[arg(long, global = true, default_value_t = 500)]
    pub max_pending: usize,
    /// Seconds a login may take before it counts as failed.
    #[arg(long, global = true, default_value_t = 30)]
    pub login_timeout: u64,
    /// Spread connections over source addresses 127.0.0.1 .. 127.0.0.X (X ≤ 254), so
    /// more than ~28k connections to one server port do not exhaust ephemeral ports.
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_ips: Option<u8>,
    /// Wait for each reply instead of pipelining negotiation steps.
    #[arg(long, global = true)]
    pub no_pipeline: bool,
    /// Server process ID: its VmRSS is read before and after (RSS per session).
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Print the results as a Markdown table.
    #[arg(long, global = true)]
    pub markdown: bool,
    /// Keep SCRAM salted passwords in this file between runs (read at start, written at
    /// the end), as real clients keep their SCRAM keys: logins then cost the bench no
    /// PBKDF2, which otherwise takes a large share of a machine shared with the server.
    #[arg(long, global = true, value_name = "FILE")]
    pub scram_cache: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Commands queued per client before the generator skips that client.
    #[arg(long, global = true, default_value_t = 64)]
    pub client_queue: usize,
    /// Runtime threads of the load generator (default: one per CPU). On a machine shared
    /// with the server, fewer threads contend less with it for the CPUs, so the latency
    /// measured at moderate load is more the server's and less the scheduler's.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// N accounts log in at the arrival rate and stay idle; login rate, failures, RSS.
    Connect(ConnectArgs),
    /// 1:1 chat messages at a total rate; delivery rate, latency, loss, duplicates.
    Chat(ChatArgs),
    /// Status changes fanned out to K-contact rosters; delivery rate and latency.
    Presence(PresenceArgs),
    /// Creates mutual roster subscriptions (K contacts each) over XMPP.
    Provision(ProvisionArgs),
    /// Multi-user chat (XEP-0045): room joins, then groupchat fan-out; join time,
    /// delivery rate, latency, loss, duplicates.
    Muc(MucArgs),
    /// Message archives (XEP-0313): a 1:1 fill phase, then archive queries with RSM
    /// paging; queries/s, results/s, query latency, errors, short pages.
    Mam(MamArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Seconds to stay connected once every login has finished.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Contacts {
    /// User i writes to user i+1.
    Ring,
    /// Each message goes to a random other online user.
    Random,
}

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// How recipients are chosen.
    #[arg(long, value_enum, default_value = "ring")]
    pub contacts: Contacts,
    /// Extra bytes of body per message.
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Seconds to wait for outstanding messages after sending stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Skip the roster get at login.
    #[arg(long)]
    pub no_roster: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Roster size per user (as provisioned; rounded up to even).
    #[arg(long, default_value_t = 10)]
    pub contacts: usize,
    /// Status changes per second, all users together.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of status changes.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding deliveries after the last change.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds to wait after all logins before the first change (initial presence
    /// exchange settles).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

#[derive(Debug, Clone, Args)]
pub struct MucArgs {
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Occupants per room (default: --users / --rooms). User i joins room i / M; users
    /// beyond rooms × M stay out of the rooms.
    #[arg(long)]
    pub occupants: Option<usize>,
    /// Groupchat messages sent per second, all rooms together (each is fanned out to
    /// every occupant of its room, the sender included).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// MUC service domain (default: conference.<domain>).
    #[arg(long)]
    pub service: Option<String>,
    /// Rooms are ROOM_PREFIX<r>@service, r = 1..=rooms.
    #[arg(long, default_value = "benchroom")]
    pub room_prefix: String,
    /// Room joins started per second (0: all at once).
    #[arg(long, default_value_t = 200.0)]
    pub join_rate: f64,
    /// Seconds to wait for join (and room configuration) replies after the last join of
    /// a phase was sent; joins still unanswered then count as failed.
    #[arg(long, default_value_t = 30.0)]
    pub join_timeout: f64,
    /// Extra bytes of body per message.
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Seconds to wait for outstanding deliveries after sending stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

#[derive(Debug, Clone, Args)]
pub struct MamArgs {
    /// Fill phase: messages each online user sends first, 1:1 to the next online user
    /// (ring), so that every archive holds about 2 × FILL of them (sent and received).
    /// 0: query the archives as they are (e.g. filled by an earlier run); then pages are
    /// not checked for length.
    #[arg(long, default_value_t = 20)]
    pub fill: usize,
    /// Fill messages per second, all users together (0: as fast as the client queues
    /// allow; no message is skipped in the fill).
    #[arg(long, default_value_t = 0.0)]
    pub fill_rate: f64,
    /// Seconds to wait after every fill message was delivered, before the first query.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Results per page (RSM <max/>).
    #[arg(long, default_value_t = 50)]
    pub page: usize,
    /// Archive queries per second, all users together (round-robin over online users).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of querying.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Fraction of queries that ask for the last page of messages exchanged with one
    /// contact (the data form field `with` = the next user of the ring).
    #[arg(long, default_value_t = 0.2)]
    pub with_share: f64,
    /// Fraction of queries that page back (`<before>ID</before>` with the `<first/>` of the
    /// user's previous page) when the user has an incomplete previous page; the other
    /// queries ask for the last page (`<before/>`).
    #[arg(long, default_value_t = 0.3)]
    pub back_share: f64,
    /// Seconds to wait for outstanding fill messages, and for outstanding query replies
    /// after the last query was issued; replies still missing then count as timeouts.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// Roster size per user (rounded up to even): user i gets i±1 .. i±K/2 (wrapping).
    #[arg(long, default_value_t = 10)]
    pub contacts: usize,
    /// Users handled at once in each pass.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// Why `run` could not produce a report at all.
#[derive(Debug)]
pub enum RunError {
    /// Bad options or unreachable target (exit code 2).
    Usage(String),
    /// The scenario is not available (exit code 2).
    Unsupported(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Usage(s) | RunError::Unsupported(s) => f.write_str(s),
        }
    }
}

impl Common {
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.direct_tls { 5223 } else { 5222 })
    }

    /// `(node, password)` of every account.
    pub fn accounts(&self) -> Vec<(String, String)> {
        (0..self.users)
            .map(|i| {
                let n = self.first + i;
                let pw = match &self.password {
                    Some(p) => p.clone(),
                    None => format!("{}{n}", self.password_prefix),
                };
                (format!("{}{n}", self.user_prefix), pw)
            })
            .collect()
    }

    pub fn connect_config(&self) -> Result<xmpp::ConnectConfig, RunError> {
        let addr: SocketAddr = (self.host.as_str(), self.port())
            .to_socket_addrs()
            .map_err(|e| RunError::Usage(format!("cannot resolve {}: {e}", self.host)))?
            .next()
            .ok_or_else(|| RunError::Usage(format!("{} has no address", self.host)))?;
        let source_ips = match self.source_ips {
            Some(x) => (1..=x)
                .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
                .collect(),
            None => Vec::new(),
        };
        if self.resource.contains(['<', '>', '&', '\'', '"']) {
            return Err(RunError::Usage(
                "--resource: no XML special characters".into(),
            ));
        }
        let tls_name = ServerName::try_from(self.domain.clone()).map_err(|_| {
            RunError::Usage(format!("--domain {:?} is not a DNS name", self.domain))
        })?;
        let bare_jids = Arc::new(
            self.accounts()
                .into_iter()
                .map(|(u, _)| format!("{u}@{}", self.domain))
                .collect(),
        );
        Ok(xmpp::ConnectConfig {
            addr,
            domain: self.domain.clone(),
            direct_tls: self.direct_tls,
            mech: self.mech,
            source_ips,
            pipeline: !self.no_pipeline,
            resource: self.resource.clone(),
            tls: xmpp::insecure_tls(),
            tls_name,
            bare_jids,
            run: 0,
        })
    }

    pub fn population(&self) -> Result<runner::Population, RunError> {
        if self.users == 0 {
            return Err(RunError::Usage("--users must be at least 1".into()));
        }
        Ok(runner::Population {
            cfg: Arc::new(self.connect_config()?),
            users: self.accounts(),
            arrival_rate: self.arrival_rate,
            max_pending: self.max_pending,
            login_timeout: Duration::from_secs(self.login_timeout),
            queue: self.client_queue,
        })
    }
}

/// Runs one scenario and returns its report (also written to `--json` if given).
pub async fn run(cli: Cli) -> Result<Report, RunError> {
    let c = &cli.common;
    if let Some(path) = &c.scram_cache {
        xmpp::load_salted(path).map_err(|e| {
            RunError::Usage(format!("cannot read --scram-cache {}: {e}", path.display()))
        })?;
    }
    let mut report = match &cli.cmd {
        Command::Connect(a) => scenarios::connect(c, a).await?,
        Command::Chat(a) => scenarios::chat(c, a).await?,
        Command::Presence(a) => scenarios::presence(c, a).await?,
        Command::Provision(a) => scenarios::provision(c, a).await?,
        Command::Muc(a) => scenarios::muc(c, a).await?,
        Command::Mam(a) => scenarios::mam(c, a).await?,
    };
    report.param("users", c.users as u64);
    report.param("mech", c.mech.name());
    report.param("tls", if c.direct_tls { "direct" } else { "starttls" });
    report.param("arrival_rate", c.arrival_rate);
    report.param("pipeline", !c.no_pipeline);
    report.param("scram_cache", c.scram_cache.is_some());
    if let Some(path) = &c.scram_cache {
        xmpp::save_salted(path).map_err(|e| {
            RunError::Usage(format!(
                "cannot write --scram-cache {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(path) = &c.json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n")
            .map_err(|e| RunError::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(report)
}
