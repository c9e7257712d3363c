//! Conformance checks for [`FileStore`](crate::FileStore): slots and their quota, uploads,
//! downloads, recipients, listing, purging and expiry.
//!
//! `expired_files` looks at the whole table, so its checks only consider this run's ids
//! (all prefixed with the run's random domain tag), and every record made here is purged
//! at the end.

use super::{ok, same, Cx};
use crate::{
    FileDownload, FileFilter, FileQuota, FileRecipient, FileState, FileUsage, NewFileSlot,
    StorageError,
};

const T0: i64 = 1_700_000_000_000_000;
const HOUR: i64 = 3_600_000_000;

const UNLIMITED: FileQuota = FileQuota {
    daily_bytes: None,
    total_bytes: None,
    since_micros: 0,
    now_micros: T0,
};

struct Ids {
    prefix: String,
}

impl Ids {
    fn id(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

fn slot<'a>(
    id: &'a str,
    uploader: &'a str,
    name: &'a str,
    size: u64,
    created: i64,
) -> NewFileSlot<'a> {
    NewFileSlot {
        id,
        uploader,
        file_name: name,
        size,
        content_type: Some("image/png"),
        created_micros: created,
        put_deadline_micros: created + HOUR,
        expires_micros: Some(created + 24 * HOUR),
    }
}

pub(super) async fn run(cx: &Cx) {
    let ids = Ids {
        prefix: format!("{}-", cx.domain.replace('.', "_")),
    };
    slots(cx, &ids).await;
    quota(cx, &ids).await;
    quota_concurrency(cx, &ids).await;
    transfers(cx, &ids).await;
    listing(cx, &ids).await;
    purge_and_expiry(cx, &ids).await;
    // Leave nothing for a later run's expiry checks.
    let mine: Vec<String> = ok(
        cx.store.expired_files(i64::MAX, i64::MAX, 100_000).await,
        "files: final sweep",
    )
    .into_iter()
    .filter(|id| id.starts_with(&ids.prefix))
    .collect();
    for id in mine {
        ok(
            cx.store.purge_file(&id, T0, "test").await,
            "files: final purge",
        );
    }
}

async fn slots(cx: &Cx, ids: &Ids) {
    let s = &*cx.store;
    let alice = cx.jid("filer");
    let id = ids.id("slot1");
    same(
        ok(s.file(&id).await, "file (none)"),
        None,
        "unknown file is None",
    );
    let name = "Résumé 日本語 \"quoted\" ☃.pdf";
    let mut new = slot(&id, &alice, name, 5 * 1024 * 1024 * 1024, T0);
    new.content_type = None;
    ok(s.create_file_slot(&new, &UNLIMITED).await, "create slot");
    let rec = ok(s.file(&id).await, "file").expect("slot recorded");
    same(rec.id.as_str(), id.as_str(), "slot id");
    same(rec.uploader.as_str(), alice.as_str(), "slot uploader");
    same(
        rec.file_name.as_str(),
        name,
        "unicode file name round-trips",
    );
    same(
        rec.size,
        5 * 1024 * 1024 * 1024,
        "sizes above 4 GiB round-trip",
    );
    same(rec.content_type, None, "absent content type");
    same(rec.state, FileState::Requested, "new slot is requested");
    same(rec.created_micros, T0, "created");
    same(rec.put_deadline_micros, T0 + HOUR, "deadline");
    same(rec.expires_micros, Some(T0 + 24 * HOUR), "expiry");
    same(rec.sha256, None, "no hash before upload");
    same(rec.uploaded_micros, None, "not uploaded");
    same(rec.upload_addr, None, "no upload address");
    same(rec.purged_micros, None, "not purged");
    same(rec.download_count, 0, "no downloads");
    assert!(
        rec.downloads.is_empty() && rec.recipients.is_empty(),
        "[files] fresh slot has no transfers"
    );
    match s.create_file_slot(&new, &UNLIMITED).await {
        Err(StorageError::AlreadyExists) => {}
        other => panic!("[files: duplicate slot id] expected AlreadyExists, got {other:?}"),
    }
    let id2 = ids.id("slot2");
    let mut never = slot(&id2, &alice, "x", 1, T0);
    never.expires_micros = None;
    never.content_type = Some("text/plain; charset=utf-8");
    ok(
        s.create_file_slot(&never, &UNLIMITED).await,
        "slot without expiry",
    );
    let rec = ok(s.file(&id2).await, "file 2").expect("slot 2");
    same(rec.expires_micros, None, "no expiry");
    same(
        rec.content_type.as_deref(),
        Some("text/plain; charset=utf-8"),
        "content type",
    );
}

async fn quota(cx: &Cx, ids: &Ids) {
    let s = &*cx.store;
    let u = cx.jid("quota");
    let other = cx.jid("quota-other");
    let since = T0 - 24 * HOUR;
    let usage = |a: u64, b: u64| FileUsage {
        window_bytes: a,
        total_bytes: b,
    };
    same(
        ok(s.file_usage(&u, since, T0).await, "usage (none)"),
        usage(0, 0),
        "no usage at first",
    );
    let q = |daily: Option<u64>, total: Option<u64>, now: i64| FileQuota {
        daily_bytes: daily,
        total_bytes: total,
        since_micros: now - 24 * HOUR,
        now_micros: now,
    };
    // Up to the daily limit exactly, then one byte over.
    let (a, b, c) = (ids.id("q-a"), ids.id("q-b"), ids.id("q-c"));
    ok(
        s.create_file_slot(&slot(&a, &u, "a", 600, T0), &q(Some(1000), None, T0))
            .await,
        "quota: first slot",
    );
    ok(
        s.create_file_slot(&slot(&b, &u, "b", 400, T0), &q(Some(1000), None, T0))
            .await,
        "quota: slot reaching the limit exactly",
    );
    match s
        .create_file_slot(&slot(&c, &u, "c", 1, T0), &q(Some(1000), None, T0))
        .await
    {
        Err(StorageError::QuotaExceeded) => {}
        other => panic!("[files: daily quota] expected QuotaExceeded, got {other:?}"),
    }
    same(
        ok(s.file(&c).await, "refused slot"),
        None,
        "a refused slot is not recorded",
    );
    same(
        ok(s.file_usage(&u, since, T0).await, "usage"),
        usage(1000, 1000),
        "reserved slots count",
    );
    // Another user is not affected.
    ok(
        s.create_file_slot(
            &slot(&ids.id("q-o"), &other, "o", 900, T0),
            &q(Some(1000), Some(1000), T0),
        )
        .await,
        "quota is per user",
    );
    // Past the deadline an unused reservation no longer counts; an uploaded file does.
    ok(
        s.complete_file_upload(&a, &"0".repeat(64), T0 + 1, "127.0.0.1")
            .await,
        "quota: upload a",
    );
    let later = T0 + 2 * HOUR;
    same(
        ok(
            s.file_usage(&u, later - 24 * HOUR, later).await,
            "usage later",
        ),
        usage(600, 600),
        "expired reservation released",
    );
    // The total quota counts what is stored, whatever its age.
    match s
        .create_file_slot(&slot(&c, &u, "c", 401, later), &q(None, Some(1000), later))
        .await
    {
        Err(StorageError::QuotaExceeded) => {}
        other => panic!("[files: total quota] expected QuotaExceeded, got {other:?}"),
    }
    ok(
        s.create_file_slot(&slot(&c, &u, "c", 400, later), &q(None, Some(1000), later))
            .await,
        "total quota reached exactly",
    );
    // A day later the daily window is empty but the total still counts stored bytes.
    let next_day = T0 + 30 * HOUR;
    same(
        ok(
            s.file_usage(&u, next_day - 24 * HOUR, next_day).await,
            "usage next day",
        ),
        usage(0, 600),
        "window moves on; stored bytes stay",
    );
    // Purged content frees the total but still counts in its day.
    ok(s.purge_file(&a, T0 + 3, "admin").await, "purge a");
    same(
        ok(s.file_usage(&u, since, T0 + 3).await, "usage after purge"),
        usage(1400, 800),
        "purged bytes leave the total, not the day",
    );
}

async fn quota_concurrency(cx: &Cx, ids: &Ids) {
    let u = cx.jid("quota-race");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = cx.store.clone();
        let u = u.clone();
        let id = ids.id(&format!("race-{i}"));
        tasks.push(tokio::spawn(async move {
            let quota = FileQuota {
                daily_bytes: Some(1000),
                total_bytes: Some(300),
                since_micros: T0 - 24 * HOUR,
                now_micros: T0,
            };
            store
                .create_file_slot(&slot(&id, &u, "r", 100, T0), &quota)
                .await
        }));
    }
    let mut granted = 0;
    for t in tasks {
        match t.await.expect("slot task") {
            Ok(()) => granted += 1,
            Err(StorageError::QuotaExceeded) => {}
            Err(e) => panic!("[files: quota race] unexpected error {e}"),
        }
    }
    same(granted, 3, "concurrent slot requests never exceed a quota");
}

async fn transfers(cx: &Cx, ids: &Ids) {
    let s = &*cx.store;
    let u = cx.jid("sender");
    let id = ids.id("t");
    ok(
        s.create_file_slot(&slot(&id, &u, "t.png", 10, T0), &UNLIMITED)
            .await,
        "transfer slot",
    );
    let hash = "ab".repeat(32);
    same(
        ok(
            s.complete_file_upload(&id, &hash, T0 + 5, "[2001:db8::1]:4444")
                .await,
            "upload",
        ),
        true,
        "first upload completes",
    );
    same(
        ok(
            s.complete_file_upload(&id, &"cd".repeat(32), T0 + 6, "10.0.0.1:1")
                .await,
            "second upload",
        ),
        false,
        "a slot takes one upload",
    );
    same(
        ok(
            s.complete_file_upload(&ids.id("nope"), &hash, T0, "x")
                .await,
            "upload unknown",
        ),
        false,
        "unknown slot",
    );
    let rec = ok(s.file(&id).await, "uploaded").expect("record");
    same(rec.state, FileState::Uploaded, "uploaded state");
    same(rec.sha256.as_deref(), Some(hash.as_str()), "hash kept");
    same(rec.uploaded_micros, Some(T0 + 5), "upload time");
    same(
        rec.upload_addr.as_deref(),
        Some("[2001:db8::1]:4444"),
        "first uploader's address kept",
    );
    let d1 = FileDownload {
        stamp_micros: T0 + 10,
        client_addr: "192.0.2.7:5000".into(),
        downloader: None,
    };
    let d2 = FileDownload {
        stamp_micros: T0 + 11,
        client_addr: "192.0.2.8:5001".into(),
        downloader: Some(cx.jid("reader")),
    };
    same(
        ok(s.record_file_download(&id, &d1).await, "dl 1"),
        true,
        "download 1",
    );
    same(
        ok(s.record_file_download(&id, &d2).await, "dl 2"),
        true,
        "download 2",
    );
    same(
        ok(
            s.record_file_download(&ids.id("nope"), &d1).await,
            "dl unknown",
        ),
        false,
        "download of unknown file",
    );
    let (r1, r2) = (cx.jid("bob"), format!("room@conference.{}", cx.domain));
    same(
        ok(s.add_file_recipient(&id, &r1, &u, T0 + 7).await, "rcpt 1"),
        true,
        "recipient",
    );
    same(
        ok(s.add_file_recipient(&id, &r2, &u, T0 + 8).await, "rcpt 2"),
        true,
        "room recipient",
    );
    same(
        ok(
            s.add_file_recipient(&id, &r1, &cx.jid("forwarder"), T0 + 9)
                .await,
            "rcpt again",
        ),
        true,
        "recipient again",
    );
    same(
        ok(
            s.add_file_recipient(&ids.id("nope"), &r1, &u, T0).await,
            "rcpt unknown",
        ),
        false,
        "recipient of unknown file",
    );
    let rec = ok(s.file(&id).await, "with transfers").expect("record");
    same(rec.download_count, 2, "download count");
    same(rec.downloads, vec![d1, d2], "downloads in order");
    same(
        rec.recipients,
        vec![
            FileRecipient {
                jid: r1,
                sender: u.clone(),
                stamp_micros: T0 + 7,
            },
            FileRecipient {
                jid: r2,
                sender: u,
                stamp_micros: T0 + 8,
            },
        ],
        "recipients once each, first sender kept",
    );
}

async fn listing(cx: &Cx, ids: &Ids) {
    let s = &*cx.store;
    let u = cx.jid("lister");
    let v = cx.jid("lister2");
    let mut made = Vec::new();
    for i in 0..5i64 {
        let id = ids.id(&format!("l{i}"));
        let who = if i % 2 == 0 { &u } else { &v };
        ok(
            s.create_file_slot(&slot(&id, who, "l", 1, T0 + i * HOUR), &UNLIMITED)
                .await,
            "listing slot",
        );
        made.push(id);
    }
    ok(
        s.record_file_download(
            &made[4],
            &FileDownload {
                stamp_micros: T0,
                client_addr: "a".into(),
                downloader: None,
            },
        )
        .await,
        "listing download",
    );
    ok(s.purge_file(&made[2], T0, "admin").await, "listing purge");
    let list = |f: FileFilter| async move {
        ok(s.list_files(&f).await, "list_files")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    same(
        list(FileFilter {
            uploader: Some(u.clone()),
            limit: 100,
            ..Default::default()
        })
        .await,
        vec![made[4].clone(), made[0].clone()],
        "by uploader, newest first, purged left out",
    );
    same(
        list(FileFilter {
            uploader: Some(u.clone()),
            include_purged: true,
            limit: 100,
            ..Default::default()
        })
        .await,
        vec![made[4].clone(), made[2].clone(), made[0].clone()],
        "purged included on request",
    );
    same(
        list(FileFilter {
            uploader: Some(u.clone()),
            include_purged: true,
            limit: 2,
            ..Default::default()
        })
        .await,
        vec![made[4].clone(), made[2].clone()],
        "limit",
    );
    same(
        list(FileFilter {
            uploader: Some(v.clone()),
            since_micros: Some(T0 + 2 * HOUR),
            limit: 100,
            ..Default::default()
        })
        .await,
        vec![made[3].clone()],
        "since",
    );
    same(
        list(FileFilter {
            uploader: Some(v.clone()),
            before_micros: Some(T0 + 3 * HOUR),
            limit: 100,
            ..Default::default()
        })
        .await,
        vec![made[1].clone()],
        "before",
    );
    same(
        list(FileFilter {
            uploader: Some(v),
            limit: 0,
            ..Default::default()
        })
        .await,
        Vec::<String>::new(),
        "limit 0",
    );
    let recs = ok(
        s.list_files(&FileFilter {
            uploader: Some(u),
            limit: 1,
            ..Default::default()
        })
        .await,
        "list records",
    );
    same(recs[0].download_count, 1, "listed download count");
    assert!(
        recs[0].downloads.is_empty(),
        "[files] listing leaves downloads out"
    );
}

async fn purge_and_expiry(cx: &Cx, ids: &Ids) {
    let s = &*cx.store;
    let u = cx.jid("expirer");
    let base = T0 + 1000 * HOUR;
    let (old, fresh, unused, never, forever) = (
        ids.id("e-old"),
        ids.id("e-fresh"),
        ids.id("e-unused"),
        ids.id("e-never"),
        ids.id("e-forever"),
    );
    for (id, created) in [
        (&old, base),
        (&fresh, base + 10 * HOUR),
        (&unused, base + HOUR),
        (&never, base + 2 * HOUR),
    ] {
        ok(
            s.create_file_slot(&slot(id, &u, "e", 1, created), &UNLIMITED)
                .await,
            "expiry slot",
        );
    }
    let mut keep = slot(&forever, &u, "e", 1, base);
    keep.expires_micros = None;
    ok(
        s.create_file_slot(&keep, &UNLIMITED).await,
        "no-expiry slot",
    );
    for id in [&old, &fresh, &forever] {
        ok(
            s.complete_file_upload(id, &"0".repeat(64), base + 1, "x")
                .await,
            "expiry upload",
        );
    }
    ok(
        s.purge_file(&never, base, "admin").await,
        "purge unused one",
    );
    // Only this section's records: earlier sections left slots and uploads behind.
    let prefix = ids.id("e-");
    let mine = |v: Vec<String>| -> Vec<String> {
        v.into_iter().filter(|i| i.starts_with(&prefix)).collect()
    };
    // `old` expires at base + 24h; `unused`'s deadline was base + 2h.
    let now = base + 25 * HOUR;
    same(
        mine(ok(s.expired_files(now, base, 100_000).await, "expired")),
        vec![old.clone()],
        "expired uploads; unused slots only once stale",
    );
    same(
        mine(ok(
            s.expired_files(now, base + 3 * HOUR, 100_000).await,
            "expired+stale",
        )),
        vec![old.clone(), unused.clone()],
        "stale unused slots too, oldest first",
    );
    same(
        mine(ok(
            s.expired_files(i64::MAX, 0, 100_000).await,
            "all expired",
        ))
        .contains(&forever),
        false,
        "files without expiry never expire",
    );
    same(
        ok(s.purge_file(&old, now, "expired").await, "purge"),
        Some(FileState::Uploaded),
        "purge returns the previous state",
    );
    same(
        ok(s.purge_file(&old, now + 5, "admin").await, "purge again"),
        Some(FileState::Purged),
        "purging twice is harmless",
    );
    same(
        ok(
            s.purge_file(&ids.id("nope"), now, "x").await,
            "purge unknown",
        ),
        None,
        "purge unknown",
    );
    let rec = ok(s.file(&old).await, "purged record").expect("record stays");
    same(rec.state, FileState::Purged, "purged state");
    same(rec.purged_micros, Some(now), "first purge time kept");
    same(rec.purge_reason.as_deref(), Some("expired"), "purge reason");
    same(
        rec.sha256.as_deref(),
        Some("0".repeat(64).as_str()),
        "audit data kept",
    );
    same(
        ok(
            s.complete_file_upload(&never, &"0".repeat(64), now, "x")
                .await,
            "upload after purge",
        ),
        false,
        "a purged slot takes no upload",
    );
    same(
        mine(ok(s.expired_files(now, base, 100_000).await, "after purge")),
        Vec::<String>::new(),
        "purged files are not expired again",
    );
}
