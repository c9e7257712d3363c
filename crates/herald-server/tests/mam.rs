//! XEP-0313 message archives as clients see them: archiving both directions with XEP-0359
//! stanza ids, queries with filters and XEP-0059 paging, XEP-0441 preferences, hints,
//! offline messages, retention, and result ordering.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{stanza_error, Client, TestServer, DOMAIN};
use herald_core::ns;
use herald_xml::Element;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const SID: &str = "urn:xmpp:sid:0";

fn jid(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

async fn online(server: &TestServer, user: &str, res: &str) -> Client {
    let mut c = server.login(user, res).await;
    c.send("<presence/>").await;
    c.expect_match("own presence", |e| e.name == "presence")
        .await;
    c
}

fn form(fields: &[(&str, &[&str])]) -> String {
    let mut s = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>urn:xmpp:mam:2</value></field>",
    );
    for (var, values) in fields {
        s.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            s.push_str(&format!("<value>{v}</value>"));
        }
        s.push_str("</field>");
    }
    s.push_str("</x>");
    s
}

fn rsm(max: usize, after: Option<&str>, before: Option<&str>) -> String {
    let mut s = format!("<set xmlns='{RSM}'><max>{max}</max>");
    if let Some(a) = after {
        s.push_str(&format!("<after>{a}</after>"));
    }
    match before {
        Some("") => s.push_str("<before/>"),
        Some(b) => s.push_str(&format!("<before>{b}</before>")),
        None => {}
    }
    s.push_str("</set>");
    s
}

/// One archived item as a result message carries it.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    stamp: String,
    message: Element,
}

impl Item {
    fn body(&self) -> String {
        self.message
            .child("body", ns::CLIENT)
            .map(|b| b.text())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Fin {
    complete: bool,
    first: Option<String>,
    last: Option<String>,
    index: Option<u64>,
    count: Option<u64>,
}

/// Sends a query; collects result messages until the IQ reply, which must come last.
async fn query(c: &mut Client, payload: &str) -> (Vec<Item>, Element) {
    let id = c.new_id();
    let qid = format!("q{id}");
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='{qid}'>{payload}</query></iq>"
    ))
    .await;
    let mut items = Vec::new();
    loop {
        let e = c.expect_stanza().await;
        if e.name == "iq" && e.attr("id") == Some(id.as_str()) {
            // Nothing for this query may follow its IQ result.
            c.expect_no_match(
                "result after the IQ result",
                Duration::from_millis(50),
                |e| {
                    e.child("result", MAM)
                        .is_some_and(|r| r.attr("queryid") == Some(qid.as_str()))
                },
            )
            .await;
            return (items, e);
        }
        let Some(r) = e.child("result", MAM) else {
            continue;
        };
        assert_eq!(r.attr("queryid"), Some(qid.as_str()), "{}", e.to_xml());
        assert_eq!(
            e.attr("to"),
            Some(c.jid.as_str()),
            "results go to the requester"
        );
        let bare = c.jid.split('/').next().unwrap().to_string();
        assert_eq!(
            e.attr("from"),
            Some(bare.as_str()),
            "results come from the archive"
        );
        let fwd = r.child("forwarded", ns::FORWARD).expect("forwarded");
        items.push(Item {
            id: r.attr("id").expect("result id").to_string(),
            stamp: fwd
                .child("delay", ns::DELAY)
                .and_then(|d| d.attr("stamp"))
                .expect("delay stamp")
                .to_string(),
            message: fwd.child("message", ns::CLIENT).expect("message").clone(),
        });
    }
}

fn fin(reply: &Element) -> Fin {
    assert_eq!(
        reply.attr("type"),
        Some("result"),
        "query failed: {}",
        reply.to_xml()
    );
    let f = reply.child("fin", MAM).expect("fin");
    let set = f.child("set", RSM).expect("rsm set");
    let text = |n: &str| set.child(n, RSM).map(|e| e.text());
    Fin {
        complete: f.attr("complete") == Some("true"),
        first: text("first"),
        last: text("last"),
        index: set
            .child("first", RSM)
            .and_then(|e| e.attr("index"))
            .map(|i| i.parse().unwrap()),
        count: text("count").map(|c| c.parse().unwrap()),
    }
}

async fn query_ok(c: &mut Client, payload: &str) -> (Vec<Item>, Fin) {
    let (items, reply) = query(c, payload).await;
    let f = fin(&reply);
    assert_eq!(f.first.as_deref(), items.first().map(|i| i.id.as_str()));
    assert_eq!(f.last.as_deref(), items.last().map(|i| i.id.as_str()));
    (items, f)
}

fn bodies(items: &[Item]) -> Vec<String> {
    items.iter().map(Item::body).collect()
}

async fn chat(c: &mut Client, to: &str, body: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}'><body>{body}</body></message>"
    ))
    .await;
}

fn own_stanza_ids(e: &Element, by: &str) -> Vec<String> {
    e.elements()
        .filter(|s| s.is("stanza-id", SID) && s.attr("by") == Some(by))
        .map(|s| s.attr("id").unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_archives_with_stanza_ids() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = online(&server, "alice", "phone").await;
    let mut b = online(&server, "bob", "desk").await;

    // Discovery on the account.
    let info = a
        .iq(
            "get",
            Some(&jid("alice")),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let features: BTreeSet<_> = info
        .child("query", ns::DISCO_INFO)
        .expect("disco")
        .elements()
        .filter_map(|f| f.attr("var").map(str::to_string))
        .collect();
    for f in [MAM, "urn:xmpp:mam:2#extended", SID] {
        assert!(features.contains(f), "{f} missing from {features:?}");
    }

    let mut delivered = Vec::new();
    for i in 0..3 {
        // The last one carries a forged stanza-id "by" bob: it must not reach him.
        let forged = if i == 2 {
            "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.test' id='forged'/>"
        } else {
            ""
        };
        a.send(&format!(
            "<message type='chat' to='{}' id='m{i}'><body>hello {i}</body>{forged}</message>",
            jid("bob")
        ))
        .await;
        let m = b
            .expect_match("chat", |e| {
                e.name == "message" && e.attr("id") == Some(&format!("m{i}"))
            })
            .await;
        let ids = own_stanza_ids(&m, &jid("bob"));
        assert_eq!(ids.len(), 1, "exactly one stanza-id by bob: {}", m.to_xml());
        assert_ne!(ids[0], "forged");
        delivered.push(ids[0].clone());
    }

    let (items, f) = query_ok(&mut b, "").await;
    assert!(f.complete);
    assert_eq!(f.count, Some(3));
    assert_eq!(f.index, Some(0));
    assert_eq!(bodies(&items), ["hello 0", "hello 1", "hello 2"]);
    let ids: Vec<_> = items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, delivered, "archive ids are the delivered stanza-ids");
    for it in &items {
        assert!(it.message.attr("from").unwrap().starts_with(&jid("alice")));
        assert!(!it.stamp.is_empty());
    }

    let (items, f) = query_ok(&mut a, "").await;
    assert!(f.complete);
    assert_eq!(bodies(&items), ["hello 0", "hello 1", "hello 2"]);
    assert_eq!(items[0].message.attr("to"), Some(jid("bob").as_str()));
    assert!(
        items.iter().all(|i| !delivered.contains(&i.id)),
        "each archive has its own ids"
    );

    // A reply from bob lands in both archives, in order.
    chat(&mut b, &jid("alice"), "hi back").await;
    a.expect_match("reply", |e| e.name == "message").await;
    let (items, _) = query_ok(&mut a, "").await;
    assert_eq!(bodies(&items).last().map(String::as_str), Some("hi back"));
    let (items, _) = query_ok(&mut b, "").await;
    assert_eq!(bodies(&items).last().map(String::as_str), Some("hi back"));

    // Someone else's archive is not readable.
    let r = a
        .iq("set", Some(&jid("bob")), &format!("<query xmlns='{MAM}'/>"))
        .await;
    assert_eq!(
        stanza_error(&r).map(|(_, c)| c).as_deref(),
        Some("forbidden"),
        "{}",
        r.to_xml()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_both_ways() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = online(&server, "alice", "phone").await;
    for i in 0..23 {
        chat(&mut a, &jid("bob"), &format!("n{i:02}")).await;
    }
    let all: Vec<String> = (0..23).map(|i| format!("n{i:02}")).collect();

    // Forwards with <after/>.
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let (items, f) = query_ok(&mut a, &rsm(5, after.as_deref(), None)).await;
        pages += 1;
        assert_eq!(f.count, Some(23));
        assert_eq!(f.index, Some(got.len() as u64));
        got.extend(bodies(&items));
        assert_eq!(
            f.complete,
            got.len() == 23,
            "complete only on the last page"
        );
        if f.complete {
            break;
        }
        after = f.last;
        assert!(pages < 10);
    }
    assert_eq!(
        got, all,
        "forward paging returns each message once, in order"
    );
    assert_eq!(pages, 5);

    // Backwards from the end with <before/>.
    let mut got: Vec<Vec<String>> = Vec::new();
    let mut before = String::new();
    loop {
        let (items, f) = query_ok(&mut a, &rsm(5, None, Some(&before))).await;
        got.push(bodies(&items));
        let seen: usize = got.iter().map(Vec::len).sum();
        assert_eq!(f.index, Some(23 - seen as u64));
        assert_eq!(f.complete, seen == 23, "complete only on the first page");
        if f.complete {
            break;
        }
        before = f.first.expect("first");
        assert!(got.len() < 10);
    }
    got.reverse();
    assert_eq!(
        got.concat(),
        all,
        "backward paging returns each message once"
    );

    // Flipped page: same items, newest first; RSM first/last stay chronological.
    let (items, reply) = query(&mut a, &format!("{}<flip-page/>", rsm(3, None, Some("")))).await;
    let f = fin(&reply);
    assert_eq!(bodies(&items), ["n22", "n21", "n20"]);
    assert_eq!(f.first.as_deref(), Some(items[2].id.as_str()));
    assert_eq!(f.last.as_deref(), Some(items[0].id.as_str()));

    // Count only.
    let (items, f) = query_ok(&mut a, &rsm(0, None, None)).await;
    assert!(items.is_empty());
    assert_eq!(f.count, Some(23));

    // Unknown ids are errors.
    for payload in [
        rsm(5, Some("no-such-id"), None),
        rsm(5, None, Some("no-such-id")),
        form(&[("after-id", &["no-such-id"])]),
        form(&[("ids", &["no-such-id"])]),
    ] {
        let (items, reply) = query(&mut a, &payload).await;
        assert!(items.is_empty());
        assert_eq!(
            stanza_error(&reply),
            Some(("cancel".into(), "item-not-found".into())),
            "{}",
            reply.to_xml()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_form_and_metadata() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u).await;
    }
    let mut a = online(&server, "alice", "phone").await;
    // Empty archive metadata.
    let md = a
        .iq("get", None, &format!("<metadata xmlns='{MAM}'/>"))
        .await;
    let m = md.child("metadata", MAM).expect("metadata");
    assert_eq!(m.elements().count(), 0, "{}", md.to_xml());

    for i in 0..6 {
        let to = if i % 2 == 0 { jid("bob") } else { jid("carol") };
        chat(&mut a, &to, &format!("f{i}")).await;
        // Distinct millisecond stamps.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.send(&format!(
        "<message type='chat' to='{}/desk'><body>f6</body></message>",
        jid("bob")
    ))
    .await;
    let (all, _) = query_ok(&mut a, "").await;
    assert_eq!(bodies(&all), ["f0", "f1", "f2", "f3", "f4", "f5", "f6"]);

    let (items, f) = query_ok(&mut a, &form(&[("with", &[&jid("bob")])])).await;
    assert_eq!(bodies(&items), ["f0", "f2", "f4", "f6"]);
    assert!(f.complete);
    assert_eq!(f.count, Some(4));
    let (items, _) = query_ok(
        &mut a,
        &form(&[("with", &[&format!("{}/desk", jid("bob"))])]),
    )
    .await;
    assert_eq!(
        bodies(&items),
        ["f6"],
        "a full JID matches only that resource"
    );

    let (items, _) = query_ok(
        &mut a,
        &form(&[("start", &[&all[1].stamp]), ("end", &[&all[3].stamp])]),
    )
    .await;
    assert_eq!(
        bodies(&items),
        ["f1", "f2", "f3"],
        "start/end are inclusive"
    );

    let (items, _) = query_ok(&mut a, &form(&[("ids", &[&all[4].id, &all[0].id])])).await;
    assert_eq!(bodies(&items), ["f0", "f4"]);
    let (items, _) = query_ok(
        &mut a,
        &form(&[("after-id", &[&all[0].id]), ("before-id", &[&all[5].id])]),
    )
    .await;
    assert_eq!(bodies(&items), ["f1", "f2", "f3", "f4"]);

    // Unknown fields and bad values.
    let (_, reply) = query(&mut a, &form(&[("{urn:example}search", &["x"])])).await;
    assert_eq!(
        stanza_error(&reply).map(|(_, c)| c).as_deref(),
        Some("feature-not-implemented")
    );
    let (_, reply) = query(&mut a, &form(&[("start", &["last tuesday"])])).await;
    assert_eq!(
        stanza_error(&reply).map(|(_, c)| c).as_deref(),
        Some("bad-request")
    );

    // The form itself.
    let r = a.iq("get", None, &format!("<query xmlns='{MAM}'/>")).await;
    let vars: Vec<_> = r
        .child("query", MAM)
        .and_then(|q| q.child("x", "jabber:x:data"))
        .expect("form")
        .elements()
        .filter_map(|f| f.attr("var").map(str::to_string))
        .collect();
    assert_eq!(
        vars,
        [
            "FORM_TYPE",
            "with",
            "start",
            "end",
            "before-id",
            "after-id",
            "ids"
        ]
    );

    let md = a
        .iq("get", None, &format!("<metadata xmlns='{MAM}'/>"))
        .await;
    let m = md.child("metadata", MAM).expect("metadata");
    assert_eq!(
        m.child("start", MAM).and_then(|s| s.attr("id")),
        Some(all[0].id.as_str())
    );
    assert_eq!(
        m.child("end", MAM).and_then(|s| s.attr("id")),
        Some(all[6].id.as_str())
    );
}

async fn set_prefs(c: &mut Client, prefs: &str) -> Element {
    let r = c.iq("set", None, prefs).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", r.to_xml());
    r.child("prefs", MAM).expect("applied prefs").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_are_honoured() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol", "dave"] {
        server.add_user(u).await;
    }
    let mut a = online(&server, "alice", "phone").await;

    let r = a.iq("get", None, &format!("<prefs xmlns='{MAM}'/>")).await;
    let p = r.child("prefs", MAM).expect("prefs");
    assert_eq!(p.attr("default"), Some("always"), "config default");
    assert!(p.child("always", MAM).is_some() && p.child("never", MAM).is_some());

    // never: nothing archived.
    set_prefs(&mut a, &format!("<prefs xmlns='{MAM}' default='never'/>")).await;
    chat(&mut a, &jid("bob"), "unarchived").await;
    let (items, _) = query_ok(&mut a, "").await;
    assert!(items.is_empty(), "default=never archives nothing");
    // ...but bob's own archive follows bob's preferences.
    let mut b = online(&server, "bob", "desk").await;
    let (items, _) = query_ok(&mut b, "").await;
    assert_eq!(bodies(&items), ["unarchived"]);

    // roster: only contacts in the roster; always/never lists override.
    a.iq(
        "set",
        None,
        &format!(
            "<query xmlns='jabber:iq:roster'><item jid='{}'/></query>",
            jid("bob")
        ),
    )
    .await;
    let applied = set_prefs(
        &mut a,
        &format!(
            "<prefs xmlns='{MAM}' default='roster'><always><jid>{}</jid></always>\
             <never><jid>{}</jid><jid>{}</jid></never></prefs>",
            jid("dave"),
            jid("Carol"),
            jid("dave"),
        ),
    )
    .await;
    assert_eq!(applied.attr("default"), Some("roster"));
    let never: Vec<_> = applied
        .child("never", MAM)
        .unwrap()
        .elements()
        .map(|j| j.text())
        .collect();
    assert_eq!(never, [jid("carol"), jid("dave")], "normalized, sorted");
    assert_eq!(
        applied.child("always", MAM).unwrap().elements().count(),
        0,
        "never wins"
    );

    set_prefs(
        &mut a,
        &format!("<prefs xmlns='{MAM}' default='roster'><never/></prefs>"),
    )
    .await;
    chat(&mut a, &jid("bob"), "to contact").await;
    chat(&mut a, &jid("carol"), "to stranger").await;
    let (items, _) = query_ok(&mut a, "").await;
    assert_eq!(bodies(&items), ["to contact"], "roster default");

    set_prefs(
        &mut a,
        &format!(
            "<prefs xmlns='{MAM}' default='roster'><always><jid>{}</jid></always>\
             <never><jid>{}</jid></never></prefs>",
            jid("carol"),
            jid("bob")
        ),
    )
    .await;
    chat(&mut a, &jid("bob"), "never bob").await;
    chat(&mut a, &jid("carol"), "always carol").await;
    let (items, _) = query_ok(&mut a, "").await;
    assert_eq!(bodies(&items), ["to contact", "always carol"]);

    // Preferences persist across sessions.
    a.close().await;
    let mut a = online(&server, "alice", "laptop").await;
    let r = a.iq("get", None, &format!("<prefs xmlns='{MAM}'/>")).await;
    assert_eq!(
        r.child("prefs", MAM).and_then(|p| p.attr("default")),
        Some("roster")
    );
    let bad = a
        .iq(
            "set",
            None,
            &format!("<prefs xmlns='{MAM}' default='sometimes'/>"),
        )
        .await;
    assert_eq!(
        stanza_error(&bad).map(|(_, c)| c).as_deref(),
        Some("bad-request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_hints_and_types() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = online(&server, "alice", "phone").await;
    // bob is offline.
    chat(&mut a, &jid("bob"), "while away").await;
    a.send(&format!(
        "<message type='chat' to='{}'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>",
        jid("bob")
    ))
    .await;
    a.send(&format!(
        "<message type='headline' to='{}'><body>news</body></message>",
        jid("bob")
    ))
    .await;
    a.send(&format!(
        "<message type='chat' to='{}'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        jid("bob")
    ))
    .await;
    a.ping_server().await;

    let mut b = server.login("bob", "desk").await;
    b.send("<presence/>").await;
    let offline = b
        .expect_match("offline message", |e| {
            e.name == "message"
                && e.child("body", ns::CLIENT).map(|b| b.text()).as_deref() == Some("while away")
        })
        .await;
    let sid = own_stanza_ids(&offline, &jid("bob"));
    assert_eq!(sid.len(), 1, "{}", offline.to_xml());
    let (items, _) = query_ok(&mut b, "").await;
    assert_eq!(
        bodies(&items),
        ["while away"],
        "hint, headline, chat state not archived"
    );
    assert_eq!(items[0].id, sid[0], "offline copy carries the archive id");
    let (items, _) = query_ok(&mut a, "").await;
    assert_eq!(bodies(&items), ["while away"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_precede_the_iq_result() {
    let server = TestServer::start().await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let mut a = online(&server, "alice", "phone").await;
    for i in 0..40 {
        chat(&mut a, &jid("bob"), &format!("o{i}")).await;
    }
    // Raw order on the wire: 40 results, then the IQ result.
    a.send(&format!(
        "<iq type='set' id='ord'><query xmlns='{MAM}' queryid='ord'>{}</query></iq>",
        rsm(100, None, None)
    ))
    .await;
    let mut seen = Vec::new();
    loop {
        let e = a.expect_stanza().await;
        if e.name == "iq" && e.attr("id") == Some("ord") {
            break;
        }
        if e.child("result", MAM).is_some() {
            seen.push(e);
        }
    }
    assert_eq!(seen.len(), 40, "all results before the IQ result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_hides_and_expires() {
    let server = TestServer::with_config("[mam]\nretention_days = 1\n").await;
    server.add_user("alice").await;
    server.add_user("bob").await;
    let owner = jid("alice");
    let day = 86_400_000_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    server
        .store
        .append_archive(
            &owner,
            &herald_storage::NewArchived {
                stanza_id: "old",
                with_bare: &jid("bob"),
                with_resource: "",
                stamp_micros: now - 2 * day,
                direction: herald_storage::Direction::Out,
                stanza: "<message type='chat'><body>ancient</body></message>",
            },
        )
        .await
        .unwrap();
    let mut a = online(&server, "alice", "phone").await;
    chat(&mut a, &jid("bob"), "fresh").await;
    let (items, _) = query_ok(&mut a, "").await;
    assert_eq!(bodies(&items), ["fresh"], "expired message hidden");
    let page = server
        .store
        .query_archive(
            &owner,
            &herald_storage::ArchiveFilter::default(),
            &herald_storage::ArchivePaging {
                max: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.items.len(), 1, "expired message deleted");
}
