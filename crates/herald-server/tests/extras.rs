//! XEP-0215 external service discovery, XEP-0157 contact addresses and XEP-0077 in-band
//! registration, as raw clients see them.

mod common;

use base64::Engine as _;
use common::{stanza_error, Client, Mech, TestServer, DOMAIN, PASSWORD};
use herald_core::ns;
use herald_xml::Element;
use hmac::{Hmac, Mac};

const REGISTER: &str = "jabber:iq:register";
const EXTDISCO: &str = "urn:xmpp:extdisco:2";

const ENABLED: &str = "[registration]\nenabled_domains = [\"example.test\"]\n";

fn condition(r: &Element) -> Option<String> {
    stanza_error(r).map(|(_, c)| c)
}

fn assert_result(r: &Element) {
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
}

/// Connect, STARTTLS; returns the client and the features offered before SASL.
async fn secured(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    let f = c.starttls().await;
    (c, f)
}

fn register_set(user: &str, password: &str) -> String {
    format!(
        "<query xmlns='{REGISTER}'><username>{user}</username><password>{password}</password></query>"
    )
}

async fn disco_info(c: &mut Client) -> Element {
    let r = c
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_result(&r);
    r.child("query", ns::DISCO_INFO).expect("query").clone()
}

fn features(q: &Element) -> Vec<String> {
    q.elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_off_by_default() {
    let server = TestServer::start().await;
    let (mut c, f) = secured(&server).await;
    assert!(
        f.child("register", "http://jabber.org/features/iq-register")
            .is_none(),
        "register feature offered: {}",
        f.to_xml()
    );
    let r = c
        .iq("get", None, &format!("<query xmlns='{REGISTER}'/>"))
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-allowed"),
        "{}",
        r.to_xml()
    );
    let r = c.iq("set", None, &register_set("newbie", PASSWORD)).await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-allowed"),
        "{}",
        r.to_xml()
    );
    assert_eq!(
        c.authenticate("newbie", PASSWORD, Mech::SHA256).await,
        Err("not-authorized".into()),
        "nothing was created"
    );
    c.close().await;

    // Signed in: no password change either, and nothing announced in disco.
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    let r = a
        .iq("set", None, &register_set("alice", "another password"))
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-allowed"),
        "{}",
        r.to_xml()
    );
    let q = disco_info(&mut a).await;
    let feats = features(&q);
    assert!(!feats.iter().any(|f| f == REGISTER), "{feats:?}");
    assert!(!feats.iter().any(|f| f == EXTDISCO), "{feats:?}");
    assert!(
        q.child("x", ns::DATA_FORMS).is_none(),
        "no contact form without [contact]: {}",
        q.to_xml()
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_log_in() {
    let server = TestServer::with_config(ENABLED).await;
    server.add_user("taken").await;
    let (mut c, f) = secured(&server).await;
    assert!(
        f.child("register", "http://jabber.org/features/iq-register")
            .is_some(),
        "register feature missing: {}",
        f.to_xml()
    );
    assert!(
        f.child("mechanisms", ns::SASL).is_some(),
        "SASL still offered"
    );

    let r = c
        .iq("get", None, &format!("<query xmlns='{REGISTER}'/>"))
        .await;
    assert_result(&r);
    let q = r.child("query", REGISTER).expect("query");
    for name in ["instructions", "username", "password"] {
        assert!(q.child(name, REGISTER).is_some(), "{name}: {}", r.to_xml());
    }

    // Error cases.
    let r = c.iq("set", None, &register_set("taken", PASSWORD)).await;
    assert_eq!(condition(&r).as_deref(), Some("conflict"), "{}", r.to_xml());
    let r = c
        .iq(
            "set",
            None,
            &format!("<query xmlns='{REGISTER}'><username>nopw</username><password/></query>"),
        )
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        r.to_xml()
    );
    let r = c
        .iq(
            "set",
            None,
            &format!("<query xmlns='{REGISTER}'><username>nopw</username></query>"),
        )
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        r.to_xml()
    );
    let r = c.iq("set", None, &register_set("bad@name", PASSWORD)).await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        r.to_xml()
    );
    let r = c.iq("set", None, &register_set("shortpw", "abc")).await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        r.to_xml()
    );

    // Success, then SASL on the same stream with the new account.
    let r = c.iq("set", None, &register_set("Newbie", PASSWORD)).await;
    assert_result(&r);
    let r = c.iq("set", None, &register_set("newbie", PASSWORD)).await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("conflict"),
        "names are case-mapped: {}",
        r.to_xml()
    );
    c.authenticate("newbie", PASSWORD, Mech::SHA256)
        .await
        .expect("the new account authenticates");
    let f = c.open_stream().await;
    assert!(f.child("bind", ns::BIND).is_some());
    let jid = c.bind(Some("r")).await;
    assert_eq!(jid, "newbie@example.test/r");
    let feats = features(&disco_info(&mut c).await);
    assert!(feats.iter().any(|f| f == REGISTER), "{feats:?}");
    let r = c
        .iq("get", None, &format!("<query xmlns='{REGISTER}'/>"))
        .await;
    assert_result(&r);
    assert!(
        r.child("query", REGISTER)
            .and_then(|q| q.child("registered", REGISTER))
            .is_some(),
        "{}",
        r.to_xml()
    );
    c.close().await;

    // And a fresh login with it.
    let c = Client::login(server.c2s, "newbie", PASSWORD, Mech::SHA512, Some("x")).await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_mode() {
    let server = TestServer::with_config(
        "[registration]\nenabled_domains = [\"example.test\"]\nmode = \"allowlist\"\nallowlist = [\"Alice\"]\n",
    )
    .await;
    let (mut c, _) = secured(&server).await;
    let r = c.iq("set", None, &register_set("bob", PASSWORD)).await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-allowed"),
        "{}",
        r.to_xml()
    );
    let r = c.iq("set", None, &register_set("alice", PASSWORD)).await;
    assert_result(&r);
    c.authenticate("alice", PASSWORD, Mech::SHA256)
        .await
        .expect("alice registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_rate_limited_per_ip() {
    let server = TestServer::with_config(
        "[registration]\nenabled_domains = [\"example.test\"]\nmax_per_ip = 2\nwindow_secs = 600\n",
    )
    .await;
    server.add_user("taken").await;
    let (mut c, _) = secured(&server).await;
    // A failed attempt does not use up the allowance.
    let r = c.iq("set", None, &register_set("taken", PASSWORD)).await;
    assert_eq!(condition(&r).as_deref(), Some("conflict"), "{}", r.to_xml());
    for u in ["one", "two"] {
        let r = c.iq("set", None, &register_set(u, PASSWORD)).await;
        assert_result(&r);
    }
    c.close().await;
    // A new connection from the same address is still limited.
    let (mut c, _) = secured(&server).await;
    let r = c.iq("set", None, &register_set("three", PASSWORD)).await;
    assert_eq!(
        stanza_error(&r),
        Some(("wait".into(), "resource-constraint".into())),
        "{}",
        r.to_xml()
    );
    assert_eq!(
        c.authenticate("three", PASSWORD, Mech::SHA256).await,
        Err("not-authorized".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_and_account_removal() {
    let server = TestServer::with_config(ENABLED).await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = server.login("alice", "a").await;

    let r = a
        .iq("set", None, &register_set("bob", "a new password"))
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("not-allowed"),
        "{}",
        r.to_xml()
    );
    let r = a
        .iq(
            "set",
            None,
            &format!("<query xmlns='{REGISTER}'><password>x1234567890</password></query>"),
        )
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("bad-request"),
        "{}",
        r.to_xml()
    );
    let r = a
        .iq(
            "set",
            Some(DOMAIN),
            &register_set("alice", "a new password"),
        )
        .await;
    assert_result(&r);

    let c = Client::login(
        server.c2s,
        "alice",
        "a new password",
        Mech::SHA256,
        Some("b"),
    )
    .await;
    c.close().await;
    let mut old = Client::connect(server.c2s).await;
    old.open_stream().await;
    old.starttls().await;
    assert_eq!(
        old.authenticate("alice", PASSWORD, Mech::SHA256).await,
        Err("not-authorized".into()),
        "the old password no longer works"
    );

    // Removal: <remove/> must be alone; then every session ends with not-authorized.
    let mut second =
        Client::login(server.c2s, "alice", "a new password", Mech::SHA1, Some("c")).await;
    let r = a
        .iq(
            "set",
            None,
            &format!("<query xmlns='{REGISTER}'><remove/><username>alice</username></query>"),
        )
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("bad-request"),
        "{}",
        r.to_xml()
    );
    let r = a
        .iq(
            "set",
            None,
            &format!("<query xmlns='{REGISTER}'><remove/></query>"),
        )
        .await;
    assert_result(&r);
    assert_eq!(a.expect_stream_error().await, "not-authorized");
    assert_eq!(second.expect_stream_error().await, "not-authorized");
    let mut gone = Client::connect(server.c2s).await;
    gone.open_stream().await;
    gone.starttls().await;
    assert_eq!(
        gone.authenticate("alice", "a new password", Mech::SHA256)
            .await,
        Err("not-authorized".into()),
        "the account is gone"
    );
    server.assert_still_serving("bob").await;
}

const SERVICES: &str = r#"
[[external_service]]
type = "turn"
host = "turn.example.test"
port = 3478
transport = "udp"
restricted = true
secret = "a-shared-turn-secret"
ttl_secs = 3600

[[external_service]]
type = "stun"
host = "stun.example.test"
port = 3478
transport = "udp"

[[external_service]]
type = "turns"
host = "turn.example.test"
port = 5349
transport = "tcp"
username = "static-user"
password = "static-pass"
"#;

fn services_of(r: &Element, parent: &str) -> Vec<Element> {
    r.child(parent, EXTDISCO)
        .unwrap_or_else(|| panic!("no <{parent}/>: {}", r.to_xml()))
        .elements()
        .filter(|e| e.is("service", EXTDISCO))
        .cloned()
        .collect()
}

/// Checks TURN REST API credentials for alice@example.test independently of the server.
fn check_rest_credentials(s: &Element, secret: &str, ttl: u64) {
    let username = s.attr("username").expect("username");
    let (expiry, user) = username.split_once(':').expect("expiry:user");
    assert_eq!(user, "alice@example.test");
    let expiry: u64 = expiry.parse().expect("unix time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + ttl - 120 && expiry <= now + ttl + 5,
        "expiry {expiry} vs now {now}"
    );
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(s.attr("password"), Some(expected.as_str()));
    let expires = s.attr("expires").expect("expires");
    let t = time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("expires {expires:?} is not a datetime: {e}"));
    assert!(expires.ends_with('Z'), "UTC: {expires}");
    assert_eq!(
        t.unix_timestamp() as u64,
        expiry,
        "expires matches the username"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_services_and_credentials() {
    let server = TestServer::with_config(SERVICES).await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    let feats = features(&disco_info(&mut a).await);
    assert!(feats.iter().any(|f| f == EXTDISCO), "{feats:?}");

    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<services xmlns='{EXTDISCO}'/>"),
        )
        .await;
    assert_result(&r);
    let all = services_of(&r, "services");
    assert_eq!(all.len(), 3, "{}", r.to_xml());
    let turn = &all[0];
    assert_eq!(turn.attr("type"), Some("turn"));
    assert_eq!(turn.attr("host"), Some("turn.example.test"));
    assert_eq!(turn.attr("port"), Some("3478"));
    assert_eq!(turn.attr("transport"), Some("udp"));
    assert_eq!(turn.attr("restricted"), Some("1"));
    check_rest_credentials(turn, "a-shared-turn-secret", 3600);
    let stun = &all[1];
    assert_eq!(stun.attr("type"), Some("stun"));
    assert!(stun.attr("username").is_none() && stun.attr("restricted").is_none());
    assert_eq!(all[2].attr("username"), Some("static-user"));
    assert_eq!(all[2].attr("password"), Some("static-pass"));

    // Type filter.
    let r = a
        .iq(
            "get",
            None,
            &format!("<services xmlns='{EXTDISCO}' type='stun'/>"),
        )
        .await;
    let only = services_of(&r, "services");
    assert_eq!(only.len(), 1, "{}", r.to_xml());
    assert_eq!(only[0].attr("host"), Some("stun.example.test"));

    // Credentials for one service.
    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!(
                "<credentials xmlns='{EXTDISCO}'><service host='turn.example.test' type='turn'/></credentials>"
            ),
        )
        .await;
    assert_result(&r);
    let creds = services_of(&r, "credentials");
    assert_eq!(creds.len(), 1, "{}", r.to_xml());
    check_rest_credentials(&creds[0], "a-shared-turn-secret", 3600);
    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!(
                "<credentials xmlns='{EXTDISCO}'><service host='turn.example.test' type='turns' port='5349'/></credentials>"
            ),
        )
        .await;
    assert_eq!(
        services_of(&r, "credentials")[0].attr("username"),
        Some("static-user")
    );

    // Errors.
    for (payload, cond) in [
        (
            "<credentials xmlns='urn:xmpp:extdisco:2'><service host='elsewhere.test' type='turn'/></credentials>",
            "item-not-found",
        ),
        (
            "<credentials xmlns='urn:xmpp:extdisco:2'><service host='stun.example.test' type='stun'/></credentials>",
            "item-not-found",
        ),
        (
            "<credentials xmlns='urn:xmpp:extdisco:2'><service type='turn'/></credentials>",
            "bad-request",
        ),
        ("<credentials xmlns='urn:xmpp:extdisco:2'/>", "bad-request"),
    ] {
        let r = a.iq("get", Some(DOMAIN), payload).await;
        assert_eq!(condition(&r).as_deref(), Some(cond), "{payload}: {}", r.to_xml());
    }
    let r = a
        .iq(
            "set",
            Some(DOMAIN),
            &format!("<services xmlns='{EXTDISCO}'/>"),
        )
        .await;
    assert_eq!(
        condition(&r).as_deref(),
        Some("bad-request"),
        "{}",
        r.to_xml()
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extdisco_is_refused_before_authentication() {
    let server = TestServer::with_config(SERVICES).await;
    let (mut c, _) = secured(&server).await;
    c.send(&format!(
        "<iq type='get' id='x1'><services xmlns='{EXTDISCO}'/></iq>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_addresses_in_disco_info() {
    let server = TestServer::with_config(
        "[contact]\nabuse = [\"mailto:abuse@example.test\"]\n\
         admin = [\"xmpp:admin@example.test\", \"mailto:admin@example.test\"]\n\
         support = [\"https://example.test/support\"]\n",
    )
    .await;
    server.add_user("alice").await;
    let mut a = server.login("alice", "a").await;
    let q = disco_info(&mut a).await;
    let forms: Vec<&Element> = q.elements().filter(|e| e.is("x", ns::DATA_FORMS)).collect();
    assert_eq!(forms.len(), 1, "{}", q.to_xml());
    let form = forms[0];
    assert_eq!(form.attr("type"), Some("result"));
    let field = |var: &str| -> Option<(Option<String>, Vec<String>)> {
        form.elements()
            .find(|f| f.name == "field" && f.attr("var") == Some(var))
            .map(|f| {
                (
                    f.attr("type").map(str::to_string),
                    f.elements()
                        .filter(|v| v.name == "value")
                        .map(|v| v.text())
                        .collect(),
                )
            })
    };
    assert_eq!(
        field("FORM_TYPE"),
        Some((
            Some("hidden".into()),
            vec!["http://jabber.org/network/serverinfo".into()]
        ))
    );
    assert_eq!(
        field("abuse-addresses").map(|f| f.1),
        Some(vec!["mailto:abuse@example.test".to_string()])
    );
    assert_eq!(
        field("admin-addresses").map(|f| f.1),
        Some(vec![
            "xmpp:admin@example.test".to_string(),
            "mailto:admin@example.test".to_string()
        ])
    );
    assert_eq!(
        field("support-addresses").map(|f| f.1),
        Some(vec!["https://example.test/support".to_string()])
    );
    assert!(
        field("sales-addresses").is_none(),
        "empty fields are left out"
    );
    // The form comes after identities and features (XEP-0128 §2).
    assert!(q
        .elements()
        .last()
        .is_some_and(|e| e.is("x", ns::DATA_FORMS)));
    a.close().await;
}
