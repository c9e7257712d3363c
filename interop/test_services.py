"""Server-answered IQ services: disco, version, ping, time, last, vcard, private, blocking."""

import pytest

from conftest import DOMAIN, IqFailed, body, child, error_condition
from helpers import is_presence, subscribe_mutually

DISCO_INFO = "http://jabber.org/protocol/disco#info"
BLOCKING = "urn:xmpp:blocking"


async def test_disco_info_server(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw, plugins=["xep_0030"])
    info = await c.x.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=5)
    ids = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
    assert ("server", "im") in ids, ids
    feats = set(info["disco_info"]["features"])
    for f in (DISCO_INFO, "http://jabber.org/protocol/disco#items", "urn:xmpp:ping",
              "jabber:iq:version", "jabber:iq:last", "urn:xmpp:time", "vcard-temp", BLOCKING,
              "msgoffline"):
        assert f in feats, f"{f} missing from {sorted(feats)}"


async def test_disco_items_lists_component(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw, plugins=["xep_0030"])
    items = await c.x.plugin["xep_0030"].get_items(jid=DOMAIN, timeout=5)
    assert "bot.example.test" in {i[0] for i in items["disco_items"]["items"]}


async def test_disco_info_account(server, xmpp):
    (jid, pw), (other, _) = server.user("svc"), server.user("svc")
    c = await xmpp.connect(jid, pw)
    r = await c.iq("get", other, f"<query xmlns='{DISCO_INFO}'/>")
    ident = child(r, DISCO_INFO, "query").find(f"{{{DISCO_INFO}}}identity")
    assert (ident.get("category"), ident.get("type")) == ("account", "registered")


async def test_software_version(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw, plugins=["xep_0092"])
    v = await c.x.plugin["xep_0092"].get_version(DOMAIN, timeout=5)
    assert v["software_version"]["name"] == "Herald"
    assert v["software_version"]["version"]


async def test_ping(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw, plugins=["xep_0199"])
    rtt = await c.x.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
    assert rtt is not None and rtt < 5


async def test_entity_time(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw, plugins=["xep_0202"])
    r = await c.iq("get", DOMAIN, "<time xmlns='urn:xmpp:time'/>")
    t = child(r, "urn:xmpp:time", "time")
    assert t.find("{urn:xmpp:time}tzo") is not None
    utc = t.find("{urn:xmpp:time}utc").text
    assert utc.endswith("Z") and "T" in utc, utc


async def test_last_activity_server_uptime(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw)
    r = await c.iq("get", DOMAIN, "<query xmlns='jabber:iq:last'/>")
    secs = int(child(r, "jabber:iq:last", "query").get("seconds"))
    assert 0 <= secs < 3600


async def test_last_activity_of_contact(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("svc"), server.user("svc")
    a = await xmpp.connect(a_jid, a_pw)
    b = await xmpp.connect(b_jid, b_pw)
    await subscribe_mutually(a, b)
    r = await b.iq("get", a_jid, "<query xmlns='jabber:iq:last'/>")
    assert child(r, "jabber:iq:last", "query").get("seconds") == "0", "online contact should be 0"
    a.x.send_presence(ptype="unavailable", pstatus="lunch")
    await b.expect("presence", is_presence(a.jid, "unavailable", full=True))
    await a.close()
    r = await b.iq("get", a_jid, "<query xmlns='jabber:iq:last'/>")
    q = child(r, "jabber:iq:last", "query")
    assert 0 <= int(q.get("seconds")) < 60
    assert (q.text or "") == "lunch", f"status not kept: {q.text!r}"


async def test_last_activity_of_stranger_forbidden(server, xmpp):
    (a_jid, _), (b_jid, b_pw) = server.user("svc"), server.user("svc")
    b = await xmpp.connect(b_jid, b_pw)
    with pytest.raises(IqFailed) as e:
        await b.iq("get", a_jid, "<query xmlns='jabber:iq:last'/>")
    assert e.value.condition == "forbidden"


async def test_vcard_publish_and_fetch(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("svc"), server.user("svc")
    a = await xmpp.connect(a_jid, a_pw, plugins=["xep_0054"])
    b = await xmpp.connect(b_jid, b_pw, plugins=["xep_0054"])
    vc = a.x.plugin["xep_0054"].make_vcard()
    vc["FN"] = "Alice Interop"
    vc["NICKNAME"] = "ally"
    await a.x.plugin["xep_0054"].publish_vcard(vc, timeout=5)
    got = await b.x.plugin["xep_0054"].get_vcard(a_jid, cached=False, timeout=5)
    assert got["vcard_temp"]["FN"] == "Alice Interop"
    assert "ally" in got["vcard_temp"]["NICKNAME"]
    mine = await a.iq("get", None, "<vCard xmlns='vcard-temp'/>")
    assert child(mine, "vcard-temp", "vCard").find("{vcard-temp}FN").text == "Alice Interop"
    # nobody may overwrite someone else's card
    with pytest.raises(IqFailed) as e:
        await b.iq("set", a_jid, "<vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard>")
    assert e.value.condition in ("forbidden", "not-allowed")


async def test_vcard_empty_when_unset(server, xmpp):
    (a_jid, _), (b_jid, b_pw) = server.user("svc"), server.user("svc")
    b = await xmpp.connect(b_jid, b_pw)
    r = await b.iq("get", a_jid, "<vCard xmlns='vcard-temp'/>")
    v = child(r, "vcard-temp", "vCard")
    assert v is not None and len(v) == 0


async def test_private_storage(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("svc"), server.user("svc")
    a = await xmpp.connect(a_jid, a_pw)
    await a.iq("set", None, "<query xmlns='jabber:iq:private'><prefs xmlns='interop:test'>"
                            "<colour>blue</colour></prefs></query>")
    r = await a.iq("get", None, "<query xmlns='jabber:iq:private'><prefs xmlns='interop:test'/></query>")
    prefs = child(r, "jabber:iq:private", "query").find("{interop:test}prefs")
    assert prefs.find("{interop:test}colour").text == "blue"
    # unknown namespace: empty element back
    r = await a.iq("get", None, "<query xmlns='jabber:iq:private'><none xmlns='interop:other'/></query>")
    empty = child(r, "jabber:iq:private", "query").find("{interop:other}none")
    assert empty is not None and len(empty) == 0
    # reserved jabber:* namespaces are refused
    with pytest.raises(IqFailed) as e:
        await a.iq("set", None, "<query xmlns='jabber:iq:private'><x xmlns='jabber:x:data'/></query>")
    assert e.value.condition == "not-acceptable"
    # someone else's private data is not reachable
    b = await xmpp.connect(b_jid, b_pw)
    with pytest.raises(IqFailed) as e:
        await b.iq("get", a_jid, "<query xmlns='jabber:iq:private'><prefs xmlns='interop:test'/></query>")
    assert e.value.condition in ("forbidden", "service-unavailable")


async def test_iq_to_nonexistent_user(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw)
    with pytest.raises(IqFailed) as e:
        await c.iq("get", f"ghost@{DOMAIN}", f"<query xmlns='{DISCO_INFO}'/>")
    assert e.value.condition == "service-unavailable"
    with pytest.raises(IqFailed) as e:
        await c.iq("get", f"ghost@{DOMAIN}/res", "<ping xmlns='urn:xmpp:ping'/>")
    assert e.value.condition == "service-unavailable"


async def test_iq_unknown_namespace_to_server(server, xmpp):
    jid, pw = server.user("svc")
    c = await xmpp.connect(jid, pw)
    with pytest.raises(IqFailed) as e:
        await c.iq("get", DOMAIN, "<query xmlns='urn:example:nothing-here'/>")
    assert e.value.condition == "service-unavailable"
    with pytest.raises(IqFailed) as e:
        await c.iq("get", None, "<query xmlns='urn:example:nothing-here'/>")
    assert e.value.condition == "service-unavailable"


async def test_iq_between_clients(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("svc"), server.user("svc")
    a = await xmpp.connect(a_jid, a_pw, plugins=["xep_0092"])
    b = await xmpp.connect(b_jid, b_pw, plugins=["xep_0092"])
    v = await a.x.plugin["xep_0092"].get_version(b.jid, timeout=5)
    assert v["software_version"]["name"], v


# --- XEP-0191 blocking ------------------------------------------------------------------

async def test_blocking(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("blk"), server.user("blk")
    a = await xmpp.connect(a_jid, a_pw, plugins=["xep_0191"])
    a2 = await xmpp.connect(a_jid, a_pw, resource="other", plugins=["xep_0191"])
    b = await xmpp.connect(b_jid, b_pw)
    await subscribe_mutually(a, b)

    await a.x.plugin["xep_0191"].block(b_jid, timeout=5)
    # every resource learns of the change (§3.3)
    await a2.expect("iq", lambda iq: child(iq, BLOCKING, "block") is not None, "block push")
    assert b_jid in {str(j) for j in await a.x.plugin["xep_0191"].get_blocked_jids(timeout=5)}
    # XEP-0191 §3.2: a blocked contact sees the user go unavailable
    await b.expect("presence", is_presence(a.jid, "unavailable", full=True), "unavailable on block")

    # blocked user's messages are not delivered; the sender gets an error
    b.x.send_message(mto=a.jid, mbody="let me in", mtype="chat")
    err = await b.expect("message", lambda m: m["type"] == "error" and body(m) == "let me in",
                         "error for message to blocker")
    assert error_condition(err) == "service-unavailable", err
    await b.roundtrip()
    await a.drain()
    assert not a.seen("message", lambda m: body(m) == "let me in")

    # messages from the blocking user to the blocked one bounce with <blocked/>
    a.x.send_message(mto=b_jid, mbody="you are blocked", mtype="chat")
    err = await a.expect("message", lambda m: m["type"] == "error", "blocked error")
    assert error_condition(err) == "not-acceptable", err
    assert err.xml.find(".//{urn:xmpp:blocking:errors}blocked") is not None, err

    # presence from the blocked user is not visible
    b.x.send_presence(pstatus="can you see me")
    await b.roundtrip()
    await a.drain()
    assert not a.seen("presence", lambda p: p["status"] == "can you see me")

    # unblock restores delivery and presence
    await a.x.plugin["xep_0191"].unblock(b_jid, timeout=5)
    await a2.expect("iq", lambda iq: child(iq, BLOCKING, "unblock") is not None, "unblock push")
    assert not await a.x.plugin["xep_0191"].get_blocked_jids(timeout=5)
    b.x.send_message(mto=a.jid, mbody="hello again", mtype="chat")
    await a.expect_message("hello again")
    a.x.send_message(mto=b_jid, mbody="welcome back", mtype="chat")
    await b.expect_message("welcome back")
    b.x.send_presence(pstatus="visible again")
    await a.expect("presence", lambda p: p["status"] == "visible again", "presence after unblock")
