//! Where uploaded content lives: a small blob-store seam (streamed writes that become
//! visible only when committed, ranged reads, delete, size) and its filesystem
//! implementation under `<data_dir>/uploads/`. An S3-compatible store can implement the
//! same traits (multipart upload behind [`BlobWriter`], ranged GETs behind
//! [`BlobStore::open`]).
//!
//! Blob ids are the upload slot ids: URL-safe base64 characters only, so an id can never
//! name a path outside the store.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The disk (or quota of the account running the server) is full.
    #[error("no space left for uploads")]
    Full,
    /// The id is not one the server could have made.
    #[error("invalid blob id")]
    InvalidId,
    #[error("{0}")]
    Io(String),
}

impl BlobError {
    fn from_io(what: &str, path: &Path, e: std::io::Error) -> BlobError {
        // ENOSPC, EFBIG, EDQUOT (Linux numbering; ENOSPC and EFBIG are the same on BSDs).
        if matches!(e.raw_os_error(), Some(28 | 27 | 122)) {
            return BlobError::Full;
        }
        BlobError::Io(format!("{what} {}: {e}", path.display()))
    }
}

/// A blob opened for reading.
pub struct BlobReader {
    /// Size of the whole blob.
    pub size: u64,
    /// Bytes the reader yields (the requested range's length).
    pub len: u64,
    pub reader: Pin<Box<dyn AsyncRead + Send + Sync>>,
}

/// Content being written. Nothing is visible under the id until [`BlobWriter::commit`];
/// a writer dropped or aborted before that leaves nothing behind.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError>;
    /// Makes the content durable, then visible under its id (replacing any blob there).
    async fn commit(self: Box<Self>) -> Result<(), BlobError>;
    /// Discards what was written.
    async fn abort(self: Box<Self>);
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Starts writing blob `id`.
    async fn create(&self, id: &str) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// Opens `id` for reading `range` (the whole blob when `None`); a range reaching past
    /// the end is cut at the end. `None` when there is no such blob.
    async fn open(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobReader>, BlobError>;
    /// Deletes `id`; `false` when there was no such blob.
    async fn delete(&self, id: &str) -> Result<bool, BlobError>;
    /// The size of `id`, `None` when there is no such blob.
    async fn size(&self, id: &str) -> Result<Option<u64>, BlobError>;
}

/// Whether `id` is a valid blob id: 8 to 128 characters of `A-Z a-z 0-9 - _`.
pub fn valid_id(id: &str) -> bool {
    (8..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Blobs as files: `<root>/<first two characters of the id>/<id>`, written to
/// `<root>/tmp/` first, fsynced, then renamed into place (and the directory fsynced), so
/// a crash or a full disk never leaves a partial file under an id.
pub struct FsBlobStore {
    root: PathBuf,
}

const WRITE_BUFFER: usize = 256 * 1024;

impl FsBlobStore {
    pub fn new(root: PathBuf) -> FsBlobStore {
        FsBlobStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn path(&self, id: &str) -> Result<PathBuf, BlobError> {
        if !valid_id(id) {
            return Err(BlobError::InvalidId);
        }
        Ok(self.root.join(&id[..2]).join(id))
    }

    /// Creates the directories and removes temporary files a crash left behind (call
    /// once at start, before any upload).
    pub async fn init(&self) -> Result<(), BlobError> {
        let tmp = self.tmp_dir();
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| BlobError::from_io("cannot create", &tmp, e))?;
        let mut dir = tokio::fs::read_dir(&tmp)
            .await
            .map_err(|e| BlobError::from_io("cannot read", &tmp, e))?;
        while let Ok(Some(entry)) = dir.next_entry().await {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
        Ok(())
    }
}

struct FsWriter {
    file: Option<BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let Some(f) = self.file.as_mut() else {
            return Err(BlobError::Io("write after commit".into()));
        };
        f.write_all(chunk)
            .await
            .map_err(|e| BlobError::from_io("cannot write", &self.tmp, e))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), BlobError> {
        let Some(mut f) = self.file.take() else {
            return Err(BlobError::Io("committed twice".into()));
        };
        f.flush()
            .await
            .map_err(|e| BlobError::from_io("cannot write", &self.tmp, e))?;
        let f = f.into_inner();
        f.sync_all()
            .await
            .map_err(|e| BlobError::from_io("cannot sync", &self.tmp, e))?;
        drop(f);
        let dir = self
            .dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| BlobError::from_io("cannot create", &dir, e))?;
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(|e| BlobError::from_io("cannot rename into", &self.dest, e))?;
        self.committed = true;
        // The rename is durable once the directory entry is.
        let d = dir.clone();
        let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&d)?.sync_all())
            .await
            .map_err(|e| BlobError::Io(e.to_string()))?;
        if let Err(e) = synced {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync upload directory");
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        drop(self.file.take());
        let _ = tokio::fs::remove_file(&self.tmp).await;
        self.committed = true; // nothing left for Drop to do
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn create(&self, id: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        let dest = self.path(id)?;
        let tmp_dir = self.tmp_dir();
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| BlobError::from_io("cannot create", &tmp_dir, e))?;
        let tmp = tmp_dir.join(format!("{id}.{:016x}.part", rand::random::<u64>()));
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let file = opts
            .open(&tmp)
            .await
            .map_err(|e| BlobError::from_io("cannot create", &tmp, e))?;
        Ok(Box::new(FsWriter {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            tmp,
            dest,
            committed: false,
        }))
    }

    async fn open(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobReader>, BlobError> {
        let path = self.path(id)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BlobError::from_io("cannot open", &path, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| BlobError::from_io("cannot stat", &path, e))?
            .len();
        let range = range.unwrap_or(0..size);
        let start = range.start.min(size);
        let end = range.end.clamp(start, size);
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| BlobError::from_io("cannot seek", &path, e))?;
        }
        let len = end - start;
        Ok(Some(BlobReader {
            size,
            len,
            reader: Box::pin(file.take(len)),
        }))
    }

    async fn delete(&self, id: &str) -> Result<bool, BlobError> {
        let path = self.path(id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::from_io("cannot delete", &path, e)),
        }
    }

    async fn size(&self, id: &str) -> Result<Option<u64>, BlobError> {
        let path = self.path(id)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::from_io("cannot stat", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(r: BlobReader) -> Vec<u8> {
        let mut out = Vec::new();
        let mut reader = r.reader;
        reader.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn write_commit_read_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("uploads"));
        store.init().await.unwrap();
        let id = "AbCdEfGh_-123456";
        assert!(store.open(id, None).await.unwrap().is_none());
        let mut w = store.create(id).await.unwrap();
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        assert!(
            store.size(id).await.unwrap().is_none(),
            "invisible before commit"
        );
        w.commit().await.unwrap();
        assert_eq!(store.size(id).await.unwrap(), Some(11));
        let r = store.open(id, None).await.unwrap().unwrap();
        assert_eq!((r.size, r.len), (11, 11));
        assert_eq!(read_all(r).await, b"hello world");
        let r = store.open(id, Some(6..100)).await.unwrap().unwrap();
        assert_eq!(r.len, 5);
        assert_eq!(read_all(r).await, b"world");
        let r = store.open(id, Some(20..30)).await.unwrap().unwrap();
        assert_eq!(r.len, 0);
        assert!(store.delete(id).await.unwrap());
        assert!(!store.delete(id).await.unwrap());
        assert!(store.open(id, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn aborted_and_dropped_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("uploads"));
        store.init().await.unwrap();
        let mut w = store.create("aaaaaaaaaaaa").await.unwrap();
        w.write(b"partial").await.unwrap();
        w.abort().await;
        let mut w = store.create("bbbbbbbbbbbb").await.unwrap();
        w.write(b"partial").await.unwrap();
        drop(w);
        assert!(store.size("aaaaaaaaaaaa").await.unwrap().is_none());
        assert!(store.size("bbbbbbbbbbbb").await.unwrap().is_none());
        let left = std::fs::read_dir(store.root().join("tmp")).unwrap().count();
        assert_eq!(left, 0, "no temporary file left");
    }

    #[tokio::test]
    async fn init_clears_leftover_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("uploads"));
        store.init().await.unwrap();
        std::fs::write(store.root().join("tmp/x.part"), b"crash").unwrap();
        store.init().await.unwrap();
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn ids_cannot_escape_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("uploads"));
        for id in [
            "../../etc/passwd",
            "short",
            "a/bcdefghij",
            "abc.defghij",
            "",
        ] {
            assert!(matches!(
                store.open(id, None).await,
                Err(BlobError::InvalidId)
            ));
            assert!(matches!(store.create(id).await, Err(BlobError::InvalidId)));
        }
    }

    #[test]
    fn full_disk_errors_are_recognised() {
        let e = std::io::Error::from_raw_os_error(28);
        assert!(matches!(
            BlobError::from_io("x", Path::new("/"), e),
            BlobError::Full
        ));
        let e = std::io::Error::from_raw_os_error(13);
        assert!(matches!(
            BlobError::from_io("x", Path::new("/"), e),
            BlobError::Io(_)
        ));
    }
}
