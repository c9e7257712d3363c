//! XEP-0198 Stream Management and XEP-0352 Client State Indication as a mobile client sees
//! them: acks, resumption after a dropped connection with nothing lost or duplicated, and
//! messages going to offline storage when a session is never resumed.

mod common;

use std::time::Duration;

use common::{Client, Mech, TestServer, PASSWORD};
use herald_core::ns;
use herald_xml::Element;

fn body(e: &Element) -> Option<String> {
    e.child("body", ns::CLIENT).map(|b| b.text())
}

async fn enable(c: &mut Client, resume: bool) -> Element {
    let r = if resume { " resume='true'" } else { "" };
    c.send(&format!("<enable xmlns='urn:xmpp:sm:3'{r}/>")).await;
    c.expect_match("enabled", |e| e.is("enabled", ns::SM)).await
}

async fn ack_count(c: &mut Client) -> u32 {
    c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = c.expect_match("<a/>", |e| e.is("a", ns::SM)).await;
    a.attr("h").and_then(|h| h.parse().ok()).expect("numeric h")
}

async fn message(c: &mut Client, to: &str, text: &str) {
    c.send(&format!(
        "<message to='{to}' type='chat'><body>{text}</body></message>"
    ))
    .await;
}

async fn expect_body(c: &mut Client, text: &str) -> Element {
    c.expect_match(&format!("message {text}"), |e| {
        body(e).as_deref() == Some(text)
    })
    .await
}

/// Authenticates on a new connection and stops before binding.
async fn authenticated(server: &TestServer, user: &str) -> Client {
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.authenticate(user, PASSWORD, Mech::SHA256)
        .await
        .expect("login");
    let f = c.open_stream().await;
    assert!(
        f.child("sm", ns::SM).is_some(),
        "sm offered after auth: {}",
        f.to_xml()
    );
    assert!(
        f.child("csi", ns::CSI).is_some(),
        "csi offered after auth: {}",
        f.to_xml()
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_count_handled_stanzas() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "phone").await;
    let enabled = enable(&mut a, false).await;
    assert!(
        enabled.attr("id").is_none(),
        "no resumption asked: {}",
        enabled.to_xml()
    );
    assert_eq!(ack_count(&mut a).await, 0);
    a.ping_server().await;
    a.ping_server().await;
    assert_eq!(ack_count(&mut a).await, 2);
    // A second enable is refused without ending the stream.
    a.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let f = a.expect_match("failed", |e| e.is("failed", ns::SM)).await;
    assert!(
        f.child("unexpected-request", ns::STANZAS).is_some(),
        "{}",
        f.to_xml()
    );
    a.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_acks_and_rejects_impossible_counts() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "phone").await;
    enable(&mut a, false).await;
    a.send("<presence/>").await;
    let mut b = server.login("bob", "pc").await;
    for i in 0..6 {
        message(&mut b, "alice@example.test/phone", &format!("m{i}")).await;
    }
    a.expect_match("<r/> from the server", |e| e.is("r", ns::SM))
        .await;
    a.send("<a xmlns='urn:xmpp:sm:3' h='1000'/>").await;
    let cond = a.expect_stream_error().await;
    assert_eq!(cond, "undefined-condition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_resumes_without_loss_or_duplicates() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "phone").await;
    let enabled = enable(&mut a, true).await;
    let id = enabled.attr("id").expect("resumption id").to_string();
    assert_eq!(enabled.attr("resume"), Some("true"));
    a.send("<presence/>").await;
    a.ping_server().await;
    let handled_by_server = ack_count(&mut a).await;
    assert_eq!(handled_by_server, 2, "presence and ping");

    let mut b = server.login("bob", "pc").await;
    // Stanzas alice's client gets before the drop: the reflected presence, the ping reply and
    // the ack answer are not all stanzas; count what the client saw as stanzas.
    for i in 1..=3 {
        message(&mut b, "alice@example.test/phone", &format!("before{i}")).await;
    }
    for i in 1..=3 {
        expect_body(&mut a, &format!("before{i}")).await;
    }
    // Stanzas alice received so far: reflected presence (1), ping result (2), before1..3.
    // She acknowledges only up to before1 (h=3), then the connection drops.
    drop(a);
    b.ping_server().await;
    for i in 1..=2 {
        message(&mut b, "alice@example.test/phone", &format!("after{i}")).await;
    }
    b.ping_server().await;

    let mut a2 = authenticated(&server, "alice").await;
    a2.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='3'/>"
    ))
    .await;
    let resumed = a2
        .expect_match("resumed", |e| e.is("resumed", ns::SM))
        .await;
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    assert_eq!(
        resumed.attr("h"),
        Some("2"),
        "the server had handled presence and ping"
    );
    let mut got = Vec::new();
    while got.len() < 4 {
        let e = a2
            .expect_match("a chat message", |e| {
                e.name == "message" && body(e).is_some()
            })
            .await;
        got.push(body(&e).unwrap());
    }
    assert_eq!(
        got,
        ["before2", "before3", "after1", "after2"],
        "unacked retransmitted once, in order"
    );
    a2.expect_no_match("a duplicate", Duration::from_millis(300), |e: &Element| {
        body(e).as_deref() == Some("before1")
    })
    .await;
    // The session goes on: same full JID, new messages flow, counters continue.
    message(&mut b, "alice@example.test/phone", "later").await;
    expect_body(&mut a2, "later").await;
    a2.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresumed_session_sends_unacked_messages_to_offline_storage() {
    let server = TestServer::with_config("[c2s]\nresume_timeout_secs = 1\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "phone").await;
    enable(&mut a, true).await;
    a.send("<presence/>").await;
    a.ping_server().await;
    let mut b = server.login("bob", "pc").await;
    message(&mut b, "alice@example.test", "unacked").await;
    expect_body(&mut a, "unacked").await;
    drop(a);
    message(&mut b, "alice@example.test", "while-away").await;
    b.ping_server().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut a2 = server.login("alice", "desk").await;
    a2.send("<presence/>").await;
    let m1 = expect_body(&mut a2, "unacked").await;
    assert!(
        m1.child("delay", ns::DELAY).is_some(),
        "from offline storage: {}",
        m1.to_xml()
    );
    expect_body(&mut a2, "while-away").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resumption_id_fails_then_bind_works() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = authenticated(&server, "alice").await;
    a.send("<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>")
        .await;
    let f = a.expect_match("failed", |e| e.is("failed", ns::SM)).await;
    assert!(
        f.child("item-not-found", ns::STANZAS).is_some(),
        "{}",
        f.to_xml()
    );
    a.bind(Some("again")).await;
    a.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_resume_a_session() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("mallory").await;
    let mut a = server.login("alice", "phone").await;
    let id = enable(&mut a, true).await.attr("id").unwrap().to_string();
    let mut m = authenticated(&server, "mallory").await;
    m.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let f = m.expect_match("failed", |e| e.is("failed", ns::SM)).await;
    assert!(
        f.child("item-not-found", ns::STANZAS).is_some(),
        "{}",
        f.to_xml()
    );
    a.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_client_gets_presence_deduplicated_and_messages_at_once() {
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u).await;
    }
    let mut a = server.login("alice", "phone").await;
    a.send("<presence/>").await;
    a.expect_match("own presence", |e| e.name == "presence")
        .await;
    let mut b = server.login("bob", "pc").await;
    b.send("<presence/>").await;
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    a.ping_server().await;
    // Three directed presence updates from bob while alice is inactive: only the last
    // should reach her, and only when something important comes.
    for show in ["away", "xa", "dnd"] {
        b.send(&format!(
            "<presence to='alice@example.test/phone'><show>{show}</show></presence>"
        ))
        .await;
    }
    b.ping_server().await;
    a.expect_no_match(
        "held presence",
        Duration::from_millis(300),
        |e: &Element| e.name == "presence",
    )
    .await;
    message(&mut b, "alice@example.test/phone", "wake").await;
    let p = a
        .expect_match("held presence", |e| e.name == "presence")
        .await;
    assert_eq!(
        p.child("show", ns::CLIENT).map(|s| s.text()).as_deref(),
        Some("dnd")
    );
    expect_body(&mut a, "wake").await;
    a.expect_no_match("presence", Duration::from_millis(200), |e: &Element| {
        e.name == "presence"
    })
    .await;
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    b.send("<presence to='alice@example.test/phone'><show>chat</show></presence>")
        .await;
    let p = a
        .expect_match("live presence", |e| e.name == "presence")
        .await;
    assert_eq!(
        p.child("show", ns::CLIENT).map(|s| s.text()).as_deref(),
        Some("chat")
    );
}
