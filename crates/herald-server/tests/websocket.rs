//! RFC 7395 XMPP over WebSocket, the https listener, XEP-0156 host-meta and the health
//! check: the HTTP service as web clients and load balancers use it.

mod common;

use std::time::Duration;

use common::web::{http_request, ws_connect, FRAMING};
use common::{Cb, Client, Event, Hash, Mech, TestServer, DOMAIN, PASSWORD};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_login_messages_and_presence_with_a_tcp_client() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;

    // Plain ws:// from loopback counts as secure: PLAIN is offered, -PLUS is not (there is
    // no TLS to bind to), and there is no STARTTLS.
    let mut probe = Client::websocket(server.http, false).await;
    let f = probe.open_stream().await;
    assert!(f.child("starttls", ns::TLS).is_none(), "{}", f.to_xml());
    let mechs = probe.mechanisms();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_string()), "{mechs:?}");
    assert!(mechs.contains(&"PLAIN".to_string()), "{mechs:?}");
    assert!(!mechs.iter().any(|m| m.ends_with("-PLUS")), "{mechs:?}");
    let header = probe.header.clone().expect("open");
    assert_eq!(header.attr("from"), Some(DOMAIN));
    assert_eq!(header.attr("version"), Some("1.0"));

    let mut alice = Client::login_websocket(server.http, false, "alice", "web").await;
    assert_eq!(alice.jid, format!("alice@{DOMAIN}/web"));
    let mut bob = server.login("bob", "tcp").await;
    alice.ping_server().await;

    // Available (echoed back), presence both ways (directed), then messages both ways.
    alice.send("<presence/>").await;
    let me = alice.jid.clone();
    alice
        .expect_match("own presence", |e| {
            e.name == "presence" && e.attr("from") == Some(me.as_str())
        })
        .await;
    alice.send(&format!("<presence to='{}'/>", bob.jid)).await;
    let p = bob
        .expect_match("presence from alice", |e| {
            e.name == "presence" && e.attr("from") == Some(alice.jid.as_str())
        })
        .await;
    assert_eq!(p.attr("type"), None);
    bob.send(&format!(
        "<presence to='{}'><status>at my desk</status></presence>",
        alice.jid
    ))
    .await;
    let p = alice
        .expect_match("presence from bob", |e| {
            e.name == "presence" && e.attr("from") == Some(bob.jid.as_str())
        })
        .await;
    assert_eq!(
        p.child("status", ns::CLIENT).map(|s| s.text()).as_deref(),
        Some("at my desk")
    );

    bob.send(&format!(
        "<message type='chat' to='{}'><body>hello web</body></message>",
        alice.jid
    ))
    .await;
    let m = expect_body(&mut alice, "hello web").await;
    assert_eq!(m.attr("from"), Some(bob.jid.as_str()));
    alice
        .send(&format!(
            "<message xmlns='jabber:client' type='chat' to='{}'><body>hello tcp</body></message>",
            bob.jid
        ))
        .await;
    let m = expect_body(&mut bob, "hello tcp").await;
    assert_eq!(m.attr("from"), Some(alice.jid.as_str()));

    // <close/> is answered with <close/> and the WebSocket closes.
    alice.close().await;
    bob.expect_match("unavailable from alice", |e| {
        e.name == "presence" && e.attr("type") == Some("unavailable")
    })
    .await;
    server.assert_still_serving("bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_answered_with_close() {
    let server = TestServer::start().await;
    let mut c = Client::websocket(server.http, false).await;
    c.open_stream().await;
    c.send(&format!("<close xmlns='{FRAMING}'/>")).await;
    match c.next_event().await {
        Event::Close => {}
        other => panic!("expected <close/>, got {other:?}"),
    }
    match c.next_event().await {
        Event::Eof => {}
        other => panic!("expected the WebSocket to close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_on_the_https_listener_offers_channel_binding() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    for cb in [Cb::TlsServerEndPoint, Cb::TlsExporter] {
        let mut c = Client::websocket(server.https, true).await;
        let f = c.open_stream().await;
        let mechs = c.mechanisms();
        assert!(
            mechs.contains(&"SCRAM-SHA-256-PLUS".to_string()),
            "{mechs:?}"
        );
        let types: Vec<&str> = f
            .child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
            .expect("XEP-0440 channel-binding types")
            .elements()
            .filter_map(|e| e.attr("type"))
            .collect();
        assert!(
            types.contains(&"tls-server-end-point") && types.contains(&"tls-exporter"),
            "{types:?}"
        );
        c.authenticate("alice", PASSWORD, Mech::Scram(Hash::Sha256, Some(cb)))
            .await
            .unwrap_or_else(|e| panic!("{cb:?}: {e}"));
        c.open_stream().await;
        c.bind(Some("secure")).await;
        c.ping_server().await;
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xmpp_subprotocol_is_required() {
    let server = TestServer::start().await;
    for offered in [None, Some("chat"), Some("mqtt, soap")] {
        match ws_connect(server.http, false, offered).await {
            Err(status) => assert_eq!(status, 400, "{offered:?}"),
            Ok(_) => panic!("upgrade accepted without the xmpp subprotocol ({offered:?})"),
        }
    }
    let (_, proto, _) = ws_connect(server.http, false, Some("chat, xmpp"))
        .await
        .expect("xmpp among others is accepted");
    assert_eq!(proto.as_deref(), Some("xmpp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanza_size_limit_is_enforced() {
    let server = TestServer::with_config("[c2s]\nmax_stanza_bytes = 10000\n").await;
    server.add_user("alice").await;
    let mut c = Client::login_websocket(server.http, false, "alice", "big").await;
    let fits = "x".repeat(9000);
    c.send(&format!(
        "<message to='{}'><body>{fits}</body></message>",
        c.jid
    ))
    .await;
    expect_body(&mut c, &fits).await;
    let big = "x".repeat(15_000);
    c.send(&format!(
        "<message to='{}'><body>{big}</body></message>",
        c.jid
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");

    // Far beyond the limit the WebSocket layer refuses the message; the stream still ends
    // with an error or at least the connection.
    let mut c = Client::login_websocket(server.http, false, "alice", "huge").await;
    let huge = "x".repeat(100_000);
    c.send(&format!(
        "<message to='{}'><body>{huge}</body></message>",
        c.jid
    ))
    .await;
    loop {
        match c.next_event().await {
            Event::Stanza(e) if e.is("error", ns::STREAM) => {}
            Event::Close => {}
            Event::Eof => break,
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }
    server.assert_still_serving("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_framing_ends_the_stream() {
    let server = TestServer::start().await;
    let cases: [(&str, &str); 5] = [
        ("<message xmlns='jabber:client'><body>half", "not-well-formed"),
        (
            "<message xmlns='jabber:client'/><message xmlns='jabber:client'/>",
            "not-well-formed",
        ),
        ("<iq type='get'/> trailing text", "not-well-formed"),
        (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>",
            "not-well-formed",
        ),
        (
            "<message xmlns='jabber:client'><!-- comment --></message>",
            "restricted-xml",
        ),
    ];
    for (frame, cond) in cases {
        let mut c = Client::websocket(server.http, false).await;
        c.open_stream().await;
        c.ws_wire().send_text(frame).await;
        assert_eq!(c.expect_stream_error().await, cond, "{frame}");
    }
    // Binary messages are not XMPP.
    let mut c = Client::websocket(server.http, false).await;
    c.open_stream().await;
    c.ws_wire().send_binary(b"<presence/>").await;
    assert_eq!(c.expect_stream_error().await, "bad-format");
    // The first message must be <open/>.
    let mut c = Client::websocket(server.http, false).await;
    c.ws_wire()
        .send_text("<presence xmlns='jabber:client'/>")
        .await;
    assert!(matches!(c.next_event().await, Event::Open(_)));
    assert_eq!(c.expect_stream_error().await, "not-well-formed");
    // An <open/> for a domain we do not serve.
    let mut c = Client::websocket(server.http, false).await;
    c.ws_wire()
        .send_text(&format!(
            "<open xmlns='{FRAMING}' to='elsewhere.example' version='1.0'/>"
        ))
        .await;
    assert!(matches!(c.next_event().await, Event::Open(_)));
    assert_eq!(c.expect_stream_error().await, "host-unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_management_resumes_on_a_new_websocket() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut bob = server.login("bob", "tcp").await;
    let mut alice = Client::login_websocket(server.http, false, "alice", "phone").await;
    alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = alice
        .expect_match("enabled", |e| e.is("enabled", ns::SM))
        .await;
    let id = enabled.attr("id").expect("resumption id").to_string();
    let full = alice.jid.clone();
    // The WebSocket drops without <close/>: the session hibernates.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.send(&format!(
        "<message type='chat' to='{full}'><body>while you were away</body></message>"
    ))
    .await;

    let mut again = Client::websocket(server.http, false).await;
    again.open_stream().await;
    again
        .authenticate("alice", PASSWORD, Mech::Scram(Hash::Sha256, None))
        .await
        .expect("auth");
    again.open_stream().await;
    again
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
        ))
        .await;
    again
        .expect_match("resumed", |e| e.is("resumed", ns::SM))
        .await;
    expect_body(&mut again, "while you were away").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl2_with_bind2_over_websocket() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::websocket(server.http, false).await;
    let f = c.open_stream().await;
    assert!(
        f.child("authentication", "urn:xmpp:sasl:2").is_some(),
        "{}",
        f.to_xml()
    );
    let success = c
        .scram_sasl2(
            "alice",
            PASSWORD,
            Hash::Sha256,
            None,
            "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>test</software></user-agent>\
             <bind xmlns='urn:xmpp:bind:0'><tag>web</tag></bind>",
        )
        .await
        .expect("sasl2");
    let bound = success
        .child("authorization-identifier", "urn:xmpp:sasl:2")
        .map(|e| e.text())
        .expect("identifier");
    assert!(bound.starts_with(&format!("alice@{DOMAIN}/web")), "{bound}");
    c.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_host_meta_on_http_and_https() {
    let server = TestServer::start().await;
    for (addr, tls) in [(server.http, false), (server.https, true)] {
        let r = http_request(addr, tls, "GET", "/health", &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let text = r.text();
        assert!(
            text.starts_with("{\"status\":\"ok\",\"version\":\"")
                && text.contains("\"sessions\":0"),
            "{text}"
        );
        let r = http_request(addr, tls, "GET", "/nope", &[], b"").await;
        assert_eq!(r.status, 404);
        let r = http_request(addr, tls, "DELETE", "/health", &[], b"").await;
        assert_eq!(r.status, 405);

        // XEP-0156: the https listener comes first in the derived base URL.
        let https = server.https;
        let r = http_request(addr, tls, "GET", "/.well-known/host-meta", &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/xrd+xml")),
            "{:?}",
            r.headers
        );
        let xrd = r.xml();
        assert!(xrd.is("XRD", "http://docs.oasis-open.org/ns/xri/xrd-1.0"));
        let links: Vec<(String, String)> = xrd
            .elements()
            .filter(|e| e.name == "Link")
            .map(|e| {
                (
                    e.attr("rel").unwrap_or("").to_string(),
                    e.attr("href").unwrap_or("").to_string(),
                )
            })
            .collect();
        assert!(
            links.contains(&(
                "urn:xmpp:alt-connections:websocket".into(),
                format!("wss://{https}/xmpp-websocket")
            )),
            "{links:?}"
        );
        assert!(
            links.contains(&(
                "urn:xmpp:alt-connections:xbosh".into(),
                format!("https://{https}/http-bind")
            )),
            "{links:?}"
        );
        let r = http_request(addr, tls, "GET", "/.well-known/host-meta.json", &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.text().trim(),
            format!(
                "{{\"links\":[{{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://{https}/xmpp-websocket\"}},\
                 {{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"https://{https}/http-bind\"}}]}}"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_meta_follows_public_url() {
    let server =
        TestServer::with_config("[http]\npublic_url = \"https://chat.example.test/xmpp/\"\n").await;
    let r = http_request(
        server.http,
        false,
        "GET",
        "/.well-known/host-meta",
        &[],
        b"",
    )
    .await;
    let text = r.text();
    assert!(
        text.contains("href='wss://chat.example.test/xmpp/xmpp-websocket'")
            && text.contains("href='https://chat.example.test/xmpp/http-bind'"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused() {
    let server = TestServer::start().await;
    let big = "a".repeat(20 * 1024);
    let r = http_request(
        server.http,
        false,
        "GET",
        "/health",
        &[("X-Big", &big)],
        b"",
    )
    .await;
    assert_eq!(r.status, 431);
    let r = http_request(server.http, false, "GET", "/health", &[], b"").await;
    assert_eq!(r.status, 200, "the server still answers");
}

/// Behind a trusted reverse proxy, login throttling counts the address the proxy
/// forwards, so one web client's failed logins do not lock out every other client behind
/// the same proxy. From a proxy not listed (none is, by default) the header is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_counts_the_address_a_trusted_proxy_forwards() {
    async fn attempt(
        server: &TestServer,
        from: &str,
        user: &str,
        password: &str,
    ) -> Result<(), String> {
        let mut c = Client::websocket_with(server.http, false, &[("X-Forwarded-For", from)]).await;
        c.open_stream().await;
        c.authenticate(user, password, Mech::SHA256).await
    }
    for (trusted, others_locked_out) in [
        ("[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\n", false),
        ("", true),
    ] {
        let server = TestServer::with_config(&format!("[auth]\nmax_failures = 2\n{trusted}")).await;
        for user in ["alice", "bob", "carol"] {
            server.add_user(user).await;
        }
        for _ in 0..2 {
            let r = attempt(&server, "198.51.100.7", "alice", "guess").await;
            assert_eq!(r, Err("not-authorized".into()));
        }
        // The failing client is throttled, even with the right password for another account.
        let r = attempt(&server, "198.51.100.7", "bob", PASSWORD).await;
        assert_eq!(r, Err("temporary-auth-failure".into()), "{trusted:?}");
        // Another client behind the same proxy.
        let r = attempt(&server, "203.0.113.9", "carol", PASSWORD).await;
        if others_locked_out {
            assert_eq!(r, Err("temporary-auth-failure".into()), "{trusted:?}");
        } else {
            assert_eq!(r, Ok(()), "{trusted:?}");
        }
    }
}
