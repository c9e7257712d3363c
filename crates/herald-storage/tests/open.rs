//! `open()` behaviour: URL handling, failure reporting, and SQLite durability/sharing.

use std::time::{Duration, Instant};

use herald_storage::{open, RosterItem, StorageError, StoredCredential, Subscription};

#[tokio::test]
async fn unreachable_postgres_is_unavailable_quickly() {
    let started = Instant::now();
    let result = open("postgres://postgres@127.0.0.1:1/x").await;
    let elapsed = started.elapsed();
    match result {
        Err(StorageError::Unavailable(msg)) => {
            assert!(
                msg.contains("127.0.0.1:1") && msg.contains("connection refused"),
                "unhelpful message: {msg}"
            );
            assert!(!msg.contains('\n'), "message must be one line: {msg:?}");
        }
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[tokio::test]
async fn missing_postgres_database_is_unavailable() {
    let admin = std::env::var("HERALD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    match open(&format!("{base}/herald_no_such_database")).await {
        Err(StorageError::Unavailable(msg)) => {
            assert!(msg.contains("does not exist"), "unhelpful message: {msg}")
        }
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
}

#[tokio::test]
async fn bad_urls() {
    for url in [
        "mysql://x",
        "",
        "file:///tmp/x.db",
        "sqlite:",
        "sqlite://",
        "postgres://[::1",
    ] {
        match open(url).await {
            Err(StorageError::BadUrl(_)) => {}
            Err(e) => panic!("{url:?}: expected BadUrl, got {e:?}"),
            Ok(_) => panic!("{url:?}: expected BadUrl, got a store"),
        }
    }
}

#[tokio::test]
async fn sqlite_unopenable_path_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    // A parent "directory" that is a regular file cannot be created.
    match open(&format!("sqlite://{}/sub/herald.db", file.display())).await {
        Err(StorageError::Unavailable(msg)) => assert!(msg.contains("plain-file"), "{msg}"),
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
}

fn cred() -> StoredCredential {
    StoredCredential {
        mechanism: "SCRAM-SHA-256".into(),
        salt: vec![1, 2, 3],
        iterations: 4096,
        stored_key: vec![4; 32],
        server_key: vec![5; 32],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/data/herald.db", dir.path().display());
    let item = RosterItem {
        jid: "juliet@capulet.example".into(),
        name: Some("Juliet".into()),
        subscription: Subscription::Both,
        ask: false,
        approved: false,
        groups: vec!["Friends".into()],
    };
    {
        let store = open(&url).await.unwrap();
        store
            .create_account("example.org", "romeo", &[cred()])
            .await
            .unwrap();
        store
            .put_roster_item("romeo@example.org", &item)
            .await
            .unwrap();
        store
            .store_offline("romeo@example.org", "<message/>", 7, 100)
            .await
            .unwrap();
        store
            .set_private("romeo@example.org", "vcard-temp", "<vCard/>")
            .await
            .unwrap();
        // Dropped without any explicit close or checkpoint.
    }
    let store = open(&url).await.unwrap();
    assert_eq!(
        store.credentials("example.org", "romeo").await.unwrap(),
        Some(vec![cred()])
    );
    assert_eq!(
        store.roster("romeo@example.org").await.unwrap(),
        (1, vec![item])
    );
    let offline = store.offline_messages("romeo@example.org").await.unwrap();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].stanza, "<message/>");
    assert_eq!(
        store
            .get_private("romeo@example.org", "vcard-temp")
            .await
            .unwrap(),
        Some("<vCard/>".into())
    );
}

/// The server and the CLI may have the same file open at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_stores_share_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let server = open(&url).await.unwrap();
    let cli = open(&url).await.unwrap();

    cli.create_account("example.org", "alice", &[cred()])
        .await
        .unwrap();
    assert!(server.account_exists("example.org", "alice").await.unwrap());
    match server.create_account("example.org", "alice", &[]).await {
        Err(StorageError::AlreadyExists) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    // Interleaved concurrent writers through both stores.
    let mut tasks = Vec::new();
    for (n, store) in [server.clone(), cli.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .store_offline(
                        "alice@example.org",
                        &format!("<m n='{n}' i='{i}'/>"),
                        i,
                        1000,
                    )
                    .await
                    .unwrap();
                let item = RosterItem {
                    jid: format!("c{n}-{i}@example.org"),
                    name: None,
                    subscription: Subscription::None,
                    ask: false,
                    approved: false,
                    groups: vec![],
                };
                store
                    .put_roster_item("alice@example.org", &item)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        server.count_offline("alice@example.org").await.unwrap(),
        100
    );
    assert_eq!(cli.count_offline("alice@example.org").await.unwrap(), 100);
    let (version, items) = cli.roster("alice@example.org").await.unwrap();
    assert_eq!((version, items.len()), (100, 100));
    assert!(cli.delete_account("example.org", "alice").await.unwrap());
    assert_eq!(server.count_offline("alice@example.org").await.unwrap(), 0);
}

/// Two processes' worth of stores opening a brand-new file at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/fresh.db", dir.path().display());
    let (a, b) = tokio::join!(open(&url), open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.create_account("d", "u", &[]).await.unwrap();
    assert!(b.account_exists("d", "u").await.unwrap());
}

#[tokio::test]
async fn sqlite_triple_slash_url() {
    let dir = tempfile::tempdir().unwrap();
    // Absolute path: sqlite:///abs/path.db
    let abs = dir.path().join("abs.db");
    let url = format!("sqlite://{}", abs.display());
    assert!(url.starts_with("sqlite:///"));
    open(&url).await.unwrap();
    assert!(abs.exists());
}
