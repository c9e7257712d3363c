"""RFC 6121 §4 presence exchange."""

from helpers import is_presence, subscribe_mutually


async def _pair(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("pres"), server.user("pres")
    a = await xmpp.connect(a_jid, a_pw, resource="a")
    b = await xmpp.connect(b_jid, b_pw, resource="b")
    await subscribe_mutually(a, b)
    return (a_jid, a_pw, a), (b_jid, b_pw, b)


async def test_initial_presence_broadcast_and_unavailable_on_disconnect(server, xmpp):
    (a_jid, a_pw, a), (b_jid, b_pw, b) = await _pair(server, xmpp)
    a2 = await xmpp.connect(a_jid, a_pw, resource="second", priority=7)
    p = await b.expect("presence", is_presence(a2.jid, None, full=True), "initial presence of a/second")
    assert p["priority"] == 7, f"priority not carried: {p}"
    # a's other resource sees it too
    await a.expect("presence", is_presence(a2.jid, None, full=True), "own other resource's presence")
    await a2.close()
    await b.expect("presence", is_presence(a2.jid, "unavailable", full=True), "unavailable on disconnect")
    await a.expect("presence", is_presence(a2.jid, "unavailable", full=True), "own resource went away")


async def test_probe_on_login_sees_online_contact(server, xmpp):
    (a_jid, a_pw, a), (b_jid, b_pw, b) = await _pair(server, xmpp)
    a.x.send_presence(pstatus="here already", pshow="chat")
    await b.expect("presence", lambda p: p["from"] == a.jid and p["status"] == "here already")
    await b.close()
    b2 = await xmpp.connect(b_jid, b_pw, resource="b2")
    p = await b2.expect("presence", is_presence(a.jid, None, full=True), "probe answer for a")
    assert p["status"] == "here already" and p["show"] == "chat"


async def test_explicit_unavailable(server, xmpp):
    (a_jid, a_pw, a), (b_jid, b_pw, b) = await _pair(server, xmpp)
    a.x.send_presence(ptype="unavailable", pstatus="gone fishing")
    p = await b.expect("presence", is_presence(a.jid, "unavailable", full=True))
    assert p["status"] == "gone fishing"


async def test_no_presence_without_subscription(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("pres"), server.user("pres")
    b = await xmpp.connect(b_jid, b_pw)
    a = await xmpp.connect(a_jid, a_pw)
    a.x.send_presence(pstatus="secret")
    await a.roundtrip()
    await b.drain()
    assert not b.seen("presence", is_presence(a_jid)), "presence leaked to a non-subscriber"


async def test_directed_presence_and_unavailable_on_logout(server, xmpp):
    (a_jid, a_pw), (c_jid, c_pw) = server.user("pres"), server.user("pres")
    a = await xmpp.connect(a_jid, a_pw, resource="a")
    c = await xmpp.connect(c_jid, c_pw, resource="c")
    a.x.send_presence(pto=c.jid, pstatus="just for you")
    p = await c.expect("presence", is_presence(a.jid, None, full=True), "directed presence")
    assert p["status"] == "just for you"
    await a.close()
    await c.expect("presence", is_presence(a.jid, "unavailable", full=True),
                   "unavailable owed after directed presence")


async def test_priority_change_visible_to_contacts(server, xmpp):
    (a_jid, a_pw, a), (b_jid, b_pw, b) = await _pair(server, xmpp)
    a.x.send_presence(ppriority=-5)
    p = await b.expect("presence", lambda p: p["from"] == a.jid and p["priority"] == -5, "priority -5")
    assert p.xml.get("type") is None
