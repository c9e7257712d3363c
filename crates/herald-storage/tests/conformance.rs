//! Runs the storage conformance suite against both backends.
//!
//! The PostgreSQL run needs a server: it connects to the admin URL
//! (`postgres://postgres@127.0.0.1:5432/postgres`, or `HERALD_TEST_PG_URL`), creates a
//! fresh database, runs the suite there and drops it. An unreachable server is a failure,
//! never a skip.

use std::time::Duration;

use rand::Rng;
use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/dir/herald.db", dir.path().display());
    let store = herald_storage::open(&url).await.expect("open sqlite store");
    assert_eq!(store.backend_name(), "sqlite");
    herald_storage::conformance::run_all(store.clone()).await;
    // A second run in the same database must not interfere with the first one's data.
    herald_storage::conformance::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory() {
    let store = herald_storage::open("sqlite::memory:")
        .await
        .expect("open in-memory sqlite store");
    herald_storage::conformance::run_all(store).await;
}

/// Replaces the database name (the URL path) of a postgres URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[test]
fn with_database_replaces_path() {
    assert_eq!(
        with_database("postgres://u@h:1/postgres", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
        "postgresql://u:p@h/x?sslmode=disable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    let admin_url =
        std::env::var("HERALD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
    let mut admin = match tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect(&admin_url),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "PostgreSQL is required for this test but {admin_url} is unreachable: {e}\n\
             start it (e.g. `pg_ctlcluster <version> main start`) or set HERALD_TEST_PG_URL"
        ),
        Err(_) => {
            panic!("PostgreSQL is required for this test but connecting to {admin_url} timed out")
        }
    };
    let db = format!("herald_conf_{:016x}", rand::thread_rng().gen::<u64>());
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {db}: {e}"));

    let url = with_database(&admin_url, &db);
    let outcome = tokio::spawn(async move {
        let store = herald_storage::open(&url)
            .await
            .expect("open postgres store");
        assert_eq!(store.backend_name(), "postgres");
        herald_storage::conformance::run_all(store.clone()).await;
        // Reopening an already migrated database works and sees the data.
        let again = herald_storage::open(&url)
            .await
            .expect("reopen postgres store");
        herald_storage::conformance::run_all(again).await;
    })
    .await;

    // Drop the database whatever happened; FORCE ends the store's pooled connections.
    let dropped = admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await;
    let _ = admin.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    dropped.unwrap_or_else(|e| panic!("cannot drop test database {db}: {e}"));
}
