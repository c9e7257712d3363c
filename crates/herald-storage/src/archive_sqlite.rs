//! [`ArchiveStore`] for SQLite.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row, Sqlite};

use crate::archive::{
    pref_rules, prefs_from, run_query, ArchiveExec, ArchiveFilter, ArchivePage, ArchivePaging,
    ArchivePrefs, ArchiveStore, ArchivedMessage, Arg, Direction, NewArchived, Sql, EXPIRE_BATCH,
};
use crate::sqlite::SqliteStore;
use crate::sqlite_writer::Append;
use crate::{map_err, Result, StorageError};

fn bind(sql: &Sql) -> sqlx::query::Query<'_, Sqlite, SqliteArguments<'_>> {
    let mut q = sqlx::query(&sql.text);
    for a in &sql.args {
        q = match a {
            Arg::I(i) => q.bind(*i),
            Arg::S(s) => q.bind(s.as_str()),
        };
    }
    q
}

pub(crate) fn item_from_row(row: &SqliteRow) -> Result<ArchivedMessage> {
    Ok(ArchivedMessage {
        id: row.try_get(0).map_err(map_err)?,
        stanza_id: row.try_get(1).map_err(map_err)?,
        with_bare: row.try_get(2).map_err(map_err)?,
        with_resource: row.try_get(3).map_err(map_err)?,
        stamp_micros: row.try_get(4).map_err(map_err)?,
        direction: Direction::from_code(row.try_get(5).map_err(map_err)?)?,
        stanza: row.try_get(6).map_err(map_err)?,
    })
}

/// Unique violations become [`StorageError::AlreadyExists`].
pub(crate) fn map_unique(e: sqlx::Error) -> StorageError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            return StorageError::AlreadyExists;
        }
    }
    map_err(e)
}

#[async_trait]
impl ArchiveExec for SqliteStore {
    fn numbered(&self) -> bool {
        false
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
impl ArchiveStore for SqliteStore {
    async fn append_archive(&self, owner: &str, msg: &NewArchived<'_>) -> Result<i64> {
        // Group-committed with other appends; the writer's transaction holds the write lock
        // from its start, so the latest stamp it reads is still the latest when it inserts.
        self.writer
            .submit(Append::Archive {
                owner: owner.to_string(),
                stanza_id: msg.stanza_id.to_string(),
                with_bare: msg.with_bare.to_string(),
                with_resource: msg.with_resource.to_string(),
                stamp_micros: msg.stamp_micros,
                direction: msg.direction.code(),
                stanza: msg.stanza.to_string(),
            })
            .await
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
            sqlx::query("UPDATE archive SET stanza = ? WHERE owner = ? AND stanza_id = ?")
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
            sqlx::query("DELETE FROM archive WHERE owner = ? AND stamp_micros < ?")
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
        let chars = suffix.chars().count() as i64;
        let mut total = 0;
        loop {
            // Batches keep each write transaction (and the lock it holds) short.
            let n = sqlx::query(
                "DELETE FROM archive WHERE id IN (SELECT id FROM archive \
                 WHERE stamp_micros < ? AND substr(owner, -?) = ? LIMIT ?)",
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
        // One statement, one snapshot.
        let rows = sqlx::query(
            "SELECT p.default_mode, j.jid, j.always FROM archive_prefs p \
             LEFT JOIN archive_prefs_jids j ON j.owner = p.owner WHERE p.owner = ?",
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO archive_prefs (owner, default_mode) VALUES (?, ?) \
             ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode",
        )
        .bind(owner)
        .bind(prefs.default.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM archive_prefs_jids WHERE owner = ?")
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for (jid, always) in pref_rules(prefs) {
            sqlx::query("INSERT INTO archive_prefs_jids (owner, jid, always) VALUES (?, ?, ?)")
                .bind(owner)
                .bind(jid)
                .bind(always)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[cfg(test)]
mod perf {
    use std::time::Instant;

    use crate::archive::{ArchiveFilter, ArchivePaging, ArchiveStore};

    /// Not a CI test: `cargo test -p herald-storage --release perf_page_of_50 -- --ignored
    /// --nocapture`. Fills one owner's archive with 1,000,000 messages (50 partners) and
    /// times pages of 50.
    #[tokio::test]
    #[ignore]
    async fn perf_page_of_50() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/perf.db", dir.path().display());
        let store = crate::sqlite::SqliteStore::open(&url).await.unwrap();
        let t = Instant::now();
        sqlx::query(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000000) \
             INSERT INTO archive \
             (owner, stanza_id, with_bare, with_resource, stamp_micros, direction, stanza) \
             SELECT 'perf@x.example', 'sid' || i, 'c' || (i % 50) || '@x.example', '', \
                    i * 1000, i % 2, \
                    '<message type=\"chat\"><body>message number ' || i || '</body></message>' \
             FROM c",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
        println!("filled 1,000,000 rows in {:?}", t.elapsed());
        let with = ArchiveFilter {
            with_bare: Some("c7@x.example".into()),
            ..ArchiveFilter::default()
        };
        let cases: Vec<(&str, ArchiveFilter, ArchivePaging)> = vec![
            ("with, first page", with.clone(), page(None, None, false)),
            (
                "with, last page (<before/>)",
                with.clone(),
                page(None, None, true),
            ),
            (
                "with, after an id in the middle",
                with.clone(),
                page(Some("sid500007"), None, false),
            ),
            (
                "with, before an id in the middle",
                with.clone(),
                page(None, Some("sid500007"), true),
            ),
            (
                "with + start/end",
                ArchiveFilter {
                    start: Some(400_000_000),
                    end: Some(600_000_000),
                    ..with.clone()
                },
                page(None, None, false),
            ),
            (
                "no filter, last page",
                ArchiveFilter::default(),
                page(None, None, true),
            ),
        ];
        for (name, f, p) in cases {
            // Warm once, then time the best of 5.
            store.query_archive("perf@x.example", &f, &p).await.unwrap();
            let mut best = std::time::Duration::MAX;
            let mut n = 0;
            for _ in 0..5 {
                let t = Instant::now();
                let page = store
                    .query_archive("perf@x.example", &f, &p)
                    .await
                    .unwrap()
                    .unwrap();
                best = best.min(t.elapsed());
                n = page.items.len();
            }
            println!("{name}: {n} items in {best:?}");
        }
    }

    /// Not a CI test: `cargo test -p herald-storage --release perf_concurrent_appends --
    /// --ignored --nocapture`. Times 2,000 concurrent appends (100 owners, every one
    /// durable when it returns) and 200 sequential ones on a file-backed store, through the
    /// group-committing writer and, for comparison, as one autocommit statement each (the
    /// write path before group commit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore]
    async fn perf_concurrent_appends() {
        use std::sync::Arc;

        use crate::archive::{Direction, NewArchived};
        use crate::sqlite::SqliteStore;

        async fn append(store: &SqliteStore, grouped: bool, owner: &str, sid: &str, stamp: i64) {
            let msg = NewArchived {
                stanza_id: sid,
                with_bare: "peer@perf.example",
                with_resource: "res",
                stamp_micros: stamp,
                direction: Direction::In,
                stanza: "<message type='chat'><body>hello there</body></message>",
            };
            if grouped {
                store.append_archive(owner, &msg).await.unwrap();
                return;
            }
            let _: i64 = sqlx::query_scalar(
                "INSERT INTO archive \
                 (owner, stanza_id, with_bare, with_resource, stamp_micros, direction, stanza) \
                 SELECT ?1, ?2, ?3, ?4, \
                   MAX(?5, COALESCE((SELECT MAX(stamp_micros) FROM archive WHERE owner = ?1), ?5)), \
                   ?6, ?7 \
                 RETURNING id",
            )
            .bind(owner)
            .bind(msg.stanza_id)
            .bind(msg.with_bare)
            .bind(msg.with_resource)
            .bind(msg.stamp_micros)
            .bind(msg.direction.code())
            .bind(msg.stanza)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        }

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/perf.db", dir.path().display());
        let store = Arc::new(SqliteStore::open(&url).await.unwrap());
        for round in 0..6 {
            let grouped = round % 2 == 1;
            let how = if grouped {
                "group commit"
            } else {
                "one commit each"
            };
            let t = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..2000 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let owner = format!("u{}@perf.example", i % 100);
                    let sid = format!("r{round}-m{i}");
                    append(&store, grouped, &owner, &sid, 1_000_000 + i).await;
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let took = t.elapsed();
            println!(
                "{how}: 2,000 concurrent appends in {took:?} ({:.0} appends/s)",
                2000.0 / took.as_secs_f64()
            );
            let t = Instant::now();
            for i in 0..200 {
                let sid = format!("r{round}-seq{i}");
                append(&store, grouped, "seq@perf.example", &sid, i).await;
            }
            let took = t.elapsed();
            println!(
                "{how}: 200 sequential appends in {took:?} ({:.0} appends/s)",
                200.0 / took.as_secs_f64()
            );
        }
    }

    fn page(after: Option<&str>, before: Option<&str>, from_end: bool) -> ArchivePaging {
        ArchivePaging {
            after: after.map(str::to_string),
            before: before.map(str::to_string),
            from_end,
            max: 50,
            count_limit: 10_000,
        }
    }
}
