//! herald-bench against a real Herald server started in-process on 127.0.0.1:0: every
//! scenario's exact accounting must come out clean (no lost, duplicated or misrouted
//! messages, no failed logins, no failed room joins, no failed or short archive queries),
//! over STARTTLS and direct TLS with each SASL mechanism.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use herald_bench::{run, Cli, Report, RunError};
use herald_server::Config;
use herald_storage::Storage;
use tokio::sync::watch;

const DOMAIN: &str = "example.test";

struct Server {
    c2s: SocketAddr,
    direct_tls: SocketAddr,
    store: Arc<dyn Storage>,
    domains: Vec<String>,
    _shutdown: watch::Sender<bool>,
    _running: herald_server::Running,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Server {
    start_server_with("").await
}

/// A server whose configuration ends with `extra` (more TOML sections).
async fn start_server_with(extra: &str) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "[server]\ndomains = [\"{DOMAIN}\"]\ndata_dir = {:?}\n\
         [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\n\
         http = []\nhttps = []\ncomponent = []\nproxy65 = []\n{extra}",
        dir.path().join("data").display().to_string()
    );
    let settings = Config::parse(&text, "bench-test")
        .expect("config parses")
        .validate("bench-test")
        .expect("config is valid");
    let url = format!("sqlite://{}", dir.path().join("h.db").display());
    let store = herald_storage::open(&url).await.expect("open store");
    let domains = settings.domains.clone();
    let (tx, rx) = watch::channel(false);
    let running = herald_server::start(settings, store.clone(), rx)
        .await
        .expect("server starts");
    Server {
        c2s: running.bound.c2s[0],
        direct_tls: running.bound.c2s_direct_tls[0],
        store,
        domains,
        _shutdown: tx,
        _running: running,
        _dir: dir,
    }
}

impl Server {
    /// Creates user1..userN with passwords pass1..passN (herald-bench's defaults).
    async fn add_users(&self, n: usize) {
        for i in 1..=n {
            let jid =
                herald_server::accounts::user_jid(&format!("user{i}@{DOMAIN}"), &self.domains)
                    .expect("valid jid");
            herald_server::accounts::add(&*self.store, &jid, &format!("pass{i}"), 4096)
                .await
                .expect("add user");
        }
    }

    async fn bench(&self, args: &str) -> Result<Report, RunError> {
        let mut argv = vec![
            "herald-bench".to_string(),
            "--quiet".into(),
            "--domain".into(),
            DOMAIN.into(),
        ];
        if !args.contains("--port") {
            argv.push(format!("--port={}", self.c2s.port()));
        }
        argv.extend(
            args.split_whitespace()
                .map(|a| a.replace("DIRECT", &self.direct_tls.port().to_string())),
        );
        let cli = Cli::try_parse_from(&argv).expect("arguments parse");
        run(cli).await
    }
}

fn assert_clean(r: &Report) {
    assert!(
        r.ok(),
        "{} failed: {:?}\n{}",
        r.scenario,
        r.failures,
        r.to_text()
    );
    for m in [
        "lost",
        "duplicated",
        "misrouted",
        "logins_failed",
        "sessions_dropped",
    ] {
        if let Some(v) = r.get_u64(m) {
            assert_eq!(v, 0, "{m} in {}", r.to_text());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_delivers_every_message_exactly_once() {
    let s = start_server().await;
    s.add_users(20).await;
    let json = s._dir.path().join("chat.json");
    let r = s
        .bench(&format!(
            "--users 20 --arrival-rate 0 --json {} chat --rate 200 --duration 1.5 --drain 10",
            json.display()
        ))
        .await
        .expect("chat runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("logins_ok"), Some(20));
    assert_eq!(r.get_u64("messages_sent"), Some(300), "{}", r.to_text());
    assert_eq!(r.get_u64("delivered"), Some(300), "{}", r.to_text());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    assert_eq!(written["results"]["lost"], 0);
    assert_eq!(written["ok"], true);
    assert!(r.to_markdown().contains("| lost | 0 |"));

    // Random recipients, SCRAM-SHA-256 over direct TLS, negotiation without pipelining.
    let r = s
        .bench(
            "--users 20 --port DIRECT --direct-tls --mech SCRAM-SHA-256 --no-pipeline \
             chat --contacts random --rate 200 --duration 1 --body-size 100",
        )
        .await
        .expect("chat runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("delivered"), Some(200), "{}", r.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_provision_and_presence() {
    let s = start_server().await;
    s.add_users(12).await;
    let r = s
        .bench("--users 12 --mech PLAIN --source-ips 3 connect --hold 0.2")
        .await
        .expect("connect runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("logins_ok"), Some(12));

    let r = s
        .bench("--users 12 provision --contacts 4 --concurrency 6")
        .await
        .expect("provision runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("rosters_incomplete"), Some(0));

    let r = s
        .bench("--users 12 presence --contacts 4 --rate 30 --duration 1 --settle 0.5")
        .await
        .expect("presence runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("changes_sent"), Some(30), "{}", r.to_text());
    assert_eq!(r.get_u64("deliveries_expected"), Some(120));
    assert_eq!(r.get_u64("delivered"), Some(120), "{}", r.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muc_fans_out_every_message_to_every_occupant() {
    let s = start_server().await;
    s.add_users(21).await;
    let json = s._dir.path().join("muc.json");
    // 2 rooms × 10 occupants; user 21 stays outside the rooms.
    let r = s
        .bench(&format!(
            "--users 21 --arrival-rate 0 --json {} muc --rooms 2 --occupants 10 \
             --rate 100 --duration 1.5 --join-rate 100 --drain 10",
            json.display()
        ))
        .await
        .expect("muc runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("logins_ok"), Some(21));
    assert_eq!(r.get_u64("rooms_created"), Some(2), "{}", r.to_text());
    assert_eq!(r.get_u64("joins_ok"), Some(20), "{}", r.to_text());
    assert_eq!(r.get_u64("joins_failed"), Some(0), "{}", r.to_text());
    assert_eq!(r.get_u64("messages_sent"), Some(150), "{}", r.to_text());
    // Every message reaches the 10 occupants of its room, the sender included.
    assert_eq!(r.get_u64("copies_expected"), Some(1500), "{}", r.to_text());
    assert_eq!(r.get_u64("delivered"), Some(1500), "{}", r.to_text());
    assert_eq!(r.get_u64("history_replayed"), Some(0), "{}", r.to_text());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    assert_eq!(written["results"]["lost"], 0);
    assert_eq!(written["ok"], true);
    assert!(r.to_markdown().contains("| lost | 0 |"));

    // The rooms were destroyed when emptied: a second run creates them again, over
    // direct TLS with an explicit service and all joins at once.
    let r = s
        .bench(&format!(
            "--users 20 --port DIRECT --direct-tls muc --rooms 2 --service conference.{DOMAIN} \
             --rate 50 --duration 1 --join-rate 0 --body-size 50"
        ))
        .await
        .expect("muc runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("joins_ok"), Some(20), "{}", r.to_text());
    assert_eq!(r.get_u64("delivered"), Some(500), "{}", r.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mam_queries_return_full_pages() {
    let s = start_server_with("[mam]\ndefault = \"always\"\n").await;
    s.add_users(20).await;
    let json = s._dir.path().join("mam.json");
    // 20 users × 10 fill messages: every archive holds 20 (10 sent, 10 received). Pages of
    // 8: a last page has 8, a `with` page 8 (of 10 with that contact), paging back 8 then 4.
    let r = s
        .bench(&format!(
            "--users 20 --arrival-rate 0 --json {} mam --fill 10 --page 8 --rate 50 \
             --duration 1 --with-share 0.2 --back-share 0.5 --drain 10 --settle 0.2",
            json.display()
        ))
        .await
        .expect("mam runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("logins_ok"), Some(20));
    assert_eq!(r.get_u64("fill_delivered"), Some(200), "{}", r.to_text());
    assert_eq!(r.get_u64("queries_ok"), Some(50), "{}", r.to_text());
    for m in [
        "query_errors",
        "query_timeouts",
        "short_pages",
        "results_bad",
        "results_late",
        "page_mismatch",
    ] {
        assert_eq!(r.get_u64(m), Some(0), "{m} in {}", r.to_text());
    }
    // Fresh archives: every page holds exactly what the fill put there.
    let results = r.get_u64("results").expect("results");
    assert_eq!(
        r.get_u64("results_expected_min"),
        Some(results),
        "{}",
        r.to_text()
    );
    assert!(results >= 50 * 4, "{}", r.to_text());
    for m in ["queries_last_page", "queries_with", "queries_page_back"] {
        assert!(r.get_u64(m).unwrap_or(0) > 0, "{m} in {}", r.to_text());
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    assert_eq!(written["ok"], true);
    assert_eq!(written["results"]["short_pages"], 0);

    // A second run on the filled archives, without a fill, over direct TLS.
    let r = s
        .bench(
            "--users 20 --port DIRECT --direct-tls mam --fill 0 --page 50 --rate 40 \
             --duration 0.5",
        )
        .await
        .expect("mam runs");
    assert_clean(&r);
    assert_eq!(r.get_u64("fill_messages_sent"), Some(0));
    assert_eq!(r.get_u64("queries_ok"), Some(20), "{}", r.to_text());
    // Last pages hold the whole archive (20 < 50), `with` pages 10.
    assert!(
        r.get_u64("results").unwrap_or(0) >= 20 * 10,
        "{}",
        r.to_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_bad_arguments_fail() {
    let s = start_server().await;
    s.add_users(2).await;
    let r = s
        .bench("--users 2 --password wrong chat --rate 10 --duration 0.2 --drain 0")
        .await
        .expect("chat runs");
    assert!(!r.ok());
    assert_eq!(r.get_u64("logins_failed"), Some(2));
    assert!(matches!(
        s.bench("--users 2 muc --rooms 3").await,
        Err(RunError::Usage(_))
    ));
    assert!(matches!(
        s.bench("--users 2 mam --with-share 0.8 --back-share 0.5")
            .await,
        Err(RunError::Usage(_))
    ));
    // One user alone has no contact to fill its archive with.
    let r = s
        .bench("--users 1 mam --fill 1 --rate 10 --duration 0.2")
        .await
        .expect("mam runs");
    assert!(!r.ok());
}
