//! The storage contract as executable checks, run against every backend.
//!
//! [`run_all`] exercises every method of [`Storage`] including its edges (duplicates,
//! absent rows, quota boundaries, ordering, version monotonicity, cascade deletes, unicode,
//! large values, concurrent writers). It panics with a message naming the failed check.
//!
//! All data it writes lives under a fresh random domain, so it can run against a database
//! that already holds other data (or an earlier run) without interference.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use rand::Rng;

mod files;

use crate::{
    ArchiveDefault, ArchiveFilter, ArchivePaging, ArchivePrefs, Direction, NewArchived,
    OfflineMessage, Result, RoomAffiliation, RosterItem, Storage, StorageError, StoredCredential,
    StoredRoom, Subscription,
};

/// Runs every check against `store`; panics on the first failure.
pub async fn run_all(store: Arc<dyn Storage>) {
    let backend = store.backend_name();
    assert!(
        backend == "sqlite" || backend == "postgres",
        "[meta] unexpected backend_name {backend:?}"
    );
    let tag: u64 = rand::thread_rng().gen();
    let domain = format!("conf-{tag:016x}.example");
    let cx = Cx {
        store,
        domain: domain.clone(),
    };
    accounts(&cx).await;
    roster(&cx).await;
    roster_concurrency(&cx).await;
    pending(&cx).await;
    offline(&cx).await;
    offline_concurrency(&cx).await;
    private(&cx).await;
    blocking(&cx).await;
    last_activity(&cx).await;
    archive(&cx).await;
    archive_concurrency(&cx).await;
    archive_concurrency_many_owners(&cx).await;
    archive_expiry(&cx).await;
    archive_replace(&cx).await;
    archive_prefs(&cx).await;
    muc_rooms(&cx).await;
    muc_affiliations(&cx).await;
    muc_concurrency(&cx).await;
    files::run(&cx).await;
    delete_account_cascade(&cx).await;
    tracing::info!(backend, "storage conformance passed");
}

struct Cx {
    store: Arc<dyn Storage>,
    domain: String,
}

impl Cx {
    fn jid(&self, user: &str) -> String {
        format!("{user}@{}", self.domain)
    }
}

/// Unwraps a storage result, naming the check on failure.
#[track_caller]
fn ok<T>(r: Result<T>, check: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("[{check}] unexpected storage error: {e}"),
    }
}

#[track_caller]
fn same<T: PartialEq + Debug>(got: T, want: T, check: &str) {
    assert!(
        got == want,
        "[{check}] mismatch\n   got: {got:?}\n  want: {want:?}"
    );
}

fn cred(mechanism: &str, seed: u8) -> StoredCredential {
    StoredCredential {
        mechanism: mechanism.to_string(),
        salt: (0..16).map(|i| seed.wrapping_add(i)).collect(),
        iterations: 4096 + u32::from(seed),
        stored_key: (0..32).map(|i| seed ^ i).collect(),
        server_key: (0..32).map(|i| seed.wrapping_mul(i)).collect(),
    }
}

fn item(jid: &str, name: Option<&str>, sub: Subscription, groups: &[&str]) -> RosterItem {
    RosterItem {
        jid: jid.to_string(),
        name: name.map(str::to_string),
        subscription: sub,
        ask: false,
        approved: false,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn accounts(cx: &Cx) {
    let s = &*cx.store;
    let d = cx.domain.as_str();
    let other_domain = format!("other.{d}");

    same(
        ok(s.account_exists(d, "alice").await, "acct exists (none)"),
        false,
        "account_exists before create",
    );
    same(
        ok(s.credentials(d, "alice").await, "creds (none)"),
        None,
        "credentials of missing account",
    );
    same(
        ok(s.list_accounts(d).await, "list (none)"),
        vec![],
        "list_accounts of empty domain",
    );
    same(
        ok(s.delete_account(d, "alice").await, "delete missing"),
        false,
        "delete_account of missing account",
    );
    same(
        ok(
            s.set_credentials(d, "alice", &[cred("SCRAM-SHA-1", 1)])
                .await,
            "set creds missing",
        ),
        false,
        "set_credentials of missing account",
    );

    let creds = vec![
        cred("SCRAM-SHA-256", 7),
        cred("SCRAM-SHA-1", 3),
        cred("SCRAM-SHA-512", 200),
    ];
    ok(s.create_account(d, "alice", &creds).await, "create alice");
    same(
        ok(s.account_exists(d, "alice").await, "exists"),
        true,
        "account_exists after create",
    );
    same(
        ok(s.credentials(d, "alice").await, "creds"),
        Some(creds.clone()),
        "credentials round trip in order",
    );
    match s
        .create_account(d, "alice", &[cred("SCRAM-SHA-1", 9)])
        .await
    {
        Err(StorageError::AlreadyExists) => {}
        other => panic!("[create duplicate] expected AlreadyExists, got {other:?}"),
    }
    same(
        ok(s.credentials(d, "alice").await, "creds"),
        Some(creds.clone()),
        "duplicate create leaves credentials alone",
    );

    // Same username in another domain is another account.
    same(
        ok(
            s.account_exists(&other_domain, "alice").await,
            "other domain",
        ),
        false,
        "accounts are per domain",
    );
    ok(
        s.create_account(&other_domain, "alice", &[]).await,
        "create alice in other domain",
    );
    same(
        ok(s.credentials(&other_domain, "alice").await, "creds empty"),
        Some(vec![]),
        "account without credentials",
    );

    // Replace credentials entirely.
    let extreme = StoredCredential {
        mechanism: "SCRAM-SHA-512".into(),
        salt: vec![],
        iterations: u32::MAX,
        stored_key: (0..=255).collect(),
        server_key: vec![0; 64],
    };
    same(
        ok(
            s.set_credentials(d, "alice", std::slice::from_ref(&extreme))
                .await,
            "set creds",
        ),
        true,
        "set_credentials on existing account",
    );
    same(
        ok(s.credentials(d, "alice").await, "creds"),
        Some(vec![extreme.clone()]),
        "set_credentials replaces all (extreme values)",
    );
    same(
        ok(s.set_credentials(d, "alice", &[]).await, "set empty"),
        true,
        "set_credentials to empty",
    );
    same(
        ok(s.credentials(d, "alice").await, "creds"),
        Some(vec![]),
        "credentials emptied",
    );
    ok(s.set_credentials(d, "alice", &creds).await, "restore creds");
    same(
        ok(s.credentials(&other_domain, "alice").await, "creds other"),
        Some(vec![]),
        "other domain's credentials untouched",
    );

    // Listing is sorted in code-point order.
    for u in ["zed", "bob", "émile", "Carol", "日本", "alice2"] {
        ok(
            s.create_account(d, u, &[cred("SCRAM-SHA-256", 1)]).await,
            "create for listing",
        );
    }
    let mut want = strings(&["alice", "zed", "bob", "émile", "Carol", "日本", "alice2"]);
    want.sort();
    same(
        ok(s.list_accounts(d).await, "list"),
        want,
        "list_accounts sorted",
    );
    same(
        ok(s.list_accounts(&other_domain).await, "list other"),
        strings(&["alice"]),
        "list_accounts per domain",
    );
    same(
        ok(s.credentials(d, "日本").await, "unicode creds"),
        Some(vec![cred("SCRAM-SHA-256", 1)]),
        "unicode username",
    );

    same(
        ok(s.delete_account(d, "zed").await, "delete zed"),
        true,
        "delete_account existing",
    );
    same(
        ok(s.account_exists(d, "zed").await, "zed gone"),
        false,
        "deleted account is gone",
    );
    same(
        ok(s.credentials(d, "zed").await, "zed creds"),
        None,
        "deleted account has no credentials",
    );
    same(
        ok(s.delete_account(d, "zed").await, "delete zed again"),
        false,
        "delete_account twice",
    );
    ok(s.create_account(d, "zed", &[]).await, "recreate zed");
    same(
        ok(s.credentials(d, "zed").await, "zed creds"),
        Some(vec![]),
        "recreated account starts clean",
    );
    same(
        ok(s.account_exists(d, "alice").await, "alice"),
        true,
        "other accounts survive a delete",
    );
}

async fn roster(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("roster-owner");
    let other = cx.jid("roster-other");

    same(
        ok(s.roster(&owner).await, "roster"),
        (0, vec![]),
        "never-modified roster is (0, [])",
    );
    same(
        ok(s.roster_version(&owner).await, "ver"),
        0,
        "never-modified roster version is 0",
    );
    same(
        ok(s.roster_item(&owner, "x@y").await, "item"),
        None,
        "roster_item missing",
    );
    same(
        ok(s.remove_roster_item(&owner, "x@y").await, "remove"),
        None,
        "remove missing item",
    );
    same(
        ok(s.roster_version(&owner).await, "ver"),
        0,
        "removing a missing item leaves version",
    );

    let mut juliet = item(
        "juliet@capulet.example",
        Some("Juliet"),
        Subscription::Both,
        &["Friends", "Lovers"],
    );
    let v1 = ok(s.put_roster_item(&owner, &juliet).await, "put juliet");
    assert!(
        v1 >= 1,
        "[put_roster_item] first version must be >= 1, got {v1}"
    );
    same(
        ok(s.roster_version(&owner).await, "ver"),
        v1,
        "roster_version after put",
    );
    same(
        ok(s.roster_item(&owner, &juliet.jid).await, "item"),
        Some(juliet.clone()),
        "roster_item round trip",
    );

    // Unicode jid, name and groups; groups holding separators and digits; no name.
    let mut unicode = item(
        "jürgen@例え.テスト",
        Some("Jürgen 🎉 \"quoted\" <x>"),
        Subscription::To,
        &["Ärzte", "3:x", "a,b;c", "日本語"],
    );
    unicode.ask = true;
    let v2 = ok(s.put_roster_item(&owner, &unicode).await, "put unicode");
    assert!(
        v2 > v1,
        "[put_roster_item] version must increase: {v1} then {v2}"
    );
    let mut nameless = item("aaa@a.example", None, Subscription::None, &[]);
    nameless.approved = true;
    let v3 = ok(s.put_roster_item(&owner, &nameless).await, "put nameless");
    assert!(
        v3 > v2,
        "[put_roster_item] version must increase: {v2} then {v3}"
    );
    let from = item("from@f.example", Some(""), Subscription::From, &[""]);
    let v4 = ok(s.put_roster_item(&owner, &from).await, "put from");
    assert!(
        v4 > v3,
        "[put_roster_item] version must increase: {v3} then {v4}"
    );

    let (ver, items) = ok(s.roster(&owner).await, "roster");
    same(ver, v4, "roster version matches last put");
    let mut want = vec![
        juliet.clone(),
        unicode.clone(),
        nameless.clone(),
        from.clone(),
    ];
    want.sort_by(|a, b| a.jid.cmp(&b.jid));
    same(
        items,
        want,
        "roster items sorted by jid, all fields round trip",
    );

    // Replacing an item replaces its groups too.
    juliet.groups = vec!["Family".into()];
    juliet.name = None;
    juliet.subscription = Subscription::From;
    juliet.ask = true;
    juliet.approved = true;
    let v5 = ok(s.put_roster_item(&owner, &juliet).await, "replace juliet");
    assert!(
        v5 > v4,
        "[put_roster_item replace] version must increase: {v4} then {v5}"
    );
    same(
        ok(s.roster_item(&owner, &juliet.jid).await, "item"),
        Some(juliet.clone()),
        "replace replaces every field and the groups",
    );
    juliet.groups.clear();
    let v6 = ok(s.put_roster_item(&owner, &juliet).await, "clear groups");
    same(
        ok(s.roster_item(&owner, &juliet.jid).await, "item"),
        Some(juliet.clone()),
        "replace with no groups clears them",
    );
    same(
        ok(s.roster(&owner).await, "roster").1.len(),
        4,
        "replace does not duplicate items",
    );

    // Removal.
    let v7 = ok(
        s.remove_roster_item(&owner, &unicode.jid).await,
        "remove unicode",
    );
    match v7 {
        Some(v) => assert!(
            v > v6,
            "[remove_roster_item] version must increase: {v6} then {v}"
        ),
        None => panic!("[remove_roster_item] existing item reported absent"),
    }
    let v7 = v7.unwrap();
    same(
        ok(s.roster_item(&owner, &unicode.jid).await, "item"),
        None,
        "removed item is gone",
    );
    same(
        ok(
            s.remove_roster_item(&owner, &unicode.jid).await,
            "remove again",
        ),
        None,
        "removing twice gives None",
    );
    same(
        ok(s.roster_version(&owner).await, "ver"),
        v7,
        "second removal leaves version unchanged",
    );

    // Every subscription state round-trips.
    for (i, sub) in [
        Subscription::None,
        Subscription::To,
        Subscription::From,
        Subscription::Both,
    ]
    .into_iter()
    .enumerate()
    {
        let it = item(&format!("sub{i}@s.example"), None, sub, &["G"]);
        ok(s.put_roster_item(&owner, &it).await, "put sub");
        same(
            ok(s.roster_item(&owner, &it.jid).await, "item"),
            Some(it),
            "subscription round trip",
        );
    }

    // Other owners are independent.
    same(
        ok(s.roster(&other).await, "other roster"),
        (0, vec![]),
        "another owner's roster is untouched",
    );
    let ov = ok(s.put_roster_item(&other, &juliet).await, "other put");
    assert!(ov >= 1, "[per-owner versions] got {ov}");
    same(
        ok(s.roster_item(&owner, &juliet.jid).await, "item"),
        Some(juliet.clone()),
        "same jid in two rosters is independent",
    );
    let before = ok(s.roster_version(&owner).await, "ver");
    ok(
        s.remove_roster_item(&other, &juliet.jid).await,
        "other remove",
    );
    same(
        ok(s.roster_version(&owner).await, "ver"),
        before,
        "another owner's changes leave this version",
    );
    same(
        ok(s.roster_item(&owner, &juliet.jid).await, "item"),
        Some(juliet),
        "another owner's removal leaves this item",
    );
    // An emptied roster keeps its version (clients must not get version 0 back).
    same(
        ok(s.roster(&other).await, "other roster").1,
        vec![],
        "other roster emptied",
    );
    assert!(
        ok(s.roster_version(&other).await, "ver") > ov,
        "[emptied roster] version must not go back"
    );
}

async fn roster_concurrency(cx: &Cx) {
    let owner = cx.jid("roster-concurrent");
    const N: usize = 16;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = cx.store.clone();
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            let it = item(
                &format!("c{i:02}@c.example"),
                None,
                Subscription::None,
                &["g"],
            );
            store.put_roster_item(&owner, &it).await
        }));
    }
    let mut versions = BTreeSet::new();
    for t in tasks {
        let v = ok(t.await.expect("task panicked"), "concurrent put");
        assert!(
            versions.insert(v),
            "[concurrent put_roster_item] version {v} handed out twice"
        );
    }
    same(versions.len(), N, "concurrent puts each get a version");
    let (ver, items) = ok(cx.store.roster(&owner).await, "roster");
    same(
        Some(&ver),
        versions.last(),
        "final version is the highest handed out",
    );
    same(ver, N as u64, "versions count every put");
    same(items.len(), N, "all concurrent items stored");
}

async fn pending(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("pending-owner");
    let other = cx.jid("pending-other");
    let stanza = |from: &str, n: u32| {
        format!("<presence from='{from}' type='subscribe'><status>ask {n} ✓</status></presence>")
    };

    same(
        ok(s.pending_in(&owner).await, "pending"),
        vec![],
        "no pending requests",
    );
    same(
        ok(s.remove_pending_in(&owner, "a@x").await, "remove"),
        false,
        "remove missing pending",
    );

    ok(
        s.add_pending_in(&owner, "c@x.example", &stanza("c@x.example", 1))
            .await,
        "add c",
    );
    ok(
        s.add_pending_in(&owner, "a@x.example", &stanza("a@x.example", 1))
            .await,
        "add a",
    );
    ok(
        s.add_pending_in(&owner, "ü@ÿ.example", &stanza("ü@ÿ.example", 1))
            .await,
        "add ü",
    );
    ok(
        s.add_pending_in(&other, "a@x.example", &stanza("a@x.example", 9))
            .await,
        "add other",
    );
    same(
        ok(s.pending_in(&owner).await, "pending"),
        vec![
            ("c@x.example".to_string(), stanza("c@x.example", 1)),
            ("a@x.example".to_string(), stanza("a@x.example", 1)),
            ("ü@ÿ.example".to_string(), stanza("ü@ÿ.example", 1)),
        ],
        "pending_in in arrival order",
    );

    // A repeated request replaces the old one and becomes the latest arrival.
    ok(
        s.add_pending_in(&owner, "c@x.example", &stanza("c@x.example", 2))
            .await,
        "re-add c",
    );
    same(
        ok(s.pending_in(&owner).await, "pending"),
        vec![
            ("a@x.example".to_string(), stanza("a@x.example", 1)),
            ("ü@ÿ.example".to_string(), stanza("ü@ÿ.example", 1)),
            ("c@x.example".to_string(), stanza("c@x.example", 2)),
        ],
        "repeated request replaces and moves to the end",
    );

    same(
        ok(s.remove_pending_in(&owner, "a@x.example").await, "remove a"),
        true,
        "remove existing pending",
    );
    same(
        ok(
            s.remove_pending_in(&owner, "a@x.example").await,
            "remove a again",
        ),
        false,
        "remove pending twice",
    );
    same(
        ok(s.pending_in(&owner).await, "pending").len(),
        2,
        "pending after removal",
    );
    same(
        ok(s.pending_in(&other).await, "pending other"),
        vec![("a@x.example".to_string(), stanza("a@x.example", 9))],
        "another owner's pending untouched",
    );
}

async fn offline(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("offline-owner");
    let other = cx.jid("offline-other");

    same(
        ok(s.count_offline(&owner).await, "count"),
        0,
        "no offline messages",
    );
    same(
        ok(s.offline_messages(&owner).await, "list"),
        vec![],
        "no offline messages listed",
    );
    same(
        ok(s.delete_offline(&owner, i64::MAX).await, "delete"),
        0,
        "delete with nothing stored",
    );

    let mut want = Vec::new();
    for i in 0..3i64 {
        let stanza =
            format!("<message to='{owner}' id='m{i}'><body>hello {i} — ☃</body></message>");
        let stamp = 1_700_000_000_000_000 + i;
        let id = ok(
            s.store_offline(&owner, &stanza, stamp, 3).await,
            "store under quota",
        );
        if let Some(prev) = want.last().map(|m: &OfflineMessage| m.id) {
            assert!(
                id > prev,
                "[store_offline] ids must increase: {prev} then {id}"
            );
        }
        want.push(OfflineMessage {
            id,
            stanza,
            stamp_micros: stamp,
        });
    }
    same(
        ok(s.count_offline(&owner).await, "count"),
        3,
        "count after 3 stores",
    );
    same(
        ok(s.offline_messages(&owner).await, "list"),
        want.clone(),
        "offline messages in arrival order",
    );

    // Quota boundary: the owner has 3; quota 3 refuses, quota 4 admits exactly one more.
    match s.store_offline(&owner, "<message/>", 0, 3).await {
        Err(StorageError::QuotaExceeded) => {}
        other => panic!(
            "[quota at boundary] expected QuotaExceeded with 3 stored and quota 3, got {other:?}"
        ),
    }
    match s.store_offline(&owner, "<message/>", 0, 0).await {
        Err(StorageError::QuotaExceeded) => {}
        other => panic!("[quota 0] expected QuotaExceeded, got {other:?}"),
    }
    same(
        ok(s.count_offline(&owner).await, "count"),
        3,
        "refused store leaves count",
    );
    let id4 = ok(
        s.store_offline(&owner, "<message id='m3'/>", -5, 4).await,
        "store with room for one",
    );
    want.push(OfflineMessage {
        id: id4,
        stanza: "<message id='m3'/>".into(),
        stamp_micros: -5,
    });
    match s.store_offline(&owner, "<message/>", 0, 4).await {
        Err(StorageError::QuotaExceeded) => {}
        other => panic!("[quota reached] expected QuotaExceeded, got {other:?}"),
    }
    // Another owner has its own quota.
    let other_id = ok(
        s.store_offline(&other, "<message id='o'/>", 1, 1).await,
        "other owner quota",
    );

    // Partial delete by id.
    same(
        ok(
            s.delete_offline(&owner, want[1].id).await,
            "delete up to 2nd",
        ),
        2,
        "delete_offline up to an id counts",
    );
    same(
        ok(s.offline_messages(&owner).await, "list"),
        want[2..].to_vec(),
        "remaining after partial delete",
    );
    same(
        ok(s.delete_offline(&owner, want[1].id).await, "delete again"),
        0,
        "deleting the same range twice",
    );
    same(
        ok(s.count_offline(&other).await, "count other"),
        1,
        "other owner's messages untouched by delete",
    );

    // After deletes there is room again, and ids are never reused.
    let big = format!(
        "<message><body>{}</body></message>",
        "ä😀x".repeat(256 * 1024 / 7 + 1)
    );
    assert!(big.len() >= 256 * 1024, "test stanza too small");
    let id5 = ok(
        s.store_offline(&owner, &big, i64::MAX, 4).await,
        "store large after delete",
    );
    assert!(
        id5 > id4,
        "[store_offline] id {id5} must exceed every earlier id ({id4})"
    );
    assert!(id5 != other_id, "[store_offline] id reused across owners");
    let listed = ok(s.offline_messages(&owner).await, "list");
    same(listed.len(), 3, "count after refill");
    let last = listed.last().unwrap();
    assert!(
        last.stanza == big,
        "[large stanza] 256 KiB stanza did not round-trip (got {} bytes)",
        last.stanza.len()
    );
    same(last.stamp_micros, i64::MAX, "extreme stamp round trip");

    same(
        ok(s.delete_offline(&owner, i64::MAX).await, "delete all"),
        3,
        "delete everything",
    );
    same(
        ok(s.count_offline(&owner).await, "count"),
        0,
        "count after delete all",
    );
    // The quota accounting recovers completely after deletes.
    for i in 0..4 {
        ok(
            s.store_offline(&owner, &format!("<message id='r{i}'/>"), i, 4)
                .await,
            "refill to quota",
        );
    }
    match s.store_offline(&owner, "<message/>", 0, 4).await {
        Err(StorageError::QuotaExceeded) => {}
        other => panic!("[quota after refill] expected QuotaExceeded, got {other:?}"),
    }
    same(
        ok(s.count_offline(&other).await, "count other"),
        1,
        "other owner untouched",
    );
}

async fn offline_concurrency(cx: &Cx) {
    let owner = cx.jid("offline-concurrent");
    const QUOTA: usize = 10;
    const TRIES: usize = 24;
    let mut tasks = Vec::new();
    for i in 0..TRIES {
        let store = cx.store.clone();
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            store
                .store_offline(&owner, &format!("<message id='c{i}'/>"), i as i64, QUOTA)
                .await
        }));
    }
    let (mut stored, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task panicked") {
            Ok(_) => stored += 1,
            Err(StorageError::QuotaExceeded) => refused += 1,
            Err(e) => panic!("[concurrent store_offline] unexpected error: {e}"),
        }
    }
    same(
        (stored, refused),
        (QUOTA, TRIES - QUOTA),
        "concurrent stores respect the quota exactly",
    );
    same(
        ok(cx.store.count_offline(&owner).await, "count"),
        QUOTA as u64,
        "count after concurrent stores",
    );
    let ids: Vec<i64> = ok(cx.store.offline_messages(&owner).await, "list")
        .iter()
        .map(|m| m.id)
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "[concurrent store_offline] ids not strictly increasing: {ids:?}"
    );
}

async fn private(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("private-owner");
    let other = cx.jid("private-other");
    let vcard = "vcard-temp";
    let key2 = "jabber:iq:private storage:bookmarks";

    same(
        ok(s.get_private(&owner, vcard).await, "get"),
        None,
        "missing private value",
    );
    same(
        ok(s.delete_private(&owner, vcard).await, "delete"),
        false,
        "delete missing private value",
    );
    ok(
        s.set_private(
            &owner,
            vcard,
            "<vCard xmlns='vcard-temp'><FN>Ålice</FN></vCard>",
        )
        .await,
        "set",
    );
    same(
        ok(s.get_private(&owner, vcard).await, "get"),
        Some("<vCard xmlns='vcard-temp'><FN>Ålice</FN></vCard>".to_string()),
        "private round trip",
    );
    ok(
        s.set_private(&owner, vcard, "<vCard xmlns='vcard-temp'/>")
            .await,
        "overwrite",
    );
    same(
        ok(s.get_private(&owner, vcard).await, "get"),
        Some("<vCard xmlns='vcard-temp'/>".to_string()),
        "set_private overwrites",
    );
    let big = "<storage xmlns='storage:bookmarks'>".to_string()
        + &"<conference jid='r@m' name='Ü'/>".repeat(8000)
        + "</storage>";
    ok(s.set_private(&owner, key2, &big).await, "set big");
    same(
        ok(s.get_private(&owner, key2).await, "get big").map(|v| v == big),
        Some(true),
        "large private value round trip",
    );
    ok(s.set_private(&owner, "", "").await, "empty key and value");
    same(
        ok(s.get_private(&owner, "").await, "get empty"),
        Some(String::new()),
        "empty value is not absent",
    );
    same(
        ok(s.get_private(&other, vcard).await, "other"),
        None,
        "private data is per owner",
    );
    ok(s.set_private(&other, vcard, "<other/>").await, "set other");
    same(
        ok(s.delete_private(&owner, vcard).await, "delete"),
        true,
        "delete existing private value",
    );
    same(
        ok(s.get_private(&owner, vcard).await, "get"),
        None,
        "deleted private value is gone",
    );
    same(
        ok(s.get_private(&owner, key2).await, "get key2").is_some(),
        true,
        "other keys survive a delete",
    );
    same(
        ok(s.get_private(&other, vcard).await, "other"),
        Some("<other/>".to_string()),
        "other owner's value survives",
    );
}

async fn blocking(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("block-owner");
    let other = cx.jid("block-other");

    same(
        ok(s.blocklist(&owner).await, "list"),
        vec![],
        "empty blocklist",
    );
    ok(s.block(&owner, &[]).await, "block nothing");
    ok(s.unblock(&owner, &[]).await, "unblock nothing");
    ok(s.unblock_all(&owner).await, "unblock_all on empty");

    ok(
        s.block(
            &owner,
            &strings(&["romeo@m.example", "b@x", "romeo@m.example", "日本@x"]),
        )
        .await,
        "block with duplicate",
    );
    let mut want = strings(&["romeo@m.example", "b@x", "日本@x"]);
    want.sort();
    same(
        ok(s.blocklist(&owner).await, "list"),
        want.clone(),
        "blocklist sorted, duplicates collapsed",
    );
    ok(
        s.block(&owner, &strings(&["b@x", "domain.example"])).await,
        "block again (idempotent)",
    );
    want.push("domain.example".into());
    want.sort();
    same(
        ok(s.blocklist(&owner).await, "list"),
        want.clone(),
        "block is idempotent",
    );

    ok(s.block(&other, &strings(&["b@x"])).await, "other block");
    ok(
        s.unblock(&owner, &strings(&["b@x", "never@blocked"])).await,
        "unblock some",
    );
    want.retain(|j| j != "b@x");
    same(
        ok(s.blocklist(&owner).await, "list"),
        want,
        "unblock removes only listed jids",
    );
    same(
        ok(s.blocklist(&other).await, "other"),
        strings(&["b@x"]),
        "other owner's blocklist untouched by unblock",
    );

    // Bulk: more jids than fit in one statement's parameters on any backend.
    let many: Vec<String> = (0..1500)
        .map(|i| format!("spam{i:04}@spam.example"))
        .collect();
    ok(s.block(&owner, &many).await, "block many");
    same(
        ok(s.blocklist(&owner).await, "list").len(),
        1500 + 3,
        "bulk block",
    );
    ok(s.unblock(&owner, &many[..1200]).await, "unblock many");
    same(
        ok(s.blocklist(&owner).await, "list").len(),
        300 + 3,
        "bulk unblock",
    );

    ok(s.unblock_all(&owner).await, "unblock_all");
    same(
        ok(s.blocklist(&owner).await, "list"),
        vec![],
        "unblock_all empties",
    );
    same(
        ok(s.blocklist(&other).await, "other"),
        strings(&["b@x"]),
        "other owner's blocklist untouched by unblock_all",
    );
}

async fn last_activity(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("last-owner");
    let other = cx.jid("last-other");
    same(
        ok(s.last_activity(&owner).await, "get"),
        None,
        "no last activity",
    );
    ok(
        s.set_last_activity(&owner, 1_700_000_000, "Gone fishing 🎣")
            .await,
        "set",
    );
    same(
        ok(s.last_activity(&owner).await, "get"),
        Some((1_700_000_000, "Gone fishing 🎣".to_string())),
        "last activity round trip",
    );
    ok(
        s.set_last_activity(&owner, 1_700_000_100, "").await,
        "overwrite",
    );
    same(
        ok(s.last_activity(&owner).await, "get"),
        Some((1_700_000_100, String::new())),
        "last activity overwritten",
    );
    ok(
        s.set_last_activity(&other, -1, "before the epoch").await,
        "set other",
    );
    same(
        ok(s.last_activity(&owner).await, "get"),
        Some((1_700_000_100, String::new())),
        "last activity per owner",
    );
    same(
        ok(s.last_activity(&other).await, "get other"),
        Some((-1, "before the epoch".to_string())),
        "negative stamp round trip",
    );
}

/// Fills every table for `user`, from the point of view of `user`.
async fn populate(cx: &Cx, user: &str) {
    let s = &*cx.store;
    let d = cx.domain.as_str();
    let owner = cx.jid(user);
    ok(
        s.create_account(d, user, &[cred("SCRAM-SHA-256", 5)]).await,
        "populate account",
    );
    ok(
        s.put_roster_item(
            &owner,
            &item("friend@f.example", Some("F"), Subscription::Both, &["G"]),
        )
        .await,
        "populate roster",
    );
    ok(
        s.add_pending_in(&owner, "asker@f.example", "<presence type='subscribe'/>")
            .await,
        "populate pending",
    );
    ok(
        s.store_offline(&owner, "<message/>", 1, 10).await,
        "populate offline",
    );
    ok(
        s.set_private(&owner, "vcard-temp", "<vCard/>").await,
        "populate private",
    );
    ok(
        s.block(&owner, &strings(&["spam@s.example"])).await,
        "populate block",
    );
    ok(
        s.set_last_activity(&owner, 42, "bye").await,
        "populate last",
    );
    ok(
        s.append_archive(
            &owner,
            &archived("sid-1", "friend@f.example", 1, "<message/>"),
        )
        .await,
        "populate archive",
    );
    ok(
        s.set_archive_prefs(
            &owner,
            &ArchivePrefs {
                default: ArchiveDefault::Roster,
                always: strings(&["friend@f.example"]),
                never: strings(&["spam@s.example"]),
            },
        )
        .await,
        "populate archive prefs",
    );
}

async fn assert_populated(cx: &Cx, user: &str, present: bool) {
    let s = &*cx.store;
    let d = cx.domain.as_str();
    let owner = cx.jid(user);
    let what = if present { "kept" } else { "deleted" };
    let check = |table: &str| format!("delete_account: {table} of {user} {what}");
    same(
        ok(s.account_exists(d, user).await, "exists"),
        present,
        &check("account"),
    );
    same(
        ok(s.credentials(d, user).await, "creds").is_some(),
        present,
        &check("credentials"),
    );
    same(
        ok(s.roster(&owner).await, "roster").1.is_empty(),
        !present,
        &check("roster items"),
    );
    same(
        ok(s.roster_version(&owner).await, "ver") > 0,
        present,
        &check("roster version"),
    );
    same(
        ok(s.pending_in(&owner).await, "pending").is_empty(),
        !present,
        &check("pending subscriptions"),
    );
    same(
        ok(s.count_offline(&owner).await, "offline"),
        u64::from(present),
        &check("offline messages"),
    );
    same(
        ok(s.get_private(&owner, "vcard-temp").await, "private").is_some(),
        present,
        &check("private data"),
    );
    same(
        ok(s.blocklist(&owner).await, "block").is_empty(),
        !present,
        &check("blocklist"),
    );
    same(
        ok(s.last_activity(&owner).await, "last").is_some(),
        present,
        &check("last activity"),
    );
    let page = ok(
        s.query_archive(&owner, &ArchiveFilter::default(), &page_of(10))
            .await,
        "archive",
    )
    .expect("no ids named");
    same(page.items.is_empty(), !present, &check("archive"));
    same(
        ok(s.archive_prefs(&owner).await, "prefs").is_some(),
        present,
        &check("archive prefs"),
    );
}

async fn delete_account_cascade(cx: &Cx) {
    let s = &*cx.store;
    let d = cx.domain.as_str();
    // "victim" is a prefix of the bystander's name, to catch prefix/LIKE matching.
    populate(cx, "victim").await;
    populate(cx, "victim2").await;
    // The bystander has the victim in its roster and blocklist; that must survive.
    let bystander = cx.jid("victim2");
    let victim = cx.jid("victim");
    ok(
        s.put_roster_item(&bystander, &item(&victim, None, Subscription::Both, &[]))
            .await,
        "bystander roster",
    );
    ok(
        s.add_pending_in(&bystander, &victim, "<presence type='subscribe'/>")
            .await,
        "bystander pending",
    );
    assert_populated(cx, "victim", true).await;

    same(
        ok(s.delete_account(d, "victim").await, "delete victim"),
        true,
        "delete_account of populated account",
    );
    assert_populated(cx, "victim", false).await;
    assert_populated(cx, "victim2", true).await;
    same(
        ok(s.roster_item(&bystander, &victim).await, "bystander item").is_some(),
        true,
        "delete_account leaves other owners' rosters naming the deleted user",
    );
    same(
        ok(s.pending_in(&bystander).await, "bystander pending").len(),
        2,
        "delete_account leaves other owners' pending requests",
    );

    // The name can be reused and starts from nothing.
    ok(s.create_account(d, "victim", &[]).await, "recreate victim");
    same(
        ok(s.roster(&victim).await, "roster"),
        (0, vec![]),
        "recreated account starts with an empty roster",
    );
    same(
        ok(s.count_offline(&victim).await, "offline"),
        0,
        "recreated account has no offline messages",
    );
    ok(
        s.store_offline(&victim, "<message/>", 1, 1).await,
        "recreated account has a fresh quota",
    );
}

// ---------------------------------------------------------------------------------------
// Message archive (XEP-0313) and its preferences (XEP-0441)

fn archived<'a>(sid: &'a str, with: &'a str, stamp: i64, stanza: &'a str) -> NewArchived<'a> {
    NewArchived {
        stanza_id: sid,
        with_bare: with,
        with_resource: "",
        stamp_micros: stamp,
        direction: Direction::In,
        stanza,
    }
}

fn page_of(max: usize) -> ArchivePaging {
    ArchivePaging {
        max,
        count_limit: 1000,
        ..ArchivePaging::default()
    }
}

fn sids(items: &[crate::ArchivedMessage]) -> Vec<String> {
    items.iter().map(|m| m.stanza_id.clone()).collect()
}

fn sid(i: usize) -> String {
    format!("s{i:02}")
}

const BOB: &str = "bob@b.example";
const CAROL: &str = "carol@c.example";

/// Pages through the whole result set of `filter` with pages of `max`, forwards or
/// backwards, checking `complete` and the RSM index on each page; returns the stanza ids
/// in chronological order.
async fn page_all(
    cx: &Cx,
    owner: &str,
    filter: &ArchiveFilter,
    max: usize,
    backwards: bool,
    check: &str,
) -> Vec<String> {
    let s = &*cx.store;
    let mut got: Vec<Vec<String>> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    for round in 0..1000 {
        let mut paging = page_of(max);
        if backwards {
            paging.from_end = true;
            paging.before = cursor.clone();
        } else {
            paging.after = cursor.clone();
        }
        let page = ok(s.query_archive(owner, filter, &paging).await, check)
            .unwrap_or_else(|| panic!("[{check}] cursor id not found"));
        assert!(page.items.len() <= max, "[{check}] page larger than max");
        let ids = sids(&page.items);
        seen += ids.len();
        let total = page.count.expect("small archive is counted") as usize;
        if let Some(first) = page.first_index {
            let want = if backwards {
                total - seen
            } else {
                seen - ids.len()
            };
            same(
                first as usize,
                want,
                &format!("{check}: index of page {round}"),
            );
        }
        let is_last = seen == total;
        same(
            page.complete,
            is_last,
            &format!("{check}: complete on page {round}"),
        );
        if backwards {
            cursor = page.items.first().map(|m| m.stanza_id.clone());
        } else {
            cursor = page.items.last().map(|m| m.stanza_id.clone());
        }
        got.push(ids);
        if page.complete {
            break;
        }
    }
    if backwards {
        got.reverse();
    }
    got.concat()
}

async fn archive(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("archivist");
    let other = cx.jid("archivist2");
    let none = ArchiveFilter::default();

    let empty =
        ok(s.query_archive(&owner, &none, &page_of(5)).await, "empty").expect("no ids named");
    same(empty.items.len(), 0, "empty archive has no items");
    same(empty.complete, true, "empty archive page is complete");
    same(empty.count, Some(0), "empty archive count");

    // 23 messages, alternating partners; bob's have resources r0/r1.
    let mut last_id = 0;
    for i in 1..=23usize {
        let with = if i % 2 == 0 { CAROL } else { BOB };
        let res = if with == BOB {
            format!("r{}", i % 4 / 2)
        } else {
            String::new()
        };
        let stanza = format!("<message><body>m{i} ✓ ü</body></message>");
        let id = ok(
            s.append_archive(
                &owner,
                &NewArchived {
                    stanza_id: &sid(i),
                    with_bare: with,
                    with_resource: &res,
                    stamp_micros: 1_000 * i as i64,
                    direction: if i % 3 == 0 {
                        Direction::Out
                    } else {
                        Direction::In
                    },
                    stanza: &stanza,
                },
            )
            .await,
            "append",
        );
        assert!(id > last_id, "[archive append] row ids increase");
        last_id = id;
    }
    // Stanza ids are unique per owner only.
    ok(
        s.append_archive(&other, &archived(&sid(1), BOB, 5, "<message/>"))
            .await,
        "same stanza id, other owner",
    );
    match s
        .append_archive(&owner, &archived(&sid(1), BOB, 99_000, "<message/>"))
        .await
    {
        Err(StorageError::AlreadyExists) => {}
        other => panic!("[archive duplicate stanza id] expected AlreadyExists, got {other:?}"),
    }

    let all: Vec<String> = (1..=23).map(sid).collect();
    let first =
        ok(s.query_archive(&owner, &none, &page_of(100)).await, "all").expect("no ids named");
    same(sids(&first.items), all.clone(), "whole archive in order");
    same(first.complete, true, "whole archive complete");
    same(first.count, Some(23), "whole archive count");
    same(first.first_index, Some(0), "whole archive index");
    let m3 = &first.items[2];
    same(
        m3.stanza.as_str(),
        "<message><body>m3 ✓ ü</body></message>",
        "stanza round trip",
    );
    same(m3.direction, Direction::Out, "direction round trip");
    same(m3.stamp_micros, 3_000, "stamp round trip");
    same(m3.with_bare.as_str(), BOB, "with round trip");
    same(m3.with_resource.as_str(), "r1", "resource round trip");

    // Paging both ways, several page sizes: every message exactly once, in order.
    for max in [1, 5, 7, 23, 50] {
        same(
            page_all(cx, &owner, &none, max, false, "forward").await,
            all.clone(),
            &format!("forward paging by {max}"),
        );
        same(
            page_all(cx, &owner, &none, max, true, "backward").await,
            all.clone(),
            &format!("backward paging by {max}"),
        );
    }
    let last5 = ok(
        s.query_archive(
            &owner,
            &none,
            &ArchivePaging {
                from_end: true,
                ..page_of(5)
            },
        )
        .await,
        "last page",
    )
    .expect("no ids named");
    same(
        sids(&last5.items),
        all[18..].to_vec(),
        "last page (before/) items",
    );
    same(
        last5.complete,
        false,
        "last page of a longer archive is not complete",
    );
    same(last5.first_index, Some(18), "last page index");

    // Filters.
    let with_bob = ArchiveFilter {
        with_bare: Some(BOB.into()),
        ..ArchiveFilter::default()
    };
    let bob_ids: Vec<String> = (1..=23).filter(|i| i % 2 == 1).map(sid).collect();
    same(
        page_all(cx, &owner, &with_bob, 5, false, "with forward").await,
        bob_ids.clone(),
        "with filter forward",
    );
    same(
        page_all(cx, &owner, &with_bob, 4, true, "with backward").await,
        bob_ids.clone(),
        "with filter backward",
    );
    let bob_r1 = ArchiveFilter {
        with_bare: Some(BOB.into()),
        with_resource: Some("r1".into()),
        ..ArchiveFilter::default()
    };
    same(
        page_all(cx, &owner, &bob_r1, 3, false, "resource").await,
        (1..=23).filter(|i| i % 4 == 3).map(sid).collect(),
        "with full JID filter",
    );
    let window = ArchiveFilter {
        start: Some(5_000),
        end: Some(12_000),
        ..ArchiveFilter::default()
    };
    same(
        page_all(cx, &owner, &window, 3, false, "time").await,
        (5..=12).map(sid).collect(),
        "start/end inclusive",
    );
    same(
        page_all(cx, &owner, &window, 3, true, "time back").await,
        (5..=12).map(sid).collect(),
        "start/end inclusive, backwards",
    );
    let between = ArchiveFilter {
        start: Some(5_001),
        end: Some(5_999),
        ..ArchiveFilter::default()
    };
    let p = ok(s.query_archive(&owner, &between, &page_of(5)).await, "gap").expect("no ids named");
    same(
        (p.items.len(), p.complete, p.count),
        (0, true, Some(0)),
        "time window without messages",
    );
    let future = ArchiveFilter {
        start: Some(1_000_000),
        ..ArchiveFilter::default()
    };
    let p = ok(
        s.query_archive(&owner, &future, &page_of(5)).await,
        "future",
    )
    .expect("no ids named");
    same(p.items.len(), 0, "start after the newest message");
    let ids = ArchiveFilter {
        ids: vec![sid(7), sid(3), sid(3)],
        ..ArchiveFilter::default()
    };
    let p = ok(s.query_archive(&owner, &ids, &page_of(5)).await, "ids").expect("known ids");
    same(
        sids(&p.items),
        vec![sid(3), sid(7)],
        "ids filter, in archive order",
    );
    let range = ArchiveFilter {
        after_id: Some(sid(4)),
        before_id: Some(sid(9)),
        with_bare: Some(CAROL.into()),
        ..ArchiveFilter::default()
    };
    same(
        page_all(cx, &owner, &range, 1, false, "after-id/before-id").await,
        vec![sid(6), sid(8)],
        "after-id and before-id (exclusive) with 'with'",
    );
    let mut p = page_of(3);
    p.after = Some(sid(20));
    let r = ok(s.query_archive(&owner, &none, &p).await, "tail").expect("known id");
    same(
        (sids(&r.items), r.complete, r.first_index),
        (vec![sid(21), sid(22), sid(23)], true, Some(20)),
        "page reaching the end exactly is complete",
    );

    // Unknown ids anywhere: not found.
    for (f, p) in [
        (
            ArchiveFilter {
                ids: vec![sid(1), "nope".into()],
                ..ArchiveFilter::default()
            },
            page_of(5),
        ),
        (
            ArchiveFilter {
                after_id: Some("nope".into()),
                ..ArchiveFilter::default()
            },
            page_of(5),
        ),
        (
            ArchiveFilter::default(),
            ArchivePaging {
                before: Some("nope".into()),
                from_end: true,
                ..page_of(5)
            },
        ),
        (
            ArchiveFilter::default(),
            ArchivePaging {
                after: Some("nope".into()),
                ..page_of(5)
            },
        ),
    ] {
        same(
            ok(s.query_archive(&owner, &f, &p).await, "unknown id"),
            None,
            "unknown stanza id is not found",
        );
    }
    // Another owner's id is unknown here.
    ok(
        s.append_archive(&other, &archived("only-other", BOB, 6, "<message/>"))
            .await,
        "other append",
    );
    same(
        ok(
            s.query_archive(
                &owner,
                &ArchiveFilter {
                    ids: vec!["only-other".into()],
                    ..ArchiveFilter::default()
                },
                &page_of(5),
            )
            .await,
            "foreign id",
        ),
        None,
        "another owner's stanza id is not found",
    );

    // Count only; bounded counting.
    let c = ok(s.query_archive(&owner, &none, &page_of(0)).await, "count").expect("no ids");
    same(
        (c.items.len(), c.count, c.complete),
        (0, Some(23), false),
        "max 0 gives the count",
    );
    let c = ok(
        s.query_archive(
            &owner,
            &none,
            &ArchivePaging {
                count_limit: 10,
                ..page_of(2)
            },
        )
        .await,
        "bounded count",
    )
    .expect("no ids");
    same(
        (c.count, c.first_index),
        (None, None),
        "count above the limit is omitted",
    );
    let c = ok(
        s.query_archive(
            &owner,
            &none,
            &ArchivePaging {
                count_limit: 0,
                ..page_of(2)
            },
        )
        .await,
        "no count",
    )
    .expect("no ids");
    same(c.count, None, "count_limit 0 does not count");

    // The other owner's archive is separate.
    let o = ok(s.query_archive(&other, &none, &page_of(10)).await, "other").expect("no ids");
    same(
        sids(&o.items),
        strings(&["s01", "only-other"]),
        "archives are per owner",
    );

    // A stamp older than the newest is raised to keep time order.
    ok(
        s.append_archive(&owner, &archived("late", CAROL, 10, "<message/>"))
            .await,
        "late append",
    );
    let tail = ok(
        s.query_archive(
            &owner,
            &none,
            &ArchivePaging {
                from_end: true,
                ..page_of(1)
            },
        )
        .await,
        "late",
    )
    .expect("no ids");
    same(
        (tail.items[0].stanza_id.as_str(), tail.items[0].stamp_micros),
        ("late", 23_000),
        "stamp raised to the newest stamp",
    );
}

async fn archive_concurrency(cx: &Cx) {
    let owner = cx.jid("archconc");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = cx.store.clone();
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let sid = format!("c{t}-{i}");
                store
                    .append_archive(&owner, &archived(&sid, BOB, 1_000_000 - i, "<message/>"))
                    .await
                    .expect("concurrent append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("append task");
    }
    let page = ok(
        cx.store
            .query_archive(&owner, &ArchiveFilter::default(), &page_of(1000))
            .await,
        "concurrent read",
    )
    .expect("no ids");
    same(page.items.len(), 100, "concurrent appends all stored");
    let mut ids = sids(&page.items);
    ids.sort();
    ids.dedup();
    same(ids.len(), 100, "concurrent appends distinct");
    assert!(
        page.items
            .windows(2)
            .all(|w| w[0].id < w[1].id && w[0].stamp_micros <= w[1].stamp_micros),
        "[archive concurrency] stamps non-decreasing in id order"
    );
}

/// 200 concurrent appends over 20 owners, two stanza ids of each owner sent twice: each
/// request gets its own outcome (a backend may commit many appends together, but a
/// duplicate fails only itself), and the stored archives follow the stamp rule in id order.
async fn archive_concurrency_many_owners(cx: &Cx) {
    const OWNERS: usize = 20;
    const PER_OWNER: usize = 10;
    let check = "archive many owners";
    let owner_of = |o: usize| cx.jid(&format!("archmany{o}"));
    // Request k of an owner uses stanza id m{k}, except k = 7 and 9, which repeat m6 and m8.
    let sid_of = |k: usize| match k {
        7 | 9 => format!("m{}", k - 1),
        _ => format!("m{k}"),
    };
    let mut tasks = Vec::new();
    for i in 0..OWNERS * PER_OWNER {
        let (o, k) = (i % OWNERS, i / OWNERS);
        let store = cx.store.clone();
        let owner = owner_of(o);
        let sid = sid_of(k);
        // Scrambled stamps, so the "max with the latest stored stamp" rule matters.
        let stamp = 2_000_000_000 + ((i as i64 * 7919) % 1000) * 1000;
        let stanza = format!("<message id='req{i}'/>");
        tasks.push(tokio::spawn(async move {
            let r = store
                .append_archive(&owner, &archived(&sid, BOB, stamp, &stanza))
                .await;
            (o, sid, stamp, stanza, r)
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("append task"));
    }

    let mut all_ids = BTreeSet::new();
    for o in 0..OWNERS {
        // (id, requested stamp, stanza) of each accepted append of this owner.
        let mut accepted = Vec::new();
        for k in 0..PER_OWNER {
            let sid = sid_of(k);
            let group: Vec<_> = outcomes
                .iter()
                .filter(|(oo, s, ..)| *oo == o && *s == sid)
                .collect();
            let oks: Vec<_> = group.iter().filter(|g| g.4.is_ok()).collect();
            same(oks.len(), 1, &format!("{check}: one append of {sid} wins"));
            for g in &group {
                match &g.4 {
                    Ok(id) => accepted.push((*id, g.2, g.3.clone())),
                    Err(StorageError::AlreadyExists) => {}
                    Err(e) => panic!("[{check}] append of {sid} failed: {e}"),
                }
            }
        }
        accepted.sort_unstable();
        accepted.dedup();
        same(
            accepted.len(),
            8,
            &format!("{check}: distinct accepted appends"),
        );
        for (id, ..) in &accepted {
            assert!(all_ids.insert(*id), "[{check}] row id {id} returned twice");
        }

        let page = ok(
            cx.store
                .query_archive(&owner_of(o), &ArchiveFilter::default(), &page_of(100))
                .await,
            check,
        )
        .expect("no ids named");
        same(page.count, Some(8), &format!("{check}: stored count"));
        same(
            page.items.iter().map(|m| m.id).collect::<Vec<_>>(),
            accepted.iter().map(|a| a.0).collect::<Vec<_>>(),
            &format!("{check}: stored ids are the returned ids"),
        );
        let mut latest = i64::MIN;
        for (m, (_, requested, stanza)) in page.items.iter().zip(&accepted) {
            same(&m.stanza, stanza, &format!("{check}: stored stanza"));
            latest = latest.max(*requested);
            same(
                m.stamp_micros,
                latest,
                &format!("{check}: stamp is max(requested, latest stored)"),
            );
        }
    }
}

async fn archive_expiry(cx: &Cx) {
    let s = &*cx.store;
    let a = cx.jid("expiring");
    let b = cx.jid("expiring2");
    let outside = format!("expiring@other-{}", cx.domain);
    for (owner, n) in [(&a, 10), (&b, 10), (&outside, 10)] {
        for i in 1..=n {
            ok(
                s.append_archive(owner, &archived(&sid(i), BOB, 100 * i as i64, "<message/>"))
                    .await,
                "expiry append",
            );
        }
    }
    same(
        ok(s.expire_archive(&a, 401).await, "expire"),
        4,
        "expire_archive count",
    );
    let left = ok(
        s.query_archive(&a, &ArchiveFilter::default(), &page_of(100))
            .await,
        "after expire",
    )
    .expect("no ids");
    same(
        sids(&left.items),
        (5..=10).map(sid).collect(),
        "expired messages gone",
    );
    // 3 of a's, 7 of b's, plus what earlier checks left in this domain.
    let n = ok(
        s.expire_archive_domain(&cx.domain, 701).await,
        "expire domain",
    );
    assert!(n >= 10, "[expire_archive_domain count] {n} < 10");
    let left = ok(
        s.query_archive(&b, &ArchiveFilter::default(), &page_of(100))
            .await,
        "domain expire",
    )
    .expect("no ids");
    same(
        sids(&left.items),
        (8..=10).map(sid).collect(),
        "domain expiry per owner",
    );
    let kept = ok(
        s.query_archive(&outside, &ArchiveFilter::default(), &page_of(100))
            .await,
        "outside",
    )
    .expect("no ids");
    same(
        kept.items.len(),
        10,
        "domain expiry leaves other domains (suffix, not substring)",
    );
    // An expired id is gone for good.
    same(
        ok(
            s.query_archive(
                &a,
                &ArchiveFilter {
                    after_id: Some(sid(2)),
                    ..ArchiveFilter::default()
                },
                &page_of(5),
            )
            .await,
            "expired id",
        ),
        None,
        "expired stanza id is not found",
    );
}

/// XEP-0425 tombstones: one message's stanza changes; its id, stamp and place stay.
async fn archive_replace(cx: &Cx) {
    let s = &*cx.store;
    let room = format!("room@conference.{}", cx.domain);
    for i in 1..=3 {
        ok(
            s.append_archive(&room, &archived(&sid(i), BOB, 10 * i as i64, "<message/>"))
                .await,
            "replace append",
        );
    }
    same(
        ok(
            s.replace_archived(&room, &sid(2), "<message><retracted/></message>")
                .await,
            "replace",
        ),
        true,
        "replace_archived finds the message",
    );
    same(
        ok(
            s.replace_archived(&room, &sid(9), "<x/>").await,
            "replace absent",
        ),
        false,
        "replace_archived of an unknown id",
    );
    same(
        ok(
            s.replace_archived(&cx.jid("other"), &sid(1), "<x/>").await,
            "replace other owner",
        ),
        false,
        "replace_archived is per owner",
    );
    let page = ok(
        s.query_archive(&room, &ArchiveFilter::default(), &page_of(10))
            .await,
        "after replace",
    )
    .expect("no ids");
    same(sids(&page.items), (1..=3).map(sid).collect(), "order kept");
    same(
        page.items[1].stanza.as_str(),
        "<message><retracted/></message>",
        "replaced stanza",
    );
    same(page.items[1].stamp_micros, 20, "stamp kept");
    same(
        page.items[0].stanza.as_str(),
        "<message/>",
        "others untouched",
    );
}

async fn archive_prefs(cx: &Cx) {
    let s = &*cx.store;
    let owner = cx.jid("prefs");
    same(
        ok(s.archive_prefs(&owner).await, "none"),
        None,
        "no prefs at first",
    );
    let p = ArchivePrefs {
        default: ArchiveDefault::Roster,
        always: strings(&["z@x.example", "a@x.example/res", "both@x.example"]),
        never: strings(&["both@x.example", "n@x.example"]),
    };
    ok(s.set_archive_prefs(&owner, &p).await, "set");
    same(
        ok(s.archive_prefs(&owner).await, "get"),
        Some(ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: strings(&["a@x.example/res", "z@x.example"]),
            never: strings(&["both@x.example", "n@x.example"]),
        }),
        "prefs round trip, sorted, never wins",
    );
    let p2 = ArchivePrefs {
        default: ArchiveDefault::Never,
        always: vec![],
        never: vec![],
    };
    ok(s.set_archive_prefs(&owner, &p2).await, "replace");
    same(
        ok(s.archive_prefs(&owner).await, "get2"),
        Some(p2),
        "prefs replaced",
    );
    for d in [
        ArchiveDefault::Always,
        ArchiveDefault::Never,
        ArchiveDefault::Roster,
    ] {
        same(
            ArchiveDefault::parse(d.as_str()),
            Some(d),
            "default spelling",
        );
    }
    same(
        ok(s.archive_prefs(&cx.jid("prefs2")).await, "other"),
        None,
        "prefs are per owner",
    );
}

fn room(jid: &str, service: &str, config: &str, created_micros: i64) -> StoredRoom {
    StoredRoom {
        jid: jid.to_string(),
        service: service.to_string(),
        config: config.to_string(),
        created_micros,
    }
}

fn aff(jid: &str, affiliation: &str, nick: Option<&str>, reason: Option<&str>) -> RoomAffiliation {
    RoomAffiliation {
        jid: jid.to_string(),
        affiliation: affiliation.to_string(),
        nick: nick.map(str::to_string),
        reason: reason.map(str::to_string),
    }
}

async fn muc_rooms(cx: &Cx) {
    let s = &*cx.store;
    let service = format!("conference.{}", cx.domain);
    let other_service = format!("chat.{}", cx.domain);
    let jid = |local: &str| format!("{local}@{service}");

    same(
        ok(s.load_rooms(&service).await, "load_rooms (none)"),
        vec![],
        "no rooms at first",
    );
    same(
        ok(s.load_room(&jid("lobby")).await, "load_room (none)"),
        None,
        "missing room",
    );
    same(
        ok(s.delete_room(&jid("lobby")).await, "delete (none)"),
        false,
        "delete missing room",
    );

    let lobby = room(
        &jid("lobby"),
        &service,
        "<x xmlns='jabber:x:data'/>",
        1_700_000_000_000_000,
    );
    ok(s.save_room(&lobby).await, "save");
    same(
        ok(s.load_room(&lobby.jid).await, "load"),
        Some(lobby.clone()),
        "room round trip",
    );
    ok(s.save_room(&lobby).await, "save again");
    same(
        ok(s.load_rooms(&service).await, "load_rooms"),
        vec![lobby.clone()],
        "save_room is idempotent",
    );
    let lobby2 = room(&lobby.jid, &service, "subject: \"hi\"\n<config a='ü'/>", -5);
    ok(s.save_room(&lobby2).await, "replace");
    same(
        ok(s.load_room(&lobby.jid).await, "load"),
        Some(lobby2.clone()),
        "save_room replaces the row",
    );
    let big = "<field var='muc#roomconfig_roomdesc'><value>".to_string()
        + &"Ωmega ".repeat(40_000)
        + "</value></field>";
    let lobby3 = room(&lobby.jid, &service, &big, 42);
    ok(s.save_room(&lobby3).await, "replace big");
    same(
        ok(s.load_room(&lobby.jid).await, "load big").map(|r| r == lobby3),
        Some(true),
        "large config round trip",
    );

    // Code-point order: uppercase before lowercase, ASCII before the rest.
    let mut rooms = vec![lobby3.clone()];
    for (local, micros) in [
        ("zebra", 3),
        ("Alpha", 1),
        ("café-☕", 2),
        ("", 0),
        ("日本語", 9),
    ] {
        let r = room(&jid(local), &service, local, micros);
        ok(s.save_room(&r).await, "save many");
        rooms.push(r);
    }
    let elsewhere = room(&format!("lobby@{other_service}"), &other_service, "", 7);
    ok(s.save_room(&elsewhere).await, "save other service");
    rooms.sort_by(|a, b| a.jid.cmp(&b.jid));
    same(
        ok(s.load_rooms(&service).await, "load_rooms"),
        rooms.clone(),
        "load_rooms filtered by service, sorted by jid",
    );
    same(
        ok(s.load_rooms(&other_service).await, "load_rooms other"),
        vec![elsewhere.clone()],
        "load_rooms of another service",
    );
    same(
        ok(s.load_room(&jid("café-☕")).await, "load unicode"),
        Some(room(&jid("café-☕"), &service, "café-☕", 2)),
        "unicode room jid",
    );
    same(
        ok(s.load_room(&jid("CAFÉ-☕")).await, "load case"),
        None,
        "room jids compared byte for byte",
    );

    // Moving a room to another service through save_room.
    let moved = room(&jid("zebra"), &other_service, "moved", 3);
    ok(s.save_room(&moved).await, "move");
    rooms.retain(|r| r.jid != moved.jid);
    same(
        ok(s.load_rooms(&service).await, "load_rooms after move"),
        rooms.clone(),
        "a moved room leaves its old service",
    );
    let mut want_other = vec![elsewhere.clone(), moved.clone()];
    want_other.sort_by(|a, b| a.jid.cmp(&b.jid));
    same(
        ok(s.load_rooms(&other_service).await, "load_rooms other"),
        want_other,
        "a moved room joins its new service",
    );

    // delete_room takes the affiliations with it.
    ok(
        s.set_affiliation(&lobby.jid, &aff("owner@x", "owner", Some("Boss"), None))
            .await,
        "set on lobby",
    );
    ok(
        s.set_affiliation(&jid("Alpha"), &aff("owner@x", "member", None, None))
            .await,
        "set on other room",
    );
    same(
        ok(s.delete_room(&lobby.jid).await, "delete"),
        true,
        "delete existing room",
    );
    same(
        ok(s.load_room(&lobby.jid).await, "load deleted"),
        None,
        "deleted room is gone",
    );
    same(
        ok(s.affiliations(&lobby.jid).await, "affiliations of deleted"),
        vec![],
        "delete_room removes the room's affiliations",
    );
    same(
        ok(s.delete_room(&lobby.jid).await, "delete again"),
        false,
        "second delete reports absent",
    );
    same(
        ok(s.affiliations(&jid("Alpha")).await, "other room"),
        vec![aff("owner@x", "member", None, None)],
        "other rooms' affiliations survive a delete",
    );
    rooms.retain(|r| r.jid != lobby.jid);
    same(
        ok(s.load_rooms(&service).await, "load_rooms after delete"),
        rooms,
        "other rooms survive a delete",
    );
    ok(s.save_room(&lobby).await, "recreate");
    same(
        ok(s.affiliations(&lobby.jid).await, "recreated"),
        vec![],
        "a recreated room starts without stale affiliations",
    );
}

async fn muc_affiliations(cx: &Cx) {
    let s = &*cx.store;
    let service = format!("aff.conference.{}", cx.domain);
    let r = format!("room@{service}");
    let other = format!("other@{service}");

    same(
        ok(s.affiliations(&r).await, "none"),
        vec![],
        "no affiliations at first",
    );
    // No room row exists: the store must not care.
    ok(
        s.set_affiliation(&r, &aff("z@x", "member", None, None))
            .await,
        "set without room row",
    );
    ok(
        s.set_affiliation(
            &r,
            &aff(
                "日本@x",
                "admin",
                Some("Ünïcødé 🎉"),
                Some("weil \"ich\" <es> will"),
            ),
        )
        .await,
        "set unicode",
    );
    ok(
        s.set_affiliation(&r, &aff("b.example", "outcast", None, Some("spam server")))
            .await,
        "set domain jid",
    );
    ok(
        s.set_affiliation(&r, &aff("B@x", "owner", Some(""), Some("")))
            .await,
        "set empty nick",
    );
    let mut want = vec![
        aff("z@x", "member", None, None),
        aff(
            "日本@x",
            "admin",
            Some("Ünïcødé 🎉"),
            Some("weil \"ich\" <es> will"),
        ),
        aff("b.example", "outcast", None, Some("spam server")),
        aff("B@x", "owner", Some(""), Some("")),
    ];
    want.sort_by(|a, b| a.jid.cmp(&b.jid));
    same(
        ok(s.affiliations(&r).await, "list"),
        want.clone(),
        "affiliations sorted by jid, nick and reason round trip (empty is not absent)",
    );
    same(
        ok(s.load_room(&r).await, "no room row"),
        None,
        "setting affiliations creates no room",
    );

    // Replacing one JID's affiliation replaces nick and reason too.
    ok(
        s.set_affiliation(&r, &aff("日本@x", "member", None, None))
            .await,
        "change",
    );
    for a in want.iter_mut().filter(|a| a.jid == "日本@x") {
        *a = aff("日本@x", "member", None, None);
    }
    same(
        ok(s.affiliations(&r).await, "list"),
        want.clone(),
        "set_affiliation replaces the whole entry",
    );

    ok(
        s.set_affiliation(&other, &aff("z@x", "owner", None, None))
            .await,
        "other room",
    );
    ok(
        s.set_affiliation(&r, &aff("z@x", "none", Some("ignored"), None))
            .await,
        "remove",
    );
    want.retain(|a| a.jid != "z@x");
    same(
        ok(s.affiliations(&r).await, "list"),
        want.clone(),
        "\"none\" removes the affiliation",
    );
    ok(
        s.set_affiliation(&r, &aff("never@x", "none", None, None))
            .await,
        "remove absent",
    );
    same(
        ok(s.affiliations(&r).await, "list"),
        want.clone(),
        "\"none\" for an unaffiliated jid is a no-op",
    );
    same(
        ok(s.affiliations(&other).await, "other"),
        vec![aff("z@x", "owner", None, None)],
        "affiliations are per room",
    );
    same(
        ok(s.affiliations(&r.to_uppercase()).await, "case"),
        vec![],
        "room jids compared byte for byte",
    );

    // replace_affiliations: the old list goes entirely.
    let list = vec![
        aff("new@x", "owner", Some("Neu"), None),
        aff("b.example", "member", None, Some("forgiven")),
        aff("dup@x", "member", None, None),
        aff("gone@x", "admin", None, None),
        aff("dup@x", "admin", Some("last"), None),
        aff("gone@x", "none", None, None),
    ];
    ok(s.replace_affiliations(&r, &list).await, "replace");
    same(
        ok(s.affiliations(&r).await, "list"),
        vec![
            aff("b.example", "member", None, Some("forgiven")),
            aff("dup@x", "admin", Some("last"), None),
            aff("new@x", "owner", Some("Neu"), None),
        ],
        "replace_affiliations replaces the list (last duplicate wins, \"none\" dropped)",
    );
    same(
        ok(s.affiliations(&other).await, "other"),
        vec![aff("z@x", "owner", None, None)],
        "replace_affiliations leaves other rooms alone",
    );

    // A large list in one call, and back to a small one.
    let mut many: Vec<RoomAffiliation> = (0..1000)
        .map(|i| {
            let affiliation = ["owner", "admin", "member", "outcast"][i % 4];
            let nick = (i % 3 == 0).then(|| format!("nick-{i}-ñ"));
            let reason = (i % 5 == 0).then(|| format!("reason {i}"));
            aff(
                &format!("user{:04}-é@x.example", 999 - i),
                affiliation,
                nick.as_deref(),
                reason.as_deref(),
            )
        })
        .collect();
    ok(s.replace_affiliations(&r, &many).await, "replace 1000");
    many.sort_by(|a, b| a.jid.cmp(&b.jid));
    same(
        ok(s.affiliations(&r).await, "list 1000") == many,
        true,
        "1000-entry affiliation list round trip, sorted",
    );
    let small = vec![aff("only@x", "owner", None, None)];
    ok(s.replace_affiliations(&r, &small).await, "replace small");
    same(
        ok(s.affiliations(&r).await, "list"),
        small,
        "a replacement drops every earlier entry",
    );
    ok(s.replace_affiliations(&r, &[]).await, "replace empty");
    same(
        ok(s.affiliations(&r).await, "list"),
        vec![],
        "an empty replacement clears the list",
    );
    ok(s.replace_affiliations(&r, &[]).await, "replace empty again");
}

/// Concurrent replacements of one room's list never merge: one list wins whole.
async fn muc_concurrency(cx: &Cx) {
    let r = format!("busy@conference.{}", cx.domain);
    let lists: Vec<Vec<RoomAffiliation>> = (0..6)
        .map(|t| {
            (0..40)
                .map(|i| aff(&format!("t{t}-{i:02}@x"), "member", None, None))
                .collect()
        })
        .collect();
    for round in 0..3 {
        let mut tasks = Vec::new();
        for list in lists.clone() {
            let store = cx.store.clone();
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .replace_affiliations(&r, &list)
                    .await
                    .expect("concurrent replace_affiliations");
            }));
        }
        for t in tasks {
            t.await.expect("replace task");
        }
        let got = ok(cx.store.affiliations(&r).await, "concurrent list");
        assert!(
            lists.contains(&got),
            "[muc concurrency] round {round}: result is not one of the lists ({} entries)",
            got.len()
        );
    }
    ok(cx.store.delete_room(&r).await, "cleanup");
    same(
        ok(cx.store.affiliations(&r).await, "after delete"),
        vec![],
        "delete_room without a room row still drops affiliations",
    );
}
