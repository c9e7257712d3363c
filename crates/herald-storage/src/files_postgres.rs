//! [`FileStore`] for PostgreSQL.
//!
//! A slot and its quota check run in one transaction holding a per-uploader advisory lock,
//! so concurrent slot requests of one user are checked one after the other (under READ
//! COMMITTED a plain sum-then-insert would not be atomic).

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::archive_sqlite::map_unique;
use crate::files::{
    limit_i64, rows_i64, size_i64, FileDownload, FileFilter, FileQuota, FileRecipient, FileRecord,
    FileState, FileStore, FileUsage, NewFileSlot,
};
use crate::postgres::PostgresStore;
use crate::{map_err, to_u64, Result, StorageError};

/// Takes the per-uploader slot lock until the transaction ends.
const LOCK_UPLOADER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 363))";

const COLUMNS: &str = "id, uploader, file_name, size, content_type, sha256, created_micros, \
     put_deadline_micros, expires_micros, state, uploaded_micros, upload_addr, purged_micros, \
     purge_reason, (SELECT COUNT(*) FROM file_downloads d WHERE d.file_id = files.id)";

fn record_from_row(row: &PgRow) -> Result<FileRecord> {
    Ok(FileRecord {
        id: row.try_get(0).map_err(map_err)?,
        uploader: row.try_get(1).map_err(map_err)?,
        file_name: row.try_get(2).map_err(map_err)?,
        size: to_u64(row.try_get(3).map_err(map_err)?, "file size")?,
        content_type: row.try_get(4).map_err(map_err)?,
        sha256: row.try_get(5).map_err(map_err)?,
        created_micros: row.try_get(6).map_err(map_err)?,
        put_deadline_micros: row.try_get(7).map_err(map_err)?,
        expires_micros: row.try_get(8).map_err(map_err)?,
        state: FileState::from_code(row.try_get::<i16, _>(9).map_err(map_err)?.into())?,
        uploaded_micros: row.try_get(10).map_err(map_err)?,
        upload_addr: row.try_get(11).map_err(map_err)?,
        purged_micros: row.try_get(12).map_err(map_err)?,
        purge_reason: row.try_get(13).map_err(map_err)?,
        download_count: to_u64(row.try_get(14).map_err(map_err)?, "download count")?,
        downloads: Vec::new(),
        recipients: Vec::new(),
    })
}

async fn state_of(store: &PostgresStore, id: &str) -> Result<Option<FileState>> {
    let code: Option<i16> = sqlx::query_scalar("SELECT state FROM files WHERE id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await
        .map_err(map_err)?;
    code.map(|c| FileState::from_code(c.into())).transpose()
}

#[async_trait]
impl FileStore for PostgresStore {
    async fn create_file_slot(&self, slot: &NewFileSlot<'_>, quota: &FileQuota) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(LOCK_UPLOADER)
            .bind(slot.uploader)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // A new statement: its snapshot includes every slot committed before the lock.
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO files (id, uploader, file_name, size, content_type, created_micros, \
             put_deadline_micros, expires_micros, state) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, 0 \
             WHERE ($9::BIGINT IS NULL OR $4::NUMERIC + (SELECT COALESCE(SUM(size), 0) \
                    FROM files WHERE uploader = $2 AND created_micros >= $11 \
                    AND (uploaded_micros IS NOT NULL \
                         OR (state = 0 AND put_deadline_micros > $12))) <= $9) \
               AND ($10::BIGINT IS NULL OR $4::NUMERIC + (SELECT COALESCE(SUM(size), 0) \
                    FROM files WHERE uploader = $2 \
                    AND (state = 1 OR (state = 0 AND put_deadline_micros > $12))) <= $10) \
             RETURNING id",
        )
        .bind(slot.id)
        .bind(slot.uploader)
        .bind(slot.file_name)
        .bind(size_i64(slot.size))
        .bind(slot.content_type)
        .bind(slot.created_micros)
        .bind(slot.put_deadline_micros)
        .bind(slot.expires_micros)
        .bind(limit_i64(quota.daily_bytes))
        .bind(limit_i64(quota.total_bytes))
        .bind(quota.since_micros)
        .bind(quota.now_micros)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_unique)?;
        tx.commit().await.map_err(map_err)?;
        inserted.map(|_| ()).ok_or(StorageError::QuotaExceeded)
    }

    async fn file_usage(
        &self,
        uploader: &str,
        since_micros: i64,
        now_micros: i64,
    ) -> Result<FileUsage> {
        let (window, total): (i64, i64) = sqlx::query_as(
            "SELECT \
             COALESCE(SUM(CASE WHEN created_micros >= $2 AND (uploaded_micros IS NOT NULL \
                  OR (state = 0 AND put_deadline_micros > $3)) THEN size ELSE 0 END), 0)::BIGINT, \
             COALESCE(SUM(CASE WHEN state = 1 \
                  OR (state = 0 AND put_deadline_micros > $3) THEN size ELSE 0 END), 0)::BIGINT \
             FROM files WHERE uploader = $1",
        )
        .bind(uploader)
        .bind(since_micros)
        .bind(now_micros)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(FileUsage {
            window_bytes: to_u64(window, "file usage")?,
            total_bytes: to_u64(total, "file usage")?,
        })
    }

    async fn complete_file_upload(
        &self,
        id: &str,
        sha256: &str,
        stamp_micros: i64,
        client_addr: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET state = 1, sha256 = $1, uploaded_micros = $2, upload_addr = $3 \
             WHERE id = $4 AND state = 0",
        )
        .bind(sha256)
        .bind(stamp_micros)
        .bind(client_addr)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(done == 1)
    }

    async fn file(&self, id: &str) -> Result<Option<FileRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM files WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let mut rec = record_from_row(&row)?;
        let downloads: Vec<(i64, String, Option<String>)> = sqlx::query_as(
            "SELECT stamp_micros, client_addr, downloader FROM file_downloads \
             WHERE file_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rec.downloads = downloads
            .into_iter()
            .map(|(stamp_micros, client_addr, downloader)| FileDownload {
                stamp_micros,
                client_addr,
                downloader,
            })
            .collect();
        let recipients: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT recipient, sender, stamp_micros FROM file_recipients \
             WHERE file_id = $1 ORDER BY stamp_micros, recipient",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rec.recipients = recipients
            .into_iter()
            .map(|(jid, sender, stamp_micros)| FileRecipient {
                jid,
                sender,
                stamp_micros,
            })
            .collect();
        Ok(Some(rec))
    }

    async fn list_files(&self, filter: &FileFilter) -> Result<Vec<FileRecord>> {
        let mut qb: QueryBuilder<'_, Postgres> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM files WHERE 1 = 1"));
        if let Some(u) = &filter.uploader {
            qb.push(" AND uploader = ").push_bind(u.as_str());
        }
        if let Some(s) = filter.since_micros {
            qb.push(" AND created_micros >= ").push_bind(s);
        }
        if let Some(b) = filter.before_micros {
            qb.push(" AND created_micros < ").push_bind(b);
        }
        if !filter.include_purged {
            qb.push(" AND state <> 2");
        }
        qb.push(" ORDER BY created_micros DESC, id DESC LIMIT ")
            .push_bind(rows_i64(filter.limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn record_file_download(&self, id: &str, download: &FileDownload) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO file_downloads (file_id, stamp_micros, client_addr, downloader) \
             SELECT id, $1, $2, $3 FROM files WHERE id = $4",
        )
        .bind(download.stamp_micros)
        .bind(&download.client_addr)
        .bind(download.downloader.as_deref())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn add_file_recipient(
        &self,
        id: &str,
        recipient: &str,
        sender: &str,
        stamp_micros: i64,
    ) -> Result<bool> {
        if state_of(self, id).await?.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO file_recipients (file_id, recipient, sender, stamp_micros) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(recipient)
        .bind(sender)
        .bind(stamp_micros)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(true)
    }

    async fn purge_file(
        &self,
        id: &str,
        stamp_micros: i64,
        reason: &str,
    ) -> Result<Option<FileState>> {
        // Compare-and-set on the state read, retried if an upload completed in between.
        for _ in 0..5 {
            let Some(state) = state_of(self, id).await? else {
                return Ok(None);
            };
            if state == FileState::Purged {
                return Ok(Some(state));
            }
            let n = sqlx::query(
                "UPDATE files SET state = 2, purged_micros = $1, purge_reason = $2 \
                 WHERE id = $3 AND state = $4",
            )
            .bind(stamp_micros)
            .bind(reason)
            .bind(id)
            .bind(state.code() as i16)
            .execute(&self.pool)
            .await
            .map_err(map_err)?
            .rows_affected();
            if n == 1 {
                return Ok(Some(state));
            }
        }
        Err(StorageError::Backend(format!(
            "file {id} keeps changing state; purge not applied"
        )))
    }

    async fn expired_files(
        &self,
        now_micros: i64,
        stale_before_micros: i64,
        limit: usize,
    ) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM files \
             WHERE (state = 1 AND expires_micros IS NOT NULL AND expires_micros <= $1) \
                OR (state = 0 AND put_deadline_micros <= $2) \
             ORDER BY created_micros, id LIMIT $3",
        )
        .bind(now_micros)
        .bind(stale_before_micros)
        .bind(rows_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)
    }
}
