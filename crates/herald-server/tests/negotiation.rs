//! RFC 6120 stream negotiation as a client sees it: STARTTLS, SASL (SCRAM with and without
//! channel binding, PLAIN), resource binding, legacy session, direct TLS.

mod common;

use common::{Cb, Client, Hash, Mech, TestServer, DOMAIN, PASSWORD};
use herald_core::ns;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_before_tls_require_starttls() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.c2s).await;
    let f = c.open_stream().await;
    let starttls = f
        .child("starttls", ns::TLS)
        .unwrap_or_else(|| panic!("no <starttls/> offered: {}", f.to_xml()));
    assert!(
        starttls.child("required", ns::TLS).is_some(),
        "<starttls/> is not <required/>: {}",
        f.to_xml()
    );
    assert!(
        f.child("mechanisms", ns::SASL).is_none(),
        "SASL must not be offered before TLS when encryption is required: {}",
        f.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_before_tls_is_refused_and_stream_closed() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    for mech in [Mech::Plain, Mech::SHA256] {
        let mut c = Client::connect(server.c2s).await;
        c.open_stream().await;
        let r = c.authenticate("alice", PASSWORD, mech).await;
        assert_eq!(
            r,
            Err("encryption-required".to_string()),
            "{} before TLS",
            mech.name()
        );
        let cond = c.expect_stream_error().await;
        assert_eq!(cond, "policy-violation", "stream error after refused auth");
    }
    server.assert_still_serving("alice").await;
}

/// The server picks the TLS 1.3 suite by its own order (AES-128-GCM-SHA256 first, whose key
/// schedule uses hardware SHA-256), though this client, like most, lists AES-256 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_suite_is_the_servers_choice() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    let common::Transport::Tls(tls) = &c.io else {
        panic!("not on TLS after STARTTLS");
    };
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    // The client still completes a login over it.
    c.authenticate("alice", PASSWORD, Mech::SHA256)
        .await
        .expect("login over AES-128-GCM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mechanisms_after_tls() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    let f = c.starttls().await;
    assert!(
        f.child("starttls", ns::TLS).is_none(),
        "STARTTLS offered again"
    );
    let mechs = c.mechanisms();
    for m in [
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "SCRAM-SHA-512",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-512-PLUS",
        "PLAIN",
    ] {
        assert!(mechs.iter().any(|x| x == m), "{m} missing from {mechs:?}");
    }
    // XEP-0440: the channel-binding types are announced.
    let cb = f
        .child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        .unwrap_or_else(|| panic!("no sasl-channel-binding: {}", f.to_xml()));
    let types: Vec<_> = cb.elements().filter_map(|e| e.attr("type")).collect();
    assert!(types.contains(&"tls-exporter"), "{types:?}");
    assert!(types.contains(&"tls-server-end-point"), "{types:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scram_variant_logs_in() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut mechs = Vec::new();
    for h in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
        mechs.push(Mech::Scram(h, None));
        mechs.push(Mech::Scram(h, Some(Cb::TlsExporter)));
        mechs.push(Mech::Scram(h, Some(Cb::TlsServerEndPoint)));
    }
    for (i, mech) in mechs.into_iter().enumerate() {
        // Client::login verifies the server signature carried in <success/>.
        let res = format!("r{i}");
        let mut c = Client::login(server.c2s, "alice", PASSWORD, mech, Some(&res)).await;
        assert_eq!(c.jid, format!("alice@{DOMAIN}/{res}"), "{}", mech.name());
        c.ping_server().await;
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_mismatch_is_refused() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    // Pretend the TLS connection is a different one (as a MITM's would be).
    c.exporter = Some(vec![7u8; 32]);
    let r = c
        .authenticate(
            "alice",
            PASSWORD,
            Mech::Scram(Hash::Sha256, Some(Cb::TlsExporter)),
        )
        .await;
    assert_eq!(r, Err("not-authorized".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_inside_tls_works() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::login(server.c2s, "alice", PASSWORD, Mech::Plain, Some("plain")).await;
    assert_eq!(c.jid, format!("alice@{DOMAIN}/plain"));
    c.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_is_refused_without_tls_even_when_tls_is_optional() {
    let server = TestServer::with_config("[c2s]\nrequire_encryption = false\n").await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    let f = c.open_stream().await;
    let starttls = f
        .child("starttls", ns::TLS)
        .expect("STARTTLS still offered");
    assert!(starttls.child("required", ns::TLS).is_none());
    let mechs = c.mechanisms();
    assert!(mechs.iter().any(|m| m == "SCRAM-SHA-256"), "{mechs:?}");
    assert!(
        !mechs.iter().any(|m| m == "PLAIN" || m.ends_with("-PLUS")),
        "PLAIN and -PLUS need TLS: {mechs:?}"
    );
    let r = c.authenticate("alice", PASSWORD, Mech::Plain).await;
    assert_eq!(r, Err("encryption-required".to_string()));
    // The stream stays usable: SCRAM without TLS is allowed by this configuration.
    c.authenticate("alice", PASSWORD, Mech::SHA256)
        .await
        .expect("SCRAM without TLS when encryption is optional");
    c.open_stream().await;
    c.bind(Some("clear")).await;
    c.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_not_authorized() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    for mech in [Mech::SHA256, Mech::Plain] {
        let mut c = Client::connect(server.c2s).await;
        c.open_stream().await;
        c.starttls().await;
        let r = c.authenticate("alice", "wrong password", mech).await;
        assert_eq!(r, Err("not-authorized".to_string()), "{}", mech.name());
        // A retry on the same stream with the right password succeeds.
        c.authenticate("alice", PASSWORD, mech)
            .await
            .expect("retry with the right password");
    }
    // An unknown user looks the same as a wrong password.
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    let r = c.authenticate("nobody", PASSWORD, Mech::SHA256).await;
    assert_eq!(r, Err("not-authorized".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_with_and_without_resource_and_legacy_session() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = Client::login(server.c2s, "alice", PASSWORD, Mech::SHA256, Some("desk")).await;
    assert_eq!(a.jid, format!("alice@{DOMAIN}/desk"));

    let mut b = Client::login(server.c2s, "alice", PASSWORD, Mech::SHA256, None).await;
    let resource = b
        .jid
        .strip_prefix(&format!("alice@{DOMAIN}/"))
        .unwrap_or_else(|| panic!("generated JID {} is not alice's", b.jid));
    assert!(!resource.is_empty(), "server-generated resource is empty");
    assert_ne!(resource, "desk");

    // RFC 3921 legacy session establishment still gets a result.
    let r = b
        .iq(
            "set",
            None,
            "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    b.ping_server().await;
    a.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_features_after_auth() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::connect(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.authenticate("alice", PASSWORD, Mech::SHA512)
        .await
        .unwrap();
    let f = c.open_stream().await;
    assert!(f.child("bind", ns::BIND).is_some(), "{}", f.to_xml());
    assert!(f.child("mechanisms", ns::SASL).is_none(), "{}", f.to_xml());
    assert!(f.child("ver", ns::ROSTER_VER).is_some(), "{}", f.to_xml());
    // Before binding, other requests are refused.
    let r = c
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(
        common::stanza_error(&r).map(|(_, c)| c).as_deref(),
        Some("not-authorized"),
        "{}",
        r.to_xml()
    );
    c.bind(Some("x")).await;
    c.ping_server().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_port_works() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut c = Client::connect_direct_tls(server.direct_tls).await;
    let f = c.open_stream().await;
    assert!(c.is_tls());
    assert!(
        f.child("starttls", ns::TLS).is_none(),
        "no STARTTLS inside TLS: {}",
        f.to_xml()
    );
    assert!(
        c.mechanisms().iter().any(|m| m == "SCRAM-SHA-256-PLUS"),
        "{:?}",
        c.mechanisms()
    );
    c.authenticate(
        "alice",
        PASSWORD,
        Mech::Scram(Hash::Sha256, Some(Cb::TlsExporter)),
    )
    .await
    .expect("SCRAM-SHA-256-PLUS over direct TLS");
    c.open_stream().await;
    c.bind(Some("direct")).await;
    c.ping_server().await;
}
