//! Herald's storage seam: everything the server keeps across restarts goes through here.
//!
//! # Shape
//!
//! The contract is a set of small traits, one per domain ([`AccountStore`], [`RosterStore`],
//! [`OfflineStore`], [`PrivateStore`], [`BlockStore`], [`LastActivityStore`],
//! [`ArchiveStore`], [`MucStore`], [`FileStore`]), gathered into
//! [`Storage`]. Splitting by domain keeps each protocol module honest about what it touches
//! (a roster module takes `&dyn RosterStore`, not the whole database), keeps each contract
//! small enough to specify exactly, and leaves room to move one domain elsewhere later (for
//! example offline messages to a queue in a cluster) without disturbing the others.
//!
//! There are two implementations, [`sqlite::SqliteStore`] (embedded, the default) and
//! [`postgres::PostgresStore`] (shared, for clusters). Both are exercised by the same
//! [`conformance`] suite, which is the real specification: a backend is correct when
//! [`conformance::run_all`] passes against it. Callers obtain a store with [`open`] and
//! should not care which backend they got.
//!
//! # Durability contract
//!
//! **Durable before acknowledged.** When a mutating method returns `Ok`, the change is
//! committed: a crash or `SIGKILL` of the process immediately afterwards loses nothing. The
//! server relies on this to acknowledge stanzas (XEP-0198 acks, offline storage, roster
//! pushes) only after the call returns. SQLite runs in WAL mode with `synchronous=FULL`, so
//! every commit is fsynced (concurrent archive and offline appends share one commit, and
//! each returns only after it); PostgreSQL commits synchronously (with the server's own
//! `synchronous_commit`, which operators must not turn off).
//!
//! Every method is atomic: multi-row changes (a roster item plus its version bump, an
//! account and all its data, an offline message plus the quota check) happen in a single
//! statement or a single transaction, so concurrent callers and other processes (the CLI
//! opening the same SQLite file while the server runs) always see a consistent state.
//!
//! # Identifiers
//!
//! `owner` is always a normalized bare JID string (`user@domain`); `domain` and `username`
//! are normalized parts. The store compares them byte for byte and never normalizes itself.
//! Sorted results use code-point order (the order of Rust's `str`).
//!
//! # Errors
//!
//! [`StorageError::Unavailable`] means "the database cannot be reached or cannot take
//! writes right now" (connection refused, pool timeout, disk full, database locked for too
//! long) and carries a one-line human reason fit for a log line or a CLI message. Anything
//! else unexpected is [`StorageError::Backend`].

use std::sync::Arc;

use async_trait::async_trait;

pub mod archive;
mod archive_postgres;
mod archive_sqlite;
pub mod conformance;
pub mod files;
mod files_postgres;
mod files_sqlite;
pub mod muc;
pub mod postgres;
pub mod sqlite;
mod sqlite_read;
mod sqlite_writer;

pub use archive::{
    ArchiveDefault, ArchiveFilter, ArchivePage, ArchivePaging, ArchivePrefs, ArchiveStore,
    ArchivedMessage, Direction, NewArchived,
};
pub use files::{
    FileDownload, FileFilter, FileQuota, FileRecipient, FileRecord, FileState, FileStore,
    FileUsage, NewFileSlot,
};
pub use muc::{MucStore, RoomAffiliation, StoredRoom};

/// Result type of every storage call.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Errors returned by storage calls.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    /// The thing being created exists already (e.g. an account).
    #[error("already exists")]
    AlreadyExists,
    /// The owner's offline message quota is full.
    #[error("offline quota exceeded")]
    QuotaExceeded,
    /// The storage URL given to [`open`] is malformed or names an unsupported backend.
    #[error("invalid storage url: {0}")]
    BadUrl(String),
    /// The database cannot be reached or cannot accept the operation right now.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Backend(String),
}

/// One SCRAM credential of an account (RFC 5802 `StoredKey`/`ServerKey` form; the
/// password itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredential {
    /// `"SCRAM-SHA-1"`, `"SCRAM-SHA-256"` or `"SCRAM-SHA-512"`.
    pub mechanism: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Roster subscription state (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    /// The wire (and storage) spelling: `"none"`, `"to"`, `"from"`, `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Inverse of [`Subscription::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<Subscription> {
        match s {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }
}

/// One roster entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// An outbound subscription request is pending (`ask="subscribe"`).
    pub ask: bool,
    /// The contact's inbound subscription is pre-approved.
    pub approved: bool,
    /// Group names, in the order given to [`RosterStore::put_roster_item`].
    pub groups: Vec<String>,
}

/// A stored offline message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Increasing in arrival order and never reused for the same store.
    pub id: i64,
    pub stanza: String,
    pub stamp_micros: i64,
}

/// Accounts and their SCRAM credentials.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account; [`StorageError::AlreadyExists`] if it is present.
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[StoredCredential],
    ) -> Result<()>;
    /// Deletes the account and, in the same transaction, all data owned by
    /// `username@domain` in every table. Returns whether the account existed.
    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool>;
    /// Replaces all credentials; `false` if there is no such account.
    async fn set_credentials(
        &self,
        domain: &str,
        username: &str,
        creds: &[StoredCredential],
    ) -> Result<bool>;
    /// The account's credentials in the order they were set; `None` if no account.
    async fn credentials(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Option<Vec<StoredCredential>>>;
    /// Usernames of the domain, sorted.
    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>>;
    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool>;
}

/// Rosters (RFC 6121) with roster versioning (XEP-0237), and inbound subscription requests
/// awaiting the user's answer.
#[async_trait]
pub trait RosterStore: Send + Sync {
    /// Current version (0 if never modified) and all items sorted by jid, read consistently.
    async fn roster(&self, owner: &str) -> Result<(u64, Vec<RosterItem>)>;
    async fn roster_version(&self, owner: &str) -> Result<u64>;
    async fn roster_item(&self, owner: &str, jid: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces (groups included) the item and bumps the version, atomically.
    /// Returns the new version.
    async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<u64>;
    /// Removes the item and bumps the version; `None` (version unchanged) if absent.
    async fn remove_roster_item(&self, owner: &str, jid: &str) -> Result<Option<u64>>;
    /// Records an inbound subscription request. One from the same `from` is replaced and
    /// the new one counts as the latest arrival.
    async fn add_pending_in(&self, owner: &str, from: &str, stanza: &str) -> Result<()>;
    async fn remove_pending_in(&self, owner: &str, from: &str) -> Result<bool>;
    /// `(from, stanza xml)` in arrival order.
    async fn pending_in(&self, owner: &str) -> Result<Vec<(String, String)>>;
}

/// Offline message storage (XEP-0160).
#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Stores a message unless the owner already has `quota` or more
    /// ([`StorageError::QuotaExceeded`]); check and insert are atomic. Returns its id.
    async fn store_offline(
        &self,
        owner: &str,
        stanza: &str,
        stamp_micros: i64,
        quota: usize,
    ) -> Result<i64>;
    /// The owner's messages by id ascending (arrival order).
    async fn offline_messages(&self, owner: &str) -> Result<Vec<OfflineMessage>>;
    /// Deletes the owner's messages with `id <= up_to_id`; returns how many.
    async fn delete_offline(&self, owner: &str, up_to_id: i64) -> Result<u64>;
    async fn count_offline(&self, owner: &str) -> Result<u64>;
}

/// Per-user keyed XML blobs: vcard-temp, XEP-0049 private XML, later PEP/bookmarks.
#[async_trait]
pub trait PrivateStore: Send + Sync {
    async fn get_private(&self, owner: &str, key: &str) -> Result<Option<String>>;
    async fn set_private(&self, owner: &str, key: &str, value: &str) -> Result<()>;
    async fn delete_private(&self, owner: &str, key: &str) -> Result<bool>;
}

/// XEP-0191 blocking lists.
#[async_trait]
pub trait BlockStore: Send + Sync {
    /// Blocked JIDs, sorted.
    async fn blocklist(&self, owner: &str) -> Result<Vec<String>>;
    /// Adds JIDs; already blocked ones are fine.
    async fn block(&self, owner: &str, jids: &[String]) -> Result<()>;
    /// Removes JIDs; ones not blocked are ignored.
    async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()>;
    async fn unblock_all(&self, owner: &str) -> Result<()>;
}

/// XEP-0012 last activity (time of last logout and its status text).
#[async_trait]
pub trait LastActivityStore: Send + Sync {
    async fn set_last_activity(&self, owner: &str, stamp_secs: i64, status: &str) -> Result<()>;
    async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>>;
}

/// The whole storage seam, as handed to the server.
pub trait Storage:
    AccountStore
    + RosterStore
    + OfflineStore
    + PrivateStore
    + BlockStore
    + LastActivityStore
    + ArchiveStore
    + MucStore
    + FileStore
    + Send
    + Sync
    + 'static
{
    /// `"sqlite"` or `"postgres"`.
    fn backend_name(&self) -> &'static str;
}

/// Opens (and migrates) a store.
///
/// URLs: `sqlite:///abs/path.db`, `sqlite://relative/path.db`, `sqlite::memory:` (tests
/// only: the data lives as long as the store), `postgres://user@host:port/db` or
/// `postgresql://...`. A missing SQLite file is created together with its parent
/// directories.
pub async fn open(url: &str) -> Result<Arc<dyn Storage>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url).await?))
    } else {
        // Only the scheme is echoed: the rest may hold a password.
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        Err(StorageError::BadUrl(format!(
            "unsupported scheme {scheme:?} (expected sqlite: or postgres://)"
        )))
    }
}

/// The migration files of a backend, embedded at compile time: `(version, description,
/// sql)` in version order.
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    Migrator {
        migrations: Cow::Owned(
            files
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// Maps a sqlx error to the seam's error, deciding what counts as "unavailable".
pub(crate) fn map_err(e: sqlx::Error) -> StorageError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let unavailable = if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Primary result code is the low byte of the extended code.
                match code.parse::<i32>().map(|c| c & 0xff) {
                    // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN
                    Ok(5 | 6 | 7 | 8 | 10 | 13 | 14) => true,
                    _ => false,
                }
            } else {
                // SQLSTATE classes 08 (connection), 53 (insufficient resources: disk full,
                // out of memory, too many connections), 57P0x (shutting down), and a
                // missing database.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P0")
                    || code == "3D000"
            };
            let msg = one_line(db.message());
            if unavailable {
                StorageError::Unavailable(msg)
            } else {
                StorageError::Backend(msg)
            }
        }
        sqlx::Error::PoolTimedOut => {
            StorageError::Unavailable("timed out waiting for a database connection".into())
        }
        sqlx::Error::PoolClosed => StorageError::Unavailable("the store has been closed".into()),
        sqlx::Error::Io(e) => StorageError::Unavailable(describe_io(&e)),
        sqlx::Error::WorkerCrashed => {
            StorageError::Unavailable("database worker thread crashed".into())
        }
        sqlx::Error::Tls(e) => StorageError::Unavailable(one_line(&format!("tls: {e}"))),
        other => StorageError::Backend(one_line(&other.to_string())),
    }
}

pub(crate) fn map_migrate_err(e: sqlx::migrate::MigrateError) -> StorageError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => match map_err(e) {
            StorageError::Backend(m) => StorageError::Backend(format!("migration failed: {m}")),
            other => other,
        },
        other => StorageError::Backend(one_line(&format!("migration failed: {other}"))),
    }
}

/// A short reason for an I/O failure, without the "(os error N)" noise.
pub(crate) fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut => "timed out".into(),
        PermissionDenied => "permission denied".into(),
        NotFound => "not found".into(),
        UnexpectedEof => "connection closed unexpectedly".into(),
        _ => {
            let s = e.to_string();
            let s = match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            };
            one_line(&s)
        }
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StorageError::Backend(format!("corrupt {what}: {v}")))
}

pub(crate) fn to_u32(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| StorageError::Backend(format!("corrupt {what}: {v}")))
}

pub(crate) fn parse_subscription(s: &str) -> Result<Subscription> {
    Subscription::parse(s)
        .ok_or_else(|| StorageError::Backend(format!("corrupt roster subscription {s:?}")))
}

/// A quota as a SQL integer (saturating: no one has 2^63 messages).
pub(crate) fn quota_i64(quota: usize) -> i64 {
    i64::try_from(quota).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_round_trip() {
        for s in [
            Subscription::None,
            Subscription::To,
            Subscription::From,
            Subscription::Both,
        ] {
            assert_eq!(Subscription::parse(s.as_str()), Some(s));
        }
        assert_eq!(Subscription::parse("None"), None);
        assert_eq!(Subscription::parse(""), None);
    }

    #[test]
    fn io_errors_are_short() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&e), "connection refused");
        let e = std::io::Error::other("a\nb   (c)");
        assert_eq!(describe_io(&e), "a b (c)");
    }

    /// The server spawns `open`, so its future must be `Send`.
    #[allow(dead_code)]
    fn open_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let f = open("sqlite::memory:");
        assert_send(&f);
        let f = sqlite::SqliteStore::open("sqlite::memory:");
        assert_send(&f);
        let f = postgres::PostgresStore::open("postgres://x");
        assert_send(&f);
    }

    #[tokio::test]
    async fn unknown_scheme_is_bad_url() {
        match open("mysql://root:secret@localhost/x").await {
            Err(StorageError::BadUrl(m)) => assert!(!m.contains("secret"), "{m}"),
            Err(e) => panic!("expected BadUrl, got {e}"),
            Ok(_) => panic!("expected BadUrl, got a store"),
        }
    }
}
