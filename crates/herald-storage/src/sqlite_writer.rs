//! Group commit for SQLite's hot single-row writes (archived and offline messages, last
//! activity at logout).
//!
//! With `synchronous=FULL` every commit costs an fsync, and SQLite has one write lock, so
//! one transaction per append caps the append rate at the disk's fsync rate. Instead each
//! [`SqliteStore`](crate::sqlite::SqliteStore) owns a writer task: callers send their append
//! over a bounded channel and wait on a oneshot; the writer takes the first request, drains
//! whatever else is already queued (up to [`MAX_BATCH`]), runs them all in one
//! `BEGIN IMMEDIATE` transaction, commits (one fsync), and only then answers each request.
//! An `Ok` therefore still means "committed and fsynced".
//!
//! Each request keeps its own outcome: rows run in queue order, so a later append of an
//! owner sees the earlier ones of the same batch (the archive stamp rule, the offline
//! quota); a duplicate stanza id or a full quota is detected by the statement itself
//! (`ON CONFLICT DO NOTHING` / a `WHERE` guard, no row returned) and fails only that
//! request. Any other per-row error abandons the batch transaction and replays the batch
//! one transaction per request, so an unexpected failure of one row never fails others. A
//! failed `BEGIN` or `COMMIT` fails every request of the batch.
//!
//! The writer holds a pooled connection only while it runs a batch. It stops when the store (the
//! only sender) is dropped; a request that finds it gone gets
//! [`StorageError::Unavailable`].

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::archive_sqlite::map_unique;
use crate::{map_err, Result, StorageError};

/// Most requests committed in one transaction.
pub(crate) const MAX_BATCH: usize = 256;
/// Requests waiting for the writer before senders wait for room.
const QUEUE: usize = 1024;

/// One append, owning its data.
#[derive(Debug)]
pub(crate) enum Append {
    Archive {
        owner: String,
        stanza_id: String,
        with_bare: String,
        with_resource: String,
        stamp_micros: i64,
        direction: i16,
        stanza: String,
    },
    Offline {
        owner: String,
        stanza: String,
        stamp_micros: i64,
        quota: i64,
    },
    /// XEP-0012 last activity, written at every logout: a mass disconnect (a network
    /// blip, a restart) would otherwise cost one fsync per user.
    LastActivity {
        owner: String,
        stamp_secs: i64,
        status: String,
    },
}

struct Request {
    append: Append,
    reply: oneshot::Sender<Result<i64>>,
}

/// The sending side of a store's writer task.
pub(crate) struct Writer {
    tx: mpsc::Sender<Request>,
}

impl Writer {
    /// Spawns the writer task on the current tokio runtime.
    pub(crate) fn spawn(pool: SqlitePool) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Writer { tx }
    }

    /// Queues `append` and waits until its batch is committed; returns the new row id.
    pub(crate) async fn submit(&self, append: Append) -> Result<i64> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { append, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn gone() -> StorageError {
    StorageError::Unavailable("the sqlite writer task has stopped".into())
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Waits for at least one request, then takes what is queued already, up to the cap.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = commit_batch(&pool, &batch).await;
        tracing::trace!(rows = batch.len(), "sqlite group commit");
        for (req, result) in batch.drain(..).zip(results) {
            // The caller may have stopped waiting; the row is committed regardless.
            let _ = req.reply.send(result);
        }
    }
}

/// Runs `batch` and returns one result per request, in order.
async fn commit_batch(pool: &SqlitePool, batch: &[Request]) -> Vec<Result<i64>> {
    let everyone = |e: StorageError| batch.iter().map(|_| Err(e.clone())).collect();
    let mut tx = match begin(pool).await {
        Ok(tx) => tx,
        Err(e) => return everyone(e),
    };
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        match apply(&mut tx, &req.append).await {
            Ok(outcome) => results.push(outcome),
            Err(e) if batch.len() == 1 => {
                abandon(tx).await;
                return vec![Err(e)];
            }
            Err(e) => {
                // The error may have rolled the whole transaction back already; in any
                // case, abandon it and give every request a transaction of its own.
                tracing::debug!(error = %e, rows = batch.len(), "sqlite batch row failed, replaying singly");
                abandon(tx).await;
                return replay_singly(pool, batch).await;
            }
        }
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => everyone(map_err(e)),
    }
}

async fn replay_singly(pool: &SqlitePool, batch: &[Request]) -> Vec<Result<i64>> {
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        results.push(single(pool, &req.append).await);
    }
    results
}

async fn single(pool: &SqlitePool, append: &Append) -> Result<i64> {
    let mut tx = begin(pool).await?;
    match apply(&mut tx, append).await {
        Ok(outcome) => {
            tx.commit().await.map_err(map_err)?;
            outcome
        }
        Err(e) => {
            abandon(tx).await;
            Err(e)
        }
    }
}

/// Rolls back a transaction after a failed statement. Some errors (a full disk, an I/O
/// error) make SQLite roll the transaction back by itself; sqlx's `ROLLBACK` would then fail
/// and leave the pooled connection marked as inside a transaction, refusing every later
/// `BEGIN IMMEDIATE`. A `SAVEPOINT` nests in a live transaction or opens one if there is
/// none, so the `ROLLBACK` always has a transaction to end.
async fn abandon(mut tx: Transaction<'static, Sqlite>) {
    let _ = sqlx::query("SAVEPOINT herald_abandon")
        .persistent(false)
        .execute(&mut *tx)
        .await;
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "sqlite rollback failed");
    }
}

async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)
}

/// Runs one append. The outer `Err` is an unexpected failure of the statement; the inner
/// result is the request's own outcome (a row id, or the refusal the contract defines).
async fn apply(conn: &mut SqliteConnection, append: &Append) -> Result<Result<i64>> {
    match append {
        Append::Archive {
            owner,
            stanza_id,
            with_bare,
            with_resource,
            stamp_micros,
            direction,
            stanza,
        } => {
            // Earlier rows of this batch are visible here, so the stamp rule holds in
            // queue order. `WHERE true` lets the parser tell the upsert clause from a join.
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO archive \
                 (owner, stanza_id, with_bare, with_resource, stamp_micros, direction, stanza) \
                 SELECT ?1, ?2, ?3, ?4, \
                   MAX(?5, COALESCE((SELECT MAX(stamp_micros) FROM archive WHERE owner = ?1), ?5)), \
                   ?6, ?7 \
                 WHERE true \
                 ON CONFLICT (owner, stanza_id) DO NOTHING \
                 RETURNING id",
            )
            .bind(owner)
            .bind(stanza_id)
            .bind(with_bare)
            .bind(with_resource)
            .bind(stamp_micros)
            .bind(direction)
            .bind(stanza)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_unique)?;
            Ok(id.ok_or(StorageError::AlreadyExists))
        }
        Append::Offline {
            owner,
            stanza,
            stamp_micros,
            quota,
        } => {
            // The count includes earlier rows of this batch: the quota holds in queue order.
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO offline_messages (owner, stanza, stamp_micros) \
                 SELECT ?1, ?2, ?3 \
                 WHERE (SELECT COUNT(*) FROM offline_messages WHERE owner = ?1) < ?4 \
                 RETURNING id",
            )
            .bind(owner)
            .bind(stanza)
            .bind(stamp_micros)
            .bind(quota)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(id.ok_or(StorageError::QuotaExceeded))
        }
        Append::LastActivity {
            owner,
            stamp_secs,
            status,
        } => {
            sqlx::query(
                "INSERT INTO last_activity (owner, stamp_secs, status) VALUES (?, ?, ?) \
                 ON CONFLICT (owner) DO UPDATE SET \
                   stamp_secs = excluded.stamp_secs, status = excluded.status",
            )
            .bind(owner)
            .bind(stamp_secs)
            .bind(status)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            Ok(Ok(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::archive::{ArchiveFilter, ArchivePaging, ArchiveStore, Direction, NewArchived};
    use crate::sqlite::SqliteStore;
    use crate::{OfflineStore, StorageError};

    fn msg<'a>(sid: &'a str, stamp: i64) -> NewArchived<'a> {
        NewArchived {
            stanza_id: sid,
            with_bare: "peer@x.example",
            with_resource: "",
            stamp_micros: stamp,
            direction: Direction::Out,
            stanza: "<message/>",
        }
    }

    /// A store outliving the runtime its writer ran on answers Unavailable, not a panic.
    #[test]
    fn writer_gone_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let first = tokio::runtime::Runtime::new().unwrap();
        let store = first.block_on(SqliteStore::open(&url)).unwrap();
        first.block_on(async {
            store
                .append_archive("a@x.example", &msg("s1", 1))
                .await
                .unwrap();
        });
        drop(first);
        let second = tokio::runtime::Runtime::new().unwrap();
        second.block_on(async {
            match store.append_archive("a@x.example", &msg("s2", 2)).await {
                Err(StorageError::Unavailable(_)) => {}
                other => panic!("expected Unavailable, got {other:?}"),
            }
            match store.store_offline("a@x.example", "<m/>", 1, 10).await {
                Err(StorageError::Unavailable(_)) => {}
                other => panic!("expected Unavailable, got {other:?}"),
            }
        });
    }

    /// A transaction SQLite already rolled back by itself still leaves the connection
    /// usable (the in-memory store has only this one).
    #[tokio::test]
    async fn abandon_after_implicit_rollback_frees_the_connection() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let mut tx = super::begin(&store.pool).await.unwrap();
        sqlx::raw_sql("ROLLBACK").execute(&mut *tx).await.unwrap();
        super::abandon(tx).await;
        let live = super::begin(&store.pool).await.unwrap();
        super::abandon(live).await;
        store
            .append_archive("a@x.example", &msg("s1", 1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn closed_store_is_unavailable() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        store.close().await;
        match store.append_archive("a@x.example", &msg("s1", 1)).await {
            Err(StorageError::Unavailable(_)) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// Appends and archive reads interleave, and every append gets its own row id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_interleaves_reads_and_batches() {
        let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..400i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("u{}@x.example", i % 4);
                if i % 3 == 0 {
                    let paging = ArchivePaging {
                        max: 5,
                        ..ArchivePaging::default()
                    };
                    store
                        .query_archive(&owner, &ArchiveFilter::default(), &paging)
                        .await
                        .unwrap()
                        .unwrap();
                    None
                } else {
                    let sid = format!("s{i}");
                    Some(store.append_archive(&owner, &msg(&sid, i)).await.unwrap())
                }
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    /// A mass logout: concurrent last-activity writes (group-committed, mixed with offline
    /// appends) all land, the latest write of an owner wins, and inline reads see them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_last_activity_writes_all_land() {
        use crate::LastActivityStore;
        let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..300i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("u{i}@x.example");
                store
                    .set_last_activity(&owner, 1_000, "first")
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    store.store_offline(&owner, "<m/>", i, 10).await.unwrap();
                }
                store
                    .set_last_activity(&owner, 2_000 + i, &format!("bye {i}"))
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..300i64 {
            let owner = format!("u{i}@x.example");
            assert_eq!(
                store.last_activity(&owner).await.unwrap(),
                Some((2_000 + i, format!("bye {i}")))
            );
            assert_eq!(
                store.count_offline(&owner).await.unwrap(),
                u64::from(i % 2 == 0)
            );
        }
    }

    /// A row failing for a reason other than its own duplicate or quota makes the batch
    /// replay one request per transaction: the other requests still succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failing_row_does_not_fail_its_batch() {
        let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        // Rows with this stanza id fail a CHECK-like trigger.
        sqlx::query(
            "CREATE TRIGGER reject BEFORE INSERT ON archive WHEN NEW.stanza_id = 'bad' \
             BEGIN SELECT RAISE(ABORT, 'rejected'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let mut tasks = Vec::new();
        for i in 0..300i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let sid = if i % 50 == 7 {
                    "bad".to_string()
                } else {
                    format!("s{i}")
                };
                let r = store.append_archive("a@x.example", &msg(&sid, i)).await;
                (sid, r)
            }));
        }
        let mut good = 0;
        for t in tasks {
            match t.await.unwrap() {
                (sid, Err(StorageError::Backend(_))) if sid == "bad" => {}
                (sid, Ok(_)) if sid != "bad" => good += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(good, 294);
        let page = store
            .query_archive(
                "a@x.example",
                &ArchiveFilter::default(),
                &ArchivePaging {
                    max: 1000,
                    count_limit: 1000,
                    ..ArchivePaging::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.count, Some(294));
    }
}
