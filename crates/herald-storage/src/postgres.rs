//! PostgreSQL backend: shared storage for clusters.
//!
//! Hot operations are single statements (one round trip, implicitly one transaction):
//! data-modifying CTEs let a roster change and its version bump, or an offline message and
//! its quota accounting, commit together. The offline quota is enforced through a per-owner
//! counter row (`offline_counts`) whose row lock serializes concurrent writers for the same
//! owner; a plain `COUNT(*)` check would not be atomic under READ COMMITTED.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row};

use crate::{
    map_err, map_migrate_err, parse_subscription, quota_i64, to_u32, to_u64, AccountStore,
    BlockStore, LastActivityStore, OfflineMessage, OfflineStore, PrivateStore, Result, RosterItem,
    RosterStore, Storage, StorageError, StoredCredential,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_SIZE: u32 = 8;

/// A PostgreSQL-backed [`Storage`].
pub struct PostgresStore {
    pub(crate) pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://...` / `postgresql://...`, migrates, and builds the pool.
    ///
    /// Connection failures come back as [`StorageError::Unavailable`] within about five
    /// seconds, e.g. "cannot connect to postgres at 127.0.0.1:5433: connection refused".
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StorageError::BadUrl(crate::one_line(&format!("cannot parse postgres url: {e}")))
        })?;
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let unavailable = |reason: String| {
            StorageError::Unavailable(format!("cannot connect to postgres at {target}: {reason}"))
        };

        // Probe with one direct connection first: the pool retries refused connections
        // until its timeout and then reports only "timed out", losing the reason.
        let conn =
            match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await
            {
                Err(_) => return Err(unavailable("timed out".into())),
                Ok(Err(e)) => return Err(unavailable(connect_reason(e))),
                Ok(Ok(conn)) => conn,
            };
        let _ = conn.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        // Through the pool rather than the probe connection: `&mut PgConnection` as
        // `Acquire` makes this future non-`Send`, and callers spawn `open`.
        let migrator = crate::migrator(&[
            (
                1,
                "initial",
                include_str!("../migrations/postgres/0001_initial.sql"),
            ),
            (
                2,
                "archive",
                include_str!("../migrations/postgres/0002_archive.sql"),
            ),
            (
                3,
                "muc",
                include_str!("../migrations/postgres/0003_muc.sql"),
            ),
            (
                4,
                "files",
                include_str!("../migrations/postgres/0004_files.sql"),
            ),
        ]);
        migrator.run(&pool).await.map_err(map_migrate_err)?;
        tracing::debug!(%target, "opened postgres store");
        Ok(PostgresStore { pool })
    }

    /// Closes all pooled connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn tx(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }
}

fn connect_reason(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(e) => crate::describe_io(&e),
        sqlx::Error::Database(db) => crate::one_line(db.message()),
        other => match map_err(other) {
            StorageError::Unavailable(m) | StorageError::Backend(m) => m,
            e => e.to_string(),
        },
    }
}

fn item_from_row(row: &PgRow, first: usize) -> Result<Option<RosterItem>> {
    let jid: Option<String> = row.try_get(first).map_err(map_err)?;
    let Some(jid) = jid else { return Ok(None) };
    let subscription: String = row.try_get(first + 2).map_err(map_err)?;
    Ok(Some(RosterItem {
        jid,
        name: row.try_get(first + 1).map_err(map_err)?,
        subscription: parse_subscription(&subscription)?,
        ask: row.try_get(first + 3).map_err(map_err)?,
        approved: row.try_get(first + 4).map_err(map_err)?,
        groups: row.try_get(first + 5).map_err(map_err)?,
    }))
}

fn owner_of(domain: &str, username: &str) -> String {
    format!("{username}@{domain}")
}

async fn insert_credentials(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    domain: &str,
    username: &str,
    creds: &[StoredCredential],
) -> Result<()> {
    if creds.is_empty() {
        return Ok(());
    }
    let positions: Vec<i32> = (0..creds.len() as i32).collect();
    let mechanisms: Vec<&str> = creds.iter().map(|c| c.mechanism.as_str()).collect();
    let salts: Vec<&[u8]> = creds.iter().map(|c| c.salt.as_slice()).collect();
    let iterations: Vec<i64> = creds.iter().map(|c| i64::from(c.iterations)).collect();
    let stored: Vec<&[u8]> = creds.iter().map(|c| c.stored_key.as_slice()).collect();
    let server: Vec<&[u8]> = creds.iter().map(|c| c.server_key.as_slice()).collect();
    sqlx::query(
        "INSERT INTO credentials \
         (domain, username, position, mechanism, salt, iterations, stored_key, server_key) \
         SELECT $1, $2, c.* FROM UNNEST($3::int4[], $4::text[], $5::bytea[], $6::int8[], \
                                        $7::bytea[], $8::bytea[]) AS c",
    )
    .bind(domain)
    .bind(username)
    .bind(&positions)
    .bind(&mechanisms)
    .bind(&salts)
    .bind(&iterations)
    .bind(&stored)
    .bind(&server)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Tables holding per-owner data; `delete_account` empties each for the owner.
///
/// Each counter row comes before the rows it counts: deleting it first waits for (and then
/// sees, in the next statement's snapshot) any in-flight write for that owner, so a racing
/// `put_roster_item` or `store_offline` can't leave an item behind or a counter out of step.
const OWNER_TABLES: &[&str] = &[
    "roster_versions",
    "roster_items",
    "roster_pending_in",
    "offline_counts",
    "offline_messages",
    "private_data",
    "blocklist",
    "last_activity",
    "archive_prefs",
    "archive_prefs_jids",
    "archive",
];

#[async_trait]
impl AccountStore for PostgresStore {
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[StoredCredential],
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (domain, username) VALUES ($1, $2) ON CONFLICT DO NOTHING",
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
        let mut tx = self.tx().await?;
        // Credentials go with the account (ON DELETE CASCADE).
        let existed = sqlx::query("DELETE FROM accounts WHERE domain = $1 AND username = $2")
            .bind(domain)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            > 0;
        // Waits for (and then sees) an archive append in flight for this owner.
        sqlx::query(crate::archive_postgres::LOCK_OWNER)
            .bind(&owner)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for table in OWNER_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE owner = $1"))
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
        let mut tx = self.tx().await?;
        // Lock the account row so concurrent replacements serialize.
        let exists =
            sqlx::query("SELECT 1 FROM accounts WHERE domain = $1 AND username = $2 FOR UPDATE")
                .bind(domain)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?
                .is_some();
        if !exists {
            return Ok(false);
        }
        sqlx::query("DELETE FROM credentials WHERE domain = $1 AND username = $2")
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
        let rows = sqlx::query(
            "SELECT c.mechanism, c.salt, c.iterations, c.stored_key, c.server_key \
             FROM accounts a LEFT JOIN credentials c \
               ON c.domain = a.domain AND c.username = a.username \
             WHERE a.domain = $1 AND a.username = $2 \
             ORDER BY c.position",
        )
        .bind(domain)
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mechanism: Option<String> = row.try_get(0).map_err(map_err)?;
            let Some(mechanism) = mechanism else { continue };
            out.push(StoredCredential {
                mechanism,
                salt: row.try_get(1).map_err(map_err)?,
                iterations: to_u32(row.try_get(2).map_err(map_err)?, "iteration count")?,
                stored_key: row.try_get(3).map_err(map_err)?,
                server_key: row.try_get(4).map_err(map_err)?,
            });
        }
        Ok(Some(out))
    }

    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT username FROM accounts WHERE domain = $1 ORDER BY username")
            .bind(domain)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM accounts WHERE domain = $1 AND username = $2")
                .bind(domain)
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
                .is_some(),
        )
    }
}

#[async_trait]
impl RosterStore for PostgresStore {
    async fn roster(&self, owner: &str) -> Result<(u64, Vec<RosterItem>)> {
        // One statement, hence one snapshot: the version always matches the items.
        let rows = sqlx::query(
            "SELECT v.version, i.jid, i.name, i.subscription, i.ask, i.approved, i.groups \
             FROM (SELECT COALESCE((SELECT version FROM roster_versions WHERE owner = $1), 0) \
                   AS version) v \
             LEFT JOIN roster_items i ON i.owner = $1 \
             ORDER BY i.jid",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut version = 0;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            version = to_u64(row.try_get(0).map_err(map_err)?, "roster version")?;
            if let Some(item) = item_from_row(row, 1)? {
                items.push(item);
            }
        }
        Ok((version, items))
    }

    async fn roster_version(&self, owner: &str) -> Result<u64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM roster_versions WHERE owner = $1")
                .bind(owner)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        to_u64(v.unwrap_or(0), "roster version")
    }

    async fn roster_item(&self, owner: &str, jid: &str) -> Result<Option<RosterItem>> {
        let row = sqlx::query(
            "SELECT jid, name, subscription, ask, approved, groups \
             FROM roster_items WHERE owner = $1 AND jid = $2",
        )
        .bind(owner)
        .bind(jid)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        match row {
            Some(row) => item_from_row(&row, 0),
            None => Ok(None),
        }
    }

    async fn put_roster_item(&self, owner: &str, item: &RosterItem) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(
            "WITH v AS ( \
               INSERT INTO roster_versions AS rv (owner, version) VALUES ($1, 1) \
               ON CONFLICT (owner) DO UPDATE SET version = rv.version + 1 \
               RETURNING rv.version \
             ), i AS ( \
               INSERT INTO roster_items (owner, jid, name, subscription, ask, approved, groups) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) \
               ON CONFLICT (owner, jid) DO UPDATE SET \
                 name = EXCLUDED.name, subscription = EXCLUDED.subscription, \
                 ask = EXCLUDED.ask, approved = EXCLUDED.approved, groups = EXCLUDED.groups \
             ) \
             SELECT version FROM v",
        )
        .bind(owner)
        .bind(&item.jid)
        .bind(&item.name)
        .bind(item.subscription.as_str())
        .bind(item.ask)
        .bind(item.approved)
        .bind(&item.groups)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        to_u64(version, "roster version")
    }

    async fn remove_roster_item(&self, owner: &str, jid: &str) -> Result<Option<u64>> {
        // The version row is only touched when the DELETE found something.
        let version: Option<i64> = sqlx::query_scalar(
            "WITH d AS ( \
               DELETE FROM roster_items WHERE owner = $1 AND jid = $2 RETURNING 1 \
             ) \
             INSERT INTO roster_versions AS rv (owner, version) \
             SELECT $1, 1 FROM d \
             ON CONFLICT (owner) DO UPDATE SET version = rv.version + 1 \
             RETURNING rv.version",
        )
        .bind(owner)
        .bind(jid)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        version.map(|v| to_u64(v, "roster version")).transpose()
    }

    async fn add_pending_in(&self, owner: &str, from: &str, stanza: &str) -> Result<()> {
        // EXCLUDED.seq is the freshly drawn default: a repeated request becomes the latest.
        sqlx::query(
            "INSERT INTO roster_pending_in (owner, from_jid, stanza) VALUES ($1, $2, $3) \
             ON CONFLICT (owner, from_jid) DO UPDATE SET \
               stanza = EXCLUDED.stanza, seq = EXCLUDED.seq",
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
            sqlx::query("DELETE FROM roster_pending_in WHERE owner = $1 AND from_jid = $2")
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
        sqlx::query_as(
            "SELECT from_jid, stanza FROM roster_pending_in WHERE owner = $1 ORDER BY seq",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)
    }
}

#[async_trait]
impl OfflineStore for PostgresStore {
    async fn store_offline(
        &self,
        owner: &str,
        stanza: &str,
        stamp_micros: i64,
        quota: usize,
    ) -> Result<i64> {
        if quota == 0 {
            return Err(StorageError::QuotaExceeded);
        }
        // The upsert locks the owner's counter row and re-reads it after any concurrent
        // writer commits; it yields a row only when there is room, and the message insert
        // draws from that row.
        let id: Option<i64> = sqlx::query_scalar(
            "WITH c AS ( \
               INSERT INTO offline_counts AS oc (owner, n) VALUES ($1, 1) \
               ON CONFLICT (owner) DO UPDATE SET n = oc.n + 1 WHERE oc.n < $4 \
               RETURNING oc.n \
             ) \
             INSERT INTO offline_messages (owner, stanza, stamp_micros) \
             SELECT $1, $2, $3 FROM c \
             RETURNING id",
        )
        .bind(owner)
        .bind(stanza)
        .bind(stamp_micros)
        .bind(quota_i64(quota))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        id.ok_or(StorageError::QuotaExceeded)
    }

    async fn offline_messages(&self, owner: &str) -> Result<Vec<OfflineMessage>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, stanza, stamp_micros FROM offline_messages \
             WHERE owner = $1 ORDER BY id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, stanza, stamp_micros)| OfflineMessage {
                id,
                stanza,
                stamp_micros,
            })
            .collect())
    }

    async fn delete_offline(&self, owner: &str, up_to_id: i64) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "WITH d AS ( \
               DELETE FROM offline_messages WHERE owner = $1 AND id <= $2 RETURNING 1 \
             ), u AS ( \
               UPDATE offline_counts SET n = GREATEST(0, n - (SELECT count(*) FROM d)) \
               WHERE owner = $1 AND EXISTS (SELECT 1 FROM d) \
             ) \
             SELECT count(*) FROM d",
        )
        .bind(owner)
        .bind(up_to_id)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        to_u64(n, "offline count")
    }

    async fn count_offline(&self, owner: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM offline_messages WHERE owner = $1")
            .bind(owner)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        to_u64(n, "offline count")
    }
}

#[async_trait]
impl PrivateStore for PostgresStore {
    async fn get_private(&self, owner: &str, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM private_data WHERE owner = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn set_private(&self, owner: &str, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO private_data (owner, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (owner, key) DO UPDATE SET value = EXCLUDED.value",
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
            sqlx::query("DELETE FROM private_data WHERE owner = $1 AND key = $2")
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

#[async_trait]
impl BlockStore for PostgresStore {
    async fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT jid FROM blocklist WHERE owner = $1 ORDER BY jid")
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO blocklist (owner, jid) SELECT $1, UNNEST($2::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(owner)
        .bind(jids)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM blocklist WHERE owner = $1 AND jid = ANY($2::text[])")
            .bind(owner)
            .bind(jids)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn unblock_all(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM blocklist WHERE owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl LastActivityStore for PostgresStore {
    async fn set_last_activity(&self, owner: &str, stamp_secs: i64, status: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO last_activity (owner, stamp_secs, status) VALUES ($1, $2, $3) \
             ON CONFLICT (owner) DO UPDATE SET \
               stamp_secs = EXCLUDED.stamp_secs, status = EXCLUDED.status",
        )
        .bind(owner)
        .bind(stamp_secs)
        .bind(status)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>> {
        sqlx::query_as("SELECT stamp_secs, status FROM last_activity WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }
}

impl Storage for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }
}
