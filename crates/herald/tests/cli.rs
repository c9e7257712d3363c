//! The `herald` binary as an operator uses it: config errors, account commands, startup
//! failures as one readable line, SIGTERM, and the PostgreSQL backend.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// `N` distinct free ports. The listeners are held until all are bound: a port released
/// at once could come back from the next bind to port 0.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

struct Env {
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    c2s: u16,
    http: u16,
}

fn env_with(storage: Option<&str>, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let [c2s, tls, http, comp, https, p65] = free_ports();
    let storage = storage
        .map(|u| format!("[storage]\nurl = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[server]\ndomains = [\"example.test\"]\ndata_dir = \"{}\"\n{storage}[listen]\nc2s = [\"127.0.0.1:{c2s}\"]\nc2s_direct_tls = [\"127.0.0.1:{tls}\"]\nhttp = [\"127.0.0.1:{http}\"]\nhttps = [\"127.0.0.1:{https}\"]\ncomponent = [\"127.0.0.1:{comp}\"]\nproxy65 = [\"127.0.0.1:{p65}\"]\n{extra}",
        dir.path().join("data").display()
    );
    let cfg = dir.path().join("herald.toml");
    std::fs::write(&cfg, text).unwrap();
    Env {
        dir,
        cfg,
        c2s,
        http,
    }
}

fn herald(cfg: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An operator error: non-zero exit, exactly one line on stderr, no panic.
fn assert_one_line_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert!(!e.contains("panicked"), "panic instead of an error: {e}");
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "expected one line, got: {e}"
    );
    assert!(e.contains(needle), "expected {needle:?} in {e:?}");
}

#[test]
fn config_check_reports_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\ndomains = []\n", "[server.domains]"),
        ("[listen]\nc2s = [\"localhost\"]\n", "[listen.c2s]"),
        ("[auth]\nscram_iterations = 1\n", "[auth.scram_iterations]"),
        ("[server\n", "line 1"),
        ("[server]\nnope = true\n", "nope"),
        (
            "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            "[tls.cert]",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let o = herald(&p, &["config", "check"], None);
        assert_one_line_error(&o, needle);
        assert!(
            stderr(&o).contains(&p.display().to_string()),
            "names the file: {}",
            stderr(&o)
        );
        assert_eq!(o.status.code(), Some(2));
    }
    let o = herald(&dir.path().join("missing.toml"), &["config", "check"], None);
    assert_one_line_error(&o, "cannot read");
    let e = env_with(None, "");
    let o = herald(&e.cfg, &["config", "check"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("example.test"));
}

#[test]
fn user_commands_round_trip() {
    let e = env_with(None, "");
    let o = herald(
        &e.cfg,
        &["user", "add", "Alice@Example.test", "--password", "pw1"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = herald(
        &e.cfg,
        &["user", "add", "bob@example.test", "--password-stdin"],
        Some("pw2\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = herald(&e.cfg, &["user", "list", "example.test"], None);
    assert_eq!(stdout(&o), "alice@example.test\nbob@example.test\n");
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["user", "add", "alice@example.test", "--password", "x"],
            None,
        ),
        "already exists",
    );
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["user", "add", "carol@other.test", "--password", "x"],
            None,
        ),
        "not served",
    );
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["user", "add", "bad\u{2167}@example.test", "--password", "x"],
            None,
        ),
        "not a valid",
    );
    let o = herald(
        &e.cfg,
        &["user", "passwd", "bob@example.test", "--password-stdin"],
        Some("new\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["user", "passwd", "nobody@example.test", "--password", "x"],
            None,
        ),
        "does not exist",
    );
    let o = herald(&e.cfg, &["user", "del", "bob@example.test"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(
        &herald(&e.cfg, &["user", "del", "bob@example.test"], None),
        "does not exist",
    );
    let o = herald(&e.cfg, &["user", "list", "example.test"], None);
    assert_eq!(stdout(&o), "alice@example.test\n");
    // The database holds no clear password.
    let db = std::fs::read(e.dir.path().join("data/herald.db")).unwrap();
    assert!(
        !db.windows(3).any(|w| w == b"pw1"),
        "password stored in clear"
    );
}

#[test]
fn jid_escaping_command() {
    let e = env_with(None, "");
    let o = herald(&e.cfg, &["jid", "escape", "d'artagnan smith"], None);
    assert_eq!(stdout(&o), "d\\27artagnan\\20smith\n");
    let o = herald(&e.cfg, &["jid", "unescape", "d\\27artagnan\\20smith"], None);
    assert_eq!(stdout(&o), "d'artagnan smith\n");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_serve(cfg: &Path) -> Server {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Server(child)
}

/// Waits until the server listens on `port`. If the server exits instead, the test fails
/// with what it printed, so a failure says why rather than only that it timed out.
fn wait_port(s: &mut Server, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = s.0.try_wait().unwrap() {
            panic!(
                "server exited with {st} before listening: {}",
                server_stderr(s)
            );
        }
        assert!(
            Instant::now() < deadline,
            "server did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_stderr(s: &mut Server) -> String {
    let mut err = String::new();
    if let Some(mut e) = s.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// Starts `herald serve` on fresh ports and waits for its c2s and HTTP listeners.
/// `free_ports` releases the ports before the server binds them, so another test's
/// connection can take one in between; such a start is retried on new ports.
fn serve(storage: Option<&str>, extra: &str) -> (Env, Server) {
    for _ in 0..3 {
        let e = env_with(storage, extra);
        let mut s = spawn_serve(&e.cfg);
        let deadline = Instant::now() + Duration::from_secs(20);
        let up = |p| TcpStream::connect(("127.0.0.1", p)).is_ok();
        loop {
            if up(e.c2s) && up(e.http) {
                return (e, s);
            }
            if let Some(st) = s.0.try_wait().unwrap() {
                let err = server_stderr(&mut s);
                if err.contains("cannot listen on") {
                    break;
                }
                panic!("server exited with {st} before listening: {err}");
            }
            assert!(Instant::now() < deadline, "server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("server could not bind its ports in three tries");
}

fn wait_exit(s: &mut Server, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = s.0.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(s: &Server) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(s.0.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn port_in_use_is_one_line() {
    let e = env_with(None, "");
    let _hold = TcpListener::bind(("127.0.0.1", e.c2s)).unwrap();
    let mut s = spawn_serve(&e.cfg);
    let st = wait_exit(&mut s, Duration::from_secs(20));
    assert!(!st.success());
    let mut err = String::new();
    s.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(
        last.starts_with("herald: cannot listen on 127.0.0.1:"),
        "{err}"
    );
    assert!(last.contains("address already in use"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unreachable_database_is_one_line() {
    let e = env_with(Some("postgres://postgres@127.0.0.1:1/herald"), "");
    let mut s = spawn_serve(&e.cfg);
    let st = wait_exit(&mut s, Duration::from_secs(30));
    assert!(!st.success());
    let mut err = String::new();
    s.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("herald: storage postgres://"), "{err}");
    assert!(err.contains("connection refused"), "{err}");
}

/// Reads until `needle` shows up or the peer closes; returns everything read.
fn read_until(s: &mut TcpStream, needle: &str, limit: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if String::from_utf8_lossy(&out).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn sigterm_closes_streams_with_system_shutdown() {
    let (e, mut s) = serve(None, "");
    let mut c = TcpStream::connect(("127.0.0.1", e.c2s)).unwrap();
    c.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>").unwrap();
    let got = read_until(&mut c, "</stream:features>", Duration::from_secs(5));
    assert!(got.contains("<starttls"), "{got}");
    let t = Instant::now();
    sigterm(&s);
    let got = read_until(&mut c, "</stream:stream>", Duration::from_secs(5));
    assert!(got.contains("system-shutdown"), "{got}");
    let st = wait_exit(&mut s, Duration::from_secs(8));
    assert!(st.success(), "exit status {st:?}");
    assert!(t.elapsed() < Duration::from_secs(8));
}

fn psql(sql: &str) {
    let st = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qtAc",
            sql,
        ])
        .status()
        .expect("psql must be installed (PostgreSQL client)");
    assert!(st.success(), "psql failed: {sql}");
}

#[test]
fn postgres_backend_serves_and_manages_accounts() {
    let db = format!("herald_cli_{}", rand::random::<u32>());
    psql(&format!("CREATE DATABASE {db}"));
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
        }
    }
    let _cleanup = Drop_(db.clone());
    let (e, mut s) = serve(
        Some(&format!("postgres://postgres@127.0.0.1:5432/{db}")),
        "",
    );
    // The CLI works against the same database while the server runs.
    let o = herald(
        &e.cfg,
        &["user", "add", "pg@example.test", "--password", "pw"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = herald(&e.cfg, &["user", "list", "example.test"], None);
    assert_eq!(stdout(&o), "pg@example.test\n");
    sigterm(&s);
    assert!(wait_exit(&mut s, Duration::from_secs(8)).success());
}

/// A plain HTTP GET; returns the status code.
fn http_get_status(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"))
}

#[test]
fn files_commands_list_show_and_purge() {
    use herald_storage::{FileDownload, FileQuota, NewFileSlot};
    let e = env_with(None, "[upload]\nsecret = \"a secret for the cli test\"\n");
    // Files as the upload service leaves them (slot, content, upload, a download); the
    // XMPP and HTTP sides have their own tests in herald-server.
    let settings = herald_server::Config::load(Some(&e.cfg)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = [
        ("AliceFile0000000000000", "alice@example.test", "notes.txt"),
        // Ids made before 2026-11-24 could start with '-'; the commands still take them.
        ("-BobFile00000000000000", "bob@example.test", "photo.png"),
    ];
    let urls: Vec<String> = rt.block_on(async {
        use herald_server::ext::upload::{Upload, UrlKind};
        let store = herald_storage::open(&settings.storage_url).await.unwrap();
        let up = Upload::open(&settings).await.unwrap();
        let now = herald_server::ext::now_micros();
        let quota = FileQuota {
            daily_bytes: None,
            total_bytes: None,
            since_micros: 0,
            now_micros: now,
        };
        let mut urls = Vec::new();
        for (id, who, name) in files {
            let slot = NewFileSlot {
                id,
                uploader: who,
                file_name: name,
                size: 5,
                content_type: None,
                created_micros: now,
                put_deadline_micros: now + 60_000_000,
                expires_micros: None,
            };
            store.create_file_slot(&slot, &quota).await.unwrap();
            let mut w = up.blobs.create(id).await.unwrap();
            w.write(b"hello").await.unwrap();
            w.commit().await.unwrap();
            let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
            assert!(store
                .complete_file_upload(id, sha, now, "192.0.2.1:4000")
                .await
                .unwrap());
            let d = FileDownload {
                stamp_micros: now,
                client_addr: "192.0.2.9:5000".into(),
                downloader: None,
            };
            store.record_file_download(id, &d).await.unwrap();
            urls.push(format!("/upload/{}/{name}", up.token(UrlKind::Get, id, 0)));
        }
        urls
    });
    drop(rt);
    let blob = |id: &str| e.dir.path().join("data/uploads").join(&id[..2]).join(id);
    let (alice_id, bob_id) = (files[0].0, files[1].0);

    let mut s = spawn_serve(&e.cfg);
    wait_port(&mut s, e.c2s);
    wait_port(&mut s, e.http);
    assert_eq!(http_get_status(e.http, &urls[0]), 200);

    let o = herald(&e.cfg, &["files", "list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(alice_id) && out.contains(bob_id), "{out}");
    assert!(
        out.contains("notes.txt") && out.contains("uploaded"),
        "{out}"
    );
    let o = herald(
        &e.cfg,
        &["files", "list", "--user", "Bob@Example.test"],
        None,
    );
    let out = stdout(&o);
    assert!(out.contains(bob_id) && !out.contains(alice_id), "{out}");
    let o = herald(&e.cfg, &["files", "list", "--since", "2999-01-01"], None);
    assert_eq!(stdout(&o).trim(), "no files");
    let o = herald(&e.cfg, &["files", "list", "--limit", "1"], None);
    assert_eq!(stdout(&o).lines().count(), 2, "header and one file");

    let o = herald(&e.cfg, &["files", "show", alice_id], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "alice@example.test",
        "notes.txt",
        "2cf24dba5fb0a30e",
        "192.0.2.1:4000",
        "192.0.2.9:5000",
        "127.0.0.1:",
        "downloads:     2",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }

    let o = herald(&e.cfg, &["files", "show", bob_id], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("photo.png"), "{}", stdout(&o));

    // Purge one file while the server runs: gone from disk, its link answers 404.
    assert!(blob(alice_id).is_file());
    let o = herald(&e.cfg, &["files", "purge", alice_id], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("{alice_id}: purged"));
    assert!(!blob(alice_id).exists());
    assert_eq!(http_get_status(e.http, &urls[0]), 404);
    let o = herald(&e.cfg, &["files", "purge", alice_id], None);
    assert!(stdout(&o).contains("already purged"));
    let o = herald(&e.cfg, &["files", "show", alice_id], None);
    assert!(stdout(&o).contains("purged:"), "{}", stdout(&o));

    // By user; then by age.
    assert_eq!(http_get_status(e.http, &urls[1]), 200);
    let o = herald(
        &e.cfg,
        &["files", "purge", "--user", "bob@example.test"],
        None,
    );
    assert_eq!(stdout(&o).trim(), "purged 1 file");
    assert!(!blob(bob_id).exists());
    assert_eq!(http_get_status(e.http, &urls[1]), 404);
    let o = herald(&e.cfg, &["files", "purge", "--older-than", "0"], None);
    assert_eq!(stdout(&o).trim(), "purged 0 files");
    let o = herald(&e.cfg, &["files", "list"], None);
    assert_eq!(stdout(&o).trim(), "no files");
    let o = herald(&e.cfg, &["files", "list", "--all"], None);
    assert_eq!(stdout(&o).matches("purged").count(), 2, "{}", stdout(&o));

    // Operator errors: one line each.
    for (args, needle) in [
        (vec!["files", "show", "nope"], "no file with id"),
        (vec!["files", "purge", "nope"], "no file with id"),
        (vec!["files", "purge"], "give file ids"),
        (
            vec!["files", "list", "--since", "yesterday"],
            "expected a date",
        ),
        (
            vec!["files", "list", "--user", "x@elsewhere.test"],
            "elsewhere.test",
        ),
    ] {
        let o = herald(&e.cfg, &args, None);
        assert_one_line_error(&o, needle);
    }
    sigterm(&s);
}

#[test]
fn room_commands_create_list_show_affiliate_destroy() {
    let e = env_with(None, "");
    let room = "team@conference.example.test";
    let o = herald(
        &e.cfg,
        &[
            "room",
            "create",
            room,
            "--owner",
            "Alice@example.test",
            "--name",
            "The Team",
            "--members-only",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["room", "create", room, "--owner", "a@example.test"],
            None,
        ),
        "already exists",
    );
    assert_one_line_error(
        &herald(
            &e.cfg,
            &[
                "room",
                "create",
                "x@elsewhere.test",
                "--owner",
                "a@example.test",
            ],
            None,
        ),
        "not a chat service",
    );
    let o = herald(&e.cfg, &["room", "list", "example.test"], None);
    let out = stdout(&o);
    assert!(out.contains(room) && out.contains("The Team"), "{out}");
    assert!(
        out.contains("members-only") && out.contains("alice@example.test"),
        "{out}"
    );
    let o = herald(
        &e.cfg,
        &["room", "affiliate", room, "bob@example.test", "admin"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["room", "affiliate", room, "alice@example.test", "member"],
            None,
        ),
        "at least one owner",
    );
    assert_one_line_error(
        &herald(
            &e.cfg,
            &["room", "affiliate", room, "bob@example.test", "king"],
            None,
        ),
        "not an affiliation",
    );
    let o = herald(&e.cfg, &["room", "show", room], None);
    let out = stdout(&o);
    assert!(out.contains("members-only:  true"), "{out}");
    assert!(out.contains("owner:         alice@example.test"), "{out}");
    assert!(out.contains("admin:         bob@example.test"), "{out}");
    let o = herald(&e.cfg, &["room", "destroy", room], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_line_error(&herald(&e.cfg, &["room", "show", room], None), "no room");
    assert_eq!(
        stdout(&herald(&e.cfg, &["room", "list", "example.test"], None)),
        ""
    );
}

/// `c2s.tcp_keepalive_secs` against a peer that really vanished. Server and client share
/// a private network namespace, and the test takes its loopback down: from then on no
/// packet, FIN or RST reaches the server, as when a phone loses coverage. The server
/// must notice and end the session within the keepalive bound (1 s + 6 probes of 1 s).
/// Needs `unshare -n` and `ip` (root, as CI runs); says so and passes without them.
#[test]
fn vanished_peer_is_dropped_by_tcp_keepalive() {
    let works = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works("unshare", &["-n", "ip", "link", "set", "lo", "up"]) {
        eprintln!("skipped: no private network namespace here (unshare -n, ip)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("herald.toml");
    // The namespace is private, so fixed ports cannot collide with anything.
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomains = [\"example.test\"]\ndata_dir = \"{}\"\n[listen]\nc2s = [\"127.0.0.1:5222\"]\nc2s_direct_tls = []\nhttp = []\nhttps = []\ncomponent = []\nproxy65 = []\n[c2s]\ntcp_keepalive_secs = 1\n[log]\nlevel = \"info\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut server = Server(
        Command::new("unshare")
            .args(["-n", "--", "sh", "-c"])
            .arg(r#"ip link set lo up && exec "$0" --config "$1" serve"#)
            .arg(BIN)
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id().to_string();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let err = server.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str, limit: Duration| -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    assert!(
        wait_for("herald started", Duration::from_secs(20)).is_some(),
        "server did not start in its namespace"
    );
    // A client in the same namespace opens a stream and then says nothing.
    let header = "<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    let mut client = Command::new("nsenter")
        .args(["-t", &pid, "-n", "--", "bash", "-c"])
        .arg(r#"exec 3<>/dev/tcp/127.0.0.1/5222 && printf '%s' "$0" >&3 && exec sleep 60"#)
        .arg(header)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for("c2s connection", Duration::from_secs(10)).is_some(),
        "client did not connect"
    );
    // A silent but live peer answers the probes and stays connected.
    assert_eq!(
        wait_for("c2s connection lost", Duration::from_secs(3)),
        None,
        "a live peer was dropped"
    );
    assert!(works(
        "nsenter",
        &["-t", &pid, "-n", "--", "ip", "link", "set", "lo", "down"]
    ));
    let down = Instant::now();
    let lost = wait_for("c2s connection lost", Duration::from_secs(30));
    let _ = client.kill();
    let _ = client.wait();
    let lost = lost.expect("the vanished peer's connection was never dropped");
    assert!(lost.contains("timed out"), "{lost}");
    assert!(
        down.elapsed() < Duration::from_secs(15),
        "dropped only after {:?}",
        down.elapsed()
    );
}
