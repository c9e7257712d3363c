//! Managed file transfer: the audit record of every XEP-0363 upload slot, its upload, its
//! downloads and the recipients it was sent to, and the per-user quota queries.
//!
//! # Life of a record
//!
//! A slot request creates a record in [`FileState::Requested`] with the announced name,
//! size and content type, a deadline for the upload and the file's expiry. The upload
//! (one per slot) moves it to [`FileState::Uploaded`] with the content's SHA-256 and the
//! uploading client's address. Expiry, an administrator's purge or a slot that was never
//! used move it to [`FileState::Purged`]; the record stays (it is the audit log), the
//! content is gone. Records are never deleted, also not with their uploader's account.
//!
//! # Quota accounting
//!
//! A slot counts against its uploader from the moment it is granted: while it is
//! [`FileState::Requested`] and its upload deadline has not passed (so parallel slot
//! requests cannot exceed a quota), and once uploaded. See [`FileStore::file_usage`].

use async_trait::async_trait;

use crate::{Result, StorageError};

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// A slot was granted; nothing uploaded yet.
    Requested,
    /// The content is stored.
    Uploaded,
    /// The content is gone (expired, purged by an administrator, or the slot went unused).
    Purged,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Requested => "requested",
            FileState::Uploaded => "uploaded",
            FileState::Purged => "purged",
        }
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            FileState::Requested => 0,
            FileState::Uploaded => 1,
            FileState::Purged => 2,
        }
    }

    pub(crate) fn from_code(c: i64) -> Result<FileState> {
        match c {
            0 => Ok(FileState::Requested),
            1 => Ok(FileState::Uploaded),
            2 => Ok(FileState::Purged),
            _ => Err(StorageError::Backend(format!("corrupt file state {c}"))),
        }
    }
}

/// A slot to record.
#[derive(Clone, Copy, Debug)]
pub struct NewFileSlot<'a> {
    /// Unique, opaque (the server makes it random and URL-safe).
    pub id: &'a str,
    /// Bare JID of the requester.
    pub uploader: &'a str,
    pub file_name: &'a str,
    pub size: u64,
    pub content_type: Option<&'a str>,
    pub created_micros: i64,
    /// The upload must start before this.
    pub put_deadline_micros: i64,
    /// When the content is deleted; `None` keeps it until purged.
    pub expires_micros: Option<i64>,
}

/// Limits checked atomically with a slot's creation. `None` is unlimited.
#[derive(Clone, Copy, Debug)]
pub struct FileQuota {
    /// Bytes per uploader in slots created at or after `since_micros`.
    pub daily_bytes: Option<u64>,
    /// Bytes per uploader currently stored or reserved.
    pub total_bytes: Option<u64>,
    /// Start of the daily window (typically now minus 24 hours).
    pub since_micros: i64,
    /// Reserved slots whose deadline is at or before this no longer count.
    pub now_micros: i64,
}

/// What an uploader has used (see the module docs for what counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileUsage {
    /// Bytes in slots created since the window start that were uploaded (whether or not
    /// purged since) or are still reserved.
    pub window_bytes: u64,
    /// Bytes stored now, plus reserved slots.
    pub total_bytes: u64,
}

/// One download of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDownload {
    pub stamp_micros: i64,
    /// The HTTP client's address.
    pub client_addr: String,
    /// The downloading user, when known.
    pub downloader: Option<String>,
}

/// Someone a file's link was sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecipient {
    /// The recipient (bare JID, or a room).
    pub jid: String,
    /// Who sent the link (bare JID); the first sender when several did.
    pub sender: String,
    pub stamp_micros: i64,
}

/// A file's audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub uploader: String,
    pub file_name: String,
    pub size: u64,
    pub content_type: Option<String>,
    /// Lowercase hex SHA-256 of the content, once uploaded.
    pub sha256: Option<String>,
    pub created_micros: i64,
    pub put_deadline_micros: i64,
    pub expires_micros: Option<i64>,
    pub state: FileState,
    pub uploaded_micros: Option<i64>,
    /// The uploading HTTP client's address.
    pub upload_addr: Option<String>,
    pub purged_micros: Option<i64>,
    /// Why the content is gone ("expired", "admin", "slot unused", ...).
    pub purge_reason: Option<String>,
    pub download_count: u64,
    /// In time order. Filled by [`FileStore::file`]; empty in [`FileStore::list_files`].
    pub downloads: Vec<FileDownload>,
    /// In time order. Filled by [`FileStore::file`]; empty in [`FileStore::list_files`].
    pub recipients: Vec<FileRecipient>,
}

/// Which records [`FileStore::list_files`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFilter {
    pub uploader: Option<String>,
    /// Created at or after.
    pub since_micros: Option<i64>,
    /// Created before.
    pub before_micros: Option<i64>,
    /// Include purged records.
    pub include_purged: bool,
    /// At most this many (0 means none).
    pub limit: usize,
}

/// Records of uploaded files and their transfers.
#[async_trait]
pub trait FileStore: Send + Sync {
    /// Records a slot unless it would take its uploader over a quota
    /// ([`StorageError::QuotaExceeded`]); check and insert are atomic. An existing id is
    /// [`StorageError::AlreadyExists`].
    async fn create_file_slot(&self, slot: &NewFileSlot<'_>, quota: &FileQuota) -> Result<()>;
    /// The uploader's usage: the daily window starts at `since_micros`, reservations end
    /// at `now_micros`.
    async fn file_usage(
        &self,
        uploader: &str,
        since_micros: i64,
        now_micros: i64,
    ) -> Result<FileUsage>;
    /// Marks a slot uploaded. `false` (and nothing changed) unless it was
    /// [`FileState::Requested`]: a slot takes one upload.
    async fn complete_file_upload(
        &self,
        id: &str,
        sha256: &str,
        stamp_micros: i64,
        client_addr: &str,
    ) -> Result<bool>;
    /// The full record, downloads and recipients included.
    async fn file(&self, id: &str) -> Result<Option<FileRecord>>;
    /// Matching records, newest first (created time, then id, descending).
    async fn list_files(&self, filter: &FileFilter) -> Result<Vec<FileRecord>>;
    /// Appends a download; `false` if there is no such file.
    async fn record_file_download(&self, id: &str, download: &FileDownload) -> Result<bool>;
    /// Records that `sender` sent the file's link to `recipient`; already recorded
    /// recipients are kept as they are. `false` if there is no such file.
    async fn add_file_recipient(
        &self,
        id: &str,
        recipient: &str,
        sender: &str,
        stamp_micros: i64,
    ) -> Result<bool>;
    /// Marks a file purged and returns the state it had; `None` if there is no such file.
    /// Purging a purged file changes nothing.
    async fn purge_file(
        &self,
        id: &str,
        stamp_micros: i64,
        reason: &str,
    ) -> Result<Option<FileState>>;
    /// Up to `limit` ids of uploaded files whose expiry is at or before `now_micros`, and
    /// of unused slots whose upload deadline is at or before `stale_before_micros`, oldest
    /// first.
    async fn expired_files(
        &self,
        now_micros: i64,
        stale_before_micros: i64,
        limit: usize,
    ) -> Result<Vec<String>>;
}

/// A size as a SQL integer.
pub(crate) fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// An optional quota as a SQL integer (NULL = unlimited).
pub(crate) fn limit_i64(limit: Option<u64>) -> Option<i64> {
    limit.map(size_i64)
}

/// A row limit as a SQL integer.
pub(crate) fn rows_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_codes_round_trip() {
        for s in [FileState::Requested, FileState::Uploaded, FileState::Purged] {
            assert_eq!(FileState::from_code(s.code()).unwrap(), s);
        }
        assert!(FileState::from_code(7).is_err());
    }
}
