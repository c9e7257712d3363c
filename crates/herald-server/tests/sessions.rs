//! Connection lifecycle: pre-authentication timeout, login throttling, resource conflicts
//! and orderly shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Mech, TestServer, PASSWORD, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_stream_times_out() {
    let server = TestServer::with_config("[c2s]\npreauth_timeout_secs = 1\n").await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    let start = Instant::now();
    c.open_stream().await;
    let cond = c.expect_stream_error().await;
    let took = start.elapsed();
    assert_eq!(cond, "connection-timeout");
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the 1 s timeout"
    );
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");

    // An idle TLS-negotiated but unauthenticated stream times out the same way.
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    assert_eq!(c.expect_stream_error().await, "connection-timeout");

    // A bound session is not subject to the pre-auth timeout.
    let mut c = server.login("alice", "stay").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_throttle_logins_from_the_same_address() {
    let server = TestServer::with_config("[auth]\nmax_failures = 2\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    // Two failures on separate connections from 127.0.0.1.
    for _ in 0..2 {
        let mut c = Client::connect(server.c2s).await;
        c.open_stream().await;
        c.starttls().await;
        let r = c.authenticate("alice", "guess", Mech::SHA256).await;
        assert_eq!(r, Err("not-authorized".to_string()));
    }
    // Now even the right password is refused for a while, for any account from this IP.
    for (user, mech) in [("alice", Mech::SHA256), ("bob", Mech::Plain)] {
        let mut c = Client::connect(server.c2s).await;
        c.open_stream().await;
        c.starttls().await;
        let r = c.authenticate(user, PASSWORD, mech).await;
        assert_eq!(
            r,
            Err("temporary-auth-failure".to_string()),
            "{user} with {}",
            mech.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_attempts_on_one_stream_close_it() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    for _ in 0..3 {
        let r = c.authenticate("alice", "guess", Mech::SHA1).await;
        assert_eq!(r, Err("not-authorized".to_string()));
    }
    assert_eq!(c.expect_stream_error().await, "policy-violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_resource_replaces_the_old_session() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut first = server.login("alice", "phone").await;
    first.ping_server().await;
    let mut second = server.login("alice", "phone").await;
    assert_eq!(second.jid, "alice@example.test/phone");
    assert_eq!(first.expect_stream_error().await, "conflict");
    second.ping_server().await;
    // The new session gets what is addressed to the full JID.
    let mut bob_server_user = {
        server.add_user("bob").await;
        server.login("bob", "b").await
    };
    bob_server_user
        .send(
            "<message type='chat' to='alice@example.test/phone' id='m1'><body>hi</body></message>",
        )
        .await;
    let m = second
        .expect_match("message", |e| e.name == "message")
        .await;
    assert_eq!(m.attr("id"), Some("m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_system_shutdown_and_completes() {
    let mut server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    a.ping_server().await;
    // One client still negotiating, too.
    let mut pre = Client::connect(server.c2s).await;
    pre.open_stream().await;

    let running = server.running.take().expect("running");
    server.shutdown.send(true).expect("signal shutdown");
    assert_eq!(a.expect_stream_error().await, "system-shutdown");
    assert_eq!(pre.expect_stream_error().await, "system-shutdown");
    tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("Running::wait() did not complete within 5 s of the shutdown signal");
    // Listeners are gone: new connections are refused.
    assert!(
        tokio::net::TcpStream::connect(server.c2s).await.is_err(),
        "c2s listener still accepts after shutdown"
    );
}

/// The server side of the loopback connection `server` ⇄ `client`, as the kernel lists it
/// in /proc/net/tcp (what `ss -o` shows): its timer kind (2 = keepalive) and seconds left.
fn server_socket_timer(server: std::net::SocketAddr, client: std::net::SocketAddr) -> (u8, f64) {
    let hex = |a: std::net::SocketAddr| {
        let std::net::IpAddr::V4(ip) = a.ip() else {
            panic!("IPv4 loopback expected, got {a}");
        };
        format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), a.port())
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[1] == local && f[2] == remote {
            let (kind, when) = f[5].split_once(':').unwrap();
            // The address is the network-order word printed as a native integer; the time is
            // in clock ticks of USER_HZ, which is 100 on Linux.
            let left = u64::from_str_radix(when, 16).unwrap() as f64 / 100.0;
            return (kind.parse().unwrap(), left);
        }
    }
    panic!("no server socket {server} ⇄ {client} in /proc/net/tcp");
}

/// `c2s.tcp_keepalive_secs`: every accepted connection (client, direct TLS, web) is
/// probed by the kernel once silent that long, so a peer that vanished without closing is
/// dropped instead of staying online for its contacts; 0 leaves the kernel's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_probed_for_dead_peers() {
    for (config, armed) in [
        ("", Some(300.0)),
        ("[c2s]\ntcp_keepalive_secs = 25\n", Some(25.0)),
        ("[c2s]\ntcp_keepalive_secs = 0\n", None),
    ] {
        let server = TestServer::with_config(config).await;
        for addr in [server.c2s, server.direct_tls, server.http] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let client = tcp.local_addr().unwrap();
            // The accept loop sets the option right after accept; give it that moment
            // (and, where no timer is expected, long enough that one would have shown).
            let deadline = Instant::now() + WAIT;
            if armed.is_none() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let (kind, left) = loop {
                let t = server_socket_timer(addr, client);
                if t.0 != 0 || armed.is_none() {
                    break t;
                }
                assert!(Instant::now() < deadline, "{config:?} {addr}: no timer");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            match armed {
                Some(secs) => {
                    assert_eq!(kind, 2, "{config:?} {addr}: keepalive timer expected");
                    assert!(
                        left <= secs && left > secs - 10.0,
                        "{config:?} {addr}: first probe in {left} s, expected ~{secs} s"
                    );
                }
                None => assert_eq!(kind, 0, "{config:?} {addr}: no timer expected"),
            }
        }
    }
}
