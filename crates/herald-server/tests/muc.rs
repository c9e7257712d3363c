//! XEP-0045 multi-user chat at the stanza level: room creation and locking, joins and
//! presence, messages with stanza and occupant ids, history, affiliations and roles,
//! members-only and password rooms, invitations, archives, moderation, self-ping, and a
//! 1,000-occupant room.

mod common;

use std::time::{Duration, Instant};

use common::{stanza_error, Client, TestServer};
use herald_core::ns;
use herald_xml::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const SVC: &str = "conference.example.test";

fn room(name: &str) -> String {
    format!("{name}@{SVC}")
}

fn statuses(p: &Element) -> Vec<String> {
    p.child("x", MUC_USER)
        .map(|x| {
            x.elements()
                .filter(|s| s.name == "status")
                .filter_map(|s| s.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item_attr(p: &Element, attr: &str) -> Option<String> {
    p.child("x", MUC_USER)?
        .child("item", MUC_USER)?
        .attr(attr)
        .map(str::to_string)
}

/// Sends a join and waits for the self-presence (status 110); returns it.
async fn join(c: &mut Client, room_jid: &str, nick: &str, extra: &str) -> Element {
    c.send(&format!(
        "<presence to='{room_jid}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>"
    ))
    .await;
    let from = format!("{room_jid}/{nick}");
    c.expect_match("self-presence or error", |e| {
        e.name == "presence"
            && e.attr("from") == Some(from.as_str())
            && (statuses(e).contains(&"110".to_string()) || e.attr("type") == Some("error"))
    })
    .await
}

/// Creates a room owned by `c` and accepts the default configuration plus `fields`.
async fn create(c: &mut Client, room_jid: &str, nick: &str, fields: &[(&str, &str)]) {
    let p = join(c, room_jid, nick, "").await;
    let codes = statuses(&p);
    assert!(codes.contains(&"201".into()), "new room: {}", p.to_xml());
    assert_eq!(item_attr(&p, "affiliation").as_deref(), Some("owner"));
    configure(c, room_jid, fields).await;
}

async fn configure(c: &mut Client, room_jid: &str, fields: &[(&str, &str)]) {
    let mut form = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (var, v) in fields {
        form.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    form.push_str("</x>");
    let r = c
        .iq(
            "set",
            Some(room_jid),
            &format!("<query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "configure: {}", r.to_xml());
}

async fn admin(c: &mut Client, room_jid: &str, item: &str) -> Element {
    c.iq(
        "set",
        Some(room_jid),
        &format!("<query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query>"),
    )
    .await
}

async fn users(server: &TestServer, names: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in names {
        server.add_user(n).await;
        out.push(server.login(n, "r").await);
    }
    out
}

fn body_of(e: &Element) -> Option<String> {
    e.child("body", ns::CLIENT).map(|b| b.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_lock_configure_join_talk_leave() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    let (alice, rest) = cs.split_first_mut().unwrap();
    let bob = &mut rest[0];
    let r = room("team");
    let p = join(alice, &r, "Alice", "").await;
    assert!(statuses(&p).contains(&"201".into()));
    // Locked until configured: bob cannot enter yet.
    let e = join(bob, &r, "Bob", "").await;
    assert_eq!(
        stanza_error(&e).map(|x| x.1).as_deref(),
        Some("item-not-found")
    );
    // The owner gets the form, then submits it.
    let f = alice
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/muc#owner'/>",
        )
        .await;
    assert!(
        f.to_xml().contains("muc#roomconfig_persistentroom"),
        "{}",
        f.to_xml()
    );
    configure(alice, &r, &[("muc#roomconfig_roomname", "The Team")]).await;
    let p = join(bob, &r, "Bob", "").await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("participant"));
    // Alice sees bob join; bob got alice's presence before his own.
    let seen = alice
        .expect_match("bob's presence", |e| {
            e.name == "presence" && e.attr("from") == Some(&format!("{r}/Bob"))
        })
        .await;
    assert_eq!(item_attr(&seen, "affiliation").as_deref(), Some("none"));
    // Semi-anonymous: only moderators see real JIDs.
    assert!(item_attr(&seen, "jid").is_some(), "owner is a moderator");
    // A message: reflected to all, with a stanza-id by the room and an occupant id.
    bob.send(&format!(
        "<message to='{r}' type='groupchat' id='m1'><body>hello room</body></message>"
    ))
    .await;
    for c in [&mut *alice, &mut *bob] {
        let m = c
            .expect_match("groupchat", |e| body_of(e).as_deref() == Some("hello room"))
            .await;
        assert_eq!(m.attr("from"), Some(format!("{r}/Bob").as_str()));
        assert_eq!(m.attr("id"), Some("m1"));
        let sid = m.child("stanza-id", ns::SID).expect("stanza-id");
        assert_eq!(sid.attr("by"), Some(r.as_str()));
        assert!(m.child("occupant-id", "urn:xmpp:occupant-id:0").is_some());
    }
    // Service disco lists the public room with its name.
    let items = alice
        .iq(
            "get",
            Some(SVC),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(items.to_xml().contains("The Team"), "{}", items.to_xml());
    // Leaving: unavailable with 110 to the leaver, plain unavailable to others.
    bob.send(&format!("<presence to='{r}/Bob' type='unavailable'/>"))
        .await;
    let gone = bob
        .expect_match("own unavailable", |e| {
            e.name == "presence" && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(statuses(&gone).contains(&"110".into()));
    alice
        .expect_match("bob left", |e| {
            e.attr("type") == Some("unavailable") && e.attr("from") == Some(&format!("{r}/Bob"))
        })
        .await;
    // Non-occupants cannot talk.
    bob.send(&format!(
        "<message to='{r}' type='groupchat' id='m2'><body>sneaky</body></message>"
    ))
    .await;
    let e = bob
        .expect_match("error", |e| e.attr("id") == Some("m2"))
        .await;
    assert_eq!(
        stanza_error(&e).map(|x| x.1).as_deref(),
        Some("not-acceptable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_room_disappears_when_empty() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice"]).await;
    let alice = &mut cs[0];
    let r = room("adhoc");
    create(alice, &r, "a", &[]).await;
    let info = alice
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(info.to_xml().contains("muc_temporary"), "{}", info.to_xml());
    alice
        .send(&format!("<presence to='{r}/a' type='unavailable'/>"))
        .await;
    alice
        .expect_match("left", |e| e.attr("type") == Some("unavailable"))
        .await;
    let info = alice
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(
        stanza_error(&info).map(|x| x.1).as_deref(),
        Some("item-not-found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_subject_and_nick_change() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    let (alice, rest) = cs.split_first_mut().unwrap();
    let bob = &mut rest[0];
    let r = room("hist");
    create(alice, &r, "a", &[]).await;
    alice
        .send(&format!(
            "<message to='{r}' type='groupchat'><subject>Release day</subject></message>"
        ))
        .await;
    alice
        .expect_match("subject", |e| e.child("subject", ns::CLIENT).is_some())
        .await;
    for i in 0..5 {
        alice
            .send(&format!(
                "<message to='{r}' type='groupchat'><body>h{i}</body></message>"
            ))
            .await;
        alice
            .expect_match("own", |e| body_of(e) == Some(format!("h{i}")))
            .await;
    }
    bob.send(&format!(
        "<presence to='{r}/b'><x xmlns='{MUC}'><history maxstanzas='2'/></x></presence>"
    ))
    .await;
    let h3 = bob.expect_match("history", |e| body_of(e).is_some()).await;
    assert_eq!(body_of(&h3).as_deref(), Some("h3"));
    assert!(h3.child("delay", ns::DELAY).is_some());
    let h4 = bob.expect_match("history", |e| body_of(e).is_some()).await;
    assert_eq!(body_of(&h4).as_deref(), Some("h4"));
    let s = bob
        .expect_match("subject", |e| e.child("subject", ns::CLIENT).is_some())
        .await;
    assert_eq!(
        s.child("subject", ns::CLIENT).unwrap().text(),
        "Release day"
    );
    assert_eq!(s.attr("from"), Some(format!("{r}/a").as_str()));
    // A participant may not change the subject by default.
    bob.send(&format!(
        "<message to='{r}' type='groupchat' id='s2'><subject>mine</subject></message>"
    ))
    .await;
    let e = bob
        .expect_match("error", |e| e.attr("id") == Some("s2"))
        .await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("forbidden"));
    // Nick change: 303 with the new nick, then presence from the new nick.
    bob.send(&format!("<presence to='{r}/bee'/>")).await;
    let u = alice
        .expect_match("303", |e| statuses(e).contains(&"303".into()))
        .await;
    assert_eq!(item_attr(&u, "nick").as_deref(), Some("bee"));
    alice
        .expect_match("new nick", |e| {
            e.attr("from") == Some(&format!("{r}/bee")) && e.attr("type").is_none()
        })
        .await;
    // Taking a nick in use: conflict.
    bob.send(&format!("<presence to='{r}/a'/>")).await;
    let e = bob
        .expect_match("conflict", |e| e.attr("type") == Some("error"))
        .await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_affiliations() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["owner", "mod", "pat", "vis"]).await;
    let r = room("mod");
    create(
        &mut cs[0],
        &r,
        "o",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    // Make "mod" an admin before they join; "pat" a member.
    let res = admin(
        &mut cs[0],
        &r,
        "<item affiliation='admin' jid='mod@example.test'/><item affiliation='member' jid='pat@example.test'/>",
    )
    .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", res.to_xml());
    let p = join(&mut cs[1], &r, "m", "").await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("moderator"));
    let p = join(&mut cs[2], &r, "p", "").await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("participant"));
    let p = join(&mut cs[3], &r, "v", "").await;
    assert_eq!(item_attr(&p, "role").as_deref(), Some("visitor"));
    // Visitors may not speak.
    cs[3]
        .send(&format!(
            "<message to='{r}' type='groupchat' id='v1'><body>hi</body></message>"
        ))
        .await;
    let e = cs[3]
        .expect_match("error", |e| e.attr("id") == Some("v1"))
        .await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("forbidden"));
    // A participant may not kick.
    let e = admin(&mut cs[2], &r, "<item nick='v' role='none'/>").await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("forbidden"));
    // The moderator grants voice; the visitor can talk.
    let res = admin(&mut cs[1], &r, "<item nick='v' role='participant'/>").await;
    assert_eq!(res.attr("type"), Some("result"), "{}", res.to_xml());
    cs[3]
        .expect_match("voice", |e| {
            item_attr(e, "role").as_deref() == Some("participant")
        })
        .await;
    cs[3]
        .send(&format!(
            "<message to='{r}' type='groupchat' id='v2'><body>thanks</body></message>"
        ))
        .await;
    cs[3]
        .expect_match("reflected", |e| body_of(e).as_deref() == Some("thanks"))
        .await;
    // Affiliation by nick (as some clients send it): the owner makes the member an admin.
    let res = admin(&mut cs[0], &r, "<item nick='p' affiliation='admin'/>").await;
    assert_eq!(res.attr("type"), Some("result"), "{}", res.to_xml());
    let l = cs[0]
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='admin'/></query>",
        )
        .await;
    assert!(l.to_xml().contains("pat@example.test"), "{}", l.to_xml());
    cs[2]
        .expect_match("promoted", |e| {
            item_attr(e, "affiliation").as_deref() == Some("admin")
                && item_attr(e, "role").as_deref() == Some("moderator")
        })
        .await;
    // An admin cannot ban the owner.
    let e = admin(
        &mut cs[1],
        &r,
        "<item affiliation='outcast' jid='owner@example.test'/>",
    )
    .await;
    assert_eq!(
        stanza_error(&e).map(|x| x.1).as_deref(),
        Some("not-allowed")
    );
    // Kick: 307 to everyone including the kicked.
    let res = admin(
        &mut cs[1],
        &r,
        "<item nick='v' role='none'><reason>spam</reason></item>",
    )
    .await;
    assert_eq!(res.attr("type"), Some("result"));
    let k = cs[3]
        .expect_match("kicked", |e| statuses(e).contains(&"307".into()))
        .await;
    assert!(statuses(&k).contains(&"110".into()));
    assert!(k.to_xml().contains("spam"));
    // Ban: 301, and no way back in. (Rejoined as a visitor again: moderated room.)
    cs[3]
        .send(&format!(
            "<presence to='{r}/v'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    cs[3]
        .expect_match("rejoined", |e| {
            e.attr("type").is_none()
                && statuses(e).contains(&"110".into())
                && item_attr(e, "role").as_deref() == Some("visitor")
        })
        .await;
    let res = admin(
        &mut cs[1],
        &r,
        "<item affiliation='outcast' jid='vis@example.test'/>",
    )
    .await;
    assert_eq!(res.attr("type"), Some("result"));
    cs[3]
        .expect_match("banned", |e| statuses(e).contains(&"301".into()))
        .await;
    cs[3]
        .send(&format!(
            "<presence to='{r}/v'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let e = cs[3]
        .expect_match("ban error", |e| e.attr("type") == Some("error"))
        .await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("forbidden"));
    // Lists.
    let l = cs[1]
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query>",
        )
        .await;
    assert!(l.to_xml().contains("vis@example.test"), "{}", l.to_xml());
    // The last owner cannot step down.
    let e = admin(
        &mut cs[0],
        &r,
        "<item affiliation='member' jid='owner@example.test'/>",
    )
    .await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_only_password_and_invitations() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    // Invitations go to bare JIDs: the invitees must be available.
    for c in cs.iter_mut() {
        c.send("<presence/>").await;
    }
    let r = room("private");
    create(
        &mut cs[0],
        &r,
        "a",
        &[
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "pw"),
        ],
    )
    .await;
    let e = join(&mut cs[1], &r, "b", "<password>pw</password>").await;
    assert_eq!(
        stanza_error(&e).map(|x| x.1).as_deref(),
        Some("registration-required")
    );
    // A mediated invitation from the owner makes bob a member.
    cs[0]
        .send(&format!(
            "<message to='{r}'><x xmlns='{MUC_USER}'><invite to='bob@example.test'><reason>join us</reason></invite></x></message>"
        ))
        .await;
    let inv = cs[1]
        .expect_match("invitation", |e| e.child("x", MUC_USER).is_some())
        .await;
    assert_eq!(inv.attr("from"), Some(r.as_str()));
    let x = inv.child("x", MUC_USER).unwrap();
    assert!(x
        .child("invite", MUC_USER)
        .unwrap()
        .attr("from")
        .unwrap()
        .starts_with("alice@example.test"));
    assert_eq!(
        x.child("password", MUC_USER).map(|p| p.text()).as_deref(),
        Some("pw")
    );
    // Wrong or missing password.
    let e = join(&mut cs[1], &r, "b", "").await;
    assert_eq!(
        stanza_error(&e).map(|x| x.1).as_deref(),
        Some("not-authorized")
    );
    let p = join(&mut cs[1], &r, "b", "<password>pw</password>").await;
    assert_eq!(item_attr(&p, "affiliation").as_deref(), Some("member"));
    // Carol declines an invitation; alice hears of it.
    cs[2]
        .send(&format!(
            "<message to='{r}'><x xmlns='{MUC_USER}'><decline to='alice@example.test'><reason>busy</reason></decline></x></message>"
        ))
        .await;
    let d = cs[0]
        .expect_match("decline", |e| e.to_xml().contains("decline"))
        .await;
    assert!(d.to_xml().contains("busy"));
    // XEP-0249 direct invitation passes between users.
    cs[0]
        .send(&format!(
            "<message to='carol@example.test'><x xmlns='jabber:x:conference' jid='{r}' password='pw'/></message>"
        ))
        .await;
    let di = cs[2]
        .expect_match("direct invite", |e| {
            e.child("x", "jabber:x:conference").is_some()
        })
        .await;
    assert_eq!(
        di.child("x", "jabber:x:conference").unwrap().attr("jid"),
        Some(r.as_str())
    );
    // Private messages between occupants.
    cs[1]
        .send(&format!(
            "<message to='{r}/a' type='chat'><body>psst</body></message>"
        ))
        .await;
    let pm = cs[0]
        .expect_match("pm", |e| body_of(e).as_deref() == Some("psst"))
        .await;
    assert_eq!(pm.attr("from"), Some(format!("{r}/b").as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_moderation_self_ping_and_destroy() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    let r = room("logged");
    create(
        &mut cs[0],
        &r,
        "a",
        &[("muc#roomconfig_persistentroom", "1")],
    )
    .await;
    join(&mut cs[1], &r, "b", "").await;
    let mut ids = Vec::new();
    for i in 0..12 {
        cs[1]
            .send(&format!(
                "<message to='{r}' type='groupchat'><body>n{i}</body></message>"
            ))
            .await;
        let m = cs[1]
            .expect_match("reflected", |e| body_of(e) == Some(format!("n{i}")))
            .await;
        ids.push(
            m.child("stanza-id", ns::SID)
                .unwrap()
                .attr("id")
                .unwrap()
                .to_string(),
        );
    }
    // Page through the room archive, 5 at a time, forwards.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let set = if after.is_empty() {
            "<set xmlns='http://jabber.org/protocol/rsm'><max>5</max></set>".to_string()
        } else {
            format!("<set xmlns='http://jabber.org/protocol/rsm'><max>5</max><after>{after}</after></set>")
        };
        let qid = format!("q{}", seen.len());
        cs[1]
            .send(&format!(
                "<iq type='set' id='{qid}' to='{r}'><query xmlns='urn:xmpp:mam:2' queryid='{qid}'>{set}</query></iq>"
            ))
            .await;
        let mut page = Vec::new();
        let fin = loop {
            let e = cs[1].expect_stanza().await;
            if e.name == "iq" && e.attr("id") == Some(qid.as_str()) {
                break e;
            }
            if let Some(res) = e.child("result", ns::MAM) {
                assert_eq!(e.attr("from"), Some(r.as_str()));
                page.push(res.attr("id").unwrap().to_string());
            }
        };
        assert_eq!(fin.attr("type"), Some("result"), "{}", fin.to_xml());
        let f = fin.child("fin", ns::MAM).unwrap();
        seen.extend(page.iter().cloned());
        if f.attr("complete") == Some("true") {
            break;
        }
        after = page.last().unwrap().clone();
    }
    assert_eq!(seen, ids);
    // XEP-0425: the owner (a moderator) retracts message 3.
    let res = cs[0]
        .iq(
            "set",
            Some(&r),
            &format!(
                "<moderate id='{}' xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/><reason>off topic</reason></moderate>",
                ids[3]
            ),
        )
        .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", res.to_xml());
    let ret = cs[1]
        .expect_match("retraction", |e| {
            e.child("retract", "urn:xmpp:message-retract:1").is_some()
        })
        .await;
    assert_eq!(
        ret.child("retract", "urn:xmpp:message-retract:1")
            .unwrap()
            .attr("id"),
        Some(ids[3].as_str())
    );
    // A participant may not moderate.
    let e = cs[1]
        .iq(
            "set",
            Some(&r),
            &format!(
                "<moderate id='{}' xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/></moderate>",
                ids[4]
            ),
        )
        .await;
    assert_eq!(stanza_error(&e).map(|x| x.1).as_deref(), Some("forbidden"));
    // XEP-0410 self-ping.
    let p = cs[1]
        .iq(
            "get",
            Some(&format!("{r}/b")),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"));
    // Destroy with an alternate venue.
    let res = cs[0]
        .iq(
            "set",
            Some(&r),
            &format!("<query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='{}'><reason>moved</reason></destroy></query>", room("new")),
        )
        .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", res.to_xml());
    let d = cs[1]
        .expect_match("destroyed", |e| e.to_xml().contains("destroy"))
        .await;
    assert_eq!(d.attr("type"), Some("unavailable"));
    let p = cs[1]
        .iq(
            "get",
            Some(&format!("{r}/b")),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(p.attr("type"), Some("error"));
    assert!(herald_storage::MucStore::load_room(&*server.store, &r)
        .await
        .unwrap()
        .is_none());
}

/// 1,000 occupants: every joiner receives everyone's presence, one message reaches all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_occupants() {
    // Storage plays no part in it: run it once, not again in the PostgreSQL pass.
    if std::env::var("HERALD_TEST_STORAGE").as_deref() == Ok("postgres") {
        return;
    }
    let n: usize = std::env::var("HERALD_MUC_OCCUPANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let server = TestServer::with_config("[muc]\nmax_users = 2000\n").await;
    let r = room("big");
    for i in 0..n {
        server
            .add_user_with(&format!("u{i}"), common::PASSWORD)
            .await;
    }
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(usize, usize)>(n);
    let mut tasks = Vec::new();
    let mut first = server.login("u0", "r").await;
    create(&mut first, &r, "n0", &[("muc#roomconfig_maxusers", "2000")]).await;
    let mut clients = vec![first];
    for i in 1..n {
        clients.push(server.login(&format!("u{i}"), "r").await);
    }
    let login_time = started.elapsed();
    let joined = Instant::now();
    // Joins arrive 50 at a time (a burst, as after a meeting invitation).
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    for (i, mut c) in clients.into_iter().enumerate() {
        let done_tx = done_tx.clone();
        let r = r.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let slow = Duration::from_secs(120);
            let me = format!("{r}/n{i}");
            let mut presences = 0;
            {
                let _permit = gate.acquire().await.expect("gate");
                if i > 0 {
                    c.send(&format!(
                        "<presence to='{me}'><x xmlns='{MUC}'><history maxstanzas='0'/></x></presence>"
                    ))
                    .await;
                    loop {
                        let e = c.expect_stanza_within(slow).await;
                        assert_ne!(e.attr("type"), Some("error"), "join {i}: {}", e.to_xml());
                        if e.name == "presence" {
                            presences += 1;
                        }
                        if e.attr("from") == Some(me.as_str())
                            && statuses(&e).contains(&"110".to_string())
                        {
                            break;
                        }
                    }
                }
            }
            let _ = done_tx.send((i, presences)).await;
            // Read until the fan-out message arrives.
            loop {
                let e = c.expect_stanza_within(slow).await;
                if body_of(&e).as_deref() == Some("to everyone") {
                    break;
                }
            }
            let _ = done_tx.send((i, 0)).await;
            c
        }));
    }
    let mut seen_on_join = vec![0usize; n];
    for _ in 0..n {
        let (i, p) = done_rx.recv().await.expect("join");
        seen_on_join[i] = p;
    }
    // Joiner i saw everyone already there: at least i presences (the room serialises).
    assert!(seen_on_join.iter().skip(1).all(|p| *p >= 1));
    assert!(seen_on_join.iter().sum::<usize>() >= n * (n - 1) / 2);
    let join_time = joined.elapsed();
    let mut sender = server.login("u0", "sender").await;
    join(&mut sender, &r, "n0", "<history maxstanzas='0'/>").await;
    let fan = Instant::now();
    sender
        .send(&format!(
            "<message to='{r}' type='groupchat'><body>to everyone</body></message>"
        ))
        .await;
    for _ in 0..n {
        done_rx.recv().await.expect("delivery");
    }
    eprintln!(
        "{n}-occupant room: logins {login_time:?}, joins {join_time:?}, fan-out {:?}",
        fan.elapsed()
    );
    for t in tasks {
        t.await.expect("client task");
    }
}

/// A room made by the administrator (`herald room create`) while the server runs is
/// picked up at its first stanza: the named owner gets owner rights, others can enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_created_by_admin_tool_is_served() {
    use herald_server::ext::muc::manage;
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    let settings = &server.running.as_ref().unwrap().server.settings;
    let r = room("ops");
    let jid = manage::room_jid(settings, &r).unwrap();
    let opts = manage::CreateOptions {
        name: Some("Operations".into()),
        ..Default::default()
    };
    manage::create(
        &*server.store,
        settings,
        &jid,
        &["alice@example.test".into()],
        &opts,
    )
    .await
    .unwrap();
    let p = join(&mut cs[1], &r, "bob", "").await;
    assert!(
        !statuses(&p).contains(&"201".into()),
        "not a new room: {}",
        p.to_xml()
    );
    assert_eq!(item_attr(&p, "affiliation").as_deref(), Some("none"));
    let p = join(&mut cs[0], &r, "alice", "").await;
    assert_eq!(item_attr(&p, "affiliation").as_deref(), Some("owner"));
    let info = cs[1]
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(info.to_xml().contains("Operations") && info.to_xml().contains("muc_persistent"));
}

/// IQs to an occupant JID are relayed under ids of the room's own: two occupants asking
/// the same occupant with the same id each get their own answer, under their own id. One
/// occupant cannot tie up the relay with requests nobody answers: past 32 outstanding it
/// is refused, while others still get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iqs_to_occupants_are_relayed_under_the_rooms_own_ids() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    let r = room("relay");
    create(&mut cs[0], &r, "a", &[]).await;
    join(&mut cs[1], &r, "b", "").await;
    join(&mut cs[2], &r, "c", "").await;
    let version = "<query xmlns='jabber:iq:version'/>";
    for c in &mut cs[1..] {
        c.send(&format!(
            "<iq type='get' id='same' to='{r}/a'>{version}</iq>"
        ))
        .await;
    }
    // Alice sees two requests, from the two occupant JIDs, under two distinct ids.
    let mut relayed = Vec::new();
    for _ in 0..2 {
        let iq = cs[0]
            .expect_match("relayed request", |e| {
                e.name == "iq" && e.child("query", "jabber:iq:version").is_some()
            })
            .await;
        relayed.push((
            iq.attr("from").unwrap().to_string(),
            iq.attr("id").unwrap().to_string(),
        ));
    }
    assert_ne!(relayed[0].1, relayed[1].1, "{relayed:?}");
    for (from, id) in &relayed {
        let who = from.rsplit('/').next().unwrap();
        cs[0]
            .send(&format!(
                "<iq type='result' id='{id}' to='{from}'><query xmlns='jabber:iq:version'><name>for-{who}</name></query></iq>"
            ))
            .await;
    }
    for (i, who) in [(1, "b"), (2, "c")] {
        let answer = cs[i]
            .expect_match("the answer", |e| {
                e.name == "iq" && e.attr("id") == Some("same")
            })
            .await;
        assert_eq!(answer.attr("type"), Some("result"), "{}", answer.to_xml());
        assert_eq!(answer.attr("from"), Some(format!("{r}/a").as_str()));
        let name = answer
            .child("query", "jabber:iq:version")
            .and_then(|q| q.child("name", "jabber:iq:version"))
            .map(|n| n.text());
        assert_eq!(name.as_deref(), Some(format!("for-{who}").as_str()));
    }

    // Bob floods requests Alice never answers: the 33rd is refused.
    for i in 0..32 {
        cs[1]
            .send(&format!(
                "<iq type='get' id='f{i}' to='{r}/a'>{version}</iq>"
            ))
            .await;
    }
    cs[1]
        .send(&format!(
            "<iq type='get' id='f32' to='{r}/a'>{version}</iq>"
        ))
        .await;
    let refused = cs[1]
        .expect_match("refusal", |e| e.attr("id") == Some("f32"))
        .await;
    assert_eq!(
        stanza_error(&refused).map(|e| e.1).as_deref(),
        Some("resource-constraint"),
        "{}",
        refused.to_xml()
    );
    // Carol's request still reaches Alice.
    cs[2]
        .send(&format!(
            "<iq type='get' id='c1' to='{r}/a'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    let ping = cs[0]
        .expect_match("carol's request", |e| {
            e.name == "iq"
                && e.attr("from") == Some(format!("{r}/c").as_str())
                && e.child("ping", "urn:xmpp:ping").is_some()
        })
        .await;
    // Alice changes nick before answering: the answer still comes from the JID Carol asked.
    cs[0].send(&format!("<presence to='{r}/a2'/>")).await;
    cs[0]
        .expect_match("new nick", |e| {
            e.name == "presence" && e.attr("from") == Some(format!("{r}/a2").as_str())
        })
        .await;
    cs[0]
        .send(&format!(
            "<iq type='result' id='{}' to='{r}/c'/>",
            ping.attr("id").unwrap()
        ))
        .await;
    let answer = cs[2]
        .expect_match("the answer", |e| {
            e.name == "iq" && e.attr("id") == Some("c1")
        })
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", answer.to_xml());
    assert_eq!(answer.attr("from"), Some(format!("{r}/a").as_str()));
}
