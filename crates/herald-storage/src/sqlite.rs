//! SQLite backend: the embedded default.
//!
//! Durability: WAL journal with `synchronous=FULL`, so each commit is fsynced before the
//! call returns. Several processes may open the same file (the server and the CLI): writers
//! serialize on SQLite's write lock and wait up to `busy_timeout` (5 s) for it. Multi-statement
//! writes use `BEGIN IMMEDIATE`, which takes the write lock up front, so a transaction never
//! fails half-way because another connection wrote in between; single-statement writes take
//! it at their start too.
//!
//! The hot appends, [`ArchiveStore::append_archive`](crate::ArchiveStore::append_archive),
//! [`OfflineStore::store_offline`] and
//! [`LastActivityStore::set_last_activity`], are group-committed: each store has a writer task that
//! runs all appends queued at once in one `BEGIN IMMEDIATE` transaction, so they share one
//! fsync, and answers each only after that commit (see `sqlite_writer.rs`). Holding
//! the write lock for the whole batch is also what makes the offline quota
//! check-and-insert and the archive stamp rule atomic.
//!
//! The per-user point reads of the hot paths run inline on a pool of read-only connections
//! instead of through sqlx's worker threads (see `sqlite_read.rs`).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use crate::sqlite_read::Readers;
use crate::sqlite_writer::{Append, Writer};
use crate::{
    map_err, map_migrate_err, parse_subscription, quota_i64, to_u32, to_u64, AccountStore,
    BlockStore, LastActivityStore, OfflineMessage, OfflineStore, PrivateStore, Result, RosterItem,
    RosterStore, Storage, StorageError, StoredCredential,
};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_SIZE: u32 = 4;
/// Rows per statement for bulk block/unblock (SQLite allows 32766 parameters).
const CHUNK: usize = 500;

/// A SQLite-backed [`Storage`].
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// Group-commits archive and offline appends (see `sqlite_writer.rs`).
    pub(crate) writer: Writer,
    /// Hot point reads, run inline (see `sqlite_read.rs`).
    readers: Readers,
    /// For `sqlite::memory:`, the temporary file that stands in for it.
    _temp: Option<TempDb>,
}

/// A private database file in the system's temporary directory, deleted (with its WAL and
/// shared-memory files) when the store goes.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new() -> TempDb {
        let name = format!(
            "herald-{}-{:016x}.db",
            std::process::id(),
            rand::random::<u64>()
        );
        TempDb(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl SqliteStore {
    /// Opens `sqlite:///abs/path`, `sqlite://rel/path`, `sqlite:path` or `sqlite::memory:`,
    /// creating the file and its parent directories if missing, and migrates it.
    /// `sqlite::memory:` (for tests) is a private database in a temporary file, without
    /// fsync, deleted when the store is dropped.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let rest = url
            .strip_prefix("sqlite:")
            .ok_or_else(|| StorageError::BadUrl("expected a sqlite: url".into()))?;
        if rest == ":memory:" || rest == "//:memory:" {
            return Self::open_memory().await;
        }
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(StorageError::BadUrl(
                "sqlite url without a file path".into(),
            ));
        }
        let path = Path::new(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StorageError::Unavailable(format!(
                    "cannot create directory {}: {}",
                    parent.display(),
                    crate::describe_io(&e)
                ))
            })?;
        }
        Self::open_file(path, SqliteSynchronous::Full, None).await
    }

    async fn open_file(
        path: &Path,
        synchronous: SqliteSynchronous,
        temp: Option<TempDb>,
    ) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = connect(path, options).await?;
        let in_db = |e| match e {
            StorageError::Unavailable(m) => {
                StorageError::Unavailable(format!("sqlite database {}: {m}", path.display()))
            }
            other => other,
        };
        migrate(&pool).await.map_err(in_db)?;
        let store = SqliteStore {
            writer: Writer::spawn(pool.clone()),
            readers: Readers::open(path)?,
            pool,
            _temp: temp,
        };
        tracing::debug!(path = %path.display(), "opened sqlite store");
        Ok(store)
    }

    async fn open_memory() -> Result<SqliteStore> {
        let temp = TempDb::new();
        let path = temp.0.clone();
        Self::open_file(&path, SqliteSynchronous::Off, Some(temp)).await
    }

    /// Closes all connections, waiting for them to finish (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }
}

/// Opens the pool. A brand-new file is switched to WAL on its first connection; when two
/// processes do that at once, SQLite answers one of them "database is locked" at once,
/// without waiting out the busy timeout (it would deadlock otherwise). That answer is
/// retried for up to the busy timeout; every other error is final.
async fn connect(path: &Path, options: SqliteConnectOptions) -> Result<SqlitePool> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(BUSY_TIMEOUT * 2)
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "sqlite file busy while opening, retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(open_err(path, e)),
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, extended codes included.
fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    let migrator = crate::migrator(&[
        (
            1,
            "initial",
            include_str!("../migrations/sqlite/0001_initial.sql"),
        ),
        (
            2,
            "archive",
            include_str!("../migrations/sqlite/0002_archive.sql"),
        ),
        (3, "muc", include_str!("../migrations/sqlite/0003_muc.sql")),
        (
            4,
            "files",
            include_str!("../migrations/sqlite/0004_files.sql"),
        ),
    ]);
    // Two processes opening a fresh file at once may race on the first migration; the
    // loser fails on "table exists" and succeeds on retry, seeing it applied.
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "sqlite migration failed, retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(map_migrate_err(e)),
        }
    }
}

fn open_err(path: &Path, e: sqlx::Error) -> StorageError {
    let reason = match map_err(e) {
        StorageError::Unavailable(m) | StorageError::Backend(m) => m,
        other => other.to_string(),
    };
    StorageError::Unavailable(format!(
        "cannot open sqlite database {}: {reason}",
        path.display()
    ))
}

/// Groups are stored in one column as `<byte length>:<name>` repeated, which round-trips
/// any string (including ones holding separators) and keeps an item a single row.
pub(crate) fn encode_groups(groups: &[String]) -> String {
    let mut out = String::new();
    for g in groups {
        out.push_str(&g.len().to_string());
        out.push(':');
        out.push_str(g);
    }
    out
}

pub(crate) fn decode_groups(mut s: &str) -> Result<Vec<String>> {
    let corrupt = || StorageError::Backend("corrupt roster groups column".into());
    let mut out = Vec::new();
    while !s.is_empty() {
        let (len, rest) = s.split_once(':').ok_or_else(corrupt)?;
        let len: usize = len.parse().map_err(|_| corrupt())?;
        let name = rest.get(..len).ok_or_else(corrupt)?;
        out.push(name.to_string());
        s = &rest[len..];
    }
    Ok(out)
}

/// The roster item columns in [`RawItem::from_row`] order, as a literal so statements are
/// `concat!`-built constants (the statement cache is keyed by the SQL text).
macro_rules! item_columns {
    ($t:literal) => {
        concat!(
            $t,
            "jid, ",
            $t,
            "name, ",
            $t,
            "subscription, ",
            $t,
            "ask, ",
            $t,
            "approved, ",
            $t,
            "groups"
        )
    };
}

/// A roster item's columns as stored, decoded by [`RawItem::decode`].
struct RawItem {
    jid: String,
    name: Option<String>,
    subscription: String,
    ask: bool,
    approved: bool,
    groups: String,
}

impl RawItem {
    /// The item columns starting at `first`; `None` when jid is NULL (outer join).
    fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<RawItem>> {
        let Some(jid) = r.get::<_, Option<String>>(first)? else {
            return Ok(None);
        };
        Ok(Some(RawItem {
            jid,
            name: r.get(first + 1)?,
            subscription: r.get(first + 2)?,
            ask: r.get(first + 3)?,
            approved: r.get(first + 4)?,
            groups: r.get(first + 5)?,
        }))
    }

    fn decode(self) -> Result<RosterItem> {
        Ok(RosterItem {
            jid: self.jid,
            name: self.name,
            subscription: parse_subscription(&self.subscription)?,
            ask: self.ask,
            approved: self.approved,
            groups: decode_groups(&self.groups)?,
        })
    }
}

fn owner_of(domain: &str, username: &str) -> String {
    format!("{username}@{domain}")
}

async fn insert_credentials(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    domain: &str,
    username: &str,
    creds: &[StoredCredential],
) -> Result<()> {
    for (position, c) in creds.iter().enumerate() {
        sqlx::query(
            "INSERT INTO credentials \
             (domain, username, position, mechanism, salt, iterations, stored_key, server_key) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(domain)
        .bind(username)
        .bind(position as i64)
        .bind(&c.mechanism)
        .bind(&c.salt)
        .bind(i64::from(c.iterations))
        .bind(&c.stored_key)
        .bind(&c.server_key)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

/// Tables holding per-owner data; `delete_account` empties each for the owner.
const OWNER_TABLES: &[&str] = &[
    "roster_versions",
    "roster_items",
    "roster_pending_in",
    "offline_messages",
    "private_data",
    "blocklist",
    "last_activity",
    "archive",
    "archive_prefs",
    "archive_prefs_jids",
];

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[StoredCredential],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (domain, username) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(domain)
        .bind(username)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if inserted == 0 {
            return Err(StorageError::AlreadyExists);
        }
        insert_credentials(&mut tx, domain, username, creds).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool> {
        let owner = owner_of(domain, username);
        let mut tx = self.write_tx().await?;
        // Credentials go with the account (ON DELETE CASCADE).
        let existed = sqlx::query("DELETE FROM accounts WHERE domain = ? AND username = ?")
            .bind(domain)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            > 0;
        for table in OWNER_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE owner = ?"))
                .bind(&owner)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(existed)
    }

    async fn set_credentials(
        &self,
        domain: &str,
        username: &str,
        creds: &[StoredCredential],
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE domain = ? AND username = ?")
            .bind(domain)
            .bind(username)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .is_some();
        if !exists {
            return Ok(false);
        }
        sqlx::query("DELETE FROM credentials WHERE domain = ? AND username = ?")
            .bind(domain)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_credentials(&mut tx, domain, username, creds).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn credentials(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Option<Vec<StoredCredential>>> {
        // One statement: no rows means no account; a NULL mechanism means no credentials.
        type Row = (
            Option<String>,
            Option<Vec<u8>>,
            Option<i64>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let rows: Vec<Row> = self.readers.read(|c| {
            c.prepare_cached(
                "SELECT c.mechanism, c.salt, c.iterations, c.stored_key, c.server_key \
                 FROM accounts a LEFT JOIN credentials c \
                   ON c.domain = a.domain AND c.username = a.username \
                 WHERE a.domain = ? AND a.username = ? \
                 ORDER BY c.position",
            )?
            .query_map((domain, username), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rows.len());
        for (mechanism, salt, iterations, stored_key, server_key) in rows {
            let Some(mechanism) = mechanism else { continue };
            let corrupt = || StorageError::Backend("corrupt credentials row".into());
            out.push(StoredCredential {
                mechanism,
                salt: salt.ok_or_else(corrupt)?,
                iterations: to_u32(iterations.ok_or_else(corrupt)?, "iteration count")?,
                stored_key: stored_key.ok_or_else(corrupt)?,
                server_key: server_key.ok_or_else(corrupt)?,
            });
        }
        Ok(Some(out))
    }

    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT username FROM accounts WHERE domain = ? ORDER BY username")
            .bind(domain)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool> {
        self.readers.read(|c| {
            c.prepare_cached("SELECT 1 FROM accounts WHERE domain = ? AND username = ?")?
                .exists((domain, username))
        })
    }
}

#[async_trait]
impl RosterStore for SqliteStore {
    async fn roster(&self, owner: &str) -> Result<(u64, Vec<RosterItem>)> {
        // One statement, hence one snapshot: the version always matches the items.
        let rows: Vec<(i64, Option<RawItem>)> = self.readers.read(|c| {
            c.prepare_cached(concat!(
                "SELECT v.version, ",
                item_columns!("i."),
                " FROM (SELECT COALESCE((SELECT version FROM roster_versions WHERE owner = ?1), 0) \
                   AS version) v \
                 LEFT JOIN roster_items i ON i.owner = ?1 \
                 ORDER BY i.jid"
            ))?
            .query_map([owner], |r| Ok((r.get(0)?, RawItem::from_row(r, 1)?)))?
            .collect()
        })?;
        let mut version = 0;
        let mut items = Vec::with_capacity(rows.len());
        for (v, item) in rows {
            version = to_u64(v, "roster version")?;
            if let Some(item) = item {
                items.push(item.decode()?);
            }
        }
        Ok((version, items))
    }

    async fn roster_version(&self, owner: &str) -> Result<u64> {
        let v: Option<i64> = self.readers.read(|c| {
            c.prepare_cached("SELECT version FROM roster_versions WHERE owner = ?")?
                .query_row([owner], |r| r.get(0))
                .optional()
        })?;
        to_u64(v.unwrap_or(0), "roster version")
    }

    async fn roster_item(&self, owner: &str, jid: &str) -> Result<Option<RosterItem>> {
        let raw = self.readers.read(|c| {
            c.prepare_cached(concat!(
                "SELECT ",
                item_columns!(""),
                " FROM roster_items WHERE owner = ? AND jid = ?"
            ))?
            .query_row((owner, jid), |r| RawItem::from_row(r, 0))
            .optional()
        })?;
        raw.flatten().map(RawItem::decode).transpose()
    }

    async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO roster_versions (owner, version) VALUES (?, 1) \
             ON CONFLICT (owner) DO UPDATE SET version = version + 1 \
             RETURNING version",
        )
        .bind(owner)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO roster_items (owner, jid, name, subscription, ask, approved, groups) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (owner, jid) DO UPDATE SET \
               name = excluded.name, subscription = excluded.subscription, \
               ask = excluded.ask, approved = excluded.approved, groups = excluded.groups",
        )
        .bind(owner)
        .bind(&item.jid)
        .bind(&item.name)
        .bind(item.subscription.as_str())
        .bind(item.ask)
        .bind(item.approved)
        .bind(encode_groups(&item.groups))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        to_u64(version, "roster version")
    }

    async fn remove_roster_item(&self, owner: &str, jid: &str) -> Result<Option<u64>> {
        let mut tx = self.write_tx().await?;
        let removed = sqlx::query("DELETE FROM roster_items WHERE owner = ? AND jid = ?")
            .bind(owner)
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if removed == 0 {
            return Ok(None);
        }
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO roster_versions (owner, version) VALUES (?, 1) \
             ON CONFLICT (owner) DO UPDATE SET version = version + 1 \
             RETURNING version",
        )
        .bind(owner)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(to_u64(version, "roster version")?))
    }

    async fn add_pending_in(&self, owner: &str, from: &str, stanza: &str) -> Result<()> {
        // REPLACE deletes the old row and inserts a new one with a fresh `seq`: a repeated
        // request becomes the latest arrival.
        sqlx::query(
            "INSERT OR REPLACE INTO roster_pending_in (owner, from_jid, stanza) VALUES (?, ?, ?)",
        )
        .bind(owner)
        .bind(from)
        .bind(stanza)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn remove_pending_in(&self, owner: &str, from: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM roster_pending_in WHERE owner = ? AND from_jid = ?")
                .bind(owner)
                .bind(from)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected()
                > 0,
        )
    }

    async fn pending_in(&self, owner: &str) -> Result<Vec<(String, String)>> {
        self.readers.read(|c| {
            c.prepare_cached(
                "SELECT from_jid, stanza FROM roster_pending_in WHERE owner = ? ORDER BY seq",
            )?
            .query_map([owner], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
    }
}

#[async_trait]
impl OfflineStore for SqliteStore {
    async fn store_offline(
        &self,
        owner: &str,
        stanza: &str,
        stamp_micros: i64,
        quota: usize,
    ) -> Result<i64> {
        // Group-committed; the writer's transaction holds the write lock from its start, so
        // the count it checks cannot change before its insert.
        self.writer
            .submit(Append::Offline {
                owner: owner.to_string(),
                stanza: stanza.to_string(),
                stamp_micros,
                quota: quota_i64(quota),
            })
            .await
    }

    async fn offline_messages(&self, owner: &str) -> Result<Vec<OfflineMessage>> {
        self.readers.read(|c| {
            c.prepare_cached(
                "SELECT id, stanza, stamp_micros FROM offline_messages WHERE owner = ? ORDER BY id",
            )?
            .query_map([owner], |r| {
                Ok(OfflineMessage {
                    id: r.get(0)?,
                    stanza: r.get(1)?,
                    stamp_micros: r.get(2)?,
                })
            })?
            .collect()
        })
    }

    async fn delete_offline(&self, owner: &str, up_to_id: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM offline_messages WHERE owner = ? AND id <= ?")
                .bind(owner)
                .bind(up_to_id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected(),
        )
    }

    async fn count_offline(&self, owner: &str) -> Result<u64> {
        let n: i64 = self.readers.read(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM offline_messages WHERE owner = ?")?
                .query_row([owner], |r| r.get(0))
        })?;
        to_u64(n, "offline count")
    }
}

#[async_trait]
impl PrivateStore for SqliteStore {
    async fn get_private(&self, owner: &str, key: &str) -> Result<Option<String>> {
        self.readers.read(|c| {
            c.prepare_cached("SELECT value FROM private_data WHERE owner = ? AND key = ?")?
                .query_row((owner, key), |r| r.get(0))
                .optional()
        })
    }

    async fn set_private(&self, owner: &str, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO private_data (owner, key, value) VALUES (?, ?, ?) \
             ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value",
        )
        .bind(owner)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn delete_private(&self, owner: &str, key: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM private_data WHERE owner = ? AND key = ?")
                .bind(owner)
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected()
                > 0,
        )
    }
}

impl SqliteStore {
    /// Runs one statement per chunk of `jids`, all in one transaction when there are
    /// several chunks. `build` appends the chunk-specific SQL.
    async fn bulk(
        &self,
        jids: &[String],
        build: impl Fn(&mut QueryBuilder<'_, Sqlite>, &[String]),
    ) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for chunk in jids.chunks(CHUNK) {
            let mut qb = QueryBuilder::new("");
            build(&mut qb, chunk);
            qb.build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[async_trait]
impl BlockStore for SqliteStore {
    async fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        self.readers.read(|c| {
            c.prepare_cached("SELECT jid FROM blocklist WHERE owner = ? ORDER BY jid")?
                .query_map([owner], |r| r.get(0))?
                .collect()
        })
    }

    async fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        self.bulk(jids, |qb, chunk| {
            qb.push("INSERT OR IGNORE INTO blocklist (owner, jid) ");
            qb.push_values(chunk, |mut b, jid| {
                b.push_bind(owner.to_string()).push_bind(jid.clone());
            });
        })
        .await
    }

    async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        self.bulk(jids, |qb, chunk| {
            qb.push("DELETE FROM blocklist WHERE owner = ");
            qb.push_bind(owner.to_string());
            qb.push(" AND jid IN (");
            let mut sep = qb.separated(", ");
            for jid in chunk {
                sep.push_bind(jid.clone());
            }
            qb.push(")");
        })
        .await
    }

    async fn unblock_all(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM blocklist WHERE owner = ?")
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl LastActivityStore for SqliteStore {
    async fn set_last_activity(&self, owner: &str, stamp_secs: i64, status: &str) -> Result<()> {
        // Group-committed with other logouts and appends.
        self.writer
            .submit(Append::LastActivity {
                owner: owner.to_string(),
                stamp_secs,
                status: status.to_string(),
            })
            .await
            .map(drop)
    }

    async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>> {
        self.readers.read(|c| {
            c.prepare_cached("SELECT stamp_secs, status FROM last_activity WHERE owner = ?")?
                .query_row([owner], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
    }
}

impl Storage for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip() {
        let cases: Vec<Vec<String>> = vec![
            vec![],
            vec![String::new()],
            vec![
                "Friends".into(),
                "3:x".into(),
                "".into(),
                "日本語:グループ".into(),
            ],
            vec!["12".into(), ":".into(), "a:b:c".into()],
        ];
        for groups in cases {
            assert_eq!(decode_groups(&encode_groups(&groups)).unwrap(), groups);
        }
        assert!(decode_groups("5:abc").is_err());
        assert!(decode_groups("x:abc").is_err());
        assert!(decode_groups("abc").is_err());
        // A length landing inside a multi-byte character is corrupt, not a panic.
        assert!(decode_groups("1:é").is_err());
    }
}
