//! XEP-0357 push notifications, end to end: a raw client enables and disables push
//! services on its account; a raw XEP-0114 component plays the App Server's push service
//! and receives the pubsub publishes (summary form, publish-options), answers them, and
//! with an error makes the server disable the registration.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{stanza_error, Client, Event, TestServer, DOMAIN, WAIT};
use herald_core::{ns, Jid};
use herald_xml::Element;
use sha1::Digest;

const PUSH: &str = "push.example.test";
const SECRET: &str = "pushsecret123";
const PUSH_NS: &str = "urn:xmpp:push:0";
const QUIET: Duration = Duration::from_millis(600);

async fn server_with(extra: &str) -> TestServer {
    TestServer::with_config(&format!(
        "[[component]]\ndomain = \"{PUSH}\"\nsecret = \"{SECRET}\"\n{extra}"
    ))
    .await
}

/// A raw XEP-0114 component acting as the App Server's XMPP push service.
async fn app_server(server: &TestServer) -> Client {
    let addr = server.running.as_ref().expect("running").bound.component[0];
    let mut c = Client::connect(addr).await;
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{PUSH}'>"
    ))
    .await;
    let id = match c.next_event().await {
        Event::Open(h) => h.attr("id").expect("stream id").to_string(),
        other => panic!("expected the component stream header, got {other:?}"),
    };
    let digest = sha1::Sha1::digest(format!("{id}{SECRET}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    c.send(&format!("<handshake>{hex}</handshake>")).await;
    let h = c.expect_stanza().await;
    assert_eq!(h.name, "handshake", "handshake accepted: {}", h.to_xml());
    c
}

fn enable_xml(node: &str, secret: Option<&str>) -> String {
    let form = secret
        .map(|s| {
            format!(
                "<x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='secret'><value>{s}</value></field></x>"
            )
        })
        .unwrap_or_default();
    format!("<enable xmlns='{PUSH_NS}' jid='{PUSH}' node='{node}'>{form}</enable>")
}

async fn enable(c: &mut Client, node: &str, secret: Option<&str>) {
    let r = c.iq("set", None, &enable_xml(node, secret)).await;
    assert_eq!(r.attr("type"), Some("result"), "enable: {}", r.to_xml());
}

async fn send_chat(c: &mut Client, to: &str, id: &str, body: &str) {
    c.send(&format!(
        "<message to='{to}' type='chat' id='{id}'><body>{body}</body></message>"
    ))
    .await;
}

fn is_publish(e: &Element) -> bool {
    e.name == "iq"
        && e.attr("type") == Some("set")
        && e.child("pubsub", ns::PUBSUB)
            .and_then(|p| p.child("publish", ns::PUBSUB))
            .is_some()
}

async fn next_publish(app: &mut Client) -> Element {
    app.expect_match("push publish", is_publish).await
}

fn publish_node(iq: &Element) -> String {
    iq.child("pubsub", ns::PUBSUB)
        .and_then(|p| p.child("publish", ns::PUBSUB))
        .and_then(|p| p.attr("node"))
        .unwrap_or("")
        .to_string()
}

fn fields(x: &Element) -> HashMap<String, String> {
    x.elements()
        .filter(|f| f.is("field", ns::DATA_FORMS))
        .map(|f| {
            (
                f.attr("var").unwrap_or("").to_string(),
                f.child("value", ns::DATA_FORMS)
                    .map(|v| v.text())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The summary form of a publish.
fn summary(iq: &Element) -> HashMap<String, String> {
    let x = iq
        .child("pubsub", ns::PUBSUB)
        .and_then(|p| p.child("publish", ns::PUBSUB))
        .and_then(|p| p.child("item", ns::PUBSUB))
        .and_then(|i| i.child("notification", PUSH_NS))
        .and_then(|n| n.child("x", ns::DATA_FORMS))
        .unwrap_or_else(|| panic!("publish without a notification form: {}", iq.to_xml()));
    fields(x)
}

fn publish_options(iq: &Element) -> Option<HashMap<String, String>> {
    iq.child("pubsub", ns::PUBSUB)
        .and_then(|p| p.child("publish-options", ns::PUBSUB))
        .and_then(|o| o.child("x", ns::DATA_FORMS))
        .map(fields)
}

async fn answer(app: &mut Client, iq: &Element, error: Option<(&str, &str)>) {
    let id = iq.attr("id").expect("id");
    let to = iq.attr("from").expect("from");
    let xml = match error {
        None => format!("<iq type='result' id='{id}' from='{PUSH}' to='{to}'/>"),
        Some((kind, cond)) => format!(
            "<iq type='error' id='{id}' from='{PUSH}' to='{to}'><error type='{kind}'>\
             <{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ),
    };
    app.send(&xml).await;
}

async fn stored_registrations(server: &TestServer, user: &str) -> usize {
    server
        .store
        .get_private(&TestServer::jid(user), "push:registrations")
        .await
        .expect("storage")
        .map(|x| x.matches("<registration ").count())
        .unwrap_or(0)
}

/// Enables push for `user` in one session, then logs out: later messages go offline.
async fn enable_and_leave(server: &TestServer, user: &str, nodes: &[&str], secret: Option<&str>) {
    let mut c = server.login(user, "phone").await;
    for n in nodes {
        enable(&mut c, n, secret).await;
    }
    c.close().await;
}

#[tokio::test]
async fn feature_on_the_account_and_enable_validation() {
    let server = server_with("").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "phone").await;
    let info = a
        .iq(
            "get",
            Some(&TestServer::jid("alice")),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let q = info.child("query", ns::DISCO_INFO).expect("disco result");
    assert!(
        q.elements()
            .any(|f| f.name == "feature" && f.attr("var") == Some(PUSH_NS)),
        "urn:xmpp:push:0 on the account: {}",
        info.to_xml()
    );

    let r = a
        .iq(
            "set",
            None,
            &format!("<enable xmlns='{PUSH_NS}' node='x'/>"),
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("bad-request"),
        "jid is required: {}",
        r.to_xml()
    );
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<enable xmlns='{PUSH_NS}' jid='{PUSH}' node='x'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>urn:example:other</value></field></x></enable>"
            ),
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("bad-request"),
        "FORM_TYPE must be publish-options: {}",
        r.to_xml()
    );
    let r = a.iq("get", None, &enable_xml("x", None)).await;
    assert!(stanza_error(&r).is_some(), "get is not defined");

    // Someone else's account: refused.
    let mut b = server.login("bob", "pc").await;
    let r = b
        .iq(
            "set",
            Some(&TestServer::jid("alice")),
            &enable_xml("x", None),
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("forbidden"),
        "{}",
        r.to_xml()
    );
    assert_eq!(stored_registrations(&server, "alice").await, 0);

    // Enabling the same service and node again replaces it.
    enable(&mut a, "n1", Some("one")).await;
    enable(&mut a, "n1", Some("two")).await;
    enable(&mut a, "n2", None).await;
    assert_eq!(stored_registrations(&server, "alice").await, 2);
}

#[tokio::test]
async fn offline_message_publishes_summary_with_publish_options() {
    let server = server_with("").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut app = app_server(&server).await;
    enable_and_leave(&server, "alice", &["node-a"], Some("s3cr3t")).await;

    let mut bob = server.login("bob", "pc").await;
    send_chat(
        &mut bob,
        &TestServer::jid("alice"),
        "m1",
        "the private words",
    )
    .await;
    let iq = next_publish(&mut app).await;
    assert_eq!(iq.attr("from"), Some(TestServer::jid("alice").as_str()));
    assert_eq!(iq.attr("to"), Some(PUSH));
    assert_eq!(publish_node(&iq), "node-a");
    let s = summary(&iq);
    assert_eq!(s["FORM_TYPE"], "urn:xmpp:push:summary");
    assert_eq!(s["message-count"], "1");
    assert_eq!(s["last-message-sender"], bob.jid);
    assert!(
        !s.contains_key("last-message-body"),
        "no body by default: {}",
        iq.to_xml()
    );
    assert!(
        !iq.to_xml().contains("private words"),
        "the body appears nowhere: {}",
        iq.to_xml()
    );
    let opts = publish_options(&iq).expect("publish-options");
    assert_eq!(
        opts["FORM_TYPE"],
        "http://jabber.org/protocol/pubsub#publish-options"
    );
    assert_eq!(opts["secret"], "s3cr3t");
    answer(&mut app, &iq, None).await;

    // The count is what waits offline.
    send_chat(&mut bob, &TestServer::jid("alice"), "m2", "more").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "2");
    answer(&mut app, &iq, None).await;

    // Not notifiable: a chat state alone.
    bob.send(&format!(
        "<message to='{}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        TestServer::jid("alice")
    ))
    .await;
    bob.ping_server().await;
    app.expect_no_match("push for a chat state", QUIET, is_publish)
        .await;

    // Encrypted (OMEMO) messages are notified.
    bob.send(&format!(
        "<message to='{}' type='chat' id='m3'><encrypted xmlns='eu.siacs.conversations.axolotl'>\
         <header sid='1'/><payload>AAAA</payload></encrypted><body>I sent you an OMEMO encrypted message</body></message>",
        TestServer::jid("alice")
    ))
    .await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "3");
    answer(&mut app, &iq, None).await;

    // Back online: messages go to the session, no pushes.
    let mut a = server.login("alice", "phone").await;
    a.send("<presence/>").await;
    a.expect_match("offline message", |e| e.name == "message")
        .await;
    send_chat(&mut bob, &TestServer::jid("alice"), "m4", "online now").await;
    a.expect_match("live message", |e| {
        e.name == "message" && e.attr("id") == Some("m4")
    })
    .await;
    app.expect_no_match("push while online", QUIET, is_publish)
        .await;
}

#[tokio::test]
async fn body_included_when_configured() {
    let server = server_with("[push]\ninclude_body = true\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut app = app_server(&server).await;
    enable_and_leave(&server, "alice", &["n"], None).await;
    let mut bob = server.login("bob", "pc").await;
    send_chat(
        &mut bob,
        &TestServer::jid("alice"),
        "m1",
        "Wherefore art thou",
    )
    .await;
    let iq = next_publish(&mut app).await;
    let s = summary(&iq);
    assert_eq!(s["last-message-body"], "Wherefore art thou");
    assert!(publish_options(&iq).is_none(), "no options were given");

    // Never the fallback body of an encrypted message.
    answer(&mut app, &iq, None).await;
    bob.send(&format!(
        "<message to='{}' type='chat' id='m2'><encrypted xmlns='urn:xmpp:omemo:2'/>\
         <body>fallback text</body></message>",
        TestServer::jid("alice")
    ))
    .await;
    let iq = next_publish(&mut app).await;
    assert!(!summary(&iq).contains_key("last-message-body"));
}

#[tokio::test]
async fn disable_stops_notifications() {
    let server = server_with("").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut app = app_server(&server).await;
    let mut a = server.login("alice", "phone").await;
    enable(&mut a, "n1", None).await;
    enable(&mut a, "n2", None).await;
    let r = a
        .iq(
            "set",
            None,
            &format!("<disable xmlns='{PUSH_NS}' jid='{PUSH}' node='n1'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    a.close().await;

    let mut bob = server.login("bob", "pc").await;
    send_chat(&mut bob, &TestServer::jid("alice"), "m1", "hello").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(publish_node(&iq), "n2");
    answer(&mut app, &iq, None).await;
    app.expect_no_match("a publish to the disabled node", QUIET, is_publish)
        .await;

    // Disabling the service without a node removes all its nodes.
    let mut a = server.login("alice", "phone").await;
    enable(&mut a, "n3", None).await;
    let r = a
        .iq(
            "set",
            None,
            &format!("<disable xmlns='{PUSH_NS}' jid='{PUSH}'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    a.close().await;
    assert_eq!(stored_registrations(&server, "alice").await, 0);
    send_chat(&mut bob, &TestServer::jid("alice"), "m2", "anyone?").await;
    bob.ping_server().await;
    app.expect_no_match("a publish after disable", QUIET, is_publish)
        .await;
}

async fn wait_for_registrations(server: &TestServer, user: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while stored_registrations(server, user).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} never had {n} registrations"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn error_reply_disables_the_registration() {
    let server = server_with("").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut app = app_server(&server).await;
    enable_and_leave(&server, "alice", &["gone", "kept"], None).await;

    let mut bob = server.login("bob", "pc").await;
    send_chat(&mut bob, &TestServer::jid("alice"), "m1", "hello").await;
    let first = next_publish(&mut app).await;
    let second = next_publish(&mut app).await;
    let (gone, kept) = if publish_node(&first) == "gone" {
        (first, second)
    } else {
        (second, first)
    };
    answer(&mut app, &gone, Some(("cancel", "item-not-found"))).await;
    answer(&mut app, &kept, Some(("wait", "resource-constraint"))).await;
    wait_for_registrations(&server, "alice", 1).await;

    send_chat(&mut bob, &TestServer::jid("alice"), "m2", "again").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(
        publish_node(&iq),
        "kept",
        "a transient error keeps the registration"
    );
    answer(&mut app, &iq, Some(("auth", "not-authorized"))).await;
    wait_for_registrations(&server, "alice", 0).await;
    send_chat(&mut bob, &TestServer::jid("alice"), "m3", "still?").await;
    bob.ping_server().await;
    app.expect_no_match("a publish after the error", QUIET, is_publish)
        .await;
}

#[tokio::test]
async fn app_server_down_keeps_the_registration() {
    let server = server_with("").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    enable_and_leave(&server, "alice", &["n"], None).await;
    let mut bob = server.login("bob", "pc").await;
    // No component attached: the router answers service-unavailable for it.
    send_chat(&mut bob, &TestServer::jid("alice"), "m1", "hello").await;
    bob.ping_server().await;
    let srv = server.running.as_ref().expect("running").server.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.push.failures(&TestServer::jid("alice"), PUSH, "n") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bounce never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(srv.push.pending_len(), 0);
    assert_eq!(stored_registrations(&server, "alice").await, 1);

    let mut app = app_server(&server).await;
    send_chat(&mut bob, &TestServer::jid("alice"), "m2", "now?").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "2");
}

#[tokio::test]
async fn throttled_notifications_fold_into_one_trailing() {
    let server = server_with("[push]\nmin_interval_secs = 1\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut app = app_server(&server).await;
    enable_and_leave(&server, "alice", &["n"], None).await;
    let mut bob = server.login("bob", "pc").await;
    send_chat(&mut bob, &TestServer::jid("alice"), "m1", "one").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "1");
    answer(&mut app, &iq, None).await;
    for i in 2..=4 {
        send_chat(
            &mut bob,
            &TestServer::jid("alice"),
            &format!("m{i}"),
            "more",
        )
        .await;
    }
    bob.ping_server().await;
    let iq = next_publish(&mut app).await;
    assert_eq!(
        summary(&iq)["message-count"],
        "4",
        "one trailing notification with the count at its time"
    );
    app.expect_no_match("more than one trailing notification", QUIET, is_publish)
        .await;
}

#[tokio::test]
async fn session_queue_hook_counts_and_notifies_once() {
    let server = server_with("").await;
    server.add_user("alice").await;
    let mut app = app_server(&server).await;
    enable_and_leave(&server, "alice", &["n"], None).await;
    let srv = server.running.as_ref().expect("running").server.clone();
    let session = Jid::parse(&format!("alice@{DOMAIN}/phone")).unwrap();
    let msg = |id: &str| {
        Element::new("message", ns::CLIENT)
            .with_attr("from", format!("bob@{DOMAIN}/pc"))
            .with_attr("to", session.as_str())
            .with_attr("id", id)
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
    };
    herald_server::ext::push::on_session_queued(&srv, &session, &msg("q1")).await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "1");
    herald_server::ext::push::on_session_queued(&srv, &session, &msg("q2")).await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "2");
    // The same message reaching offline storage later is not notified again.
    herald_server::ext::push::on_offline(&srv, &session.bare(), &msg("q2")).await;
    app.expect_no_match("a second push for one message", QUIET, is_publish)
        .await;
    // Once the session reads again its queue no longer counts.
    herald_server::ext::push::on_session_active(&srv, &session);
    herald_server::ext::push::on_session_queued(&srv, &session, &msg("q3")).await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq)["message-count"], "1");
}

/// The phone's connection drops with stream management resumption on: the session
/// hibernates, and a message for it wakes the device through the app server; resuming
/// delivers the message itself.
#[tokio::test]
async fn hibernating_session_triggers_a_push_and_resumption_delivers() {
    let server = server_with("").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut app = app_server(&server).await;
    let mut phone = server.login("alice", "phone").await;
    enable(&mut phone, "node-p", None).await;
    phone
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = phone
        .expect_match("enabled", |e| e.is("enabled", ns::SM))
        .await;
    let previd = enabled.attr("id").expect("resumable").to_string();
    phone.send("<presence/>").await;
    phone.ping_server().await;
    drop(phone);

    let mut bob = server.login("bob", "pc").await;
    // Wait until the server noticed the drop: a probe ping through bob keeps order simple.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_chat(&mut bob, "alice@example.test/phone", "h1", "wake up").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(publish_node(&iq), "node-p");
    assert_eq!(summary(&iq)["message-count"], "1");
    answer(&mut app, &iq, None).await;

    let mut again = Client::connect(server.c2s).await;
    again.open_stream().await;
    again.starttls().await;
    again
        .authenticate("alice", common::PASSWORD, common::Mech::SHA256)
        .await
        .expect("login");
    again.open_stream().await;
    // Handled by the client since enabling: presence reflection, ping result.
    again
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='2'/>"
        ))
        .await;
    again
        .expect_match("resumed", |e| e.is("resumed", ns::SM))
        .await;
    again
        .expect_match("the message", |e| {
            e.child("body", ns::CLIENT).map(|b| b.text()).as_deref() == Some("wake up")
        })
        .await;
}
