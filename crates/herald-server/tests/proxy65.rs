//! XEP-0065 SOCKS5 bytestream proxy: discovery, the streamhost query, SOCKS5 connections
//! from two raw clients, activation (and who may activate), relaying, timeouts and the
//! bandwidth limit.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use herald_core::ns;
use herald_server::ext::proxy65::dst_addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROXY: &str = "proxy.example.test";
const NS_BS: &str = "http://jabber.org/protocol/bytestreams";

fn proxy_addr(server: &TestServer) -> SocketAddr {
    server.running.as_ref().expect("running").bound.proxy65[0]
}

/// SOCKS5 greeting and CONNECT to `hash`; returns the socket and the reply code.
async fn socks_connect(addr: SocketAddr, hash: &str) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(addr).await.expect("connect proxy");
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0], "no-auth method chosen");
    let mut req = vec![5, 1, 0, 3, hash.len() as u8];
    req.extend_from_slice(hash.as_bytes());
    req.extend_from_slice(&[0, 0]);
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 5];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("socks reply in time")
        .unwrap();
    assert_eq!(head[0], 5);
    let mut rest = vec![0u8; usize::from(head[4]) + 2];
    s.read_exact(&mut rest).await.unwrap();
    if head[1] == 0 {
        assert_eq!(
            &rest[..rest.len() - 2],
            hash.as_bytes(),
            "BND.ADDR is the hash"
        );
    }
    (s, head[1])
}

async fn activate(c: &mut Client, sid: &str, target: &str) -> herald_xml::Element {
    c.iq(
        "set",
        Some(PROXY),
        &format!("<query xmlns='{NS_BS}' sid='{sid}'><activate>{target}</activate></query>"),
    )
    .await
}

/// Reads exactly `n` bytes or panics after `t`.
async fn read_n(s: &mut TcpStream, n: usize, t: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(t, s.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("read");
    buf
}

/// Nothing arrives within `t` (and the connection is still open).
async fn assert_quiet(s: &mut TcpStream, t: Duration) {
    let mut b = [0u8; 1];
    match tokio::time::timeout(t, s.read(&mut b)).await {
        Err(_) => {}
        Ok(r) => panic!("expected nothing, read {r:?}"),
    }
}

#[tokio::test]
async fn discovery_and_streamhost() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let items = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
        )
        .await;
    assert!(items.to_xml().contains(PROXY), "{}", items.to_xml());
    let info = a
        .iq(
            "get",
            Some(PROXY),
            &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
        )
        .await;
    let q = info.child("query", ns::DISCO_INFO).expect("info");
    let id = q.child("identity", ns::DISCO_INFO).unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("proxy"), Some("bytestreams"))
    );
    assert!(q.elements().any(|f| f.attr("var") == Some(NS_BS)));

    let r = a
        .iq("get", Some(PROXY), &format!("<query xmlns='{NS_BS}'/>"))
        .await;
    let sh = r
        .child("query", NS_BS)
        .and_then(|q| q.child("streamhost", NS_BS))
        .unwrap_or_else(|| panic!("streamhost: {}", r.to_xml()));
    let addr = proxy_addr(&server);
    assert_eq!(sh.attr("jid"), Some(PROXY));
    assert_eq!(sh.attr("host"), Some("127.0.0.1"));
    assert_eq!(sh.attr("port"), Some(addr.port().to_string().as_str()));

    // Announced host and port can be set (behind NAT or port forwarding).
    let server =
        TestServer::with_config("[proxy65]\nhost = \"files.example.test\"\nport = 7000\n").await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let r = a
        .iq("get", Some(PROXY), &format!("<query xmlns='{NS_BS}'/>"))
        .await;
    let sh = r
        .child("query", NS_BS)
        .unwrap()
        .child("streamhost", NS_BS)
        .unwrap();
    assert_eq!(sh.attr("host"), Some("files.example.test"));
    assert_eq!(sh.attr("port"), Some("7000"));
}

#[tokio::test]
async fn two_clients_transfer_a_file_after_activation() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    server.add_user("mallory").await;
    let mut a = server.login("alice", "laptop").await;
    let mut m = server.login("mallory", "x").await;
    let (requester, target) = ("alice@example.test/laptop", "bob@example.test/phone");
    let sid = "s5b-sid-1";
    let hash = dst_addr(sid, requester, target);
    let addr = proxy_addr(&server);

    // The Target connects first, then the Requester.
    let (mut t, code) = socks_connect(addr, &hash).await;
    assert_eq!(code, 0);
    // Activation with only one party connected is not allowed.
    let r = activate(&mut a, sid, target).await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1),
        Some("not-allowed".into()),
        "{}",
        r.to_xml()
    );
    let (mut i, code) = socks_connect(addr, &hash).await;
    assert_eq!(code, 0);
    // A third connection with the same hash is refused.
    let (_third, code) = socks_connect(addr, &hash.to_uppercase()).await;
    assert_eq!(code, 2, "only one Target per bytestream");

    // Nothing passes before activation (and what was sent then is dropped).
    i.write_all(b"early bytes").await.unwrap();
    assert_quiet(&mut t, Duration::from_millis(300)).await;

    // Only the Requester whose JID is in the hash may activate.
    let r = activate(&mut m, sid, target).await;
    assert_eq!(stanza_error(&r).map(|e| e.1), Some("item-not-found".into()));
    let r = activate(&mut a, sid, "carol@example.test/x").await;
    assert_eq!(stanza_error(&r).map(|e| e.1), Some("item-not-found".into()));
    let r = activate(&mut a, "other-sid", target).await;
    assert_eq!(stanza_error(&r).map(|e| e.1), Some("item-not-found".into()));
    assert_quiet(&mut t, Duration::from_millis(100)).await;

    let r = activate(&mut a, sid, target).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());

    // A file one way, an answer the other.
    let file: Vec<u8> = (0..1_000_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let writer = {
        let file = file.clone();
        tokio::spawn(async move {
            i.write_all(&file).await.unwrap();
            let ack = read_n(&mut i, 3, WAIT).await;
            assert_eq!(ack, b"ack");
            i.shutdown().await.unwrap();
            i
        })
    };
    let got = read_n(&mut t, file.len(), Duration::from_secs(10)).await;
    assert!(got == file, "relayed bytes differ");
    t.write_all(b"ack").await.unwrap();
    let _i = writer.await.unwrap();
    // The Requester's close reaches the Target.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, t.read_to_end(&mut rest))
        .await
        .expect("close relayed")
        .unwrap();
    assert!(
        rest.is_empty(),
        "no early bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );

    // Activating again: the pair is gone.
    let r = activate(&mut a, sid, target).await;
    assert_eq!(stanza_error(&r).map(|e| e.1), Some("item-not-found".into()));
}

#[tokio::test]
async fn unactivated_connections_time_out() {
    let server = TestServer::with_config("[proxy65]\nactivation_timeout_secs = 1\n").await;
    let addr = proxy_addr(&server);
    let hash = dst_addr("sid", "a@example.test/x", "b@example.test/y");
    let (mut t, code) = socks_connect(addr, &hash).await;
    assert_eq!(code, 0);
    let (mut i, _) = socks_connect(addr, &hash).await;
    i.write_all(b"never relayed").await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf))
        .await
        .expect("closed by the proxy")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing relayed");
    assert!(start.elapsed() < Duration::from_secs(3));
    let srv = &server.running.as_ref().unwrap().server;
    assert_eq!(srv.proxy65.pending_count(), 0);
}

#[tokio::test]
async fn bad_socks_requests_are_refused() {
    let server = TestServer::start().await;
    let addr = proxy_addr(&server);
    // No acceptable authentication method.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    assert_eq!(read_n(&mut s, 2, WAIT).await, [5, 0xff]);
    // Requests other than CONNECT to a domain name holding a hash.
    for (req, code) in [
        (vec![5, 2, 0, 3, 1, b'a', 0, 0], 7u8),
        (vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 80], 8),
        (vec![5, 1, 0, 3, 3, b'a', b'b', b'c', 0, 0], 2),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        assert_eq!(read_n(&mut s, 2, WAIT).await, [5, 0]);
        s.write_all(&req).await.unwrap();
        let r = read_n(&mut s, 2, WAIT).await;
        assert_eq!(r, [5, code], "{req:?}");
    }
    // Not SOCKS5 at all: closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
}

#[tokio::test]
async fn transfers_are_paced() {
    let server = TestServer::with_config("[proxy65]\nmax_bytes_per_sec = 200000\n").await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let (requester, target) = ("alice@example.test/r", "bob@example.test/r");
    let hash = dst_addr("paced", requester, target);
    let addr = proxy_addr(&server);
    let (mut t, _) = socks_connect(addr, &hash).await;
    let (mut i, _) = socks_connect(addr, &hash).await;
    let r = activate(&mut a, "paced", target).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    let data = vec![7u8; 400_000];
    let start = Instant::now();
    tokio::spawn(async move {
        i.write_all(&data).await.unwrap();
        i
    });
    let got = read_n(&mut t, 400_000, Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert_eq!(got.len(), 400_000);
    // 400 kB at 200 kB/s: about two seconds (the first chunk goes at once).
    assert!(took >= Duration::from_millis(1700), "took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
}
