//! XEP-0402 bookmarks kept in sync with XEP-0048 (in XEP-0049 private storage and in PEP),
//! and XEP-0398 avatar conversion with XEP-0153 hashes in presence, as raw clients see them.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{Client, TestServer, DOMAIN, WAIT};
use herald_core::ns;
use herald_server::ext::caps::{sha1_ver, verification_string};
use herald_xml::Element;
use sha1::Digest;

const NATIVE: &str = "urn:xmpp:bookmarks:1";
const LEGACY: &str = "storage:bookmarks";
const DATA: &str = "urn:xmpp:avatar:data";
const META: &str = "urn:xmpp:avatar:metadata";
const UPDATE: &str = "vcard-temp:x:update";
const CAPS_NODE: &str = "https://herald.test/client";

fn assert_ok(r: &Element) {
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
}

fn bare(c: &Client) -> String {
    c.jid.split('/').next().unwrap().to_string()
}

async fn login(server: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = server.login(user, resource).await;
    let r = c.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    assert_ok(&r);
    c
}

/// Presence with caps for `features`, answering the server's disco#info; returns once the
/// server has resolved them.
async fn caps_presence(server: &TestServer, c: &mut Client, features: &[&str]) {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "client")
            .with_attr("type", "pc"),
    );
    for f in features {
        q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
    }
    let ver = sha1_ver(&verification_string(&q).expect("well-formed"));
    c.send(&format!(
        "<presence><c xmlns='{}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>",
        ns::CAPS
    ))
    .await;
    let node = format!("{CAPS_NODE}#{ver}");
    let iq = c
        .expect_match("disco#info caps query", |e| {
            e.name == "iq"
                && e.child("query", ns::DISCO_INFO)
                    .is_some_and(|q| q.attr("node") == Some(node.as_str()))
        })
        .await;
    let mut answer = q.clone();
    answer.set_attr("node", node.as_str());
    let reply = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", iq.attr("id").unwrap())
        .with_attr("to", DOMAIN)
        .with_child(answer);
    c.send(&reply.to_xml()).await;
    let jid = herald_core::Jid::parse(&c.jid).unwrap();
    let srv = server.running.as_ref().unwrap().server.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    let resolved = || {
        srv.registry
            .session(&jid)
            .is_some_and(|s| s.shared.caps.lock().unwrap().features.is_some())
    };
    while !resolved() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "caps never resolved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.ping_server().await;
}

async fn subscribe(x: &mut Client, y: &mut Client) {
    let (xj, yj) = (bare(x), bare(y));
    x.send(&format!("<presence type='subscribe' to='{yj}'/>"))
        .await;
    y.expect_match("subscribe", |e| {
        e.attr("type") == Some("subscribe") && e.attr("from") == Some(xj.as_str())
    })
    .await;
    y.send(&format!("<presence type='subscribed' to='{xj}'/>"))
        .await;
    y.ping_server().await;
    x.ping_server().await;
}

async fn befriend(a: &mut Client, b: &mut Client) {
    subscribe(a, b).await;
    subscribe(b, a).await;
}

fn options(fields: &[(&str, &str)]) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let mut f = String::new();
    for (var, value) in fields {
        f.push_str(&format!(
            "<field var='pubsub#{var}'><value>{value}</value></field>"
        ));
    }
    format!(
        "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' \
         type='hidden'><value>{}</value></field>{f}</x></publish-options>",
        ns::PUBSUB_PUBLISH_OPTIONS
    )
}

const BOOKMARK_OPTIONS: &[(&str, &str)] = &[
    ("persist_items", "true"),
    ("max_items", "max"),
    ("send_last_published_item", "never"),
    ("access_model", "whitelist"),
];

async fn publish(c: &mut Client, node: &str, id: &str, payload: &str, opts: &[(&str, &str)]) {
    let r = c
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{}'><publish node='{node}'><item id='{id}'>{payload}</item>\
                 </publish>{}</pubsub>",
                ns::PUBSUB,
                options(opts)
            ),
        )
        .await;
    assert_ok(&r);
}

/// `(id, payload)` of a node's items; empty when the node does not exist.
async fn items(c: &mut Client, owner: Option<&str>, node: &str) -> Vec<(String, Element)> {
    let r = c
        .iq(
            "get",
            owner,
            &format!(
                "<pubsub xmlns='{}'><items node='{node}'/></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    if r.attr("type") != Some("result") {
        return Vec::new();
    }
    r.child("pubsub", ns::PUBSUB)
        .and_then(|p| p.child("items", ns::PUBSUB))
        .map(|i| {
            i.elements()
                .map(|it| {
                    (
                        it.attr("id").unwrap_or("").to_string(),
                        it.elements().next().cloned().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn private_bookmarks(c: &mut Client) -> Element {
    let r = c
        .iq(
            "get",
            None,
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
        )
        .await;
    assert_ok(&r);
    r.child("query", ns::PRIVATE)
        .and_then(|q| q.child("storage", LEGACY))
        .cloned()
        .expect("storage in the private result")
}

async fn set_private_bookmarks(c: &mut Client, storage: &str) {
    let r = c
        .iq(
            "set",
            None,
            &format!("<query xmlns='jabber:iq:private'>{storage}</query>"),
        )
        .await;
    assert_ok(&r);
}

fn conference<'a>(storage: &'a Element, jid: &str) -> Option<&'a Element> {
    storage
        .elements()
        .find(|c| c.is("conference", LEGACY) && c.attr("jid") == Some(jid))
}

fn native_of<'a>(list: &'a [(String, Element)], jid: &str) -> Option<&'a Element> {
    list.iter().find(|(id, _)| id == jid).map(|(_, p)| p)
}

fn child_text(e: &Element, name: &str, ns: &str) -> Option<String> {
    e.child(name, ns).map(|c| c.text())
}

fn is_bookmark_event(e: &Element) -> bool {
    e.name == "message"
        && e.child("event", ns::PUBSUB_EVENT)
            .and_then(|ev| ev.child("items", ns::PUBSUB_EVENT))
            .is_some_and(|i| i.attr("node") == Some(NATIVE))
}

fn event_children(e: &Element) -> Vec<(String, String)> {
    e.child("event", ns::PUBSUB_EVENT)
        .and_then(|ev| ev.child("items", ns::PUBSUB_EVENT))
        .map(|i| {
            i.elements()
                .map(|x| (x.name.clone(), x.attr("id").unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_advertises_compat_and_conversion() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = login(&server, "alice", "a").await;
    let r = a
        .iq(
            "get",
            None,
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let q = r.child("query", ns::DISCO_INFO).expect("query");
    let features: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
    for f in [
        "urn:xmpp:bookmarks:1#compat",
        "urn:xmpp:bookmarks:1#compat-pep",
        "urn:xmpp:pep-vcard-conversion:0",
    ] {
        assert!(features.contains(&f), "{f} missing: {features:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_bookmarks_reach_both_legacy_stores() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = login(&server, "alice", "a").await;
    // A legacy client stored a URL bookmark earlier: the native format has no place for it,
    // and it must survive.
    set_private_bookmarks(
        &mut a,
        "<storage xmlns='storage:bookmarks'><url name='Site' url='https://example.test/'/></storage>",
    )
    .await;
    publish(
        &mut a,
        NATIVE,
        "orchard@conference.example.test",
        "<conference xmlns='urn:xmpp:bookmarks:1' name='The Orchard' autojoin='1'>\
         <nick>JC</nick><password>secret</password><extensions>\
         <state xmlns='http://myclient.example/bookmark/state' minimized='true'/>\
         </extensions></conference>",
        BOOKMARK_OPTIONS,
    )
    .await;
    publish(
        &mut a,
        NATIVE,
        "play@conference.example.test",
        "<conference xmlns='urn:xmpp:bookmarks:1'/>",
        BOOKMARK_OPTIONS,
    )
    .await;

    let storage = private_bookmarks(&mut a).await;
    let c = conference(&storage, "orchard@conference.example.test")
        .unwrap_or_else(|| panic!("{}", storage.to_xml()));
    assert_eq!(c.attr("name"), Some("The Orchard"));
    assert_eq!(c.attr("autojoin"), Some("true"));
    assert_eq!(child_text(c, "nick", LEGACY).as_deref(), Some("JC"));
    assert_eq!(child_text(c, "password", LEGACY).as_deref(), Some("secret"));
    let ext = c
        .child("state", "http://myclient.example/bookmark/state")
        .expect("extension kept");
    assert_eq!(ext.attr("minimized"), Some("true"));
    let p = conference(&storage, "play@conference.example.test").expect("second room");
    assert_eq!(p.attr("autojoin"), Some("false"));
    assert!(
        storage
            .elements()
            .any(|e| e.is("url", LEGACY) && e.attr("url") == Some("https://example.test/")),
        "url bookmark kept: {}",
        storage.to_xml()
    );

    // XEP-0048 in PEP (#compat-pep) holds the same list.
    let legacy = items(&mut a, None, LEGACY).await;
    assert_eq!(legacy.len(), 1, "{legacy:?}");
    assert_eq!(legacy[0].0, "current");
    assert_eq!(legacy[0].1, storage);

    // Retracting a native item removes it from the legacy lists.
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{}'><retract node='{NATIVE}' notify='true'>\
                 <item id='play@conference.example.test'/></retract></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    assert_ok(&r);
    let storage = private_bookmarks(&mut a).await;
    assert!(conference(&storage, "play@conference.example.test").is_none());
    assert!(conference(&storage, "orchard@conference.example.test").is_some());
    let legacy = items(&mut a, None, LEGACY).await;
    assert_eq!(legacy[0].1, storage);

    // The native node still answers the client's publish-options (precondition met).
    publish(
        &mut a,
        NATIVE,
        "third@conference.example.test",
        "<conference xmlns='urn:xmpp:bookmarks:1'/>",
        BOOKMARK_OPTIONS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_storage_bookmarks_become_native_items() {
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u).await;
    }
    let mut a = login(&server, "alice", "a").await;
    let notify = format!("{NATIVE}+notify");
    caps_presence(&server, &mut a, &[ns::CAPS, NATIVE, &notify]).await;
    set_private_bookmarks(
        &mut a,
        "<storage xmlns='storage:bookmarks'>\
         <conference jid='council@conference.example.test' name='Council' autojoin='true'>\
         <nick>Puck</nick><password>pw</password>\
         <state xmlns='http://myclient.example/bookmark/state' minimized='true'/></conference>\
         <conference jid='tavern@conference.example.test' name='Tavern'/>\
         <conference jid='gone@conference.example.test'/>\
         <url name='Site' url='https://example.test/'/></storage>",
    )
    .await;
    let native = items(&mut a, None, NATIVE).await;
    assert_eq!(native.len(), 3, "{native:?}");
    let c = native_of(&native, "council@conference.example.test").expect("council");
    assert!(c.is("conference", NATIVE), "{}", c.to_xml());
    assert_eq!(c.attr("name"), Some("Council"));
    assert!(matches!(c.attr("autojoin"), Some("true" | "1")));
    assert_eq!(child_text(c, "nick", NATIVE).as_deref(), Some("Puck"));
    assert_eq!(child_text(c, "password", NATIVE).as_deref(), Some("pw"));
    assert!(c
        .child("extensions", NATIVE)
        .and_then(|x| x.child("state", "http://myclient.example/bookmark/state"))
        .is_some());
    let t = native_of(&native, "tavern@conference.example.test").expect("tavern");
    assert!(!matches!(t.attr("autojoin"), Some("true" | "1")));
    // Each room was announced once to the +notify resource.
    for _ in 0..3 {
        a.expect_match("bookmark event", is_bookmark_event).await;
    }

    // The node is private (XEP-0223 whitelist): a contact cannot read it.
    let mut b = login(&server, "bob", "b").await;
    let r = b
        .iq(
            "get",
            Some(&bare(&a)),
            &format!(
                "<pubsub xmlns='{}'><items node='{NATIVE}'/></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", r.to_xml());

    // Legacy PEP got the same list.
    let legacy = items(&mut a, None, LEGACY).await;
    assert_eq!(legacy.len(), 1);
    assert!(conference(&legacy[0].1, "tavern@conference.example.test").is_some());

    // A new legacy list: one room renamed, one removed, one unchanged. Only the changes
    // are published (§5.3.2: no notification for unchanged items).
    set_private_bookmarks(
        &mut a,
        "<storage xmlns='storage:bookmarks'>\
         <conference jid='council@conference.example.test' name='Council' autojoin='true'>\
         <nick>Puck</nick><password>pw</password>\
         <state xmlns='http://myclient.example/bookmark/state' minimized='true'/></conference>\
         <conference jid='tavern@conference.example.test' name='The Tavern'/></storage>",
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = a.expect_match("bookmark event", is_bookmark_event).await;
        seen.extend(event_children(&ev));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "item".to_string(),
                "tavern@conference.example.test".to_string()
            ),
            (
                "retract".to_string(),
                "gone@conference.example.test".to_string()
            ),
        ]
    );
    a.ping_server().await;
    a.expect_no_match(
        "unchanged bookmark event",
        Duration::from_millis(300),
        is_bookmark_event,
    )
    .await;
    let native = items(&mut a, None, NATIVE).await;
    let ids: Vec<&str> = native.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(native.len(), 2, "{ids:?}");
    assert_eq!(
        native_of(&native, "tavern@conference.example.test")
            .unwrap()
            .attr("name"),
        Some("The Tavern")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_pep_bookmarks_reach_private_and_native() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = login(&server, "alice", "a").await;
    publish(
        &mut a,
        LEGACY,
        "current",
        "<storage xmlns='storage:bookmarks'><conference jid='pep@conference.example.test' \
         name='Via PEP' autojoin='1'><nick>N</nick></conference></storage>",
        &[("persist_items", "true"), ("access_model", "whitelist")],
    )
    .await;
    let storage = private_bookmarks(&mut a).await;
    let c = conference(&storage, "pep@conference.example.test")
        .unwrap_or_else(|| panic!("{}", storage.to_xml()));
    assert_eq!(c.attr("name"), Some("Via PEP"));
    assert_eq!(child_text(c, "nick", LEGACY).as_deref(), Some("N"));
    let native = items(&mut a, None, NATIVE).await;
    let n = native_of(&native, "pep@conference.example.test").expect("native item");
    assert_eq!(n.attr("name"), Some("Via PEP"));
    assert_eq!(child_text(n, "nick", NATIVE).as_deref(), Some("N"));

    // And the way back: a native publish shows up in the legacy PEP item.
    publish(
        &mut a,
        NATIVE,
        "new@conference.example.test",
        "<conference xmlns='urn:xmpp:bookmarks:1' name='New'/>",
        BOOKMARK_OPTIONS,
    )
    .await;
    let legacy = items(&mut a, None, LEGACY).await;
    assert!(conference(&legacy[0].1, "new@conference.example.test").is_some());
    assert!(conference(&legacy[0].1, "pep@conference.example.test").is_some());
}

// ---------------------------------------------------------------------------------------
// Avatars

/// A PNG header with an IHDR of 24×16 (enough for type and size sniffing).
fn png() -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend_from_slice(&[0, 0, 0, 24, 0, 0, 0, 16, 8, 6, 0, 0, 0, 1, 2, 3, 4]);
    b
}

fn sha1_hex(b: &[u8]) -> String {
    sha1::Sha1::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn get_vcard(c: &mut Client, to: Option<&str>) -> Element {
    let r = c.iq("get", to, "<vCard xmlns='vcard-temp'/>").await;
    assert_ok(&r);
    r.child("vCard", ns::VCARD).cloned().expect("vCard")
}

/// The next available presence from `from` (bare) with status `status`.
async fn presence_with_status(c: &mut Client, from: &str, status: &str) -> Element {
    c.expect_match(&format!("presence '{status}'"), |e| {
        e.name == "presence"
            && e.attr("type").is_none()
            && e.attr("from").is_some_and(|f| f.starts_with(from))
            && e.child("status", ns::CLIENT).map(|s| s.text()).as_deref() == Some(status)
    })
    .await
}

fn photo_of(p: &Element) -> Option<String> {
    p.child("x", UPDATE)?
        .child("photo", UPDATE)
        .map(|e| e.text())
}

async fn publish_avatar(c: &mut Client, bytes: &[u8], access: &str) -> String {
    let id = sha1_hex(bytes);
    publish(
        c,
        DATA,
        &id,
        &format!("<data xmlns='{DATA}'>{}</data>", B64.encode(bytes)),
        &[("access_model", access)],
    )
    .await;
    publish(
        c,
        META,
        &id,
        &format!(
            "<metadata xmlns='{META}'><info id='{id}' bytes='{}' type='image/png' \
             width='24' height='16'/></metadata>",
            bytes.len()
        ),
        &[("access_model", access)],
    )
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_avatar_goes_to_vcard_and_presence() {
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u).await;
    }
    let mut a = login(&server, "alice", "a").await;
    let mut b = login(&server, "bob", "b").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    befriend(&mut a, &mut b).await;
    let image = png();
    let id = publish_avatar(&mut a, &image, "open").await;

    // Anyone reading the vCard sees the photo.
    let card = get_vcard(&mut b, Some(&bare(&a))).await;
    let photo = card.child("PHOTO", ns::VCARD).expect("PHOTO");
    assert_eq!(
        photo.child("TYPE", ns::VCARD).map(|t| t.text()).as_deref(),
        Some("image/png")
    );
    let bin = photo.child("BINVAL", ns::VCARD).unwrap().text();
    assert_eq!(B64.decode(bin.trim()).unwrap(), image);

    // Presence carries the hash; a client's empty <x/> and a stale hash are replaced.
    let aj = bare(&a);
    for (n, x) in [
        "",
        "<x xmlns='vcard-temp:x:update'/>",
        "<x xmlns='vcard-temp:x:update'><photo>0000</photo></x>",
    ]
    .into_iter()
    .enumerate()
    {
        a.send(&format!("<presence><status>s{n}</status>{x}</presence>"))
            .await;
        let got = presence_with_status(&mut b, &aj, &format!("s{n}")).await;
        assert_eq!(
            photo_of(&got).as_deref(),
            Some(id.as_str()),
            "{}",
            got.to_xml()
        );
        assert_eq!(
            got.elements().filter(|e| e.is("x", UPDATE)).count(),
            1,
            "{}",
            got.to_xml()
        );
    }

    // A probe answer (bob's new resource logging in) carries the stored presence with it.
    let mut b2 = login(&server, "bob", "b2").await;
    b2.send("<presence/>").await;
    let got = presence_with_status(&mut b2, &aj, "s2").await;
    assert_eq!(photo_of(&got).as_deref(), Some(id.as_str()));

    // An explicit empty <photo/> stays (XEP-0398 §4).
    a.send(
        "<presence><status>empty</status><x xmlns='vcard-temp:x:update'><photo/></x></presence>",
    )
    .await;
    let got = presence_with_status(&mut b, &aj, "empty").await;
    assert_eq!(photo_of(&got).as_deref(), Some(""), "{}", got.to_xml());

    // Directed presence (a MUC join) gets it too.
    let bj = b.jid.clone();
    a.send(&format!(
        "<presence to='{bj}'><status>directed</status></presence>"
    ))
    .await;
    let got = presence_with_status(&mut b, &aj, "directed").await;
    assert_eq!(photo_of(&got).as_deref(), Some(id.as_str()));

    // Disabling the avatar (empty metadata) removes the photo.
    publish(
        &mut a,
        META,
        "none",
        &format!("<metadata xmlns='{META}'/>"),
        &[],
    )
    .await;
    let card = get_vcard(&mut a, None).await;
    assert!(
        card.child("PHOTO", ns::VCARD).is_none(),
        "{}",
        card.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_only_avatar_is_not_copied_to_the_public_vcard() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = login(&server, "alice", "a").await;
    publish_avatar(&mut a, &png(), "presence").await;
    let card = get_vcard(&mut a, None).await;
    assert!(
        card.child("PHOTO", ns::VCARD).is_none(),
        "{}",
        card.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcard_photo_is_published_to_pep() {
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u).await;
    }
    let mut a = login(&server, "alice", "a").await;
    let mut b = login(&server, "bob", "b").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    befriend(&mut a, &mut b).await;
    let meta_notify = format!("{META}+notify");
    caps_presence(&server, &mut b, &[ns::CAPS, META, &meta_notify]).await;
    let image = png();
    let id = sha1_hex(&image);
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>\
                 <BINVAL>{}</BINVAL></PHOTO></vCard>",
                B64.encode(&image)
            ),
        )
        .await;
    assert_ok(&r);

    // The contact is told about the new metadata (XEP-0398 §3.2).
    let ev = b
        .expect_match("metadata event", |e| {
            e.child("event", ns::PUBSUB_EVENT)
                .and_then(|ev| ev.child("items", ns::PUBSUB_EVENT))
                .is_some_and(|i| i.attr("node") == Some(META))
        })
        .await;
    let info = ev
        .child("event", ns::PUBSUB_EVENT)
        .and_then(|e| e.child("items", ns::PUBSUB_EVENT))
        .and_then(|i| i.child("item", ns::PUBSUB_EVENT))
        .and_then(|i| i.child("metadata", META))
        .and_then(|m| m.child("info", META))
        .cloned()
        .expect("info in the event");
    assert_eq!(info.attr("id"), Some(id.as_str()));
    assert_eq!(info.attr("bytes"), Some(image.len().to_string().as_str()));
    assert_eq!(info.attr("type"), Some("image/png"));
    assert_eq!(info.attr("width"), Some("24"));
    assert_eq!(info.attr("height"), Some("16"));

    // The data node holds the image under its SHA-1; the contact may read both.
    let aj = bare(&a);
    let data = items(&mut b, Some(&aj), DATA).await;
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].0, id);
    assert_eq!(B64.decode(data[0].1.text().trim()).unwrap(), image);
    let meta = items(&mut b, Some(&aj), META).await;
    assert_eq!(meta[0].0, id);

    // Setting the same photo again publishes nothing new.
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<vCard xmlns='vcard-temp'><FN>Alice L.</FN><PHOTO><TYPE>image/png</TYPE>\
                 <BINVAL>{}</BINVAL></PHOTO></vCard>",
                B64.encode(&image)
            ),
        )
        .await;
    assert_ok(&r);
    a.ping_server().await;
    b.ping_server().await;
    b.expect_no_match("second metadata event", Duration::from_millis(300), |e| {
        e.child("event", ns::PUBSUB_EVENT).is_some()
    })
    .await;

    // The next presence carries the hash.
    a.send("<presence><show>away</show></presence>").await;
    let got = b
        .expect_match("alice's presence", |e| {
            e.name == "presence"
                && e.child("show", ns::CLIENT).is_some()
                && e.attr("from").is_some_and(|f| f.starts_with(aj.as_str()))
        })
        .await;
    assert_eq!(photo_of(&got).as_deref(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_hash_comes_from_the_stored_vcard() {
    // A vCard stored before this server run (written straight to the store): the first
    // presence reads the hash from it.
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u).await;
    }
    let image = png();
    let card = format!(
        "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard>",
        B64.encode(&image)
    );
    server
        .store
        .set_private(&TestServer::jid("alice"), "vcard-temp", &card)
        .await
        .unwrap();
    let mut a = login(&server, "alice", "a").await;
    let mut b = login(&server, "bob", "b").await;
    a.send("<presence/>").await;
    b.send("<presence/>").await;
    befriend(&mut a, &mut b).await;
    let aj = bare(&a);
    a.send("<presence><status>hi</status></presence>").await;
    let got = b
        .expect_match("alice's presence", |e| {
            e.name == "presence"
                && e.child("status", ns::CLIENT).is_some()
                && e.attr("from").is_some_and(|f| f.starts_with(aj.as_str()))
        })
        .await;
    assert_eq!(photo_of(&got).as_deref(), Some(sha1_hex(&image).as_str()));
}
