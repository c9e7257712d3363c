//! Stanza routing as clients see it: IQ error replies, message delivery rules and offline
//! storage (XEP-0160 with XEP-0203 delay stamps).

mod common;

use std::time::Duration;

use common::{stanza_error, Client, TestServer, DOMAIN};
use herald_core::ns;
use herald_xml::Element;

fn body(e: &Element) -> Option<String> {
    e.child("body", ns::CLIENT).map(|b| b.text())
}

/// A session of `user` that has sent initial presence, with the server done processing it.
async fn available(server: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = server.login(user, resource).await;
    c.send("<presence/>").await;
    c.ping_server().await;
    c
}

/// A new session of `user` that sends initial presence gets no stored message.
async fn expect_no_offline_left(server: &TestServer, user: &str) {
    let mut c = server.login(user, "again").await;
    c.send("<presence/>").await;
    c.expect_no_match("re-delivered message", Duration::from_millis(500), |e| {
        e.name == "message"
    })
    .await;
}

fn is_chat(e: &Element) -> bool {
    e.name == "message" && e.attr("type") != Some("error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iq_error_replies() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;

    // A nonexistent account's bare JID.
    let r = a
        .iq(
            "get",
            Some("nobody@example.test"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|(_, c)| c).as_deref(),
        Some("service-unavailable"),
        "{}",
        r.to_xml()
    );
    assert_eq!(
        r.attr("from"),
        Some("nobody@example.test"),
        "{}",
        r.to_xml()
    );

    // An unknown namespace to the server.
    let r = a
        .iq("get", Some(DOMAIN), "<query xmlns='urn:example:unknown'/>")
        .await;
    assert_eq!(
        stanza_error(&r),
        Some(("cancel".into(), "service-unavailable".into())),
        "{}",
        r.to_xml()
    );

    // Two payload children.
    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            "<ping xmlns='urn:xmpp:ping'/><query xmlns='jabber:iq:version'/>",
        )
        .await;
    assert_eq!(
        stanza_error(&r),
        Some(("modify".into(), "bad-request".into())),
        "{}",
        r.to_xml()
    );

    // No payload at all.
    let r = a.iq("get", Some(DOMAIN), "").await;
    assert_eq!(
        stanza_error(&r).map(|(_, c)| c).as_deref(),
        Some("bad-request"),
        "{}",
        r.to_xml()
    );

    // A full JID with no session.
    let r = a
        .iq(
            "get",
            Some("alice@example.test/gone"),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|(_, c)| c).as_deref(),
        Some("service-unavailable"),
        "{}",
        r.to_xml()
    );
    a.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_remote_domain_is_remote_server_not_found() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    a.send("<message type='chat' id='r1' to='carol@remote.example'><body>hi</body></message>")
        .await;
    let e = a
        .expect_match("error reply", |e| e.attr("id") == Some("r1"))
        .await;
    assert_eq!(e.name, "message");
    assert_eq!(
        stanza_error(&e).map(|(_, c)| c).as_deref(),
        Some("remote-server-not-found"),
        "{}",
        e.to_xml()
    );
    assert_eq!(e.attr("from"), Some("carol@remote.example"));
    assert_eq!(e.attr("to"), Some("alice@example.test/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_to_nonexistent_user_is_service_unavailable() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    a.send("<message type='chat' id='n1' to='nobody@example.test'><body>hi</body></message>")
        .await;
    let e = a
        .expect_match("error reply", |e| e.attr("id") == Some("n1"))
        .await;
    assert_eq!(
        stanza_error(&e).map(|(_, c)| c).as_deref(),
        Some("service-unavailable"),
        "{}",
        e.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_delivery_to_bare_jid() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    let mut b = available(&server, "bob", "b").await;
    a.send("<message type='chat' id='o1' to='bob@example.test'><body>hello</body></message>")
        .await;
    let m = b.expect_match("message", is_chat).await;
    assert_eq!(body(&m).as_deref(), Some("hello"));
    assert_eq!(m.attr("from"), Some("alice@example.test/a"));
    assert!(
        m.child("delay", ns::DELAY).is_none(),
        "online delivery carries no delay: {}",
        m.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_are_delivered_in_order_with_delay() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    let before = time::OffsetDateTime::now_utc();
    for i in 1..=5 {
        a.send(&format!(
            "<message type='chat' id='m{i}' to='bob@example.test'><body>offline {i}</body></message>"
        ))
        .await;
    }
    // The session handles stanzas in order: once the ping is answered all five are stored.
    a.ping_server().await;
    a.expect_no_match("error reply", Duration::from_millis(200), |e| {
        e.attr("type") == Some("error")
    })
    .await;

    let mut b = server.login("bob", "b").await;
    b.expect_no_match("message before presence", Duration::from_millis(300), |e| {
        e.name == "message"
    })
    .await;
    b.send("<presence/>").await;
    for i in 1..=5 {
        let m = b.expect_match("offline message", is_chat).await;
        assert_eq!(
            body(&m),
            Some(format!("offline {i}")),
            "message {i} out of order: {}",
            m.to_xml()
        );
        assert_eq!(m.attr("from"), Some("alice@example.test/a"));
        let delay = m
            .child("delay", ns::DELAY)
            .unwrap_or_else(|| panic!("no XEP-0203 delay: {}", m.to_xml()));
        assert_eq!(delay.attr("from"), Some(DOMAIN), "{}", m.to_xml());
        let stamp = delay.attr("stamp").expect("delay stamp");
        let t = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("stamp {stamp:?} is not a XEP-0082 datetime: {e}"));
        assert!(stamp.ends_with('Z'), "stamp {stamp} is not UTC");
        assert!(
            t >= before - time::Duration::seconds(1)
                && t <= time::OffsetDateTime::now_utc() + time::Duration::seconds(1),
            "stamp {stamp} is not when the message arrived"
        );
    }
    b.expect_no_match("extra message", Duration::from_millis(300), |e| {
        e.name == "message"
    })
    .await;

    // Delivered messages were removed: a new session gets none.
    b.close().await;
    expect_no_offline_left(&server, "bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_priority_resource_gets_no_bare_jid_messages() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    let mut neg = server.login("bob", "neg").await;
    neg.send("<presence><priority>-1</priority></presence>")
        .await;
    neg.ping_server().await;

    a.send("<message type='chat' id='p1' to='bob@example.test'><body>to bare</body></message>")
        .await;
    a.ping_server().await;
    neg.expect_no_match("bare-JID message", Duration::from_millis(500), |e| {
        e.name == "message"
    })
    .await;
    // Addressed to its full JID, it does get the message.
    a.send("<message type='chat' id='p2' to='bob@example.test/neg'><body>to full</body></message>")
        .await;
    let m = neg.expect_match("full-JID message", is_chat).await;
    assert_eq!(body(&m).as_deref(), Some("to full"));

    // The bare-JID message waited offline for a non-negative resource.
    let mut pos = server.login("bob", "pos").await;
    pos.send("<presence><priority>1</priority></presence>")
        .await;
    let m = pos.expect_match("offline message", is_chat).await;
    assert_eq!(body(&m).as_deref(), Some("to bare"));
    assert!(m.child("delay", ns::DELAY).is_some(), "{}", m.to_xml());
    neg.expect_no_match("bare-JID message", Duration::from_millis(300), |e| {
        e.name == "message"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_quota_reports_an_error_to_the_sender() {
    let server = TestServer::with_config("[offline]\nmax_messages = 2\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    for i in 1..=3 {
        a.send(&format!(
            "<message type='chat' id='q{i}' to='bob@example.test'><body>q {i}</body></message>"
        ))
        .await;
    }
    let e = a
        .expect_match("quota error", |e| e.attr("type") == Some("error"))
        .await;
    assert_eq!(
        e.attr("id"),
        Some("q3"),
        "only the third fails: {}",
        e.to_xml()
    );
    let (kind, cond) = stanza_error(&e).expect("stanza error");
    assert_eq!(cond, "service-unavailable", "{}", e.to_xml());
    assert_eq!(kind, "wait", "{}", e.to_xml());
    assert!(
        e.child("delay", ns::DELAY).is_none(),
        "the bounce carries the server's offline delay stamp: {}",
        e.to_xml()
    );
    a.ping_server().await;
    a.expect_no_match("second error", Duration::from_millis(200), |e| {
        e.attr("type") == Some("error")
    })
    .await;

    let mut b = server.login("bob", "b").await;
    b.send("<presence/>").await;
    for i in 1..=2 {
        let m = b.expect_match("offline message", is_chat).await;
        assert_eq!(body(&m), Some(format!("q {i}")));
    }
    b.expect_no_match("third message", Duration::from_millis(300), |e| {
        e.name == "message"
    })
    .await;
}

/// RFC 6121 §4.2.2: initial presence is broadcast "to all of the user's available
/// resources, including the resource that generated the presence notification".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_presence_is_reflected_to_its_sender() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    a.send("<presence><status>here</status></presence>").await;
    let p = a
        .expect_match("own presence", |e| e.name == "presence")
        .await;
    assert_eq!(
        p.attr("from"),
        Some("alice@example.test/a"),
        "{}",
        p.to_xml()
    );
    assert_eq!(p.attr("type"), None, "{}", p.to_xml());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_between_own_resources() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut one = available(&server, "alice", "one").await;
    let mut two = server.login("alice", "two").await;
    two.send("<presence/>").await;
    let p = one
        .expect_match("presence of two", |e| {
            e.name == "presence" && e.attr("from") == Some("alice@example.test/two")
        })
        .await;
    assert_eq!(p.attr("type"), None);
    two.expect_match("presence of one", |e| {
        e.name == "presence" && e.attr("from") == Some("alice@example.test/one")
    })
    .await;
    two.close().await;
    let p = one
        .expect_match("unavailable of two", |e| {
            e.name == "presence" && e.attr("from") == Some("alice@example.test/two")
        })
        .await;
    assert_eq!(p.attr("type"), Some("unavailable"), "{}", p.to_xml());
}

/// A burst much larger than the session's write batch (64 stanzas) reaches the recipient
/// whole and in order, also when it piles up in the recipient's outbox because the
/// recipient reads slowly: the batching loop once took a stanza out of the outbox without
/// writing it, losing one stanza of every full batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_messages_arrives_whole_and_in_order() {
    let server = TestServer::with_config(
        "[c2s]\nmax_bytes_per_sec = 1073741824\nburst_bytes = 1073741824\n",
    )
    .await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    let mut b = available(&server, "bob", "b").await;
    // 200 messages of 40 kB: far more than bob's socket buffers hold while bob does not
    // read, so they wait in bob's outbox and leave it in full batches.
    let pad = "x".repeat(40_000);
    let burst: String = (0..200)
        .map(|i| {
            format!(
                "<message type='chat' id='burst{i}' to='bob@example.test/b'><body>{i} {pad}</body></message>"
            )
        })
        .collect();
    a.send(&burst).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..200 {
        let m = b.expect_match("message", is_chat).await;
        let text = body(&m).unwrap_or_default();
        assert_eq!(
            text.split(' ').next(),
            Some(i.to_string().as_str()),
            "message {i} of the burst (id {:?})",
            m.attr("id")
        );
    }
    b.expect_no_match("message", Duration::from_millis(300), is_chat)
        .await;
}

/// A client that stops reading is disconnected once its outbox has stayed full for
/// `outbox_timeout_secs`, although its session task is stuck writing to a socket nobody
/// reads; senders are not held up by it after that, and what was still queued for it goes
/// to offline storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let server = TestServer::with_config(
        "[c2s]\nmax_bytes_per_sec = 1073741824\nburst_bytes = 1073741824\n\
         outbox_capacity = 8\noutbox_timeout_secs = 1\n",
    )
    .await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    let mut b = available(&server, "bob", "b").await;
    // bob stops reading. 400 messages of 40 kB (16 MB) fill the loopback socket buffers,
    // then bob's outbox. Each wait on a full outbox lasts up to 1 s: had bob stayed
    // connected, routing the rest would take minutes.
    let pad = "x".repeat(40_000);
    let started = std::time::Instant::now();
    for round in 0..8 {
        let burst: String = (0..50)
            .map(|i| {
                format!(
                    "<message type='chat' id='s{round}-{i}' to='bob@example.test/b'><body>{round}-{i} {pad}</body></message>"
                )
            })
            .collect();
        a.send(&burst).await;
    }
    // alice's ping is answered after her messages were routed.
    tokio::time::timeout(Duration::from_secs(30), a.ping_server())
        .await
        .expect("alice's stanzas are still held up by bob");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "routing took {:?}",
        started.elapsed()
    );
    // bob's session is gone: an IQ to his full JID bounces.
    let r = a
        .iq(
            "get",
            Some("bob@example.test/b"),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", r.to_xml());
    assert_eq!(
        stanza_error(&r).map(|(_, cond)| cond).as_deref(),
        Some("service-unavailable")
    );
    // bob's old connection ends once he reads what the kernel still held for him.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match b.next_event().await {
                common::Event::Eof => break,
                common::Event::Stanza(e) if e.is("error", ns::STREAM) => {
                    let cond = e.elements().next().map(|c| c.name.to_string());
                    assert_eq!(cond.as_deref(), Some("policy-violation"), "{}", e.to_xml());
                }
                _ => {}
            }
        }
    })
    .await
    .expect("bob's old connection still open");
    // What had not reached bob waits for him offline.
    let mut b2 = server.login("bob", "b2").await;
    b2.send("<presence/>").await;
    let m = b2.expect_match("offline message", is_chat).await;
    assert!(
        m.child("delay", "urn:xmpp:delay").is_some(),
        "not from offline storage: {}",
        m.to_xml().chars().take(200).collect::<String>()
    );
}

/// More offline messages than a session's outbox holds: every one arrives, in order, once,
/// and none comes again at the next login. (Delivery runs in the session's own task; it
/// once queued them on its own full outbox, waited on itself, and left the rest stored
/// while the first ones were already delivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_offline_messages_than_the_outbox_holds() {
    let server =
        TestServer::with_config("[c2s]\noutbox_capacity = 8\noutbox_timeout_secs = 1\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;
    for i in 1..=60 {
        a.send(&format!(
            "<message type='chat' id='m{i}' to='bob@example.test'><body>offline {i}</body></message>"
        ))
        .await;
    }
    a.ping_server().await;
    let mut b = server.login("bob", "b").await;
    b.send("<presence/>").await;
    for i in 1..=60 {
        let m = b.expect_match("offline message", is_chat).await;
        assert_eq!(body(&m), Some(format!("offline {i}")), "{}", m.to_xml());
    }
    b.ping_server().await;
    b.expect_no_match("extra message", Duration::from_millis(300), |e| {
        e.name == "message"
    })
    .await;
    b.close().await;
    expect_no_offline_left(&server, "bob").await;
}

/// Outboxes of 4 stanzas and a short outbox timeout, no byte-rate limit: a burst fills
/// an outbox at once, and a session left waiting on one is cut off within seconds.
const TINY_OUTBOX: &str = "[c2s]\nmax_bytes_per_sec = 1073741824\nburst_bytes = 1073741824\n\
                           outbox_capacity = 4\noutbox_timeout_secs = 2\n";

/// Busy sessions writing to each other through small outboxes: each session's task waits
/// for room in another's outbox while that one waits for room in its own. All three
/// clients read everything, so nobody may be cut off as "too slow" and nothing may be lost
/// or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_flooding_each_other_all_get_through() {
    let server = TestServer::with_config(TINY_OUTBOX).await;
    const USERS: [&str; 3] = ["alice", "bob", "carol"];
    const PER_PEER: usize = 300;
    let mut clients = Vec::new();
    for u in USERS {
        server.add_user(u).await;
        clients.push(available(&server, u, "r").await);
    }
    let pad = "y".repeat(200);
    let runs = clients.iter_mut().enumerate().map(|(me, c)| {
        let mut burst = String::new();
        for i in 0..PER_PEER {
            for (_, name) in USERS.iter().enumerate().filter(|&(p, _)| p != me) {
                burst.push_str(&format!(
                    "<message type='chat' to='{name}@example.test/r'><body>{me} {i} {pad}</body></message>"
                ));
            }
        }
        let mut seen = 0;
        c.send_while_reading(burst.into_bytes(), Duration::from_secs(60), move |e| {
            if is_chat(e) {
                seen += 1;
            }
            seen == 2 * PER_PEER
        })
    });
    let results = futures_util::future::join_all(runs).await;
    for (me, (got, _)) in results.iter().enumerate() {
        let mut next = [0usize; 3];
        for m in got.iter().filter(|e| is_chat(e)) {
            let text = body(m).unwrap_or_default();
            let mut parts = text.split(' ');
            let from: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(
                i, next[from],
                "{} got {from}'s messages out of order",
                USERS[me]
            );
            next[from] += 1;
        }
        for from in (0..3).filter(|f| *f != me) {
            assert_eq!(
                next[from], PER_PEER,
                "{} missed messages from {}",
                USERS[me], USERS[from]
            );
        }
    }
}

/// A client messaging its own full JID in a burst: its session routes each message into
/// its own outbox. With a small outbox it must not wait on itself (and be cut off as too
/// slow to read); every message comes back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_ones_own_resource_comes_back_whole() {
    let server = TestServer::with_config(TINY_OUTBOX).await;
    server.add_user("alice").await;
    let mut a = available(&server, "alice", "r").await;
    const N: usize = 300;
    let burst: String = (0..N)
        .map(|i| {
            format!("<message type='chat' to='alice@example.test/r'><body>{i}</body></message>")
        })
        .collect();
    let mut seen = 0;
    let (got, _) = a
        .send_while_reading(burst.into_bytes(), Duration::from_secs(30), move |e| {
            if is_chat(e) {
                seen += 1;
            }
            seen == N
        })
        .await;
    let bodies: Vec<String> = got
        .iter()
        .filter(|e| is_chat(e))
        .map(|m| body(m).unwrap_or_default())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(bodies, expected);
}
