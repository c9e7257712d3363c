//! The simulated population: one task per client, started at the arrival rate, logging in
//! and then serving commands (send a chat message, change presence) from a bounded queue
//! while handing every received stanza to the scenario's [`Handler`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_xml::{Element, StreamEvent};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::stats::{now_ns, Histogram};
use crate::xmpp::{self, ConnectConfig, FailKind, LoginSteps, Session};

/// Account naming and the rest of what every client needs.
pub struct Population {
    pub cfg: Arc<ConnectConfig>,
    /// Account node names and passwords, index 0-based.
    pub users: Vec<(String, String)>,
    pub arrival_rate: f64,
    pub max_pending: usize,
    pub login_timeout: Duration,
    pub queue: usize,
}

impl Population {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Live counters, printed once a second and used by the reports.
#[derive(Default)]
pub struct Progress {
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub online: AtomicU64,
    /// Sessions that ended unexpectedly after login.
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub login_ms: Histogram,
    fails: Mutex<BTreeMap<FailKind, u64>>,
    samples: Mutex<Vec<String>>,
    drop_samples: Mutex<Vec<String>>,
    /// Wall time of the last successful login (ns, [`now_ns`] clock).
    pub last_login_ns: AtomicU64,
}

impl Progress {
    pub fn login_failed(&self, e: &xmpp::LoginError) {
        self.logins_failed.fetch_add(1, Ordering::Relaxed);
        *self
            .fails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e.kind)
            .or_default() += 1;
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < 5 {
            s.push(e.to_string());
        }
    }

    fn session_dropped(&self, why: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut s = self.drop_samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < 5 {
            s.push(why);
        }
    }

    /// Failures by kind, e.g. `{"auth": 3}`.
    pub fn failures_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.fails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.name(), *v))
            .collect()
    }

    /// The first few failure messages (logins, then dropped sessions).
    pub fn failure_samples(&self) -> Vec<String> {
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.extend(
            self.drop_samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|s| format!("session dropped: {s}")),
        );
        v
    }

    pub fn logins_done(&self) -> u64 {
        self.logins_ok.load(Ordering::Relaxed) + self.logins_failed.load(Ordering::Relaxed)
    }
}

/// Prints a progress line to stderr every second until dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn ticker(progress: Arc<Progress>, quiet: bool) -> Ticker {
    Ticker(tokio::spawn(async move {
        if quiet {
            return;
        }
        let start = Instant::now();
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv.tick().await;
        let (mut l0, mut s0, mut r0) = (0, 0, 0);
        loop {
            iv.tick().await;
            let l = progress.logins_ok.load(Ordering::Relaxed);
            let s = progress.sent.load(Ordering::Relaxed);
            let r = progress.received.load(Ordering::Relaxed);
            let mut line = String::new();
            let _ = write!(
                line,
                "[{:>4}s] online {} | logins {} (+{}/s) failed {} | sent {} (+{}/s) recv {} (+{}/s)",
                start.elapsed().as_secs(),
                progress.online.load(Ordering::Relaxed),
                l,
                l - l0,
                progress.logins_failed.load(Ordering::Relaxed),
                s,
                s.saturating_sub(s0),
                r,
                r.saturating_sub(r0),
            );
            let d = progress.dropped.load(Ordering::Relaxed);
            if d > 0 {
                let _ = write!(line, " | dropped {d}");
            }
            eprintln!("{line}");
            (l0, s0, r0) = (l, s, r);
        }
    }))
}

/// Something a client task is told to send.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// A chat message to user `to` carrying sequence number `seq`.
    Chat { to: usize, seq: u64, pad: usize },
    /// A broadcast presence change carrying `seq`.
    Presence { seq: u64 },
    /// Joins the room with bare JID `room` as nick `u<me>`, asking for no history.
    MucJoin { room: Arc<str> },
    /// Submits an empty configuration form to `room` (XEP-0045 instant room), IQ id
    /// `hbcfg`.
    MucConfigure { room: Arc<str> },
    /// A groupchat message to `room` carrying `seq`.
    Groupchat {
        room: Arc<str>,
        seq: u64,
        pad: usize,
    },
    /// A XEP-0313 archive query (IQ id `mam<run>-<seq>`, queryid `q<run>-<seq>`) for the
    /// last page of `max` results (`before` empty) or the page before archive id `before`,
    /// optionally only messages exchanged with user `with`.
    MamQuery {
        seq: u64,
        max: usize,
        with: Option<usize>,
        before: Option<Arc<str>>,
    },
}

/// XEP-0045 namespaces.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_DATA: &str = "jabber:x:data";
/// XEP-0313 message archive management, XEP-0059 result set management, XEP-0297
/// forwarding.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";

/// A room occupant's nick: `u<index>`.
pub fn muc_nick(me: usize) -> String {
    format!("u{me}")
}

/// What a scenario does with the stanzas its clients receive and send.
pub trait Handler: Send + Sync + 'static {
    /// Called once after a successful login, with the session (roster included).
    fn on_login(&self, _me: usize, _s: &Session) {}
    /// Every stanza the client receives after login (IQ requests are answered already).
    fn on_stanza(&self, me: usize, el: &Element);
    /// A command is about to be written.
    fn on_send(&self, _me: usize, _cmd: &Cmd) {}
    /// A command was dropped because the session ended before writing it.
    fn on_unsent(&self, _me: usize, _cmd: &Cmd) {}
}

/// The running population: one queue per user (`None` until/unless logged in).
pub struct Clients {
    pub senders: Vec<mpsc::Sender<Cmd>>,
    pub online: Arc<Vec<AtomicBool>>,
    tasks: JoinSet<()>,
}

impl Clients {
    /// Indices of the users whose login succeeded.
    pub fn online_list(&self) -> Vec<usize> {
        self.online
            .iter()
            .enumerate()
            .filter(|(_, b)| b.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    }

    /// Closes every queue and waits (bounded) for the clients to close their streams.
    pub async fn shutdown(mut self, limit: Duration) {
        self.senders.clear();
        let deadline = tokio::time::Instant::now() + limit;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(_) => {}
                Err(_) => {
                    self.tasks.abort_all();
                    break;
                }
            }
        }
    }
}

/// Starts every client at the arrival rate. Returns at once; watch
/// [`Progress::logins_done`] (or call [`wait_logins`]) to know when all attempts ended.
pub fn start<H: Handler>(
    pop: &Population,
    steps: LoginSteps,
    handler: Arc<H>,
    progress: Arc<Progress>,
) -> Clients {
    let n = pop.len();
    let online: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(pop.queue.max(1));
        senders.push(tx);
        receivers.push(rx);
    }
    let mut tasks = JoinSet::new();
    let pending = Arc::new(Semaphore::new(pop.max_pending.max(1)));
    let start = tokio::time::Instant::now();
    let rate = pop.arrival_rate;
    for (i, rx) in receivers.into_iter().enumerate() {
        let cfg = pop.cfg.clone();
        let (user, password) = pop.users[i].clone();
        let handler = handler.clone();
        let progress = progress.clone();
        let online = online.clone();
        let pending = pending.clone();
        let timeout = pop.login_timeout;
        let at = if rate > 0.0 {
            start + Duration::from_secs_f64(i as f64 / rate)
        } else {
            start
        };
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let permit = pending.acquire_owned().await;
            let t0 = Instant::now();
            let res = tokio::time::timeout(timeout, xmpp::login(&cfg, i, &user, &password, steps))
                .await
                .unwrap_or_else(|_| {
                    Err(xmpp::LoginError {
                        kind: FailKind::Timeout,
                        detail: format!("login took more than {timeout:?}"),
                    })
                });
            drop(permit);
            let session = match res {
                Ok(s) => s,
                Err(e) => {
                    progress.login_failed(&e);
                    return;
                }
            };
            progress.login_ms.record(t0.elapsed().as_micros() as u64);
            handler.on_login(i, &session);
            online[i].store(true, Ordering::Release);
            progress.online.fetch_add(1, Ordering::Relaxed);
            progress
                .last_login_ns
                .fetch_max(now_ns(), Ordering::Relaxed);
            progress.logins_ok.fetch_add(1, Ordering::Release);
            drive(&cfg, i, session, rx, &*handler, &progress).await;
            progress.online.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Clients {
        senders,
        online,
        tasks,
    }
}

/// Waits until every login attempt has ended (success or failure).
pub async fn wait_logins(progress: &Progress, n: usize) {
    while progress.logins_done() < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a command as a stanza. The timestamp is taken here, just before the write.
fn encode(me: usize, cmd: &Cmd, cfg: &ConnectConfig, out: &mut Vec<u8>) {
    let run = cfg.run;
    let jids = &cfg.bare_jids;
    let ts = now_ns();
    match cmd {
        Cmd::Chat { to, seq, pad } => {
            let mut body = format!("hb1 {run} {seq} {ts} {me} {to}");
            if *pad > 0 {
                body.push(' ');
                body.extend(std::iter::repeat_n('x', *pad));
            }
            let el = Element::new("message", xmpp::NS_CLIENT)
                .with_attr("to", jids.get(*to).map_or("", |j| j.as_str()))
                .with_attr("type", "chat")
                .with_attr("id", format!("m{seq}"))
                .with_child(Element::new("body", xmpp::NS_CLIENT).with_text(body));
            xmpp::write_stanza(&el, out);
        }
        Cmd::Presence { seq } => {
            let show = if seq % 2 == 0 { "away" } else { "chat" };
            let el = Element::new("presence", xmpp::NS_CLIENT)
                .with_child(Element::new("show", xmpp::NS_CLIENT).with_text(show))
                .with_child(
                    Element::new("status", xmpp::NS_CLIENT)
                        .with_text(format!("hb1 {run} {seq} {ts}")),
                );
            xmpp::write_stanza(&el, out);
        }
        Cmd::MucJoin { room } => {
            let el = Element::new("presence", xmpp::NS_CLIENT)
                .with_attr("to", format!("{room}/{}", muc_nick(me)))
                .with_child(
                    Element::new("x", NS_MUC)
                        .with_child(Element::new("history", NS_MUC).with_attr("maxstanzas", "0")),
                );
            xmpp::write_stanza(&el, out);
        }
        Cmd::MucConfigure { room } => {
            let el = Element::new("iq", xmpp::NS_CLIENT)
                .with_attr("type", "set")
                .with_attr("id", "hbcfg")
                .with_attr("to", &**room)
                .with_child(
                    Element::new("query", NS_MUC_OWNER)
                        .with_child(Element::new("x", NS_DATA).with_attr("type", "submit")),
                );
            xmpp::write_stanza(&el, out);
        }
        Cmd::Groupchat { room, seq, pad } => {
            let mut body = format!("hb1 {run} {seq} {ts} {me}");
            if *pad > 0 {
                body.push(' ');
                body.extend(std::iter::repeat_n('x', *pad));
            }
            let el = Element::new("message", xmpp::NS_CLIENT)
                .with_attr("to", &**room)
                .with_attr("type", "groupchat")
                .with_attr("id", format!("g{run}-{seq}"))
                .with_child(Element::new("body", xmpp::NS_CLIENT).with_text(body));
            xmpp::write_stanza(&el, out);
        }
        Cmd::MamQuery {
            seq,
            max,
            with,
            before,
        } => {
            let mut query =
                Element::new("query", NS_MAM).with_attr("queryid", format!("q{run}-{seq}"));
            if let Some(w) = with {
                let field = |var: &str, value: &str| {
                    Element::new("field", NS_DATA)
                        .with_attr("var", var)
                        .with_child(Element::new("value", NS_DATA).with_text(value))
                };
                query.push(
                    Element::new("x", NS_DATA)
                        .with_attr("type", "submit")
                        .with_child(field("FORM_TYPE", NS_MAM).with_attr("type", "hidden"))
                        .with_child(field("with", jids.get(*w).map_or("", |j| j.as_str()))),
                );
            }
            let mut before_el = Element::new("before", NS_RSM);
            if let Some(b) = before {
                before_el = before_el.with_text(&**b);
            }
            query.push(
                Element::new("set", NS_RSM)
                    .with_child(Element::new("max", NS_RSM).with_text(max.to_string()))
                    .with_child(before_el),
            );
            let el = Element::new("iq", xmpp::NS_CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("mam{run}-{seq}"))
                .with_child(query);
            xmpp::write_stanza(&el, out);
        }
    }
}

/// The logged-in client loop: writes queued commands (batched), answers IQ requests,
/// hands everything else to the handler; ends when the queue closes or the stream dies.
async fn drive<H: Handler>(
    cfg: &ConnectConfig,
    me: usize,
    mut s: Session,
    mut rx: mpsc::Receiver<Cmd>,
    handler: &H,
    progress: &Progress,
) {
    let mut out = Vec::new();
    for el in std::mem::take(&mut s.early) {
        handle_in(me, &el, handler, &mut out);
    }
    let result: Result<(), String> = async {
        loop {
            if !out.is_empty() {
                s.io.send(&out).await.map_err(|e| format!("write: {e}"))?;
                out.clear();
            }
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    let mut batch = Some(cmd);
                    while let Some(c) = batch.take() {
                        handler.on_send(me, &c);
                        encode(me, &c, cfg, &mut out);
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                        if out.len() < 16 * 1024 {
                            batch = rx.try_recv().ok();
                        }
                    }
                }
                r = s.io.read_some() => {
                    r?;
                    while let Some(ev) = s.io.buffered_event()? {
                        match ev {
                            StreamEvent::Stanza(el) if el.is("error", xmpp::NS_STREAM) => {
                                return Err(format!("stream error: {}", xmpp::describe_error(&el)));
                            }
                            StreamEvent::Stanza(el) => handle_in(me, &el, handler, &mut out),
                            StreamEvent::Close => return Err("stream closed by server".into()),
                            StreamEvent::Open(_) => return Err("unexpected stream header".into()),
                        }
                    }
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => s.close().await,
        Err(e) => {
            progress.session_dropped(format!("{}: {e}", s.jid));
            rx.close();
            while let Ok(c) = rx.try_recv() {
                handler.on_unsent(me, &c);
            }
        }
    }
}

fn handle_in<H: Handler>(me: usize, el: &Element, handler: &H, out: &mut Vec<u8>) {
    if el.name == "iq" {
        if let Some(reply) = xmpp::iq_reply(el) {
            xmpp::write_stanza(&reply, out);
            return;
        }
    }
    handler.on_stanza(me, el);
}

/// Reads `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
