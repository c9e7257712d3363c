//! XEP-0388 SASL2, XEP-0386 Bind 2 and XEP-0484 FAST as a mobile client uses them: one
//! round trip to an authenticated, bound session with carbons and stream management, a
//! token for the next login, and inline resumption.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{Client, Hash, TestServer, PASSWORD};
use herald_core::ns;
use herald_xml::Element;
use hmac::{Hmac, Mac};

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";

/// A connection up to the SASL features (after STARTTLS).
async fn secured(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    let f = c.starttls().await;
    (c, f)
}

fn ht(token: &str, label: &[u8], cb: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(token.as_bytes()).unwrap();
    m.update(label);
    m.update(cb);
    m.finalize().into_bytes().to_vec()
}

fn body(e: &Element) -> Option<String> {
    e.child("body", ns::CLIENT).map(|b| b.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_offer_sasl2_with_bind2_sm_and_fast() {
    let server = TestServer::start().await;
    let (_c, f) = secured(&server).await;
    let auth = f
        .child("authentication", SASL2)
        .unwrap_or_else(|| panic!("{}", f.to_xml()));
    let mechs: Vec<String> = auth
        .elements()
        .filter(|e| e.name == "mechanism")
        .map(|e| e.text())
        .collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_string()), "{mechs:?}");
    assert!(
        mechs.contains(&"SCRAM-SHA-256-PLUS".to_string()),
        "{mechs:?}"
    );
    let inline = auth.child("inline", SASL2).expect("inline");
    let bind = inline.child("bind", BIND2).expect("bind 2");
    let vars: Vec<&str> = bind
        .child("inline", BIND2)
        .unwrap()
        .elements()
        .filter_map(|e| e.attr("var"))
        .collect();
    assert!(
        vars.contains(&"urn:xmpp:carbons:2") && vars.contains(&"urn:xmpp:sm:3"),
        "{vars:?}"
    );
    assert!(inline.child("sm", ns::SM).is_some());
    let fast = inline.child("fast", FAST).expect("fast");
    let fm: Vec<String> = fast.elements().map(|e| e.text()).collect();
    assert!(
        fm.contains(&"HT-SHA-256-NONE".to_string()) && fm.contains(&"HT-SHA-256-ENDP".to_string()),
        "{fm:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_to_a_bound_session_then_fast_token_login() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let (mut c, _) = secured(&server).await;
    let inline = "<user-agent id='phone-1'><software>Test</software></user-agent>\
        <bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag><enable xmlns='urn:xmpp:carbons:2'/>\
        <enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>\
        <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>";
    let success = c
        .scram_sasl2("alice", PASSWORD, Hash::Sha256, None, inline)
        .await
        .expect("sasl2 login");
    let id = success
        .child("authorization-identifier", SASL2)
        .unwrap()
        .text();
    assert!(id.starts_with("alice@example.test/Phone."), "{id}");
    let bound = success
        .child("bound", BIND2)
        .unwrap_or_else(|| panic!("{}", success.to_xml()));
    let enabled = bound.child("enabled", ns::SM).expect("sm enabled inline");
    assert_eq!(enabled.attr("resume"), Some("true"));
    let token_el = success.child("token", FAST).expect("token issued");
    let token = token_el.attr("token").unwrap().to_string();
    assert!(token_el.attr("expiry").is_some());
    // No stream restart: the features of the bound stream follow at once.
    c.expect_match("features", |e| e.is("features", ns::STREAM))
        .await;
    c.ping_server().await;
    // Carbons were enabled inline: a message from another resource arrives as a carbon.
    c.send("<presence/>").await;
    let mut desk = server.login("alice", "desk").await;
    desk.send("<message to='bob@example.test' type='chat'><body>hi bob</body></message>")
        .await;
    c.expect_match("sent carbon", |e| e.child("sent", ns::CARBONS).is_some())
        .await;
    drop(c);

    // Next login: the token, no password, still one round trip.
    let (mut c2, _) = secured(&server).await;
    let mut initial = b"alice\0".to_vec();
    initial.extend(ht(&token, b"Initiator", b""));
    c2.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
         <initial-response>{}</initial-response><user-agent id='phone-1'/>\
         <bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag></bind><fast xmlns='urn:xmpp:fast:0'/></authenticate>",
        B64.encode(&initial)
    ))
    .await;
    let s = c2.expect_stanza().await;
    assert!(s.is("success", SASL2), "{}", s.to_xml());
    let data = B64
        .decode(s.child("additional-data", SASL2).unwrap().text().trim())
        .unwrap();
    assert_eq!(
        data,
        ht(&token, b"Responder", b""),
        "server proves it knows the token"
    );
    c2.expect_match("features", |e| e.is("features", ns::STREAM))
        .await;
    c2.ping_server().await;

    // A wrong token fails; another client's id does not share tokens.
    for (agent, tok) in [("phone-1", "not-the-token"), ("laptop", token.as_str())] {
        let (mut c3, _) = secured(&server).await;
        let mut initial = b"alice\0".to_vec();
        initial.extend(ht(tok, b"Initiator", b""));
        c3.send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
             <initial-response>{}</initial-response><user-agent id='{agent}'/><fast xmlns='urn:xmpp:fast:0'/></authenticate>",
            B64.encode(&initial)
        ))
        .await;
        let f = c3.expect_stanza().await;
        assert!(f.is("failure", SASL2), "{}", f.to_xml());
        assert!(
            f.child("not-authorized", ns::SASL).is_some(),
            "{}",
            f.to_xml()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl2_without_bind_then_legacy_bind() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let (mut c, _) = secured(&server).await;
    let success = c
        .scram_sasl2("alice", PASSWORD, Hash::Sha1, None, "")
        .await
        .expect("login");
    assert_eq!(
        success
            .child("authorization-identifier", SASL2)
            .unwrap()
            .text(),
        "alice@example.test"
    );
    let f = c
        .expect_match("features", |e| e.is("features", ns::STREAM))
        .await;
    assert!(f.child("bind", ns::BIND).is_some(), "{}", f.to_xml());
    c.bind(Some("legacy")).await;
    c.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_sasl2_failure() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let (mut c, _) = secured(&server).await;
    let r = c
        .scram_sasl2("alice", "wrong", Hash::Sha256, None, "")
        .await;
    assert_eq!(r.err().as_deref(), Some("not-authorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_resumption_in_the_authenticate_request() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let (mut c, _) = secured(&server).await;
    let success = c
        .scram_sasl2(
            "alice",
            PASSWORD,
            Hash::Sha256,
            None,
            "<bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>",
        )
        .await
        .unwrap();
    let full = success
        .child("authorization-identifier", SASL2)
        .unwrap()
        .text();
    let previd = success
        .child("bound", BIND2)
        .and_then(|b| b.child("enabled", ns::SM))
        .and_then(|e| e.attr("id"))
        .unwrap()
        .to_string();
    c.expect_match("features", |e| e.is("features", ns::STREAM))
        .await;
    c.send("<presence/>").await;
    c.ping_server().await;
    let mut bob = server.login("bob", "pc").await;
    bob.send(&format!(
        "<message to='{full}' type='chat'><body>one</body></message>"
    ))
    .await;
    c.expect_match("one", |e| body(e).as_deref() == Some("one"))
        .await;
    drop(c);
    bob.send(&format!(
        "<message to='{full}' type='chat'><body>two</body></message>"
    ))
    .await;
    bob.ping_server().await;

    let (mut c2, _) = secured(&server).await;
    // Handled so far by the client: presence reflection, ping result, "one" = 3.
    let success = c2
        .scram_sasl2(
            "alice",
            PASSWORD,
            Hash::Sha256,
            None,
            &format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='3'/>"),
        )
        .await
        .unwrap();
    let resumed = success
        .child("resumed", ns::SM)
        .unwrap_or_else(|| panic!("{}", success.to_xml()));
    assert_eq!(resumed.attr("previd"), Some(previd.as_str()));
    c2.expect_match("two", |e| body(e).as_deref() == Some("two"))
        .await;
    c2.expect_no_match("one again", Duration::from_millis(300), |e: &Element| {
        body(e).as_deref() == Some("one")
    })
    .await;
    c2.ping_server().await;
}
