//! [`ArchiveStore`] for PostgreSQL.
//!
//! Appends for one owner are serialized with a transaction-scoped advisory lock on the
//! owner: row ids then commit in id order (a reader paging by id never sees id N+1 before
//! id N) and the stamp read for the ordering rule is the latest committed one.

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Postgres, Row};

use crate::archive::{
    pref_rules, prefs_from, run_query, ArchiveExec, ArchiveFilter, ArchivePage, ArchivePaging,
    ArchivePrefs, ArchiveStore, ArchivedMessage, Arg, Direction, NewArchived, Sql, EXPIRE_BATCH,
};
use crate::archive_sqlite::map_unique;
use crate::postgres::PostgresStore;
use crate::{map_err, Result};

/// Takes the per-owner archive lock until the transaction ends.
pub(crate) const LOCK_OWNER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 313))";

fn bind(sql: &Sql) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    let mut q = sqlx::query(&sql.text);
    for a in &sql.args {
        q = match a {
            Arg::I(i) => q.bind(*i),
            Arg::S(s) => q.bind(s.as_str()),
        };
    }
    q
}

fn item_from_row(row: &PgRow) -> Result<ArchivedMessage> {
    let direction: i16 = row.try_get(5).map_err(map_err)?;
    Ok(ArchivedMessage {
        id: row.try_get(0).map_err(map_err)?,
        stanza_id: row.try_get(1).map_err(map_err)?,
        with_bare: row.try_get(2).map_err(map_err)?,
        with_resource: row.try_get(3).map_err(map_err)?,
        stamp_micros: row.try_get(4).map_err(map_err)?,
        direction: Direction::from_code(i64::from(direction))?,
        stanza: row.try_get(6).map_err(map_err)?,
    })
}

#[async_trait]
impl ArchiveExec for PostgresStore {
    fn numbered(&self) -> bool {
        true
    }

    async fn pairs(&self, sql: Sql) -> Result<Vec<(String, i64)>> {
        let rows = bind(&sql).fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(map_err)?,
                    r.try_get(1).map_err(map_err)?,
                ))
            })
            .collect()
    }

    async fn opt_i64(&self, sql: Sql) -> Result<Option<i64>> {
        let row = bind(&sql)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| r.try_get(0).map_err(map_err)).transpose()
    }

    async fn one_i64(&self, sql: Sql) -> Result<i64> {
        let row = bind(&sql).fetch_one(&self.pool).await.map_err(map_err)?;
        row.try_get(0).map_err(map_err)
    }

    async fn items(&self, sql: Sql) -> Result<Vec<ArchivedMessage>> {
        let rows = bind(&sql).fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(item_from_row).collect()
    }
}

#[async_trait]
impl ArchiveStore for PostgresStore {
    async fn append_archive(&self, owner: &str, msg: &NewArchived<'_>) -> Result<i64> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(LOCK_OWNER)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // A new statement: its snapshot includes every append committed before the lock.
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO archive \
             (owner, stanza_id, with_bare, with_resource, stamp_micros, direction, stanza) \
             SELECT $1, $2, $3, $4, \
               GREATEST($5, COALESCE((SELECT MAX(stamp_micros) FROM archive WHERE owner = $1), $5)), \
               $6, $7 \
             RETURNING id",
        )
        .bind(owner)
        .bind(msg.stanza_id)
        .bind(msg.with_bare)
        .bind(msg.with_resource)
        .bind(msg.stamp_micros)
        .bind(msg.direction.code())
        .bind(msg.stanza)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_unique)?;
        tx.commit().await.map_err(map_err)?;
        Ok(id)
    }

    async fn query_archive(
        &self,
        owner: &str,
        filter: &ArchiveFilter,
        paging: &ArchivePaging,
    ) -> Result<Option<ArchivePage>> {
        run_query(self, owner, filter, paging).await
    }

    async fn replace_archived(&self, owner: &str, stanza_id: &str, stanza: &str) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE archive SET stanza = $1 WHERE owner = $2 AND stanza_id = $3")
                .bind(stanza)
                .bind(owner)
                .bind(stanza_id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected()
                > 0,
        )
    }

    async fn expire_archive(&self, owner: &str, before_micros: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM archive WHERE owner = $1 AND stamp_micros < $2")
                .bind(owner)
                .bind(before_micros)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected(),
        )
    }

    async fn expire_archive_domain(&self, domain: &str, before_micros: i64) -> Result<u64> {
        let suffix = format!("@{domain}");
        let chars = suffix.chars().count() as i32;
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM archive WHERE id IN (SELECT id FROM archive \
                 WHERE stamp_micros < $1 AND right(owner, $2) = $3 LIMIT $4)",
            )
            .bind(before_micros)
            .bind(chars)
            .bind(&suffix)
            .bind(EXPIRE_BATCH)
            .execute(&self.pool)
            .await
            .map_err(map_err)?
            .rows_affected();
            total += n;
            if n < EXPIRE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn archive_prefs(&self, owner: &str) -> Result<Option<ArchivePrefs>> {
        let rows = sqlx::query(
            "SELECT p.default_mode, j.jid, j.always FROM archive_prefs p \
             LEFT JOIN archive_prefs_jids j ON j.owner = p.owner WHERE p.owner = $1",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let default: String = first.try_get(0).map_err(map_err)?;
        let mut rules = Vec::new();
        for r in &rows {
            let jid: Option<String> = r.try_get(1).map_err(map_err)?;
            if let Some(jid) = jid {
                let always: bool = r.try_get(2).map_err(map_err)?;
                rules.push((jid, always));
            }
        }
        prefs_from(&default, rules).map(Some)
    }

    async fn set_archive_prefs(&self, owner: &str, prefs: &ArchivePrefs) -> Result<()> {
        let rules = pref_rules(prefs);
        let jids: Vec<&str> = rules.iter().map(|(j, _)| j.as_str()).collect();
        let always: Vec<bool> = rules.iter().map(|(_, a)| *a).collect();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The prefs row first: its row lock serializes concurrent setters.
        sqlx::query(
            "INSERT INTO archive_prefs (owner, default_mode) VALUES ($1, $2) \
             ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode",
        )
        .bind(owner)
        .bind(prefs.default.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM archive_prefs_jids WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO archive_prefs_jids (owner, jid, always) \
             SELECT $1, j.* FROM UNNEST($2::text[], $3::bool[]) AS j",
        )
        .bind(owner)
        .bind(&jids)
        .bind(&always)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
}
