//! Stanza routing as clients see it: IQ error replies, message delivery rules and offline
//! storage (XEP-0160 with XEP-0203 delay stamps).

mod common;

use std::time::Duration;

use common::{stanza_error, TestServer, DOMAIN};
use herald_core::ns;
use herald_xml::Element;

fn body(e: &Element) -> Option<String> {
    e.child("body", ns::CLIENT).map(|b| b.text())
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
    let mut b = server.login("bob", "b").await;
    b.send("<presence/>").await;
    b.ping_server().await;
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
    let mut b2 = server.login("bob", "b2").await;
    b2.send("<presence/>").await;
    b2.expect_no_match("re-delivered message", Duration::from_millis(500), |e| {
        e.name == "message"
    })
    .await;
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
    let mut one = server.login("alice", "one").await;
    one.send("<presence/>").await;
    one.ping_server().await;
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
    let mut b = server.login("bob", "b").await;
    b.send("<presence/>").await;
    b.ping_server().await;
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
