//! RFC 6121 rosters and subscriptions as clients see them: roster pushes carrying the
//! subscription/ask state, pre-approval (§3.4), pending requests across logins and roster
//! versioning (§2.6).

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use herald_core::ns;
use herald_xml::Element;

/// Logs in, requests the roster (to receive pushes) and sends initial presence.
async fn online(server: &TestServer, user: &str) -> Client {
    server.add_user(user).await;
    let mut c = server.login(user, "r").await;
    let r = c.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    c.send("<presence/>").await;
    c.ping_server().await;
    c
}

/// Waits for a roster push about `jid`, acknowledges it and returns the item.
async fn push(c: &mut Client, jid: &str) -> Element {
    let iq = c
        .expect_match(&format!("roster push for {jid}"), |e| {
            e.name == "iq"
                && e.attr("type") == Some("set")
                && e.child("query", ns::ROSTER)
                    .and_then(|q| q.child("item", ns::ROSTER))
                    .is_some_and(|i| i.attr("jid") == Some(jid))
        })
        .await;
    // RFC 6121 §2.1.6: a push comes from the user's bare JID (or has no 'from').
    let own_bare = c.jid.split('/').next().unwrap_or("").to_string();
    assert!(
        iq.attr("from").is_none() || iq.attr("from") == Some(own_bare.as_str()),
        "roster push from a foreign entity: {}",
        iq.to_xml()
    );
    let q = iq.child("query", ns::ROSTER).expect("query");
    assert!(q.attr("ver").is_some(), "push without ver: {}", iq.to_xml());
    let id = iq.attr("id").expect("push id").to_string();
    c.send(&format!("<iq type='result' id='{id}'/>")).await;
    q.child("item", ns::ROSTER).expect("item").clone()
}

fn state(item: &Element) -> (Option<&str>, Option<&str>) {
    (item.attr("subscription"), item.attr("ask"))
}

async fn presence_of_type(c: &mut Client, kind: &str, from: &str) -> Element {
    c.expect_match(&format!("presence type={kind} from {from}"), |e| {
        e.name == "presence" && e.attr("type") == Some(kind) && e.attr("from") == Some(from)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_state_machine_in_roster_pushes() {
    let server = TestServer::start().await;
    let mut a = online(&server, "alice").await;
    let mut b = online(&server, "bob").await;

    // alice asks to see bob's presence.
    a.send("<presence type='subscribe' to='bob@example.test'/>")
        .await;
    let it = push(&mut a, "bob@example.test").await;
    assert_eq!(
        state(&it),
        (Some("none"), Some("subscribe")),
        "{}",
        it.to_xml()
    );
    presence_of_type(&mut b, "subscribe", "alice@example.test").await;

    // bob approves: alice is 'from' on bob's roster, bob is 'to' on alice's.
    b.send("<presence type='subscribed' to='alice@example.test'/>")
        .await;
    let it = push(&mut b, "alice@example.test").await;
    assert_eq!(state(&it), (Some("from"), None), "{}", it.to_xml());
    let it = push(&mut a, "bob@example.test").await;
    assert_eq!(state(&it), (Some("to"), None), "{}", it.to_xml());
    presence_of_type(&mut a, "subscribed", "bob@example.test").await;
    // And alice now sees bob's current presence.
    a.expect_match("bob's presence", |e| {
        e.name == "presence"
            && e.attr("type").is_none()
            && e.attr("from") == Some("bob@example.test/r")
    })
    .await;

    // The other direction: both.
    b.send("<presence type='subscribe' to='alice@example.test'/>")
        .await;
    let it = push(&mut b, "alice@example.test").await;
    assert_eq!(
        state(&it),
        (Some("from"), Some("subscribe")),
        "{}",
        it.to_xml()
    );
    presence_of_type(&mut a, "subscribe", "bob@example.test").await;
    a.send("<presence type='subscribed' to='bob@example.test'/>")
        .await;
    let it = push(&mut a, "bob@example.test").await;
    assert_eq!(state(&it), (Some("both"), None), "{}", it.to_xml());
    let it = push(&mut b, "alice@example.test").await;
    assert_eq!(state(&it), (Some("both"), None), "{}", it.to_xml());

    // bob cancels alice's subscription to him.
    b.send("<presence type='unsubscribed' to='alice@example.test'/>")
        .await;
    let it = push(&mut b, "alice@example.test").await;
    assert_eq!(state(&it), (Some("to"), None), "{}", it.to_xml());
    let it = push(&mut a, "bob@example.test").await;
    assert_eq!(state(&it), (Some("from"), None), "{}", it.to_xml());
    presence_of_type(&mut a, "unsubscribed", "bob@example.test").await;
    presence_of_type(&mut a, "unavailable", "bob@example.test/r").await;

    // alice unsubscribes from... nothing left that way; bob unsubscribes from alice.
    b.send("<presence type='unsubscribe' to='alice@example.test'/>")
        .await;
    let it = push(&mut b, "alice@example.test").await;
    assert_eq!(state(&it), (Some("none"), None), "{}", it.to_xml());
    let it = push(&mut a, "bob@example.test").await;
    assert_eq!(state(&it), (Some("none"), None), "{}", it.to_xml());

    // The stored roster agrees with the pushes.
    let r = a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    let q = r.child("query", ns::ROSTER).expect("roster");
    let item = q
        .elements()
        .find(|i| i.attr("jid") == Some("bob@example.test"))
        .expect("bob on alice's roster");
    assert_eq!(state(item), (Some("none"), None), "{}", r.to_xml());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_approval_auto_accepts_the_request() {
    let server = TestServer::start().await;
    let mut b = online(&server, "bob").await;
    let mut c = online(&server, "carol").await;

    // bob pre-approves carol (RFC 6121 §3.4): nothing is sent to carol.
    b.send("<presence type='subscribed' to='carol@example.test'/>")
        .await;
    let it = push(&mut b, "carol@example.test").await;
    assert_eq!(state(&it), (Some("none"), None), "{}", it.to_xml());
    assert_eq!(it.attr("approved"), Some("true"), "{}", it.to_xml());
    c.expect_no_match("presence from bob", Duration::from_millis(300), |e| {
        e.name == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;

    // carol's request is approved by the server without asking bob.
    c.send("<presence type='subscribe' to='bob@example.test'/>")
        .await;
    let it = push(&mut c, "bob@example.test").await;
    assert_eq!(
        state(&it),
        (Some("none"), Some("subscribe")),
        "{}",
        it.to_xml()
    );
    let it = push(&mut b, "carol@example.test").await;
    assert_eq!(state(&it), (Some("from"), None), "{}", it.to_xml());
    assert_ne!(it.attr("approved"), Some("true"), "{}", it.to_xml());
    presence_of_type(&mut c, "subscribed", "bob@example.test").await;
    let it = push(&mut c, "bob@example.test").await;
    assert_eq!(state(&it), (Some("to"), None), "{}", it.to_xml());
    b.expect_no_match("subscribe request", Duration::from_millis(300), |e| {
        e.name == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_request_waits_for_the_next_login() {
    let server = TestServer::start().await;
    server.add_user("dave").await;
    let mut a = online(&server, "alice").await;
    a.send("<presence type='subscribe' to='dave@example.test'/>")
        .await;
    let it = push(&mut a, "dave@example.test").await;
    assert_eq!(state(&it), (Some("none"), Some("subscribe")));
    a.ping_server().await;

    let mut d = server.login("dave", "d").await;
    d.send("<presence/>").await;
    presence_of_type(&mut d, "subscribe", "alice@example.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_versioning() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "v").await;
    let r = a
        .iq("get", None, "<query xmlns='jabber:iq:roster' ver=''/>")
        .await;
    let ver0 = r
        .child("query", ns::ROSTER)
        .and_then(|q| q.attr("ver"))
        .unwrap_or_else(|| panic!("roster result without ver: {}", r.to_xml()))
        .to_string();

    // Current version: an empty result (§2.6.3).
    let r = a
        .iq(
            "get",
            None,
            &format!("<query xmlns='jabber:iq:roster' ver='{ver0}'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    assert!(
        r.elements().next().is_none(),
        "expected an empty result for the current ver: {}",
        r.to_xml()
    );

    // A change bumps the version; the push carries it.
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='zed@example.test' name='Zed'><group>G</group></item></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    let it = push(&mut a, "zed@example.test").await;
    assert_eq!(it.attr("name"), Some("Zed"));
    assert_eq!(state(&it), (Some("none"), None));

    let r = a
        .iq(
            "get",
            None,
            &format!("<query xmlns='jabber:iq:roster' ver='{ver0}'/>"),
        )
        .await;
    let q = r
        .child("query", ns::ROSTER)
        .unwrap_or_else(|| panic!("stale ver must get the roster: {}", r.to_xml()));
    let ver1 = q.attr("ver").expect("ver").to_string();
    assert_ne!(ver1, ver0);
    assert_eq!(q.elements().count(), 1, "{}", r.to_xml());
    let r = a
        .iq(
            "get",
            None,
            &format!("<query xmlns='jabber:iq:roster' ver='{ver1}'/>"),
        )
        .await;
    assert!(r.elements().next().is_none(), "{}", r.to_xml());

    // Clients cannot set subscription state themselves.
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='zed@example.test' subscription='both'/></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    let it = push(&mut a, "zed@example.test").await;
    assert_eq!(state(&it), (Some("none"), None), "{}", it.to_xml());

    // Removal is pushed as subscription='remove'.
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='zed@example.test' subscription='remove'/></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    let it = push(&mut a, "zed@example.test").await;
    assert_eq!(it.attr("subscription"), Some("remove"));
}
