//! The per-connection inbound byte-rate limit slows a fast sender down without dropping it.

mod common;

use std::time::Duration;

use common::{TestServer, DOMAIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_bytes_are_throttled_not_dropped() {
    let server = TestServer::with_config(
        "[c2s]\nmax_bytes_per_sec = 20000\nburst_bytes = 20000\nmax_stanza_bytes = 10000\n",
    )
    .await;
    server.add_user("alice").await;
    let mut c = server.login("alice", "fast").await;

    let mut data = Vec::new();
    let mut n = 0usize;
    while data.len() < 100_000 {
        data.extend_from_slice(
            format!("<iq type='get' id='p{n}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
                .as_bytes(),
        );
        n += 1;
    }
    let total = data.len();
    let last = format!("p{}", n - 1);
    let (replies, took) = c
        .send_while_reading(data, Duration::from_secs(20), |e| {
            e.attr("id") == Some(last.as_str())
        })
        .await;
    assert_eq!(replies.len(), n, "one reply per ping");
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            r.attr("id"),
            Some(format!("p{i}").as_str()),
            "replies in order"
        );
        assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    }
    // (total - burst) / rate = about 4 s; allow for the burst refilled during login.
    assert!(
        took >= Duration::from_secs(3),
        "{total} bytes at 20000 B/s with a 20000 B burst were all answered after only {took:?}"
    );
    // Still connected and answering.
    c.ping_server().await;
}
