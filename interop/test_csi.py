"""XEP-0352 Client State Indication with slixmpp's xep_0352 plugin: while a client is
inactive, presence updates for it are held (only the newest per contact is kept) until
something that matters arrives or it becomes active again; messages are never held."""

from conftest import body
from helpers import is_presence, subscribe_mutually

PLUGINS = ["xep_0352"]


def shows_from(c, frm: str, since: int = 0) -> list[str]:
    """The <show/> of every available presence `c` got from `frm` (bare), oldest first."""
    return [p["show"] for p in c.seen("presence", is_presence(frm))[since:]]


def new_presence(c, frm: str):
    """Predicate: an available presence from `frm` (bare) that `c` had not received yet."""
    old = {id(p) for p in c.received["presence"]}
    match = is_presence(frm)
    return lambda p: id(p) not in old and match(p)


async def setup(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("csi"), server.user("csi")
    a = await xmpp.connect(a_jid, a_pw, resource="phone", plugins=PLUGINS)
    b = await xmpp.connect(b_jid, b_pw, resource="pc")
    await subscribe_mutually(a, b)
    # everything the subscription produced has arrived
    await a.drain()
    await b.drain()
    return a, b


async def test_csi_stream_feature(server, xmpp):
    jid, pw = server.user("csi")
    c, outcome = await xmpp.login(jid, pw, plugins=PLUGINS)
    assert outcome == "session", outcome
    assert c.x.plugin["xep_0352"].enabled, "<csi xmlns='urn:xmpp:csi:0'/> not among the stream features"


async def test_inactive_holds_latest_presence_until_a_message(server, xmpp):
    a, b = await setup(server, xmpp)
    seen_before = len(a.seen("presence", is_presence(b.bare)))
    a.x.plugin["xep_0352"].send_inactive()
    await a.roundtrip()  # herald processed <inactive/> (the ping result is not held)

    for show in ("away", "xa", "dnd"):
        b.x.send_presence(pshow=show)
    await b.roundtrip()  # routed to a's session before the ping was answered
    assert shows_from(a, b.bare, seen_before) == [], \
        "presence updates reached an inactive client at once"

    # a message is delivered at once, with the newest held presence flushed just before it
    b.x.send_message(mto=a.jid, mbody="wake up", mtype="chat")
    await a.expect_message("wake up")
    assert shows_from(a, b.bare, seen_before) == ["dnd"], \
        "held presence not de-duplicated to the newest, or not flushed before the message"

    # still inactive: messages keep arriving at once, and nothing more is held
    b.x.send_message(mto=a.jid, mbody="second", mtype="chat")
    await a.expect_message("second")
    assert shows_from(a, b.bare, seen_before) == ["dnd"]


async def test_going_active_flushes_latest_held_presence(server, xmpp):
    a, b = await setup(server, xmpp)
    seen_before = len(a.seen("presence", is_presence(b.bare)))
    a.x.plugin["xep_0352"].send_inactive()
    await a.roundtrip()

    for show in ("away", "xa"):
        b.x.send_presence(pshow=show)
    b.x.send_presence(pshow="chat", pstatus="latest")
    await b.roundtrip()
    assert shows_from(a, b.bare, seen_before) == [], \
        "presence updates reached an inactive client at once"

    flushed = new_presence(a, b.bare)
    a.x.plugin["xep_0352"].send_active()
    p = await a.expect("presence", flushed, "flushed on <active/>")
    assert p["show"] == "chat" and p["status"] == "latest", f"not the newest held presence: {p}"
    await a.drain()
    assert shows_from(a, b.bare, seen_before) == ["chat"], \
        "held presence not de-duplicated to the newest"

    # active again: presence flows live
    live = new_presence(a, b.bare)
    b.x.send_presence(pshow="dnd")
    p = await a.expect("presence", live, "live after <active/>")
    assert p["show"] == "dnd", p


async def test_messages_and_unavailable_while_inactive(server, xmpp):
    """Unavailable presence is held like any availability change (newest wins), and a
    message from someone else flushes it too: order across contacts is kept."""
    a, b = await setup(server, xmpp)
    c_jid, c_pw = server.user("csi")
    c = await xmpp.connect(c_jid, c_pw, resource="other")
    await subscribe_mutually(a, c)
    await a.drain()
    seen_before = len(a.seen("presence", lambda p: p["from"].bare == b.bare))
    a.x.plugin["xep_0352"].send_inactive()
    await a.roundtrip()

    b.x.send_presence(pshow="away")
    await b.close()  # goes unavailable: replaces the held 'away'
    c.x.send_message(mto=a.jid, mbody="from c", mtype="chat")
    await a.expect_message("from c")
    got = [p.xml.get("type") for p in
           a.seen("presence", lambda p: p["from"].bare == b.bare)[seen_before:]]
    assert got == ["unavailable"], f"held presence of b when c's message came: {got}"
    assert not a.seen("message", lambda m: m["type"] == "error")
    assert body(a.received["message"][-1]) == "from c"
