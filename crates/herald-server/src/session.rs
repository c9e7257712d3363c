//! The session registry: "where is this full JID?" answered in memory.
//!
//! This is the seam a cluster will replace with a distributed directory: callers only ask for
//! a user's resources or one full JID and get handles that accept stanzas. Per online user it
//! also caches what the routing path must not fetch from the database for every stanza: the
//! roster (for presence fan-out) and the block list (XEP-0191).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use herald_core::{Jid, StreamErrorCondition};
use herald_storage::RosterItem;
use herald_xml::Element;
use tokio::sync::mpsc;

/// What other tasks may ask a session's connection task to do.
#[derive(Debug)]
pub enum Outbound {
    /// Boxed so a queue slot is one pointer: tokio allocates channel slots in blocks, and an
    /// idle session's first block is part of its memory budget.
    Stanza(Box<Element>),
    /// Close the stream with this error (e.g. `conflict` when a new session takes the
    /// resource). Boxed to keep a queue slot at 16 bytes.
    Close(Box<(StreamErrorCondition, Option<String>)>),
}

/// Presence state other tasks read without messaging the session.
#[derive(Debug, Default)]
pub struct SessionShared {
    /// Sent initial presence and not yet unavailable.
    pub available: AtomicBool,
    pub priority: AtomicI32,
    /// The last available presence broadcast, replayed to probes and new resources.
    pub presence: Mutex<Option<Element>>,
    /// Asked for the roster, so it receives roster pushes (RFC 6121 §2.1.6).
    pub interested: AtomicBool,
    /// XEP-0280 carbons enabled.
    pub carbons: AtomicBool,
    /// XEP-0115 capabilities announced in presence (features once resolved).
    pub caps: Mutex<crate::ext::caps::ClientCaps>,
    /// A close request that did not fit in the full outbox.
    kick: Kick,
}

/// The out-of-band close: a client that stopped reading blocks its session task in a
/// socket write and leaves its outbox full, so a `Close` queued behind the stanzas would
/// never be seen. The task watches this alongside the socket.
#[derive(Debug, Default)]
struct Kick {
    reason: Mutex<Option<(StreamErrorCondition, Option<String>)>>,
    notify: tokio::sync::Notify,
}

impl SessionShared {
    /// Resolves once the session was told to close out of band, with the reason.
    pub async fn kicked(&self) -> (StreamErrorCondition, Option<String>) {
        loop {
            self.kick.notify.notified().await;
            if let Some(r) = self.kick_reason() {
                return r;
            }
        }
    }

    fn kick_reason(&self) -> Option<(StreamErrorCondition, Option<String>)> {
        self.kick
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_kicked(&self) -> bool {
        self.kick_reason().is_some()
    }
}

#[derive(Clone, Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub jid: Jid,
    tx: mpsc::Sender<Outbound>,
    pub shared: Arc<SessionShared>,
}

/// Why a stanza could not be queued; it comes back either way.
pub enum QueueError {
    Closed(Element),
    TimedOut(Element),
}

/// Queues a stanza on a bounded outbox, waiting up to `timeout` for room. The stanza is
/// returned on failure, never dropped: the caller reroutes it (other resources, offline
/// storage) or bounces it.
pub async fn queue(
    tx: &mpsc::Sender<Outbound>,
    stanza: Element,
    timeout: Duration,
) -> Result<(), QueueError> {
    let stanza = match tx.try_send(Outbound::Stanza(Box::new(stanza))) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Full(msg)) => unbox(msg),
        Err(mpsc::error::TrySendError::Closed(msg)) => return Err(QueueError::Closed(unbox(msg))),
    };
    // Reserve first, so a timeout leaves the stanza with us instead of inside a dropped
    // send future.
    match tokio::time::timeout(timeout, tx.reserve()).await {
        Ok(Ok(permit)) => {
            permit.send(Outbound::Stanza(Box::new(stanza)));
            Ok(())
        }
        Ok(Err(_)) => Err(QueueError::Closed(stanza)),
        Err(_) => Err(QueueError::TimedOut(stanza)),
    }
}

fn unbox(msg: Outbound) -> Element {
    match msg {
        Outbound::Stanza(s) => *s,
        Outbound::Close(_) => unreachable!("queue() only sends stanzas"),
    }
}

/// Delivery to a session failed; the stanza comes back so the caller can store or bounce it.
#[derive(Debug)]
pub struct Undeliverable(pub Element);

impl SessionHandle {
    pub fn new(id: u64, jid: Jid, tx: mpsc::Sender<Outbound>) -> SessionHandle {
        SessionHandle {
            id,
            jid,
            tx,
            shared: Arc::new(SessionShared::default()),
        }
    }

    pub fn available(&self) -> bool {
        self.shared.available.load(Ordering::Acquire)
    }

    pub fn priority(&self) -> i32 {
        self.shared.priority.load(Ordering::Acquire)
    }

    pub fn presence(&self) -> Option<Element> {
        self.shared
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queues a stanza. A full outbox makes the sender wait (backpressure) up to `timeout`;
    /// a session that stays full that long is told to close, and the stanza is returned.
    pub async fn send(&self, stanza: Element, timeout: Duration) -> Result<(), Undeliverable> {
        let stanza = match self.try_send(stanza) {
            Ok(()) => return Ok(()),
            // Full and already told to close as too slow: do not wait on it again.
            Err(s) if self.shared.is_kicked() => return Err(Undeliverable(s)),
            Err(s) => s,
        };
        match queue(&self.tx, stanza, timeout).await {
            Ok(()) => Ok(()),
            Err(QueueError::Closed(s)) => Err(Undeliverable(s)),
            Err(QueueError::TimedOut(s)) => {
                tracing::warn!(jid = %self.jid, "outbox full for too long; closing slow session");
                self.close(
                    StreamErrorCondition::PolicyViolation,
                    Some("too slow to read"),
                );
                Err(Undeliverable(s))
            }
        }
    }

    /// Queues a stanza only if there is room right now; otherwise it comes back. Fan-out
    /// paths (group chat) use it so one slow reader does not hold up everyone else.
    pub fn try_send(&self, stanza: Element) -> Result<(), Element> {
        match self.tx.try_send(Outbound::Stanza(Box::new(stanza))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                Err(unbox(m))
            }
        }
    }

    /// Asks the session to end its stream. Never blocks. Queued behind the stanzas already
    /// waiting when there is room; otherwise signalled out of band, which also interrupts a
    /// socket write that the client is not reading.
    pub fn close(&self, cond: StreamErrorCondition, text: Option<&str>) {
        let text = text.map(str::to_string);
        if let Err(mpsc::error::TrySendError::Full(_)) = self
            .tx
            .try_send(Outbound::Close(Box::new((cond, text.clone()))))
        {
            self.shared
                .kick
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert((cond, text));
            self.shared.kick.notify.notify_one();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Per online user: their sessions plus caches the routing path reads.
#[derive(Default)]
struct UserEntry {
    sessions: Vec<SessionHandle>,
    cache: Arc<UserCache>,
}

/// Roster and block list of an online user, loaded on first use and kept in step by the
/// modules that write them (they write storage first, then the cache).
#[derive(Default)]
pub struct UserCache {
    pub roster: RwLock<Option<HashMap<String, RosterItem>>>,
    pub blocklist: RwLock<Option<HashSet<String>>>,
    /// XEP-0441 archiving preferences, read for every archived message.
    pub mam_prefs: RwLock<Option<Arc<herald_storage::ArchivePrefs>>>,
}

const ROSTER_STRIPES: usize = 64;

struct Stripes(Vec<tokio::sync::Mutex<()>>);

impl Default for Stripes {
    fn default() -> Self {
        Stripes(
            (0..ROSTER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }
}

#[derive(Default)]
pub struct Registry {
    users: DashMap<String, UserEntry>,
    /// XEP-0198 resumption ids → the task that owns the session.
    resumable: DashMap<String, crate::sm::ResumeSlot>,
    roster_stripes: Stripes,
    stripe_hasher: std::collections::hash_map::RandomState,
    next_id: AtomicU64,
    count: AtomicU64,
}

impl Registry {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of bound sessions.
    pub fn session_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Binds a session; returns the session it replaced (same full JID), which the caller
    /// closes with `conflict` (RFC 6120 §7.7.2.2).
    pub fn bind(&self, handle: SessionHandle) -> Option<SessionHandle> {
        let mut entry = self
            .users
            .entry(handle.jid.bare_str().to_string())
            .or_default();
        let old = entry
            .sessions
            .iter()
            .position(|s| s.jid == handle.jid)
            .map(|i| entry.sessions.swap_remove(i));
        entry.sessions.push(handle);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    /// Removes a session if it is still the one bound (a replaced session must not unbind
    /// its successor). Returns true when it was the user's last session.
    pub fn unbind(&self, jid: &Jid, id: u64) -> bool {
        let bare = jid.bare_str();
        let mut last = false;
        let mut removed = false;
        if let Some(mut entry) = self.users.get_mut(bare) {
            if let Some(i) = entry.sessions.iter().position(|s| s.id == id) {
                entry.sessions.swap_remove(i);
                removed = true;
            }
            last = entry.sessions.is_empty();
        }
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        if last {
            self.users.remove_if(bare, |_, e| e.sessions.is_empty());
        }
        last && removed
    }

    /// All bound sessions of a bare JID (a cheap clone of a few handles; no lock is kept).
    pub fn sessions(&self, bare: &str) -> Vec<SessionHandle> {
        self.users
            .get(bare)
            .map(|e| e.sessions.clone())
            .unwrap_or_default()
    }

    pub fn session(&self, full: &Jid) -> Option<SessionHandle> {
        let e = self.users.get(full.bare_str())?;
        e.sessions.iter().find(|s| s.jid == *full).cloned()
    }

    pub fn is_online(&self, bare: &str) -> bool {
        self.users.contains_key(bare)
    }

    /// The caches of an online user, if online.
    pub fn cache(&self, bare: &str) -> Option<Arc<UserCache>> {
        self.users.get(bare).map(|e| e.cache.clone())
    }

    /// Serialises read-modify-write of one user's roster items (a subscription answer and
    /// the contact's own answer can arrive at the same moment). Striped: a few dozen locks
    /// cover every user; held only around the storage calls for one change.
    pub async fn roster_lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.stripe_hasher.build_hasher();
        h.write(owner.as_bytes());
        self.roster_stripes.0[(h.finish() as usize) % ROSTER_STRIPES]
            .lock()
            .await
    }

    /// Makes a session resumable under `id` (XEP-0198).
    pub fn register_resumable(&self, id: String, slot: crate::sm::ResumeSlot) {
        self.resumable.insert(id, slot);
    }

    /// The owner of a resumption id, if it exists and belongs to `bare`. A wrong user gets
    /// the same answer as an unknown id.
    pub fn resumable(&self, id: &str, bare: &str) -> Option<crate::sm::ResumeSlot> {
        self.resumable
            .get(id)
            .filter(|s| s.bare == bare)
            .map(|s| s.clone())
    }

    pub fn forget_resumable(&self, id: &str) {
        self.resumable.remove(id);
    }

    /// Every session, for shutdown.
    pub fn all_sessions(&self) -> Vec<SessionHandle> {
        self.users.iter().flat_map(|e| e.sessions.clone()).collect()
    }
}
