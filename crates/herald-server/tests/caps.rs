//! XEP-0115 §6.3: the server announces its own capabilities in the stream features, and
//! the announced `ver` matches what its disco#info says.

mod common;

use common::{Client, Mech, TestServer, PASSWORD};
use herald_core::ns;
use herald_server::ext::caps::{sha1_ver, verification_string};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_features_carry_verifiable_server_caps() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.authenticate("alice", PASSWORD, Mech::SHA256)
        .await
        .unwrap();
    let f = c.open_stream().await;
    let caps = f
        .child("c", ns::CAPS)
        .unwrap_or_else(|| panic!("{}", f.to_xml()));
    assert_eq!(caps.attr("hash"), Some("sha-1"));
    let node = caps.attr("node").unwrap().to_string();
    let ver = caps.attr("ver").unwrap().to_string();
    c.bind(Some("r")).await;
    let r = c
        .iq(
            "get",
            Some("example.test"),
            &format!("<query xmlns='http://jabber.org/protocol/disco#info' node='{node}#{ver}'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    let q = r.child("query", ns::DISCO_INFO).unwrap();
    let s = verification_string(q).expect("well-formed disco#info");
    assert_eq!(sha1_ver(&s), ver, "the announced ver hashes the disco#info");
    // A stale ver is not answered.
    let r = c
        .iq(
            "get",
            Some("example.test"),
            &format!("<query xmlns='http://jabber.org/protocol/disco#info' node='{node}#stale'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", r.to_xml());
}
