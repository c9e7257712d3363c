//! XEP-0163 PEP with XEP-0115 caps-filtered notifications, as raw clients see them:
//! `+notify` reaches only interested resources, last item on login, retract notifications,
//! access models (open / presence / whitelist as XEP-0223 uses it), publish-options
//! preconditions, max_items, node configuration, persistence across a restart.

mod common;

use std::time::Duration;

use common::{stanza_error, Client, TestServer, DOMAIN, WAIT};
use herald_core::ns;
use herald_server::ext::caps::{sha1_ver, verification_string};
use herald_xml::Element;

const TUNE: &str = "http://jabber.org/protocol/tune";
const CAPS_NODE: &str = "https://herald.test/client";

fn disco(features: &[&str]) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "client")
            .with_attr("type", "pc")
            .with_attr("name", "raw"),
    );
    for f in features {
        q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
    }
    q
}

/// Sends presence with XEP-0115 caps for `features`; when `query` is true, answers the
/// server's disco#info question. Returns once the server has resolved the caps.
async fn caps_presence(server: &TestServer, c: &mut Client, features: &[&str], query: bool) {
    let q = disco(features);
    let ver = sha1_ver(&verification_string(&q).expect("well-formed"));
    c.send(&format!(
        "<presence><c xmlns='{}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>",
        ns::CAPS
    ))
    .await;
    if query {
        let node = format!("{CAPS_NODE}#{ver}");
        let iq = c
            .expect_match("disco#info caps query", |e| {
                e.name == "iq"
                    && e.attr("type") == Some("get")
                    && e.child("query", ns::DISCO_INFO)
                        .is_some_and(|q| q.attr("node") == Some(node.as_str()))
            })
            .await;
        assert_eq!(iq.attr("from"), Some(DOMAIN), "{}", iq.to_xml());
        let id = iq.attr("id").expect("id").to_string();
        let mut answer = q.clone();
        answer.set_attr("node", node.as_str());
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", id)
            .with_attr("to", DOMAIN)
            .with_child(answer);
        c.send(&reply.to_xml()).await;
    }
    // Bounded wait until the server has the features for this resource.
    let jid = herald_core::Jid::parse(&c.jid).expect("bound jid");
    let srv = server.running.as_ref().expect("running").server.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = srv.registry.session(&jid) {
            if s.shared.caps.lock().unwrap().features.is_some() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "caps of {} never resolved",
            c.jid
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.ping_server().await;
}

async fn login(server: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = server.login(user, resource).await;
    let r = c.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    c
}

/// `x` asks `y` for a presence subscription and `y` approves (both are available).
async fn subscribe(x: &mut Client, y: &mut Client) {
    let xj = x.jid.split('/').next().unwrap().to_string();
    let yj = y.jid.split('/').next().unwrap().to_string();
    x.send(&format!("<presence type='subscribe' to='{yj}'/>"))
        .await;
    y.expect_match("subscribe", |e| {
        e.name == "presence"
            && e.attr("type") == Some("subscribe")
            && e.attr("from") == Some(xj.as_str())
    })
    .await;
    y.send(&format!("<presence type='subscribed' to='{xj}'/>"))
        .await;
    y.ping_server().await;
    x.ping_server().await;
}

/// `a` and `b` subscribe to each other's presence.
async fn befriend(a: &mut Client, b: &mut Client) {
    subscribe(a, b).await;
    subscribe(b, a).await;
}

fn tune(title: &str) -> String {
    format!("<tune xmlns='{TUNE}'><title>{title}</title></tune>")
}

async fn publish(c: &mut Client, node: &str, id: &str, payload: &str, options: &str) -> Element {
    let opts = if options.is_empty() {
        String::new()
    } else {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{}</value></field>{options}</x>\
             </publish-options>",
            ns::PUBSUB_PUBLISH_OPTIONS
        )
    };
    c.iq(
        "set",
        None,
        &format!(
            "<pubsub xmlns='{}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>{opts}</pubsub>",
            ns::PUBSUB
        ),
    )
    .await
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

async fn get_items(c: &mut Client, owner: Option<&str>, node: &str, extra: &str) -> Element {
    c.iq(
        "get",
        owner,
        &format!(
            "<pubsub xmlns='{}'><items node='{node}'{extra}/></pubsub>",
            ns::PUBSUB
        ),
    )
    .await
}

fn item_ids(r: &Element) -> Vec<String> {
    r.child("pubsub", ns::PUBSUB)
        .and_then(|p| p.child("items", ns::PUBSUB))
        .map(|i| {
            i.elements()
                .filter_map(|e| e.attr("id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_event(e: &Element, node: &str) -> bool {
    e.name == "message"
        && e.child("event", ns::PUBSUB_EVENT)
            .and_then(|ev| ev.elements().next())
            .is_some_and(|x| x.attr("node") == Some(node))
}

fn event_item_id(e: &Element) -> Option<String> {
    e.child("event", ns::PUBSUB_EVENT)?
        .child("items", ns::PUBSUB_EVENT)?
        .child("item", ns::PUBSUB_EVENT)?
        .attr("id")
        .map(str::to_string)
}

fn assert_ok(r: &Element) {
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
}

fn pubsub_condition(r: &Element) -> Option<String> {
    r.child("error", ns::CLIENT)?
        .elements()
        .find(|c| c.ns == ns::PUBSUB_ERRORS)
        .map(|c| c.name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reaches_only_interested_resources() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u).await;
    }
    let notify = format!("{TUNE}+notify");
    let mut a = login(&server, "alice", "a").await;
    caps_presence(&server, &mut a, &[ns::CAPS, TUNE, &notify], true).await;
    let mut b = login(&server, "bob", "b").await;
    // Same caps as alice: resolved from the verified cache, no question asked.
    caps_presence(&server, &mut b, &[ns::CAPS, TUNE, &notify], false).await;
    let mut c = login(&server, "carol", "c").await;
    caps_presence(&server, &mut c, &[ns::CAPS, TUNE], true).await;
    befriend(&mut a, &mut b).await;
    befriend(&mut a, &mut c).await;

    assert_ok(&publish(&mut a, TUNE, "t1", &tune("Yesterday"), "").await);
    let ev = b.expect_match("tune event", |e| is_event(e, TUNE)).await;
    assert_eq!(ev.attr("from"), Some("alice@example.test"));
    assert_eq!(ev.attr("to"), Some(b.jid.as_str()));
    assert_eq!(ev.attr("type"), Some("headline"));
    assert_eq!(event_item_id(&ev).as_deref(), Some("t1"));
    let title = ev
        .child("event", ns::PUBSUB_EVENT)
        .and_then(|e| e.child("items", ns::PUBSUB_EVENT))
        .and_then(|i| i.child("item", ns::PUBSUB_EVENT))
        .and_then(|i| i.child("tune", TUNE))
        .and_then(|t| t.child("title", TUNE))
        .map(|t| t.text());
    assert_eq!(title.as_deref(), Some("Yesterday"));
    // The owner's own interested resource hears it too.
    a.expect_match("own tune event", |e| is_event(e, TUNE))
        .await;
    // carol shares presence but did not ask for +notify.
    c.expect_no_match(
        "tune event without +notify",
        Duration::from_millis(500),
        |e| is_event(e, TUNE),
    )
    .await;

    // disco: the account is a PEP service and lists the node to a contact.
    let info = b
        .iq(
            "get",
            Some("alice@example.test"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let q = info.child("query", ns::DISCO_INFO).expect("query");
    assert!(q
        .elements()
        .any(|i| i.attr("category") == Some("pubsub") && i.attr("type") == Some("pep")));
    assert!(q
        .elements()
        .any(|f| f.attr("var") == Some("http://jabber.org/protocol/pubsub#publish-options")));
    let items = b
        .iq(
            "get",
            Some("alice@example.test"),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    let q = items.child("query", ns::DISCO_ITEMS).expect("query");
    assert!(
        q.elements().any(|i| i.attr("node") == Some(TUNE)),
        "{}",
        items.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_item_on_login_and_retract_notification() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let notify = format!("{TUNE}+notify");
    let feats = [ns::CAPS, TUNE, notify.as_str()];
    let mut a = login(&server, "alice", "a").await;
    caps_presence(&server, &mut a, &feats, true).await;
    let mut b = login(&server, "bob", "b").await;
    caps_presence(&server, &mut b, &feats, false).await;
    befriend(&mut a, &mut b).await;
    assert_ok(&publish(&mut a, TUNE, "old", &tune("One"), "").await);
    assert_ok(&publish(&mut a, TUNE, "new", &tune("Two"), "").await);
    b.close().await;

    // bob comes back: the last item arrives once his caps say he wants it.
    let mut b = login(&server, "bob", "b2").await;
    caps_presence(&server, &mut b, &feats, false).await;
    let ev = b.expect_match("last item", |e| is_event(e, TUNE)).await;
    assert_eq!(event_item_id(&ev).as_deref(), Some("new"));
    // alice's new resource gets her own last item.
    let mut a2 = login(&server, "alice", "a2").await;
    caps_presence(&server, &mut a2, &feats, false).await;
    let ev = a2
        .expect_match("own last item", |e| is_event(e, TUNE))
        .await;
    assert_eq!(event_item_id(&ev).as_deref(), Some("new"));

    // Retract with notify.
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{}'><retract node='{TUNE}' notify='true'><item id='new'/></retract></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    assert_ok(&r);
    let ev = b
        .expect_match("retract event", |e| {
            is_event(e, TUNE)
                && e.child("event", ns::PUBSUB_EVENT)
                    .and_then(|ev| ev.child("items", ns::PUBSUB_EVENT))
                    .and_then(|i| i.child("retract", ns::PUBSUB_EVENT))
                    .is_some()
        })
        .await;
    assert_eq!(ev.attr("from"), Some("alice@example.test"));
    // Retracting again: gone.
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{}'><retract node='{TUNE}'><item id='new'/></retract></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("item-not-found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_models_and_private_storage() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "dave"] {
        server.add_user(u).await;
    }
    let mut a = login(&server, "alice", "a").await;
    a.send("<presence/>").await;
    let mut b = login(&server, "bob", "b").await;
    b.send("<presence/>").await;
    let mut d = login(&server, "dave", "d").await;
    befriend(&mut a, &mut b).await;

    let open = field("pubsub#access_model", "open");
    assert_ok(&publish(&mut a, "urn:test:open", "1", "<x xmlns='urn:test'/>", &open).await);
    assert_ok(
        &publish(
            &mut a,
            "urn:test:presence",
            "1",
            "<x xmlns='urn:test'/>",
            "",
        )
        .await,
    );
    // XEP-0223 private storage (as XEP-0402 bookmarks use it).
    let private = format!(
        "{}{}{}",
        field("pubsub#access_model", "whitelist"),
        field("pubsub#persist_items", "true"),
        field("pubsub#max_items", "max")
    );
    let conf = "<conference xmlns='urn:xmpp:bookmarks:1' name='Room'/>";
    assert_ok(
        &publish(
            &mut a,
            "urn:xmpp:bookmarks:1",
            "room@muc.test",
            conf,
            &private,
        )
        .await,
    );

    let alice = Some("alice@example.test");
    // Stranger: open yes, presence no (not-authorized, presence-subscription-required).
    assert_eq!(
        item_ids(&get_items(&mut d, alice, "urn:test:open", "").await),
        ["1"]
    );
    let r = get_items(&mut d, alice, "urn:test:presence", "").await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("not-authorized")
    );
    assert_eq!(
        pubsub_condition(&r).as_deref(),
        Some("presence-subscription-required")
    );
    // Contact: presence yes, whitelist no.
    assert_eq!(
        item_ids(&get_items(&mut b, alice, "urn:test:presence", "").await),
        ["1"]
    );
    let r = get_items(&mut b, alice, "urn:xmpp:bookmarks:1", "").await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("not-allowed")
    );
    // Owner: all.
    assert_eq!(
        item_ids(&get_items(&mut a, None, "urn:xmpp:bookmarks:1", "").await),
        ["room@muc.test"]
    );
    // Unknown node.
    let r = get_items(&mut b, alice, "urn:test:none", "").await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("item-not-found")
    );
    // Only the owner publishes.
    let r = publish(&mut b, "urn:test:open", "2", "<x xmlns='urn:test'/>", "").await;
    let r2 = b
        .iq(
            "set",
            alice,
            &format!(
                "<pubsub xmlns='{}'><publish node='urn:test:open'><item id='2'><x xmlns='urn:test'/></item></publish></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    assert_ok(&r); // bob's own node
    assert_eq!(stanza_error(&r2).map(|e| e.1).as_deref(), Some("forbidden"));
    // disco#items for the stranger lists only the open node.
    let items = d
        .iq(
            "get",
            alice,
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    let nodes: Vec<_> = items
        .child("query", ns::DISCO_ITEMS)
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("node").map(str::to_string))
        .collect();
    assert_eq!(nodes, ["urn:test:open"]);

    // publish-options conflicting with the existing node: precondition-not-met.
    let r = publish(
        &mut a,
        "urn:test:open",
        "2",
        "<x xmlns='urn:test'/>",
        &field("pubsub#access_model", "whitelist"),
    )
    .await;
    assert_eq!(stanza_error(&r).map(|e| e.1).as_deref(), Some("conflict"));
    assert_eq!(
        pubsub_condition(&r).as_deref(),
        Some("precondition-not-met")
    );
    // Unknown option: rejected too.
    let r = publish(
        &mut a,
        "urn:test:new",
        "1",
        "<x xmlns='urn:test'/>",
        &field("pubsub#bogus", "1"),
    )
    .await;
    assert_eq!(
        pubsub_condition(&r).as_deref(),
        Some("precondition-not-met")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_items_config_purge_delete() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = login(&server, "alice", "a").await;
    let node = "urn:test:list";
    let opts = field("pubsub#max_items", "2");
    for id in ["1", "2", "3"] {
        assert_ok(&publish(&mut a, node, id, "<x xmlns='urn:test'/>", &opts).await);
    }
    assert_eq!(
        item_ids(&get_items(&mut a, None, node, "").await),
        ["2", "3"]
    );
    assert_eq!(
        item_ids(&get_items(&mut a, None, node, " max_items='1'").await),
        ["3"]
    );
    // Republishing an id replaces it and makes it newest.
    assert_ok(&publish(&mut a, node, "2", "<x xmlns='urn:test'/>", &opts).await);
    assert_eq!(
        item_ids(&get_items(&mut a, None, node, "").await),
        ["3", "2"]
    );
    let r = a
        .iq(
            "get",
            None,
            &format!(
                "<pubsub xmlns='{}'><items node='{node}'><item id='3'/></items></pubsub>",
                ns::PUBSUB
            ),
        )
        .await;
    assert_eq!(item_ids(&r), ["3"]);

    // Configuration form.
    let owner = ns::PUBSUB_OWNER;
    let r = a
        .iq(
            "get",
            None,
            &format!("<pubsub xmlns='{owner}'><configure node='{node}'/></pubsub>"),
        )
        .await;
    assert_ok(&r);
    let x = r
        .child("pubsub", owner)
        .and_then(|p| p.child("configure", owner))
        .and_then(|c| c.child("x", ns::DATA_FORMS))
        .expect("form");
    let value = |x: &Element, var: &str| {
        x.elements()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.child("value", ns::DATA_FORMS))
            .map(|v| v.text())
    };
    assert_eq!(value(x, "pubsub#max_items").as_deref(), Some("2"));
    assert_eq!(value(x, "pubsub#access_model").as_deref(), Some("presence"));
    let set = format!(
        "<pubsub xmlns='{owner}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{}</value></field>{}{}</x></configure></pubsub>",
        ns::PUBSUB_NODE_CONFIG,
        field("pubsub#max_items", "1"),
        field("pubsub#access_model", "open")
    );
    assert_ok(&a.iq("set", None, &set).await);
    assert_eq!(item_ids(&get_items(&mut a, None, node, "").await), ["2"]);
    // Now the open precondition holds.
    assert_ok(
        &publish(
            &mut a,
            node,
            "4",
            "<x xmlns='urn:test'/>",
            &field("pubsub#access_model", "open"),
        )
        .await,
    );
    // Invalid value: not-acceptable.
    let bad = set.replace("<value>open</value>", "<value>nobody</value>");
    let r = a.iq("set", None, &bad).await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("not-acceptable")
    );

    // Purge, then delete.
    let r = a
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{owner}'><purge node='{node}'/></pubsub>"),
        )
        .await;
    assert_ok(&r);
    assert!(item_ids(&get_items(&mut a, None, node, "").await).is_empty());
    let r = a
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{owner}'><delete node='{node}'/></pubsub>"),
        )
        .await;
    assert_ok(&r);
    let r = get_items(&mut a, None, node, "").await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("item-not-found")
    );
    // Explicit subscriptions are not implemented (presence-based delivery instead).
    let r = a
        .iq(
            "set",
            Some("alice@example.test"),
            &format!(
                "<pubsub xmlns='{}'><subscribe node='{TUNE}' jid='{}'/></pubsub>",
                ns::PUBSUB,
                a.jid
            ),
        )
        .await;
    assert_eq!(
        stanza_error(&r).map(|e| e.1).as_deref(),
        Some("feature-not-implemented")
    );
}

/// Stops the server and starts a new one on the same database.
async fn restart(server: &mut TestServer) {
    let _ = server.shutdown.send(true);
    if let Some(r) = server.running.take() {
        tokio::time::timeout(Duration::from_secs(20), r.wait())
            .await
            .expect("server stopped");
    }
    let url = match &server.pg_db {
        Some(db) => format!("postgres://postgres@127.0.0.1:5432/{db}"),
        None => format!("sqlite://{}", server.dir.path().join("h.db").display()),
    };
    let text = format!(
        "[server]\ndomains = [\"{DOMAIN}\"]\ndata_dir = {:?}\n[listen]\nc2s = [\"127.0.0.1:0\"]\n",
        server.dir.path().join("data").display().to_string()
    );
    let settings = herald_server::Config::parse(&text, "test")
        .expect("config")
        .validate("test")
        .expect("valid config");
    let store = herald_storage::open(&url).await.expect("reopen store");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = herald_server::start(settings, store.clone(), rx)
        .await
        .expect("restart");
    server.c2s = running.bound.c2s[0];
    server.store = store;
    server.shutdown = tx;
    server.running = Some(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_items_survive_restart() {
    let mut server = TestServer::start().await;
    server.add_user("alice").await;
    let mut a = login(&server, "alice", "a").await;
    let private = format!(
        "{}{}",
        field("pubsub#access_model", "whitelist"),
        field("pubsub#max_items", "5")
    );
    assert_ok(
        &publish(
            &mut a,
            "urn:test:keep",
            "k1",
            "<x xmlns='urn:test'>v</x>",
            &private,
        )
        .await,
    );
    assert_ok(
        &publish(
            &mut a,
            "urn:test:keep",
            "k2",
            "<x xmlns='urn:test'>w</x>",
            &private,
        )
        .await,
    );
    a.close().await;
    restart(&mut server).await;
    let mut a = login(&server, "alice", "a").await;
    assert_eq!(
        item_ids(&get_items(&mut a, None, "urn:test:keep", "").await),
        ["k1", "k2"]
    );
    // The configuration survived too: the same preconditions hold.
    assert_ok(
        &publish(
            &mut a,
            "urn:test:keep",
            "k3",
            "<x xmlns='urn:test'/>",
            &private,
        )
        .await,
    );
}

/// XEP-0163 §4.3.2: approving a subscription sends the new subscriber the last items.
#[tokio::test]
async fn last_item_when_a_subscription_is_approved() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let notify = format!("{TUNE}+notify");
    let feats = [ns::CAPS, TUNE, notify.as_str()];
    let mut a = login(&server, "alice", "a").await;
    caps_presence(&server, &mut a, &feats, true).await;
    assert_ok(&publish(&mut a, TUNE, "t1", &tune("Before you knew me"), "").await);
    let mut b = login(&server, "bob", "b").await;
    caps_presence(&server, &mut b, &feats, false).await;
    b.expect_no_match(
        "an event before subscribing",
        Duration::from_millis(300),
        |e: &Element| is_event(e, TUNE),
    )
    .await;
    subscribe(&mut b, &mut a).await;
    let ev = b
        .expect_match("last item after approval", |e| is_event(e, TUNE))
        .await;
    assert_eq!(event_item_id(&ev).as_deref(), Some("t1"));
}
