"""XEP-0198 Stream Management with slixmpp's xep_0198 plugin: acks in both directions,
resumption after a dropped connection with nothing lost or duplicated, and offline
storage for a session that is never resumed."""

import time

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import DOMAIN, WAIT, body
from helpers import Events, drop_connection, is_presence, reconnect, subscribe_mutually

SM = "urn:xmpp:sm:3"
DELAY = "urn:xmpp:delay"
PLUGINS = ["xep_0198"]


def count(c, text: str) -> int:
    return len(c.seen("message", lambda m: body(m) == text))


async def test_sm_enabled_with_resumption_and_acks_both_ways(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sm"), server.user("sm")
    a = await xmpp.connect(a_jid, a_pw, resource="phone", plugins=PLUGINS)
    sm = a.x.plugin["xep_0198"]
    assert sm.enabled_in and sm.enabled_out, "stream management was not enabled"
    assert sm.sm_id, "server granted no resumption id (<enabled resume='true' id='...'/>)"
    ev = Events(a, "stanza_acked")

    # server -> client: herald asks for an ack once 5 stanzas are unacknowledged;
    # slixmpp answers with its count of handled stanzas
    requests = []
    a.x.register_handler(Callback("test sm <r/>", MatchXPath(f"{{{SM}}}r"),
                                  lambda r: requests.append(sm.handled)))
    answered = []
    send_ack = sm.send_ack
    sm.send_ack = lambda: (answered.append(sm.handled), send_ack())
    b = await xmpp.connect(b_jid, b_pw)
    texts = [f"ack me {i}" for i in range(6)]
    for t in texts:
        b.x.send_message(mto=a.jid, mbody=t, mtype="chat")
    for t in texts:
        await a.expect_message(t)
    await a.drain()
    assert requests, "the server never sent <r/> although >= 5 stanzas were unacknowledged"
    assert answered, "slixmpp did not answer the server's <r/>"

    # client -> server: slixmpp asks every 5 stanzas; herald's <a h=''/> acks them
    for _ in range(5):
        await a.roundtrip()
    await ev.expect("stanza_acked", what="(herald never answered slixmpp's <r/>)")
    # slixmpp writes its <r/> just before the 5th stanza, so the answer covers 4 of them
    assert 4 <= sm.last_ack <= sm.seq, f"server acknowledged h={sm.last_ack}, sent {sm.seq}"
    # the stream is healthy after all that (a wrong h would have ended it)
    await a.roundtrip()
    assert not a.stream_errors and not a.disconnected.done()


async def test_dropped_connection_resumes_without_loss_or_duplicates(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sm"), server.user("sm")
    a = await xmpp.connect(a_jid, a_pw, resource="phone", plugins=PLUGINS)
    b = await xmpp.connect(b_jid, b_pw, resource="pc")
    sm = a.x.plugin["xep_0198"]
    sm_id, full = sm.sm_id, a.jid
    assert sm_id, "no resumption id granted"
    starts = Events(a, "session_start", "session_resumed")

    # traffic both ways before the drop
    for i in range(3):
        b.x.send_message(mto=full, mbody=f"before {i}", mtype="chat")
        a.x.send_message(mto=b.jid, mbody=f"out before {i}", mtype="chat")
    for i in range(3):
        await a.expect_message(f"before {i}")
        await b.expect_message(f"out before {i}")

    await drop_connection(a)
    # while a is away: its session hibernates and keeps what is sent to it
    away = [f"while away {i}" for i in range(4)]
    for t in away:
        b.x.send_message(mto=full, mbody=t, mtype="chat")
    b.x.send_message(mto=a_jid, mbody="while away to bare", mtype="chat")
    await b.roundtrip()
    assert not b.seen("message", lambda m: m["type"] == "error"), "a message to the away session bounced"
    # and slixmpp queues what a sends meanwhile until the session is back
    a.x.send_message(mto=b.jid, mbody="written offline", mtype="chat")

    outcome = await reconnect(a, server)
    assert outcome == "resumed", f"expected XEP-0198 resumption, got {outcome!r}"
    await starts.expect("session_resumed")
    assert not starts.seen("session_start"), "a new session was started instead of resuming"
    assert a.jid == full, f"resumed under another JID: {a.jid} != {full}"
    assert sm.sm_id == sm_id

    for t in away + ["while away to bare"]:
        await a.expect_message(t, timeout=WAIT)
    await b.expect_message("written offline")
    # the session goes on, in both directions
    b.x.send_message(mto=full, mbody="after resume", mtype="chat")
    await a.expect_message("after resume")
    a.x.send_message(mto=b.jid, mbody="out after resume", mtype="chat")
    await b.expect_message("out after resume")
    await a.drain()
    await b.drain()

    to_a = [f"before {i}" for i in range(3)] + away + ["while away to bare", "after resume"]
    dup_or_lost = {t: count(a, t) for t in to_a if count(a, t) != 1}
    assert not dup_or_lost, f"messages to the resumed client not delivered exactly once: {dup_or_lost}"
    to_b = [f"out before {i}" for i in range(3)] + ["written offline", "out after resume"]
    dup_or_lost = {t: count(b, t) for t in to_b if count(b, t) != 1}
    assert not dup_or_lost, f"messages from the resumed client not delivered exactly once: {dup_or_lost}"
    order = [body(m) for m in a.received["message"] if body(m) in away]
    assert order == away, f"retransmitted/queued messages out of order: {order}"


async def test_session_not_resumed_sends_messages_to_offline_storage(make_server, xmpp):
    srv = make_server("[c2s]\nresume_timeout_secs = 2\n")
    (a_jid, a_pw), (b_jid, b_pw) = srv.user("sm"), srv.user("sm")
    a = await xmpp.connect(a_jid, a_pw, resource="phone", plugins=PLUGINS, server=srv)
    b = await xmpp.connect(b_jid, b_pw, resource="pc", server=srv)
    await subscribe_mutually(a, b)
    await a.drain()
    assert a.x.plugin["xep_0198"].sm_id, "no resumption id granted"
    gone = a.jid

    await drop_connection(a)
    dropped_at = time.monotonic()
    texts = [f"never resumed {i}" for i in range(3)]
    for t in texts:
        b.x.send_message(mto=a_jid, mbody=t, mtype="chat")
    await b.roundtrip()
    assert not b.seen("message", lambda m: m["type"] == "error"), "a message to the away session bounced"
    # the hibernating session ends when resume_timeout_secs passes: b, a contact, sees it go
    await b.expect("presence", is_presence(gone, "unavailable", full=True),
                   "unavailable after the resumption timeout", timeout=2 + WAIT)
    waited = time.monotonic() - dropped_at
    assert waited >= 1.5, f"session ended {waited:.1f}s after the drop: it did not hibernate"

    # a fresh login (new session, not a resumption) gets them from offline storage
    a2 = await xmpp.connect(a_jid, a_pw, resource="desk", server=srv)
    got = [await a2.expect("message", lambda m: body(m) in texts, "from offline storage")
           for _ in texts]
    assert [body(m) for m in got] == texts, "offline messages out of order"
    for m in got:
        d = m.xml.find(f"{{{DELAY}}}delay")
        assert d is not None, f"no XEP-0203 delay on a message from offline storage: {m}"
        assert d.get("from") == DOMAIN, d.attrib
        assert m["from"] == b.jid
    await a2.drain()
    dups = {t: count(a2, t) for t in texts if count(a2, t) != 1}
    assert not dups, f"offline messages delivered more than once: {dups}"
