//! The scenarios: `connect`, `chat`, `presence`, `provision`, `muc` and `mam`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_xml::Element;
use rand::Rng;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::Semaphore;

use crate::report::Report;
use crate::runner::{self, Clients, Cmd, Handler, Population, Progress};
use crate::stats::{now_ns, AtomicBits, Counters, Histogram};
use crate::xmpp::{self, LoginSteps, Session};
use crate::{
    ChatArgs, Common, ConnectArgs, Contacts, MamArgs, MucArgs, PresenceArgs, ProvisionArgs,
    RunError,
};

fn server_name(c: &Common) -> String {
    format!("{}:{} ({})", c.host, c.port(), c.domain)
}

/// Adds the login metrics every scenario reports, and fails the run on login failures.
fn login_metrics(r: &mut Report, p: &Progress, users: usize) {
    let ok = p.logins_ok.load(Ordering::Relaxed);
    let failed = p.logins_failed.load(Ordering::Relaxed);
    r.metric("logins_ok", ok, "");
    r.metric("logins_failed", failed, "");
    for (kind, n) in p.failures_by_kind() {
        r.metric(&format!("logins_failed_{kind}"), n, "");
    }
    r.metric_f(
        "login_time_p50",
        p.login_ms.quantile(0.5) as f64 / 1000.0,
        "ms",
    );
    r.metric_f(
        "login_time_p99",
        p.login_ms.quantile(0.99) as f64 / 1000.0,
        "ms",
    );
    r.metric_f("login_time_max", p.login_ms.max() as f64 / 1000.0, "ms");
    if failed > 0 {
        r.fail(format!("{failed} of {users} logins failed"));
    }
    let dropped = p.dropped.load(Ordering::Relaxed);
    r.metric("sessions_dropped", dropped, "");
    if dropped > 0 {
        r.fail(format!("{dropped} sessions ended unexpectedly"));
    }
    for s in p.failure_samples() {
        r.fail(format!("e.g. {s}"));
    }
}

fn latency_metrics(r: &mut Report, h: &Histogram) {
    let ms = |v: u64| v as f64 / 1000.0;
    r.metric_f("latency_p50", ms(h.quantile(0.5)), "ms");
    r.metric_f("latency_p99", ms(h.quantile(0.99)), "ms");
    r.metric_f("latency_p999", ms(h.quantile(0.999)), "ms");
    r.metric_f("latency_max", ms(h.max()), "ms");
    r.metric_f("latency_mean", h.mean() / 1000.0, "ms");
}

/// A random token that tells this run's messages from leftovers of earlier runs (offline
/// messages delivered at login).
fn run_token() -> u32 {
    rand::thread_rng().gen_range(1..u32::MAX)
}

// ---------------------------------------------------------------------------------------
// connect

struct Idle;

impl Handler for Idle {
    fn on_stanza(&self, _me: usize, _el: &Element) {}
}

pub async fn connect(c: &Common, a: &ConnectArgs) -> Result<Report, RunError> {
    let pop = c.population()?;
    let progress = Arc::new(Progress::default());
    let _ticker = runner::ticker(progress.clone(), c.quiet);
    let rss_before = c.server_pid.and_then(runner::rss_kib);
    let start_ns = now_ns();
    let t0 = Instant::now();
    let clients = runner::start(&pop, steps(true), Arc::new(Idle), progress.clone());
    runner::wait_logins(&progress, pop.len()).await;
    let all_done = t0.elapsed();
    tokio::time::sleep(Duration::from_secs_f64(a.hold.max(0.0))).await;
    let rss_after = c.server_pid.and_then(runner::rss_kib);
    let online_at_end = progress.online.load(Ordering::Relaxed);
    clients.shutdown(Duration::from_secs(30)).await;

    let mut r = Report::new("connect", server_name(c));
    r.param("hold_s", a.hold);
    let ok = progress.logins_ok.load(Ordering::Relaxed);
    let last = progress.last_login_ns.load(Ordering::Relaxed);
    let span = (last.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    r.metric("users", pop.len() as u64, "");
    r.metric_f(
        "logins_per_s",
        if ok > 0 { ok as f64 / span } else { 0.0 },
        "1/s",
    );
    r.metric_f("login_phase", all_done.as_secs_f64(), "s");
    r.metric("online_after_hold", online_at_end, "");
    login_metrics(&mut r, &progress, pop.len());
    rss_metrics(&mut r, rss_before, rss_after, ok);
    Ok(r)
}

fn rss_metrics(r: &mut Report, before: Option<u64>, after: Option<u64>, sessions: u64) {
    if let (Some(b), Some(a)) = (before, after) {
        r.metric("server_rss_before", b, "KiB");
        r.metric("server_rss_after", a, "KiB");
        if sessions > 0 {
            r.metric_f(
                "server_rss_per_session",
                (a as f64 - b as f64) / sessions as f64,
                "KiB",
            );
        }
    }
}

fn steps(roster: bool) -> LoginSteps {
    LoginSteps {
        roster,
        presence: true,
    }
}

// ---------------------------------------------------------------------------------------
// The traffic generator shared by chat and presence

#[derive(Default)]
struct GenStats {
    issued: u64,
    enqueued: u64,
    skipped_backlog: u64,
    skipped_offline: u64,
    elapsed: Duration,
}

/// Issues `total` commands at `rate` per second. `make(seq)` picks the sending user and
/// the command. A client whose queue is full is skipped (counted), so a slow server
/// shows up as a lower send rate rather than unbounded queues in the bench.
async fn generate(
    clients: &Clients,
    rate: f64,
    total: u64,
    mut make: impl FnMut(u64) -> (usize, Cmd),
) -> GenStats {
    let mut g = GenStats::default();
    let start = Instant::now();
    let mut iv = tokio::time::interval(Duration::from_millis(1));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while g.issued < total {
        iv.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while g.issued < due {
            let (sender, cmd) = make(g.issued);
            match clients.senders[sender].try_send(cmd) {
                Ok(()) => g.enqueued += 1,
                Err(TrySendError::Full(_)) => g.skipped_backlog += 1,
                Err(TrySendError::Closed(_)) => g.skipped_offline += 1,
            }
            g.issued += 1;
        }
    }
    g.elapsed = start.elapsed();
    g
}

/// Parses `hb1 RUN SEQ TS rest…`; `None` for anything else.
fn parse_marker(text: &str) -> Option<(u32, u64, u64, std::str::SplitWhitespace<'_>)> {
    let mut it = text.split_whitespace();
    if it.next()? != "hb1" {
        return None;
    }
    let run = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((run, seq, ts, it))
}

// ---------------------------------------------------------------------------------------
// chat

struct ChatState {
    run: u32,
    progress: Arc<Progress>,
    sent: AtomicBits,
    recv: AtomicBits,
    latency: Histogram,
    duplicates: AtomicU64,
    misrouted: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    unsent: AtomicU64,
    last_recv_ns: AtomicU64,
}

impl Handler for ChatState {
    fn on_stanza(&self, me: usize, el: &Element) {
        if el.name != "message" {
            return;
        }
        if el.attr("type") == Some("error") {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(body) = el.child("body", xmpp::NS_CLIENT) else {
            return;
        };
        let text = body.text();
        let Some((run, seq, ts, mut rest)) = parse_marker(&text) else {
            return;
        };
        if run != self.run {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _from = rest.next();
        let to: Option<usize> = rest.next().and_then(|t| t.parse().ok());
        if to != Some(me) {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.recv.set(seq) {
            Some(false) => {
                let now = now_ns();
                self.latency.record(now.saturating_sub(ts) / 1000);
                self.last_recv_ns.fetch_max(now, Ordering::Relaxed);
                self.progress.received.fetch_add(1, Ordering::Relaxed);
            }
            Some(true) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.misrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_send(&self, _me: usize, cmd: &Cmd) {
        if let Cmd::Chat { seq, .. } = cmd {
            self.sent.set(*seq);
        }
    }

    fn on_unsent(&self, _me: usize, _cmd: &Cmd) {
        self.unsent.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn chat(c: &Common, a: &ChatArgs) -> Result<Report, RunError> {
    if !(a.rate > 0.0 && a.duration > 0.0) {
        return Err(RunError::Usage(
            "--rate and --duration must be positive".into(),
        ));
    }
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let mut pop = c.population()?;
    let run = run_token();
    pop.cfg = Arc::new(with_run(&pop, run));
    let progress = Arc::new(Progress::default());
    let _ticker = runner::ticker(progress.clone(), c.quiet);
    let state = Arc::new(ChatState {
        run,
        progress: progress.clone(),
        sent: AtomicBits::new(total),
        recv: AtomicBits::new(total),
        latency: Histogram::new(),
        duplicates: AtomicU64::new(0),
        misrouted: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        unsent: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
    });
    let rss_before = c.server_pid.and_then(runner::rss_kib);
    let clients = runner::start(&pop, steps(!a.no_roster), state.clone(), progress.clone());
    runner::wait_logins(&progress, pop.len()).await;
    let online = clients.online_list();
    let mut r = Report::new("chat", server_name(c));
    r.param("rate", a.rate);
    r.param("duration_s", a.duration);
    r.param(
        "contacts",
        match a.contacts {
            Contacts::Ring => "ring",
            Contacts::Random => "random",
        },
    );
    r.param("body_size", a.body_size as u64);
    if online.is_empty() {
        login_metrics(&mut r, &progress, pop.len());
        r.fail("no user is online");
        clients.shutdown(Duration::from_secs(5)).await;
        return Ok(r);
    }

    let gen_start_ns = now_ns();
    let mut rng = rand::thread_rng();
    let n = online.len();
    let g = generate(&clients, a.rate, total, |seq| {
        let pos = (seq % n as u64) as usize;
        let to = match a.contacts {
            Contacts::Ring => online[(pos + 1) % n],
            Contacts::Random if n > 1 => {
                let mut o = rng.gen_range(0..n - 1);
                if o >= pos {
                    o += 1;
                }
                online[o]
            }
            Contacts::Random => online[pos],
        };
        (
            online[pos],
            Cmd::Chat {
                to,
                seq,
                pad: a.body_size,
            },
        )
    })
    .await;

    // Drain: every queued command written (or given up), every written message received.
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain.max(0.0));
    loop {
        let written = progress.sent.load(Ordering::Relaxed);
        let unsent = state.unsent.load(Ordering::Relaxed);
        let received = progress.received.load(Ordering::Relaxed);
        if (written + unsent >= g.enqueued && received >= written) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = c.server_pid.and_then(runner::rss_kib);
    clients.shutdown(Duration::from_secs(30)).await;

    let written = state.sent.count();
    let delivered = progress.received.load(Ordering::Relaxed);
    let lost = state.sent.count_and_not(&state.recv);
    let unexpected = state.recv.count_and_not(&state.sent);
    let duplicates = state.duplicates.load(Ordering::Relaxed);
    let misrouted = state.misrouted.load(Ordering::Relaxed);
    let errors = state.errors.load(Ordering::Relaxed);
    let last = state.last_recv_ns.load(Ordering::Relaxed);
    let span = (last.saturating_sub(gen_start_ns) as f64 / 1e9).max(g.elapsed.as_secs_f64());

    r.metric("users", pop.len() as u64, "");
    r.metric("online", n as u64, "");
    r.metric_f("offered_rate", a.rate, "msg/s");
    r.metric("messages_planned", total, "");
    r.metric("messages_sent", written, "");
    r.metric("skipped_backlog", g.skipped_backlog, "");
    r.metric("skipped_offline", g.skipped_offline, "");
    r.metric_f(
        "send_rate",
        written as f64 / g.elapsed.as_secs_f64(),
        "msg/s",
    );
    r.metric("delivered", delivered, "");
    r.metric_f("delivered_per_s", delivered as f64 / span, "msg/s");
    r.metric("lost", lost, "");
    r.metric("duplicated", duplicates, "");
    r.metric("misrouted", misrouted + unexpected, "");
    r.metric("error_replies", errors, "");
    r.metric(
        "unsent_on_disconnect",
        state.unsent.load(Ordering::Relaxed),
        "",
    );
    r.metric(
        "stale_from_earlier_runs",
        state.stale.load(Ordering::Relaxed),
        "",
    );
    latency_metrics(&mut r, &state.latency);
    login_metrics(&mut r, &progress, pop.len());
    rss_metrics(&mut r, rss_before, rss_after, n as u64);
    if lost > 0 {
        r.fail(format!("{lost} of {written} messages lost"));
    }
    if duplicates > 0 {
        r.fail(format!("{duplicates} messages duplicated"));
    }
    if misrouted + unexpected > 0 {
        r.fail(format!(
            "{} messages reached the wrong user",
            misrouted + unexpected
        ));
    }
    if errors > 0 {
        r.fail(format!("{errors} messages bounced with an error"));
    }
    if written == 0 {
        r.fail("no message was sent");
    }
    Ok(r)
}

/// The population's connection config with this run's token.
fn with_run(pop: &Population, run: u32) -> xmpp::ConnectConfig {
    let c = &pop.cfg;
    xmpp::ConnectConfig {
        addr: c.addr,
        domain: c.domain.clone(),
        direct_tls: c.direct_tls,
        mech: c.mech,
        source_ips: c.source_ips.clone(),
        pipeline: c.pipeline,
        resource: c.resource.clone(),
        tls: c.tls.clone(),
        tls_name: c.tls_name.clone(),
        bare_jids: c.bare_jids.clone(),
        run,
    }
}

// ---------------------------------------------------------------------------------------
// Roster topology shared by provision and presence

/// User i's contacts are i±1 .. i±h (wrapping), h = K/2 rounded up, at most (n-1)/2 so
/// that no contact appears twice.
#[derive(Clone, Copy)]
struct Ring {
    n: usize,
    h: usize,
}

impl Ring {
    fn new(n: usize, k: usize) -> Ring {
        Ring {
            n,
            h: k.div_ceil(2).min(n.saturating_sub(1) / 2),
        }
    }

    fn contacts(self, i: usize) -> impl Iterator<Item = usize> {
        (1..=self.h).flat_map(move |d| [(i + d) % self.n, (i + self.n - d) % self.n])
    }

    fn is_contact(self, a: usize, b: usize) -> bool {
        let d = (b + self.n - a) % self.n;
        d != 0 && (d <= self.h || self.n - d <= self.h)
    }

    fn size(self) -> usize {
        2 * self.h
    }
}

// ---------------------------------------------------------------------------------------
// presence

struct PresenceState {
    run: u32,
    ring: Ring,
    index: HashMap<String, usize>,
    progress: Arc<Progress>,
    sent: AtomicBits,
    counts: Counters,
    latency: Histogram,
    misrouted: AtomicU64,
    stale: AtomicU64,
    rosters_incomplete: AtomicU64,
    last_recv_ns: AtomicU64,
}

impl Handler for PresenceState {
    fn on_login(&self, me: usize, s: &Session) {
        let both = s
            .roster
            .iter()
            .filter(|(j, sub)| {
                sub == "both"
                    && self
                        .index
                        .get(j.as_str())
                        .is_some_and(|&o| self.ring.is_contact(me, o))
            })
            .count();
        if both < self.ring.size() {
            self.rosters_incomplete.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_stanza(&self, me: usize, el: &Element) {
        if el.name != "presence" || el.attr("type").is_some() {
            return;
        }
        let Some(status) = el.child("status", xmpp::NS_CLIENT) else {
            return;
        };
        let text = status.text();
        let Some((run, seq, ts, _)) = parse_marker(&text) else {
            return;
        };
        if run != self.run {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let from = el.attr("from").map(xmpp::bare).unwrap_or("");
        match self.index.get(from) {
            Some(&o) if o == me => return, // our own broadcast echoed back
            Some(&o) if self.ring.is_contact(me, o) && self.counts.bump(seq) => {}
            _ => {
                self.misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let now = now_ns();
        self.latency.record(now.saturating_sub(ts) / 1000);
        self.last_recv_ns.fetch_max(now, Ordering::Relaxed);
        self.progress.received.fetch_add(1, Ordering::Relaxed);
    }

    fn on_send(&self, _me: usize, cmd: &Cmd) {
        if let Cmd::Presence { seq } = cmd {
            self.sent.set(*seq);
        }
    }
}

pub async fn presence(c: &Common, a: &PresenceArgs) -> Result<Report, RunError> {
    if !(a.rate > 0.0 && a.duration > 0.0) {
        return Err(RunError::Usage(
            "--rate and --duration must be positive".into(),
        ));
    }
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let mut pop = c.population()?;
    let run = run_token();
    pop.cfg = Arc::new(with_run(&pop, run));
    let ring = Ring::new(pop.len(), a.contacts);
    let progress = Arc::new(Progress::default());
    let _ticker = runner::ticker(progress.clone(), c.quiet);
    let index = pop
        .cfg
        .bare_jids
        .iter()
        .enumerate()
        .map(|(i, j)| (j.clone(), i))
        .collect();
    let state = Arc::new(PresenceState {
        run,
        ring,
        index,
        progress: progress.clone(),
        sent: AtomicBits::new(total),
        counts: Counters::new(total),
        latency: Histogram::new(),
        misrouted: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        rosters_incomplete: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
    });
    let rss_before = c.server_pid.and_then(runner::rss_kib);
    let clients = runner::start(&pop, steps(true), state.clone(), progress.clone());
    runner::wait_logins(&progress, pop.len()).await;
    tokio::time::sleep(Duration::from_secs_f64(a.settle.max(0.0))).await;
    let online = clients.online_list();
    let mut r = Report::new("presence", server_name(c));
    r.param("contacts", ring.size() as u64);
    r.param("rate", a.rate);
    r.param("duration_s", a.duration);
    if online.is_empty() {
        login_metrics(&mut r, &progress, pop.len());
        r.fail("no user is online");
        clients.shutdown(Duration::from_secs(5)).await;
        return Ok(r);
    }
    // Expected deliveries per change: the sender's contacts that are online.
    let expect: Vec<u64> = (0..pop.len())
        .map(|i| {
            ring.contacts(i)
                .filter(|&o| clients.online[o].load(Ordering::Relaxed))
                .count() as u64
        })
        .collect();
    let n = online.len();
    let sender_of = |seq: u64| online[(seq % n as u64) as usize];
    let gen_start_ns = now_ns();
    let g = generate(&clients, a.rate, total, |seq| {
        (sender_of(seq), Cmd::Presence { seq })
    })
    .await;

    let expected_for_sent = || {
        (0..total)
            .filter(|&s| state.sent.get(s))
            .map(|s| expect[sender_of(s)])
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain.max(0.0));
    loop {
        let written = progress.sent.load(Ordering::Relaxed);
        let received = progress.received.load(Ordering::Relaxed);
        if (written >= g.enqueued && received >= expected_for_sent()) || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after = c.server_pid.and_then(runner::rss_kib);
    clients.shutdown(Duration::from_secs(30)).await;

    let (mut changes, mut expected, mut lost, mut dup) = (0u64, 0u64, 0u64, 0u64);
    for s in (0..total).filter(|&s| state.sent.get(s)) {
        changes += 1;
        let e = expect[sender_of(s)];
        let got = state.counts.get(s);
        expected += e;
        lost += e.saturating_sub(got);
        dup += got.saturating_sub(e);
    }
    let delivered = progress.received.load(Ordering::Relaxed);
    let last = state.last_recv_ns.load(Ordering::Relaxed);
    let span = (last.saturating_sub(gen_start_ns) as f64 / 1e9).max(g.elapsed.as_secs_f64());
    let incomplete = state.rosters_incomplete.load(Ordering::Relaxed);
    let misrouted = state.misrouted.load(Ordering::Relaxed);

    r.metric("users", pop.len() as u64, "");
    r.metric("online", n as u64, "");
    r.metric("rosters_incomplete", incomplete, "");
    r.metric_f("offered_rate", a.rate, "changes/s");
    r.metric("changes_sent", changes, "");
    r.metric("skipped_backlog", g.skipped_backlog, "");
    r.metric("skipped_offline", g.skipped_offline, "");
    r.metric("deliveries_expected", expected, "");
    r.metric("delivered", delivered, "");
    r.metric_f("delivered_per_s", delivered as f64 / span, "presences/s");
    r.metric("lost", lost, "");
    r.metric("duplicated", dup, "");
    r.metric("misrouted", misrouted, "");
    r.metric(
        "stale_from_earlier_runs",
        state.stale.load(Ordering::Relaxed),
        "",
    );
    latency_metrics(&mut r, &state.latency);
    login_metrics(&mut r, &progress, pop.len());
    rss_metrics(&mut r, rss_before, rss_after, n as u64);
    if incomplete > 0 {
        r.fail(format!(
            "{incomplete} users lack some of their {} mutual contacts (run `provision` with the same --users and --contacts)",
            ring.size()
        ));
    }
    if lost > 0 {
        r.fail(format!("{lost} of {expected} presence deliveries lost"));
    }
    if dup > 0 {
        r.fail(format!("{dup} presence deliveries duplicated"));
    }
    if misrouted > 0 {
        r.fail(format!("{misrouted} presences from non-contacts"));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// muc

/// Join progress of one user.
const JOIN_NONE: u8 = 0;
const JOIN_SENT: u8 = 1;
const JOIN_OK: u8 = 2;
const JOIN_FAILED: u8 = 3;

/// Outcome of the owner's configuration form.
const CFG_NONE: u8 = 0;
const CFG_OK: u8 = 1;
const CFG_FAILED: u8 = 2;

const NS_DELAY: &str = "urn:xmpp:delay";

/// The first few failures of a run, reported as examples.
#[derive(Default)]
struct Samples(Mutex<Vec<String>>);

impl Samples {
    fn push(&self, s: String) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 5 {
            v.push(s);
        }
    }

    fn report(&self, r: &mut Report) {
        for s in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            r.fail(format!("e.g. {s}"));
        }
    }
}

struct MucState {
    run: u32,
    /// Room bare JID → room index.
    rooms: HashMap<String, usize>,
    /// The room each user joins (`None`: not an occupant).
    room_of: Vec<Option<usize>>,
    progress: Arc<Progress>,
    join_sent_ns: Vec<AtomicU64>,
    join: Vec<AtomicU8>,
    /// The self-presence carried status 201: this user created the room.
    created: Vec<AtomicBool>,
    configured: Vec<AtomicU8>,
    join_time: Histogram,
    sent: AtomicBits,
    counts: Counters,
    latency: Histogram,
    misrouted: AtomicU64,
    stale: AtomicU64,
    history: AtomicU64,
    errors: AtomicU64,
    unsent: AtomicU64,
    last_recv_ns: AtomicU64,
    samples: Samples,
}

impl MucState {
    fn joined(&self, i: usize) -> bool {
        self.join[i].load(Ordering::Acquire) == JOIN_OK
    }

    fn on_presence(&self, me: usize, room: usize, el: &Element) {
        let nick = el.attr("from").and_then(|f| f.split_once('/')).map(|x| x.1);
        let x = el.child("x", runner::NS_MUC_USER);
        let codes: Vec<&str> = x
            .map(|x| {
                x.elements()
                    .filter(|c| c.name == "status")
                    .filter_map(|c| c.attr("code"))
                    .collect()
            })
            .unwrap_or_default();
        let mine = codes.contains(&"110") || nick == Some(runner::muc_nick(me).as_str());
        if !mine || self.room_of[me] != Some(room) {
            return;
        }
        // Only the reply to our own join counts (a join is answered once).
        let ty = el.attr("type");
        let settle = |to: u8| {
            self.join[me]
                .compare_exchange(JOIN_SENT, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        if ty == Some("error") {
            if settle(JOIN_FAILED) {
                self.samples
                    .push(format!("join of user {me}: {}", xmpp::stanza_error(el)));
            }
        } else if ty.is_none() && codes.contains(&"110") && settle(JOIN_OK) {
            let sent = self.join_sent_ns[me].load(Ordering::Acquire);
            self.join_time.record(now_ns().saturating_sub(sent) / 1000);
            if codes.contains(&"201") {
                self.created[me].store(true, Ordering::Release);
            }
        }
    }

    fn on_message(&self, me: usize, room: Option<usize>, el: &Element) {
        if el.attr("type") == Some("error") {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.samples
                .push(format!("message bounced: {}", xmpp::stanza_error(el)));
            return;
        }
        if el.attr("type") != Some("groupchat") {
            return;
        }
        let Some(body) = el.child("body", xmpp::NS_CLIENT) else {
            return;
        };
        let text = body.text();
        let Some((run, seq, ts, mut rest)) = parse_marker(&text) else {
            return;
        };
        if run != self.run {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if el.child("delay", NS_DELAY).is_some() {
            // Room history despite maxstanzas='0': not a live delivery.
            self.history.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sender: Option<usize> = rest.next().and_then(|t| t.parse().ok());
        let sender_room = sender.and_then(|s| self.room_of.get(s).copied().flatten());
        if room.is_none() || self.room_of[me] != room || sender_room != room {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.counts.bump(seq) {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = now_ns();
        self.latency.record(now.saturating_sub(ts) / 1000);
        self.last_recv_ns.fetch_max(now, Ordering::Relaxed);
        self.progress.received.fetch_add(1, Ordering::Relaxed);
    }
}

impl Handler for MucState {
    fn on_stanza(&self, me: usize, el: &Element) {
        let room = el
            .attr("from")
            .and_then(|f| self.rooms.get(xmpp::bare(f)))
            .copied();
        match el.name.as_str() {
            "presence" => {
                if let Some(room) = room {
                    self.on_presence(me, room, el);
                }
            }
            "message" => self.on_message(me, room, el),
            "iq" if el.attr("id") == Some("hbcfg") => {
                if el.attr("type") == Some("result") {
                    self.configured[me].store(CFG_OK, Ordering::Release);
                } else {
                    self.configured[me].store(CFG_FAILED, Ordering::Release);
                    self.samples.push(format!(
                        "room configuration by user {me}: {}",
                        xmpp::stanza_error(el)
                    ));
                }
            }
            _ => {}
        }
    }

    fn on_send(&self, me: usize, cmd: &Cmd) {
        match cmd {
            Cmd::MucJoin { .. } => {
                self.join_sent_ns[me].store(now_ns(), Ordering::Release);
                self.join[me].store(JOIN_SENT, Ordering::Release);
            }
            Cmd::Groupchat { seq, .. } => {
                self.sent.set(*seq);
            }
            _ => {}
        }
    }

    fn on_unsent(&self, _me: usize, cmd: &Cmd) {
        if let Cmd::Groupchat { .. } = cmd {
            self.unsent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Polls `done` every 10 ms until it holds or `deadline` passes; returns whether it held.
async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends one join command per user in `who` at `rate` per second (0: at once).
async fn send_joins(
    clients: &Clients,
    who: &[usize],
    room_jids: &[Arc<str>],
    room_of: &[Option<usize>],
    rate: f64,
) {
    let start = tokio::time::Instant::now();
    for (k, &i) in who.iter().enumerate() {
        if rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        let Some(r) = room_of[i] else { continue };
        let cmd = Cmd::MucJoin {
            room: room_jids[r].clone(),
        };
        // A closed queue (session gone) shows up as a join that never completes.
        let _ = clients.senders[i].send(cmd).await;
    }
}

pub async fn muc(c: &Common, a: &MucArgs) -> Result<Report, RunError> {
    if !(a.rate > 0.0 && a.duration > 0.0) {
        return Err(RunError::Usage(
            "--rate and --duration must be positive".into(),
        ));
    }
    if a.rooms == 0 {
        return Err(RunError::Usage("--rooms must be at least 1".into()));
    }
    let per_room = a.occupants.unwrap_or(c.users / a.rooms);
    if per_room == 0 || per_room > 60_000 || per_room * a.rooms > c.users {
        return Err(RunError::Usage(format!(
            "--rooms {} × --occupants {per_room} needs 1..=60000 occupants per room and at most --users {} users",
            a.rooms, c.users
        )));
    }
    let service = a
        .service
        .clone()
        .unwrap_or_else(|| format!("conference.{}", c.domain));
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let mut pop = c.population()?;
    let run = run_token();
    pop.cfg = Arc::new(with_run(&pop, run));
    let n_users = pop.len();
    let room_jids: Vec<Arc<str>> = (1..=a.rooms)
        .map(|r| Arc::from(format!("{}{r}@{service}", a.room_prefix)))
        .collect();
    let room_of: Vec<Option<usize>> = (0..n_users)
        .map(|i| (i < per_room * a.rooms).then_some(i / per_room))
        .collect();
    let progress = Arc::new(Progress::default());
    let _ticker = runner::ticker(progress.clone(), c.quiet);
    let state = Arc::new(MucState {
        run,
        rooms: room_jids
            .iter()
            .enumerate()
            .map(|(r, j)| (j.to_string(), r))
            .collect(),
        room_of: room_of.clone(),
        progress: progress.clone(),
        join_sent_ns: (0..n_users).map(|_| AtomicU64::new(0)).collect(),
        join: (0..n_users).map(|_| AtomicU8::new(JOIN_NONE)).collect(),
        created: (0..n_users).map(|_| AtomicBool::new(false)).collect(),
        configured: (0..n_users).map(|_| AtomicU8::new(CFG_NONE)).collect(),
        join_time: Histogram::new(),
        sent: AtomicBits::new(total),
        counts: Counters::new(total),
        latency: Histogram::new(),
        misrouted: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        history: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        unsent: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        samples: Samples::default(),
    });
    let rss_before = c.server_pid.and_then(runner::rss_kib);
    let clients = runner::start(&pop, steps(false), state.clone(), progress.clone());
    runner::wait_logins(&progress, n_users).await;
    let online = clients.online_list();
    let mut r = Report::new("muc", server_name(c));
    r.param("rooms", a.rooms as u64);
    r.param("occupants", per_room as u64);
    r.param("service", service.as_str());
    r.param("rate", a.rate);
    r.param("duration_s", a.duration);
    r.param("join_rate", a.join_rate);
    r.param("body_size", a.body_size as u64);
    if online.is_empty() {
        login_metrics(&mut r, &progress, n_users);
        r.fail("no user is online");
        clients.shutdown(Duration::from_secs(5)).await;
        return Ok(r);
    }
    let join_timeout = Duration::from_secs_f64(a.join_timeout.max(0.0));

    // Join phase 1: the first online occupant of each room creates it and, when the room
    // is new (status 201, locked), submits the empty configuration form (instant room).
    let join_t0 = Instant::now();
    let mut owner: Vec<Option<usize>> = vec![None; a.rooms];
    for &i in &online {
        if let Some(rm) = room_of[i] {
            owner[rm].get_or_insert(i);
        }
    }
    let owners: Vec<usize> = owner.iter().flatten().copied().collect();
    send_joins(&clients, &owners, &room_jids, &room_of, a.join_rate).await;
    let deadline = Instant::now() + join_timeout;
    let settled = |i: usize| state.join[i].load(Ordering::Acquire) >= JOIN_OK;
    wait_until(deadline, || owners.iter().all(|&o| settled(o))).await;
    let mut configuring = Vec::new();
    for &o in &owners {
        if !state.joined(o) {
            continue;
        }
        if state.created[o].load(Ordering::Acquire) {
            let room = room_jids[room_of[o].unwrap_or(0)].clone();
            let _ = clients.senders[o].send(Cmd::MucConfigure { room }).await;
            configuring.push(o);
        } else {
            // The room existed already (e.g. persistent): it is not locked.
            state.configured[o].store(CFG_OK, Ordering::Release);
        }
    }
    let deadline = Instant::now() + join_timeout;
    wait_until(deadline, || {
        configuring
            .iter()
            .all(|&o| state.configured[o].load(Ordering::Acquire) != CFG_NONE)
    })
    .await;
    let ready: Vec<bool> = owner
        .iter()
        .map(|o| o.is_some_and(|o| state.configured[o].load(Ordering::Acquire) == CFG_OK))
        .collect();
    let rooms_created = owners
        .iter()
        .filter(|&&o| state.created[o].load(Ordering::Acquire))
        .count() as u64;

    // Join phase 2: everyone else joins the rooms that are ready.
    let rest: Vec<usize> = online
        .iter()
        .copied()
        .filter(|&i| room_of[i].is_some_and(|rm| ready[rm] && owner[rm] != Some(i)))
        .collect();
    send_joins(&clients, &rest, &room_jids, &room_of, a.join_rate).await;
    let deadline = Instant::now() + join_timeout;
    wait_until(deadline, || rest.iter().all(|&i| settled(i))).await;
    let join_phase = join_t0.elapsed();

    let occupants_online = online.iter().filter(|&&i| room_of[i].is_some()).count() as u64;
    let joined: Vec<usize> = online
        .iter()
        .copied()
        .filter(|&i| state.joined(i))
        .collect();
    let mut members = vec![0u64; a.rooms];
    for &i in &joined {
        if let Some(rm) = room_of[i] {
            members[rm] += 1;
        }
    }
    let joins_failed = occupants_online - joined.len() as u64;

    // Messages: round-robin over the occupants that joined, each to its own room; every
    // occupant of the room (the sender included) must receive it exactly once.
    let n = joined.len().max(1);
    let sender_of = |seq: u64| joined[(seq % n as u64) as usize];
    let room_of_sender = |seq: u64| room_of[sender_of(seq)].unwrap_or(0);
    let gen_start_ns = now_ns();
    let g = if joined.is_empty() {
        GenStats::default()
    } else {
        generate(&clients, a.rate, total, |seq| {
            let s = sender_of(seq);
            let cmd = Cmd::Groupchat {
                room: room_jids[room_of_sender(seq)].clone(),
                seq,
                pad: a.body_size,
            };
            (s, cmd)
        })
        .await
    };
    let expected_for_sent = || {
        (0..total)
            .filter(|&s| state.sent.get(s))
            .map(|s| members[room_of_sender(s)])
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain.max(0.0));
    loop {
        let written = state.sent.count();
        let unsent = state.unsent.load(Ordering::Relaxed);
        let received = progress.received.load(Ordering::Relaxed);
        if (written + unsent >= g.enqueued && received >= expected_for_sent())
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = c.server_pid.and_then(runner::rss_kib);
    clients.shutdown(Duration::from_secs(30)).await;

    let (mut written, mut expected, mut lost, mut dup) = (0u64, 0u64, 0u64, 0u64);
    for s in (0..total).filter(|&s| state.sent.get(s)) {
        written += 1;
        let e = members[room_of_sender(s)];
        let got = state.counts.get(s);
        expected += e;
        lost += e.saturating_sub(got);
        dup += got.saturating_sub(e);
    }
    let delivered = progress.received.load(Ordering::Relaxed);
    let last = state.last_recv_ns.load(Ordering::Relaxed);
    let span = (last.saturating_sub(gen_start_ns) as f64 / 1e9)
        .max(g.elapsed.as_secs_f64())
        .max(1e-9);
    let misrouted = state.misrouted.load(Ordering::Relaxed);
    let errors = state.errors.load(Ordering::Relaxed);
    let ms = |v: u64| v as f64 / 1000.0;

    r.metric("users", n_users as u64, "");
    r.metric("online", online.len() as u64, "");
    r.metric("rooms", a.rooms as u64, "");
    r.metric("rooms_created", rooms_created, "");
    r.metric(
        "rooms_ready",
        ready.iter().filter(|&&b| b).count() as u64,
        "",
    );
    r.metric("joins_ok", joined.len() as u64, "");
    r.metric("joins_failed", joins_failed, "");
    r.metric_f("join_time_p50", ms(state.join_time.quantile(0.5)), "ms");
    r.metric_f("join_time_p99", ms(state.join_time.quantile(0.99)), "ms");
    r.metric_f("join_time_max", ms(state.join_time.max()), "ms");
    r.metric_f("join_phase", join_phase.as_secs_f64(), "s");
    r.metric_f("offered_rate", a.rate, "msg/s");
    r.metric("messages_planned", total, "");
    r.metric("messages_sent", written, "");
    r.metric("skipped_backlog", g.skipped_backlog, "");
    r.metric("skipped_offline", g.skipped_offline, "");
    r.metric_f(
        "send_rate",
        written as f64 / g.elapsed.as_secs_f64().max(1e-9),
        "msg/s",
    );
    r.metric("copies_expected", expected, "");
    r.metric("delivered", delivered, "");
    r.metric_f("delivered_per_s", delivered as f64 / span, "msg/s");
    r.metric("lost", lost, "");
    r.metric("duplicated", dup, "");
    r.metric("misrouted", misrouted, "");
    r.metric("error_replies", errors, "");
    r.metric(
        "history_replayed",
        state.history.load(Ordering::Relaxed),
        "",
    );
    r.metric(
        "unsent_on_disconnect",
        state.unsent.load(Ordering::Relaxed),
        "",
    );
    r.metric(
        "stale_from_earlier_runs",
        state.stale.load(Ordering::Relaxed),
        "",
    );
    latency_metrics(&mut r, &state.latency);
    login_metrics(&mut r, &progress, n_users);
    rss_metrics(&mut r, rss_before, rss_after, online.len() as u64);
    if joins_failed > 0 {
        r.fail(format!(
            "{joins_failed} of {occupants_online} room joins failed"
        ));
    }
    if lost > 0 {
        r.fail(format!("{lost} of {expected} groupchat copies lost"));
    }
    if dup > 0 {
        r.fail(format!("{dup} groupchat copies duplicated"));
    }
    if misrouted > 0 {
        r.fail(format!(
            "{misrouted} groupchat messages reached the wrong user"
        ));
    }
    if errors > 0 {
        r.fail(format!("{errors} messages bounced with an error"));
    }
    if written == 0 {
        r.fail("no message was sent");
    }
    state.samples.report(&mut r);
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// mam

/// What a query asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QueryKind {
    /// The last page of the whole archive (`<before/>`).
    Last,
    /// The last page of messages exchanged with one contact (form field `with`).
    With,
    /// The page before the `<first/>` of the user's previous page.
    Back,
}

/// One issued query, from the generator to its reply.
struct QueryInfo {
    user: usize,
    kind: QueryKind,
    /// Results the page must hold at least (known from the fill), if known.
    expected: Option<u64>,
    /// Results of the earlier pages of this paging chain (for the next `Back` query).
    consumed: u64,
    sent_ns: u64,
    results: u64,
    first_id: Option<String>,
    last_id: Option<String>,
    done: bool,
}

/// A user's place in its backwards paging: the `<first/>` of its last page and the
/// results seen in the chain so far.
type Cursor = Option<(Arc<str>, u64)>;

struct MamState {
    run: u32,
    progress: Arc<Progress>,
    // Fill phase (ordinary chat messages, counted like `chat`).
    fill_sent: AtomicBits,
    fill_recv: AtomicBits,
    fill_dup: AtomicU64,
    fill_misrouted: AtomicU64,
    fill_last_recv_ns: AtomicU64,
    /// Message bounces (fill messages, or anything else with type error).
    errors: AtomicU64,
    stale: AtomicU64,
    // Query phase.
    queries: Mutex<HashMap<u64, QueryInfo>>,
    cursors: Vec<Mutex<Cursor>>,
    latency: Histogram,
    queries_ok: AtomicU64,
    query_errors: AtomicU64,
    results: AtomicU64,
    /// Sum over answered queries of the results each had to hold at least.
    results_expected: AtomicU64,
    /// Results without a forwarded message with a body.
    results_bad: AtomicU64,
    /// Results for a query already answered, unknown, or of another user.
    results_late: AtomicU64,
    /// Pages whose `<first/>` / `<last/>` ids are not those of the first / last result
    /// received before the reply.
    page_mismatch: AtomicU64,
    short_pages: AtomicU64,
    by_kind: [AtomicU64; 3],
    unsent: AtomicU64,
    first_send_ns: AtomicU64,
    last_fin_ns: AtomicU64,
    samples: Samples,
}

fn kind_index(k: QueryKind) -> usize {
    match k {
        QueryKind::Last => 0,
        QueryKind::With => 1,
        QueryKind::Back => 2,
    }
}

/// `PREFIX<run>-<seq>` → (run, seq).
fn parse_tagged(s: &str, prefix: &str) -> Option<(u32, u64)> {
    let (run, seq) = s.strip_prefix(prefix)?.split_once('-')?;
    Some((run.parse().ok()?, seq.parse().ok()?))
}

impl MamState {
    fn queries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, QueryInfo>> {
        self.queries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `<message><result xmlns='urn:xmpp:mam:2' queryid=… id=…><forwarded>…`.
    fn on_result(&self, me: usize, result: &Element) {
        let Some((run, seq)) = result.attr("queryid").and_then(|q| parse_tagged(q, "q")) else {
            self.results_late.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if run != self.run {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let valid = result
            .child("forwarded", runner::NS_FORWARD)
            .and_then(|f| f.child("message", xmpp::NS_CLIENT))
            .and_then(|m| m.child("body", xmpp::NS_CLIENT))
            .is_some_and(|b| !b.text().is_empty());
        let mut qs = self.queries();
        match qs.get_mut(&seq) {
            Some(q) if !q.done && q.user == me => {
                q.results += 1;
                if let Some(id) = result.attr("id") {
                    if q.first_id.is_none() {
                        q.first_id = Some(id.to_string());
                    }
                    q.last_id = Some(id.to_string());
                }
            }
            _ => {
                drop(qs);
                self.results_late.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        drop(qs);
        self.results.fetch_add(1, Ordering::Relaxed);
        if !valid {
            self.results_bad.fetch_add(1, Ordering::Relaxed);
            self.samples.push(format!(
                "result of query {seq} without a forwarded message with a body: {}",
                result.to_xml().chars().take(300).collect::<String>()
            ));
        }
    }

    /// The IQ reply to query `seq`.
    fn on_reply(&self, me: usize, seq: u64, el: &Element) {
        let now = now_ns();
        let mut qs = self.queries();
        let Some(q) = qs.get_mut(&seq).filter(|q| !q.done && q.user == me) else {
            return;
        };
        q.done = true;
        let (first_id, last_id) = (q.first_id.take(), q.last_id.take());
        let (user, kind, expected, consumed, results, sent) =
            (q.user, q.kind, q.expected, q.consumed, q.results, q.sent_ns);
        drop(qs);
        self.progress.received.fetch_add(1, Ordering::Relaxed);
        let fin = el.child("fin", runner::NS_MAM);
        let fin = match (el.attr("type"), fin) {
            (Some("result"), Some(fin)) => fin,
            _ => {
                self.query_errors.fetch_add(1, Ordering::Relaxed);
                self.samples.push(format!(
                    "query {seq} by user {user}: {}",
                    if el.attr("type") == Some("result") {
                        "result without <fin/>".to_string()
                    } else {
                        xmpp::stanza_error(el)
                    }
                ));
                return;
            }
        };
        self.latency.record(now.saturating_sub(sent) / 1000);
        self.last_fin_ns.fetch_max(now, Ordering::Relaxed);
        self.queries_ok.fetch_add(1, Ordering::Relaxed);
        self.by_kind[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
        let set = fin.child("set", runner::NS_RSM);
        let rsm = |name: &str| {
            set.and_then(|s| s.child(name, runner::NS_RSM))
                .map(|e| e.text().trim().to_string())
                .filter(|t| !t.is_empty())
        };
        let (first, last) = (rsm("first"), rsm("last"));
        if results > 0 && (first != first_id || last != last_id) {
            self.page_mismatch.fetch_add(1, Ordering::Relaxed);
            self.samples.push(format!(
                "query {seq}: page says first {first:?} last {last:?}, results received \
                 before the reply were {first_id:?} .. {last_id:?} ({results})"
            ));
        }
        if let Some(e) = expected {
            self.results_expected.fetch_add(e, Ordering::Relaxed);
            if results < e {
                self.short_pages.fetch_add(1, Ordering::Relaxed);
                self.samples.push(format!(
                    "query {seq} by user {user}: {results} results, expected at least {e}"
                ));
            }
        }
        if kind != QueryKind::With {
            let complete = fin.attr("complete") == Some("true");
            let mut c = self.cursors[user].lock().unwrap_or_else(|p| p.into_inner());
            *c = match first {
                Some(f) if results > 0 && !complete => Some((Arc::from(f), consumed + results)),
                _ => None,
            };
        }
    }

    /// A fill message delivered to `me`.
    fn on_chat(&self, me: usize, el: &Element) {
        let Some(body) = el.child("body", xmpp::NS_CLIENT) else {
            return;
        };
        let text = body.text();
        let Some((run, seq, _ts, mut rest)) = parse_marker(&text) else {
            return;
        };
        if run != self.run {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _from = rest.next();
        if rest.next().and_then(|t| t.parse::<usize>().ok()) != Some(me) {
            self.fill_misrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.fill_recv.set(seq) {
            Some(false) => {
                self.fill_last_recv_ns
                    .fetch_max(now_ns(), Ordering::Relaxed);
                self.progress.received.fetch_add(1, Ordering::Relaxed);
            }
            Some(true) => {
                self.fill_dup.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.fill_misrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Handler for MamState {
    fn on_stanza(&self, me: usize, el: &Element) {
        match el.name.as_str() {
            "message" => {
                if el.attr("type") == Some("error") {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.samples
                        .push(format!("message bounced: {}", xmpp::stanza_error(el)));
                } else if let Some(result) = el.child("result", runner::NS_MAM) {
                    self.on_result(me, result);
                } else {
                    self.on_chat(me, el);
                }
            }
            "iq" => {
                if let Some((run, seq)) = el.attr("id").and_then(|i| parse_tagged(i, "mam")) {
                    if run == self.run {
                        self.on_reply(me, seq, el);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_send(&self, _me: usize, cmd: &Cmd) {
        match cmd {
            Cmd::Chat { seq, .. } => {
                self.fill_sent.set(*seq);
            }
            Cmd::MamQuery { seq, .. } => {
                let now = now_ns();
                if let Some(q) = self.queries().get_mut(seq) {
                    q.sent_ns = now;
                }
                let _ = self.first_send_ns.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
    }

    fn on_unsent(&self, _me: usize, cmd: &Cmd) {
        if let Cmd::MamQuery { seq, .. } = cmd {
            self.queries().remove(seq);
            self.unsent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn mam(c: &Common, a: &MamArgs) -> Result<Report, RunError> {
    if !(a.rate > 0.0 && a.duration > 0.0) {
        return Err(RunError::Usage(
            "--rate and --duration must be positive".into(),
        ));
    }
    if a.page == 0 {
        return Err(RunError::Usage("--page must be at least 1".into()));
    }
    let shares = [a.with_share, a.back_share];
    if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || a.with_share + a.back_share > 1.0 {
        return Err(RunError::Usage(
            "--with-share and --back-share are fractions (0..1) with a sum of at most 1".into(),
        ));
    }
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let mut pop = c.population()?;
    let run = run_token();
    pop.cfg = Arc::new(with_run(&pop, run));
    let n_users = pop.len();
    let fill_total = (a.fill as u64) * n_users as u64;
    let progress = Arc::new(Progress::default());
    let _ticker = runner::ticker(progress.clone(), c.quiet);
    let state = Arc::new(MamState {
        run,
        progress: progress.clone(),
        fill_sent: AtomicBits::new(fill_total),
        fill_recv: AtomicBits::new(fill_total),
        fill_dup: AtomicU64::new(0),
        fill_misrouted: AtomicU64::new(0),
        fill_last_recv_ns: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        queries: Mutex::new(HashMap::new()),
        cursors: (0..n_users).map(|_| Mutex::new(None)).collect(),
        latency: Histogram::new(),
        queries_ok: AtomicU64::new(0),
        query_errors: AtomicU64::new(0),
        results: AtomicU64::new(0),
        results_expected: AtomicU64::new(0),
        results_bad: AtomicU64::new(0),
        results_late: AtomicU64::new(0),
        page_mismatch: AtomicU64::new(0),
        short_pages: AtomicU64::new(0),
        by_kind: Default::default(),
        unsent: AtomicU64::new(0),
        first_send_ns: AtomicU64::new(0),
        last_fin_ns: AtomicU64::new(0),
        samples: Samples::default(),
    });
    let rss_before = c.server_pid.and_then(runner::rss_kib);
    let clients = runner::start(&pop, steps(false), state.clone(), progress.clone());
    runner::wait_logins(&progress, n_users).await;
    let online = clients.online_list();
    let mut r = Report::new("mam", server_name(c));
    r.param("fill", a.fill as u64);
    r.param("fill_rate", a.fill_rate);
    r.param("page", a.page as u64);
    r.param("rate", a.rate);
    r.param("duration_s", a.duration);
    r.param("with_share", a.with_share);
    r.param("back_share", a.back_share);
    let n = online.len();
    if n < 2 {
        login_metrics(&mut r, &progress, n_users);
        r.fail("fewer than 2 users are online");
        clients.shutdown(Duration::from_secs(5)).await;
        return Ok(r);
    }
    // Ring over the online users: the contact of online[p] is online[p + 1].
    let next = |p: usize| online[(p + 1) % n];

    // Fill: round k sends one message from every online user to its contact. Sends wait
    // for queue space, so none is skipped.
    let fill_t0 = Instant::now();
    let fill_start_ns = now_ns();
    let fill_planned = (a.fill * n) as u64;
    let start = tokio::time::Instant::now();
    for seq in 0..fill_planned {
        if a.fill_rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / a.fill_rate))
                .await;
        }
        let p = (seq % n as u64) as usize;
        let cmd = Cmd::Chat {
            to: next(p),
            seq,
            pad: 0,
        };
        let _ = clients.senders[online[p]].send(cmd).await;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain.max(0.0));
    wait_until(deadline, || {
        let written = state.fill_sent.count();
        let unsent = state.unsent.load(Ordering::Relaxed);
        written + unsent >= fill_planned && state.fill_recv.count() >= written
    })
    .await;
    // Fill time: from the first send to the last delivery.
    let fill_done = state.fill_last_recv_ns.load(Ordering::Relaxed);
    let fill_elapsed = if fill_done > fill_start_ns {
        Duration::from_nanos(fill_done - fill_start_ns)
    } else {
        fill_t0.elapsed()
    };
    let fill_sent = state.fill_sent.count();
    let fill_delivered = state.fill_recv.count();
    let fill_lost = state.fill_sent.count_and_not(&state.fill_recv);
    if fill_planned > 0 {
        tokio::time::sleep(Duration::from_secs_f64(a.settle.max(0.0))).await;
    }

    // Queries, round-robin over the online users.
    let page = a.page as u64;
    let fill = a.fill as u64;
    let known = fill > 0 && fill_lost == 0;
    let mut rng = rand::thread_rng();
    let g = generate(&clients, a.rate, total, |seq| {
        let p = (seq % n as u64) as usize;
        let user = online[p];
        let x: f64 = rng.gen();
        let cursor = if x >= a.with_share && x < a.with_share + a.back_share {
            state.cursors[user]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else {
            None
        };
        // The archive holds (at least) `fill` messages sent to the next user and `fill`
        // received from the previous one; with 2 users both are the same contact.
        let (kind, with, before, consumed, expected) = if x < a.with_share {
            let e = if n == 2 { 2 * fill } else { fill };
            (QueryKind::With, Some(next(p)), None, 0, page.min(e))
        } else if let Some((first, consumed)) = cursor {
            let e = (2 * fill).saturating_sub(consumed);
            (QueryKind::Back, None, Some(first), consumed, page.min(e))
        } else {
            (QueryKind::Last, None, None, 0, page.min(2 * fill))
        };
        state.queries().insert(
            seq,
            QueryInfo {
                user,
                kind,
                expected: known.then_some(expected),
                consumed,
                sent_ns: 0,
                results: 0,
                first_id: None,
                last_id: None,
                done: false,
            },
        );
        let cmd = Cmd::MamQuery {
            seq,
            max: a.page,
            with,
            before,
        };
        (user, cmd)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain.max(0.0));
    wait_until(deadline, || {
        let unsent = state.unsent.load(Ordering::Relaxed);
        let answered =
            state.queries_ok.load(Ordering::Relaxed) + state.query_errors.load(Ordering::Relaxed);
        answered + unsent >= g.enqueued
    })
    .await;
    let rss_after = c.server_pid.and_then(runner::rss_kib);
    clients.shutdown(Duration::from_secs(30)).await;

    let queries_ok = state.queries_ok.load(Ordering::Relaxed);
    let query_errors = state.query_errors.load(Ordering::Relaxed);
    let unsent = state.unsent.load(Ordering::Relaxed);
    let timeouts = g
        .enqueued
        .saturating_sub(queries_ok + query_errors + unsent);
    let results = state.results.load(Ordering::Relaxed);
    let first = state.first_send_ns.load(Ordering::Relaxed);
    let last = state.last_fin_ns.load(Ordering::Relaxed);
    let span = (last.saturating_sub(first) as f64 / 1e9)
        .max(g.elapsed.as_secs_f64())
        .max(1e-9);
    let ms = |v: u64| v as f64 / 1000.0;
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);

    r.metric("users", n_users as u64, "");
    r.metric("online", n as u64, "");
    r.metric("fill_messages_sent", fill_sent, "");
    r.metric("fill_delivered", fill_delivered, "");
    r.metric("fill_lost", fill_lost, "");
    r.metric("fill_duplicated", count(&state.fill_dup), "");
    r.metric("fill_misrouted", count(&state.fill_misrouted), "");
    r.metric_f("fill_duration", fill_elapsed.as_secs_f64(), "s");
    r.metric_f(
        "fill_rate_achieved",
        if fill_sent > 0 {
            fill_delivered as f64 / fill_elapsed.as_secs_f64().max(1e-9)
        } else {
            0.0
        },
        "msg/s",
    );
    r.metric_f("offered_rate", a.rate, "queries/s");
    r.metric("queries_planned", total, "");
    r.metric("queries_sent", g.enqueued - unsent, "");
    r.metric("skipped_backlog", g.skipped_backlog, "");
    r.metric("skipped_offline", g.skipped_offline, "");
    r.metric("queries_ok", queries_ok, "");
    r.metric("queries_last_page", count(&state.by_kind[0]), "");
    r.metric("queries_with", count(&state.by_kind[1]), "");
    r.metric("queries_page_back", count(&state.by_kind[2]), "");
    r.metric("query_errors", query_errors, "");
    r.metric("query_timeouts", timeouts, "");
    r.metric_f("queries_per_s", queries_ok as f64 / span, "queries/s");
    r.metric("results", results, "");
    r.metric("results_expected_min", count(&state.results_expected), "");
    r.metric_f("results_per_s", results as f64 / span, "results/s");
    r.metric_f(
        "results_per_query",
        if queries_ok > 0 {
            results as f64 / queries_ok as f64
        } else {
            0.0
        },
        "",
    );
    r.metric("short_pages", count(&state.short_pages), "");
    r.metric("results_bad", count(&state.results_bad), "");
    r.metric("results_late", count(&state.results_late), "");
    r.metric("page_mismatch", count(&state.page_mismatch), "");
    r.metric("error_replies", count(&state.errors), "");
    r.metric("unsent_on_disconnect", unsent, "");
    r.metric("stale_from_earlier_runs", count(&state.stale), "");
    r.metric_f("latency_p50", ms(state.latency.quantile(0.5)), "ms");
    r.metric_f("latency_p99", ms(state.latency.quantile(0.99)), "ms");
    r.metric_f("latency_p999", ms(state.latency.quantile(0.999)), "ms");
    r.metric_f("latency_max", ms(state.latency.max()), "ms");
    r.metric_f("latency_mean", state.latency.mean() / 1000.0, "ms");
    login_metrics(&mut r, &progress, n_users);
    rss_metrics(&mut r, rss_before, rss_after, n as u64);
    if fill_lost > 0 {
        r.fail(format!("{fill_lost} of {fill_sent} fill messages lost"));
    }
    let fill_dup = count(&state.fill_dup) + count(&state.fill_misrouted);
    if fill_dup > 0 {
        r.fail(format!("{fill_dup} fill messages duplicated or misrouted"));
    }
    if query_errors > 0 {
        r.fail(format!("{query_errors} queries failed"));
    }
    if timeouts > 0 {
        r.fail(format!("{timeouts} queries got no reply within --drain"));
    }
    let short = count(&state.short_pages);
    if short > 0 {
        r.fail(format!(
            "{short} pages had fewer results than the fill put there"
        ));
    }
    let bad = count(&state.results_bad) + count(&state.results_late);
    if bad > 0 {
        r.fail(format!(
            "{bad} results were malformed or came after their query's reply"
        ));
    }
    let mismatch = count(&state.page_mismatch);
    if mismatch > 0 {
        r.fail(format!(
            "{mismatch} pages did not match the results received before the reply"
        ));
    }
    let errors = count(&state.errors);
    if errors > 0 {
        r.fail(format!("{errors} messages bounced with an error"));
    }
    if queries_ok == 0 {
        r.fail("no query was answered");
    }
    state.samples.report(&mut r);
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// provision

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Everyone asks each contact for a subscription.
    Subscribe,
    /// Everyone approves the (stored) requests of its contacts with a lower index, then
    /// (`upper`) those with a higher index. Two passes, so that the two sides of a pair
    /// never approve each other at the same moment: both approvals rewrite both roster
    /// items, and a server that does not serialize those updates can lose one.
    Approve { upper: bool },
    /// Everyone fetches the roster and checks every contact is `both`.
    Verify,
}

pub async fn provision(c: &Common, a: &ProvisionArgs) -> Result<Report, RunError> {
    let pop = c.population()?;
    let ring = Ring::new(pop.len(), a.contacts);
    let mut r = Report::new("provision", server_name(c));
    r.param("contacts", ring.size() as u64);
    r.param("concurrency", a.concurrency as u64);
    r.metric("users", pop.len() as u64, "");
    r.metric("contacts_per_user", ring.size() as u64, "");
    let t0 = Instant::now();
    for (pass, name) in [
        (Pass::Subscribe, "subscribe"),
        (Pass::Approve { upper: false }, "approve_lower"),
        (Pass::Approve { upper: true }, "approve_upper"),
        (Pass::Verify, "verify"),
    ] {
        let progress = Arc::new(Progress::default());
        let _ticker = runner::ticker(progress.clone(), c.quiet);
        if !c.quiet {
            eprintln!("provision: pass {name}");
        }
        let incomplete = Arc::new(AtomicU64::new(0));
        let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..pop.len() {
            let permit = sem.clone().acquire_owned().await;
            let cfg = pop.cfg.clone();
            let (user, pw) = pop.users[i].clone();
            let progress = progress.clone();
            let incomplete = incomplete.clone();
            let timeout = pop.login_timeout;
            tasks.spawn(async move {
                let _permit = permit;
                let work = provision_one(&cfg, ring, i, &user, &pw, pass);
                match tokio::time::timeout(timeout * 2, work).await {
                    Ok(Ok(complete)) => {
                        progress.logins_ok.fetch_add(1, Ordering::Relaxed);
                        if !complete {
                            incomplete.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(e)) => progress.login_failed(&e),
                    Err(_) => progress.login_failed(&xmpp::LoginError {
                        kind: xmpp::FailKind::Timeout,
                        detail: format!("{user}: provisioning took too long"),
                    }),
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        let failed = progress.logins_failed.load(Ordering::Relaxed);
        r.metric(&format!("{name}_failed"), failed, "");
        if failed > 0 {
            r.fail(format!("pass {name}: {failed} users failed"));
            for s in progress.failure_samples() {
                r.fail(format!("e.g. {s}"));
            }
        }
        if pass == Pass::Verify {
            let n = incomplete.load(Ordering::Relaxed);
            r.metric("rosters_incomplete", n, "");
            if n > 0 {
                r.fail(format!("{n} rosters are missing mutual contacts"));
            }
        }
    }
    r.metric_f("elapsed", t0.elapsed().as_secs_f64(), "s");
    Ok(r)
}

/// One user's part of a pass. Returns whether the roster is complete (Verify) or true.
async fn provision_one(
    cfg: &xmpp::ConnectConfig,
    ring: Ring,
    i: usize,
    user: &str,
    pw: &str,
    pass: Pass,
) -> Result<bool, xmpp::LoginError> {
    let steps = LoginSteps {
        roster: pass == Pass::Verify,
        presence: false,
    };
    let mut s = xmpp::login(cfg, i, user, pw, steps).await?;
    let stream_err = |e: String| xmpp::LoginError {
        kind: xmpp::FailKind::Stream,
        detail: format!("{user}: {e}"),
    };
    let mut complete = true;
    let mut out = Vec::new();
    match pass {
        Pass::Subscribe | Pass::Approve { .. } => {
            let (ty, only) = match pass {
                Pass::Approve { upper } => ("subscribed", Some(upper)),
                _ => ("subscribe", None),
            };
            for o in ring.contacts(i) {
                if only.is_some_and(|upper| (o > i) != upper) {
                    continue;
                }
                let p = Element::new("presence", xmpp::NS_CLIENT)
                    .with_attr("to", cfg.bare_jids[o].as_str())
                    .with_attr("type", ty);
                xmpp::write_stanza(&p, &mut out);
            }
        }
        Pass::Verify => {
            let both: Vec<&str> = s
                .roster
                .iter()
                .filter(|(_, sub)| sub == "both")
                .map(|(j, _)| j.as_str())
                .collect();
            complete = ring
                .contacts(i)
                .all(|o| both.contains(&cfg.bare_jids[o].as_str()));
        }
    }
    // A round trip after the stanzas: the server has handled them when the reply comes.
    let ping = Element::new("iq", xmpp::NS_CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "barrier")
        .with_attr("to", cfg.domain.as_str())
        .with_child(Element::new("ping", xmpp::NS_PING));
    xmpp::write_stanza(&ping, &mut out);
    s.io.send(&out)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    loop {
        let el = s.io.stanza().await.map_err(stream_err)?;
        if el.name == "iq" && el.attr("id") == Some("barrier") {
            break;
        }
        if el.name == "iq" {
            if let Some(reply) = xmpp::iq_reply(&el) {
                out.clear();
                xmpp::write_stanza(&reply, &mut out);
                s.io.send(&out)
                    .await
                    .map_err(|e| stream_err(e.to_string()))?;
            }
        }
    }
    s.close().await;
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_contacts_are_symmetric_and_distinct() {
        for (n, k) in [(20, 4), (5, 10), (100, 10), (2, 2), (1, 4)] {
            let ring = Ring::new(n, k);
            for i in 0..n {
                let cs: Vec<usize> = ring.contacts(i).collect();
                let mut d = cs.clone();
                d.sort();
                d.dedup();
                assert_eq!(d.len(), cs.len(), "n={n} k={k} i={i}");
                assert_eq!(cs.len(), ring.size());
                for &o in &cs {
                    assert_ne!(o, i);
                    assert!(ring.is_contact(i, o) && ring.is_contact(o, i));
                }
                let count = (0..n).filter(|&o| ring.is_contact(i, o)).count();
                assert_eq!(count, ring.size());
            }
        }
    }

    #[test]
    fn markers() {
        let (run, seq, ts, mut rest) = parse_marker("hb1 7 42 123 3 4 xxx").unwrap();
        assert_eq!((run, seq, ts), (7, 42, 123));
        assert_eq!(rest.next(), Some("3"));
        assert!(parse_marker("hello").is_none());
        assert!(parse_marker("hb1 x").is_none());
    }
}
