//! Inline reads for the SQLite backend.
//!
//! sqlx runs each SQLite connection on its own worker thread: every statement is handed to
//! that thread and its result handed back, two thread wake-ups per query. On a login
//! benchmark that hand-off cost ~35 µs of CPU per point read, most of it context switches,
//! while SQLite answers such a read from its page cache in a few µs.
//!
//! So the per-user point reads on the hot paths (login: credentials, roster, pending
//! subscription requests, offline messages; routing: roster items, block lists, last
//! activity) run here instead: synchronously, on the calling task's thread, over a small
//! pool of connections opened for reading only. In WAL mode a reader sees every committed
//! transaction and never waits for the writer, so such a read cannot stall behind a write.
//!
//! Only reads bounded by one user's data belong here. Scans over all users (account
//! listing), archive queries and all writes stay on the sqlx pool, off the async threads.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::{one_line, Result, StorageError};

/// Connections kept open between reads. A read holds one only while it runs (it never
/// awaits), so this is about the number of threads reading at once.
const MAX_IDLE: usize = 8;
/// How long a read waits on a lock (only WAL recovery or a schema change take one a reader
/// must wait for).
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Prepared statements kept per connection; the hot reads are about a dozen statements.
const STATEMENT_CACHE: usize = 32;

/// A pool of read-only connections to one SQLite database file.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Opens the first connection now, so a file that cannot be read fails at startup.
    pub(crate) fn open(path: &Path) -> Result<Readers> {
        let readers = Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        let first = readers.connect()?;
        readers.put_back(first);
        Ok(readers)
    }

    fn connect(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            StorageError::Unavailable(format!(
                "cannot open sqlite database {} for reading: {}",
                self.path.display(),
                describe(&e)
            ))
        })?;
        // Read-write open (a read-only one cannot recover a WAL left by a crash), but this
        // connection refuses to write.
        conn.pragma_update(None, "query_only", true)
            .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
            .map_err(map_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection, on this thread.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = f(&conn);
        // A connection that hit an I/O error is not trusted again.
        if !matches!(&out, Err(e) if is_unavailable(e)) {
            self.put_back(conn);
        }
        out.map_err(map_err)
    }
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

fn is_unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        code(e),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::OutOfMemory
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
        )
    )
}

fn describe(e: &rusqlite::Error) -> String {
    one_line(&e.to_string())
}

/// Same classification as the sqlx path: lock, memory, I/O and open failures mean the
/// store is unavailable; anything else is a backend fault.
pub(crate) fn map_err(e: rusqlite::Error) -> StorageError {
    if is_unavailable(&e) {
        StorageError::Unavailable(describe(&e))
    } else {
        StorageError::Backend(describe(&e))
    }
}
