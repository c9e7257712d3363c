//! XEP-0280 Message Carbons: every enabled resource of a user sees the conversation its
//! other resources have, and only 1:1 chat traffic is copied.

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use herald_core::ns;
use herald_xml::Element;

fn forwarded_body(e: &Element, kind: &str) -> Option<String> {
    e.child(kind, ns::CARBONS)?
        .child("forwarded", ns::FORWARD)?
        .child("message", ns::CLIENT)?
        .child("body", ns::CLIENT)
        .map(|b| b.text())
}

async fn enable_carbons(c: &mut Client) {
    let r = c
        .iq("set", None, "<enable xmlns='urn:xmpp:carbons:2'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_and_received_copies_reach_other_enabled_resources() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut phone = server.login("alice", "phone").await;
    let mut desk = server.login("alice", "desk").await;
    let mut old = server.login("alice", "old").await; // never enables carbons
    for c in [&mut phone, &mut desk, &mut old] {
        c.send("<presence/>").await;
    }
    enable_carbons(&mut phone).await;
    enable_carbons(&mut desk).await;
    let mut bob = server.login("bob", "pc").await;
    bob.send("<presence/>").await;

    // Alice's phone writes to Bob: her desk gets a "sent" copy, the old client none.
    phone
        .send(
            "<message to='bob@example.test' type='chat' id='m1'><body>from phone</body></message>",
        )
        .await;
    let copy = desk
        .expect_match("sent carbon", |e| forwarded_body(e, "sent").is_some())
        .await;
    assert_eq!(forwarded_body(&copy, "sent").as_deref(), Some("from phone"));
    assert_eq!(
        copy.attr("from"),
        Some("alice@example.test"),
        "{}",
        copy.to_xml()
    );
    let inner = copy
        .child("sent", ns::CARBONS)
        .and_then(|s| s.child("forwarded", ns::FORWARD))
        .and_then(|f| f.child("message", ns::CLIENT))
        .unwrap();
    assert_eq!(inner.attr("from"), Some("alice@example.test/phone"));
    assert_eq!(inner.attr("to"), Some("bob@example.test"));
    bob.expect_match("the message", |e| e.child("body", ns::CLIENT).is_some())
        .await;
    phone.ping_server().await;
    phone
        .expect_no_match(
            "a copy of its own message",
            Duration::from_millis(200),
            |e| forwarded_body(e, "sent").is_some(),
        )
        .await;
    old.expect_no_match("a carbon", Duration::from_millis(200), |e| {
        e.child("sent", ns::CARBONS).is_some()
    })
    .await;

    // Bob writes to alice's desk (full JID): the phone gets a "received" copy.
    bob.send("<message to='alice@example.test/desk' type='chat'><body>to desk</body></message>")
        .await;
    desk.expect_match("direct", |e| {
        e.child("body", ns::CLIENT).map(|b| b.text()).as_deref() == Some("to desk")
    })
    .await;
    let rc = phone
        .expect_match("received carbon", |e| {
            forwarded_body(e, "received").is_some()
        })
        .await;
    assert_eq!(forwarded_body(&rc, "received").as_deref(), Some("to desk"));

    // Private messages and groupchat are not copied.
    phone
        .send("<message to='bob@example.test' type='chat'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    bob.expect_match("private message delivered", |e| {
        e.child("body", ns::CLIENT).map(|b| b.text()).as_deref() == Some("secret")
    })
    .await;
    desk.expect_no_match("a private carbon", Duration::from_millis(300), |e| {
        forwarded_body(e, "sent").as_deref() == Some("secret")
    })
    .await;

    // Disabled: no more copies.
    let r = desk
        .iq("set", None, "<disable xmlns='urn:xmpp:carbons:2'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    phone
        .send("<message to='bob@example.test' type='chat'><body>after disable</body></message>")
        .await;
    bob.expect_match("delivered", |e| {
        e.child("body", ns::CLIENT).map(|b| b.text()).as_deref() == Some("after disable")
    })
    .await;
    desk.expect_no_match("a carbon after disable", Duration::from_millis(300), |e| {
        forwarded_body(e, "sent").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_feature_is_advertised() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "r").await;
    let info = a
        .iq(
            "get",
            Some("example.test"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let q = info.child("query", ns::DISCO_INFO).unwrap();
    assert!(
        q.elements()
            .any(|f| f.attr("var") == Some("urn:xmpp:carbons:2")),
        "{}",
        info.to_xml()
    );
}
