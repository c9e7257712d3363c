//! XEP-0124 BOSH with XEP-0206: sessions, long polling, the rid window with
//! retransmission, pausing, termination, the binding's error conditions and limits.

mod common;

use std::time::{Duration, Instant};

use common::web::{bosh_post, http_request, BOSH_NS};
use common::{Client, Event, Hash, Mech, TestServer, DOMAIN, PASSWORD};
use herald_core::ns;
use herald_xml::Element;

fn body(e: &Element) -> Option<String> {
    e.child("body", ns::CLIENT).map(|b| b.text())
}

async fn expect_body(c: &mut Client, text: &str) -> Element {
    c.expect_match(&format!("message {text:?}"), |e| {
        e.name == "message" && body(e).as_deref() == Some(text)
    })
    .await
}

/// A raw BOSH request of `sid` with `rid`.
async fn post(server: &TestServer, sid: &str, rid: u64, attrs: &str, payload: &str) -> Element {
    let r = bosh_post(
        server.http,
        &format!("<body xmlns='{BOSH_NS}' sid='{sid}' rid='{rid}' {attrs}>{payload}</body>"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.xml()
}

/// A bound BOSH client with nothing outstanding; returns it, its sid and the next rid to
/// use for raw requests (the client's own counter moves past it).
async fn raw_session(server: &TestServer, user: &str) -> (Client, String, u64) {
    let mut c = Client::login_bosh(server.http, user, "raw").await;
    let w = c.bosh_wire();
    let sid = w.sid.clone().expect("sid");
    let rid = w.reserve_rid();
    (c, sid, rid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosh_login_long_polling_and_messages_with_a_tcp_client() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;

    let mut alice = Client::bosh(server.http);
    let f = alice.open_stream().await;
    assert!(f.child("starttls", ns::TLS).is_none(), "{}", f.to_xml());
    let w = alice.bosh_wire();
    for (attr, value) in [
        ("wait", "30"),
        ("hold", "1"),
        ("requests", "2"),
        ("inactivity", "60"),
        ("polling", "2"),
        ("maxpause", "300"),
        ("ver", "1.11"),
        ("from", DOMAIN),
        ("{urn:xmpp:xbosh}version", "1.0"),
        ("{urn:xmpp:xbosh}restartlogic", "true"),
    ] {
        assert_eq!(w.session_attr(attr), Some(value), "{attr}: {:?}", w.session);
    }
    assert!(w.session_attr("authid").is_some(), "{:?}", w.session);
    assert!(w.session_attr("ack").is_some(), "acks were asked for");
    alice
        .authenticate("alice", PASSWORD, Mech::Scram(Hash::Sha256, None))
        .await
        .expect("SCRAM over BOSH");
    let f = alice.open_stream().await;
    assert!(f.child("bind", ns::BIND).is_some(), "{}", f.to_xml());
    assert!(
        f.child("sm", ns::SM).is_none(),
        "no XEP-0198 over BOSH: {}",
        f.to_xml()
    );
    alice.bind(Some("web")).await;
    alice.ping_server().await;

    let mut bob = server.login("bob", "tcp").await;
    alice.send("<presence/>").await;
    alice.send(&format!("<presence to='{}'/>", bob.jid)).await;
    bob.expect_match("presence from alice", |e| {
        e.name == "presence" && e.attr("from").is_some_and(|f| f.starts_with("alice@"))
    })
    .await;
    bob.send(&format!(
        "<presence to='alice@{DOMAIN}/web'><show>dnd</show></presence>"
    ))
    .await;
    let p = alice
        .expect_match("presence from bob", |e| {
            e.name == "presence" && e.attr("from").is_some_and(|f| f.starts_with("bob@"))
        })
        .await;
    assert_eq!(
        p.child("show", ns::CLIENT).map(|s| s.text()).as_deref(),
        Some("dnd")
    );

    // Long polling: alice's empty request is held until bob's message arrives.
    alice
        .expect_no_match("a message", Duration::from_millis(300), |e| {
            e.name == "message"
        })
        .await;
    let sent = Instant::now();
    bob.send(&format!(
        "<message type='chat' to='alice@{DOMAIN}/web'><body>over long poll</body></message>"
    ))
    .await;
    expect_body(&mut alice, "over long poll").await;
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "delivered by the held request, not by a new poll: {:?}",
        sent.elapsed()
    );
    alice
        .send(&format!(
            "<message type='chat' to='{}'><body>from the browser</body></message>",
            bob.jid
        ))
        .await;
    let m = expect_body(&mut bob, "from the browser").await;
    assert_eq!(m.attr("from"), Some(format!("alice@{DOMAIN}/web").as_str()));

    // type='terminate' ends the session; its presence goes out.
    alice.close().await;
    bob.expect_match("unavailable from alice", |e| {
        e.name == "presence" && e.attr("type") == Some("unavailable")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_rid_gets_the_same_response() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let (mut c, sid, rid) = raw_session(&server, "alice").await;
    let ping = format!(
        "<iq xmlns='jabber:client' type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    );
    let first = bosh_post(
        server.http,
        &format!("<body xmlns='{BOSH_NS}' sid='{sid}' rid='{rid}'>{ping}</body>"),
    )
    .await;
    assert_eq!(first.status, 200);
    let el = first.xml();
    let reply = el
        .child("iq", ns::CLIENT)
        .unwrap_or_else(|| panic!("ping result in the held response: {}", first.text()));
    assert_eq!(reply.attr("type"), Some("result"));
    // The response was lost; the client repeats the request and gets the same bytes, and
    // the ping is not processed twice.
    let again = bosh_post(
        server.http,
        &format!("<body xmlns='{BOSH_NS}' sid='{sid}' rid='{rid}'>{ping}</body>"),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "retransmitted response");
    // The session carries on.
    c.ping_server().await;
    // A rid far outside the window ends the session with item-not-found.
    let rid = c.bosh_wire().reserve_rid();
    let r = post(&server, &sid, rid + 10, "", "").await;
    assert_eq!(r.attr("type"), Some("terminate"));
    assert_eq!(r.attr("condition"), Some("item-not-found"));
    let r = post(&server, &sid, rid, "", "").await;
    assert_eq!(r.attr("type"), Some("terminate"), "the session is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_processed_in_rid_order() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let (c, sid, rid) = raw_session(&server, "alice").await;
    let jid = c.jid.clone();
    let msg = |text: &str| {
        format!("<message xmlns='jabber:client' to='{jid}'><body>{text}</body></message>")
    };
    // rid+1 arrives before rid: it waits for the gap, then both go to the session in order
    // and the messages come back in that order.
    let second = {
        let (addr, body) = (
            server.http,
            format!(
                "<body xmlns='{BOSH_NS}' sid='{sid}' rid='{}'>{}</body>",
                rid + 1,
                msg("second")
            ),
        );
        tokio::spawn(async move { bosh_post(addr, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = post(&server, &sid, rid, "", &msg("first")).await;
    let second = second.await.unwrap().xml();
    let bodies: Vec<String> = first
        .elements()
        .chain(second.elements())
        .filter_map(body)
        .collect();
    // The first response may have been released empty when the second was processed;
    // what matters is the order across both.
    let mut all = bodies.clone();
    if all.len() < 2 {
        let next = post(&server, &sid, rid + 2, "", "").await;
        all.extend(next.elements().filter_map(body));
    }
    assert_eq!(all, vec!["first".to_string(), "second".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sid_and_bad_requests() {
    let server = TestServer::start().await;
    let r = post(&server, "no-such-session", 42, "", "").await;
    assert!(r.is("body", BOSH_NS));
    assert_eq!(r.attr("type"), Some("terminate"));
    assert_eq!(r.attr("condition"), Some("item-not-found"));

    for bad in [
        "not xml",
        "<body xmlns='jabber:client'/>",
        "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='example.test'>text</body>",
    ] {
        let r = bosh_post(server.http, bad).await;
        let el = r.xml();
        assert_eq!(el.attr("type"), Some("terminate"), "{bad}");
        assert_eq!(el.attr("condition"), Some("bad-request"), "{bad}");
    }
    // Session creation needs a rid and a to.
    let r = bosh_post(
        server.http,
        &format!("<body xmlns='{BOSH_NS}' rid='5' ver='1.11'/>"),
    )
    .await;
    assert_eq!(r.xml().attr("condition"), Some("improper-addressing"));
    let r = bosh_post(
        server.http,
        &format!("<body xmlns='{BOSH_NS}' to='{DOMAIN}' ver='1.11'/>"),
    )
    .await;
    assert_eq!(r.xml().attr("condition"), Some("bad-request"));
    // A domain we do not serve.
    let r = bosh_post(
        server.http,
        &format!(
            "<body xmlns='{BOSH_NS}' rid='5' to='elsewhere.example' ver='1.11' wait='5' hold='1'/>"
        ),
    )
    .await;
    let el = r.xml();
    assert_eq!(el.attr("type"), Some("terminate"));
    assert_eq!(el.attr("condition"), Some("host-unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_cors_and_other_methods() {
    let server = TestServer::with_config("[c2s]\nmax_stanza_bytes = 10000\n").await;
    // Bodies beyond twice the stanza limit are refused before parsing.
    let big = format!(
        "<body xmlns='{BOSH_NS}' rid='1' to='{DOMAIN}'><message xmlns='jabber:client'><body>{}</body></message></body>",
        "x".repeat(30_000)
    );
    let r = bosh_post(server.http, &big).await;
    assert_eq!(r.status, 413);
    // A payload over the stanza limit inside an acceptable body.
    let big = format!(
        "<body xmlns='{BOSH_NS}' rid='1' to='{DOMAIN}'><message xmlns='jabber:client'><body>{}</body></message></body>",
        "x".repeat(15_000)
    );
    let r = bosh_post(server.http, &big).await;
    assert_eq!(r.xml().attr("condition"), Some("policy-violation"));

    let r = http_request(
        server.http,
        false,
        "OPTIONS",
        "/http-bind",
        &[
            ("Origin", "https://webchat.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|m| m.to_ascii_lowercase().contains("content-type")));
    let r = http_request(server.http, false, "GET", "/http-bind", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = http_request(server.http, false, "PUT", "/http-bind", &[], b"").await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overactivity_is_a_policy_violation() {
    let server = TestServer::start().await;
    server.add_user("alice").await;

    // Two empty requests in a row while one is held: polling too fast.
    let (_c, sid, rid) = raw_session(&server, "alice").await;
    let held = {
        let (addr, body) = (
            server.http,
            format!("<body xmlns='{BOSH_NS}' sid='{sid}' rid='{rid}'/>"),
        );
        tokio::spawn(async move { bosh_post(addr, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(&server, &sid, rid + 1, "", "").await;
    assert_eq!(r.attr("condition"), Some("policy-violation"));
    let held = held.await.unwrap().xml();
    assert_eq!(
        held.attr("type"),
        Some("terminate"),
        "the held request learns it too"
    );

    // Three unanswered requests with requests='2'.
    let (_c, sid, rid) = raw_session(&server, "alice").await;
    let spawn_post = |rid: u64, payload: &'static str| {
        let (addr, body) = (
            server.http,
            format!("<body xmlns='{BOSH_NS}' sid='{sid}' rid='{rid}'>{payload}</body>"),
        );
        tokio::spawn(async move { bosh_post(addr, &body).await })
    };
    let a = spawn_post(rid, "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = spawn_post(rid + 2, "<presence xmlns='jabber:client'/>");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(
        &server,
        &sid,
        rid + 1,
        "",
        "<presence xmlns='jabber:client'/>",
    )
    .await;
    assert_eq!(r.attr("condition"), Some("policy-violation"));
    for h in [a, b] {
        assert_eq!(h.await.unwrap().xml().attr("type"), Some("terminate"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_extends_inactivity_then_the_session_resumes() {
    let server = TestServer::with_config("[bosh]\nmax_wait_secs = 2\ninactivity_secs = 5\n").await;
    server.add_user("alice").await;

    // Paused for 12 s: quiet for 7 s (beyond the 5 s inactivity), then the session is
    // still there.
    let (mut c, sid, rid) = raw_session(&server, "alice").await;
    let held = {
        let (addr, body) = (
            server.http,
            format!("<body xmlns='{BOSH_NS}' sid='{sid}' rid='{rid}'/>"),
        );
        tokio::spawn(async move { bosh_post(addr, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = post(&server, &sid, rid + 1, "pause='12'", "").await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "pause is answered at once"
    );
    assert_eq!(r.attr("type"), None);
    assert_eq!(r.elements().count(), 0, "no payloads in the pause response");
    let held = held.await.unwrap().xml();
    assert_eq!(held.attr("type"), None, "held request answered normally");
    tokio::time::sleep(Duration::from_secs(7)).await;
    c.bosh_wire().skip_rids(1);
    c.ping_server().await;

    // Without a pause the session ends after 5 s without requests.
    let (_c, sid, rid) = raw_session(&server, "alice").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let r = post(&server, &sid, rid, "", "").await;
    assert_eq!(r.attr("type"), Some("terminate"));
    assert_eq!(r.attr("condition"), Some("item-not-found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_bounds_a_held_request() {
    let server = TestServer::with_config("[bosh]\nmax_wait_secs = 1\ninactivity_secs = 5\n").await;
    server.add_user("alice").await;
    let (_c, sid, rid) = raw_session(&server, "alice").await;
    let t = Instant::now();
    let r = post(&server, &sid, rid, "", "").await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(r.attr("type"), None);
    assert_eq!(r.elements().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_and_stream_management_over_bosh() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::login_bosh(server.http, "alice", "web").await;
    // XEP-0198 is not available: <enable/> fails, the session continues.
    c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let f = c
        .expect_match("sm failure", |e| e.is("failed", ns::SM))
        .await;
    assert!(f.child("feature-not-implemented", ns::STANZAS).is_some());
    c.ping_server().await;
    // A stream error arrives as remote-stream-error with the <stream:error/> inside.
    c.send("<message xmlns='jabber:client' from='mallory@example.test' to='alice@example.test'/>")
        .await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");
    let last = c.bosh_wire().log.last().cloned().expect("responses");
    assert_eq!(last.attr("type"), Some("terminate"));
    assert_eq!(last.attr("condition"), Some("remote-stream-error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_terminates_held_requests() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::login_bosh(server.http, "alice", "web").await;
    // A poll is outstanding while we look for events.
    c.expect_no_match("anything", Duration::from_millis(300), |_| true)
        .await;
    let _ = server.shutdown.send(true);
    match c.next_event().await {
        Event::Close => {}
        other => panic!("expected the session to end, got {other:?}"),
    }
    let last = c.bosh_wire().log.last().cloned().expect("responses");
    assert_eq!(last.attr("type"), Some("terminate"));
    assert_eq!(last.attr("condition"), Some("system-shutdown"));
}
