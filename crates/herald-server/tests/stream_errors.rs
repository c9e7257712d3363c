//! Hostile or broken input ends the offending stream with the right RFC 6120 §4.9.3 stream
//! error, and the server keeps serving everyone else.

mod common;

use common::{Client, TestServer};

/// A server with a small stanza limit (10000 bytes, the RFC 6120 §13.12 minimum).
async fn server() -> TestServer {
    let s = TestServer::with_config("[c2s]\nmax_stanza_bytes = 10000\n").await;
    s.add_user("alice").await;
    s.add_user("bob").await;
    s
}

/// Logs in as alice, sends `bad`, expects the stream error `cond`, then checks that a
/// fresh client still logs in and gets a ping reply.
async fn after_login(bad: &str, cond: &str) {
    let s = server().await;
    let mut c = s.login("alice", "bad").await;
    c.ping_server().await;
    c.send_lossy(bad.as_bytes()).await;
    let got = c.expect_stream_error().await;
    assert_eq!(got, cond, "stream error for {:.120}", bad);
    s.assert_still_serving("bob").await;
    s.assert_still_serving("alice").await;
}

/// Sends `raw` as the first bytes of a connection and expects the stream error `cond`
/// (after the server's own header).
async fn at_stream_start(raw: &str, cond: &str) {
    let s = server().await;
    let mut c = Client::connect(s.c2s).await;
    c.send_lossy(raw.as_bytes()).await;
    let got = c.expect_stream_error().await;
    assert_eq!(got, cond, "stream error for {raw}");
    s.assert_still_serving("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_is_not_well_formed() {
    after_login(
        "<message to='bob@example.test'><body>hi</message>",
        "not-well-formed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_before_auth_is_not_well_formed() {
    let s = server().await;
    let mut c = Client::connect(s.c2s).await;
    c.open_stream().await;
    c.send_lossy(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><a></b>")
        .await;
    assert_eq!(c.expect_stream_error().await, "not-well-formed");
    s.assert_still_serving("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctype_is_restricted_xml() {
    at_stream_start(
        "<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY lol 'lol'>]>\
         <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         to='example.test' version='1.0'>",
        "restricted-xml",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_instruction_in_stanza_is_restricted_xml() {
    after_login(
        "<message to='bob@example.test'><?evil stuff?><body>x</body></message>",
        "restricted-xml",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_is_restricted_xml() {
    after_login(
        "<message to='bob@example.test'><!-- hidden --><body>x</body></message>",
        "restricted-xml",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_prefix_is_not_well_formed() {
    after_login(
        "<message to='bob@example.test'><foo:bar/></message>",
        "not-well-formed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stanza_is_policy_violation() {
    let body = "a".repeat(20_000);
    after_login(
        &format!("<message to='bob@example.test'><body>{body}</body></message>"),
        "policy-violation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_policy_violation() {
    let open = "<a>".repeat(100);
    let close = "</a>".repeat(100);
    after_login(
        &format!("<message to='bob@example.test'>{open}{close}</message>"),
        "policy-violation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_attributes_is_policy_violation() {
    let attrs: String = (0..100).map(|i| format!(" a{i}='v'")).collect();
    after_login(
        &format!("<message to='bob@example.test'{attrs}><body>x</body></message>"),
        "policy-violation",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_stream_namespace_is_invalid_namespace() {
    at_stream_start(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='urn:example:not-streams' to='example.test' version='1.0'>",
        "invalid-namespace",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_namespace_is_invalid_namespace() {
    at_stream_start(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>",
        "invalid-namespace",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_host_unknown() {
    at_stream_start(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='other.test' version='1.0'>",
        "host-unknown",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_from_is_invalid_from() {
    after_login(
        "<message from='bob@example.test/desk' to='alice@example.test'><body>x</body></message>",
        "invalid-from",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_bare_or_full_from_is_accepted() {
    let s = server().await;
    let mut c = s.login("alice", "own").await;
    let r = c
        .iq("get", Some("example.test"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    for from in ["alice@example.test", "alice@example.test/own"] {
        c.send(&format!(
            "<iq type='get' id='f' from='{from}' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let r = c
            .expect_match("ping reply", |e| e.attr("id") == Some("f"))
            .await;
        assert_eq!(
            r.attr("type"),
            Some("result"),
            "from={from}: {}",
            r.to_xml()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stanza_element_is_unsupported_stanza_type() {
    after_login("<foo xmlns='jabber:client'/>", "unsupported-stanza-type").await;
}
