"""XEP-0160 offline messages with XEP-0203 delay, quota, and durability across a crash."""

import re
import signal

from conftest import DOMAIN, body, error_condition, error_type

DELAY = "urn:xmpp:delay"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


async def test_offline_delivered_in_order_with_delay_once(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("off"), server.user("off")
    a = await xmpp.connect(a_jid, a_pw, resource="a")
    texts = [f"offline {i}" for i in range(5)]
    for t in texts:
        a.x.send_message(mto=b_jid, mbody=t, mtype="chat")
    await a.roundtrip()  # stored before the ping is answered
    assert not a.seen("message", lambda m: m["type"] == "error"), "sender got an error"

    b = await xmpp.connect(b_jid, b_pw)
    got = [await b.expect("message", lambda m: body(m) in texts, "offline message") for _ in texts]
    assert [body(m) for m in got] == texts, "offline messages out of order"
    for m in got:
        assert m["from"] == a.jid
        d = m.xml.find(f"{{{DELAY}}}delay")
        assert d is not None, f"no XEP-0203 delay: {m}"
        assert d.get("from") == DOMAIN, d.attrib
        assert STAMP.match(d.get("stamp", "")), d.attrib
    await b.close()

    b2 = await xmpp.connect(b_jid, b_pw)
    await b2.drain()
    assert not b2.seen("message", lambda m: body(m) in texts), "offline messages delivered twice"


async def test_no_offline_delivery_without_presence(server, xmpp):
    """Offline messages wait for initial presence (with non-negative priority)."""
    (a_jid, a_pw), (b_jid, b_pw) = server.user("off"), server.user("off")
    a = await xmpp.connect(a_jid, a_pw)
    a.x.send_message(mto=b_jid, mbody="wait for presence", mtype="chat")
    await a.roundtrip()
    b = await xmpp.connect(b_jid, b_pw, presence=False)
    await b.drain()
    assert not b.seen("message", lambda m: body(m) == "wait for presence")
    b.x.send_presence()
    await b.expect_message("wait for presence")


async def test_offline_quota(make_server, xmpp):
    srv = make_server("[offline]\nmax_messages = 3\n")
    (a_jid, a_pw), (b_jid, _) = srv.user("quota"), srv.user("quota")
    a = await xmpp.connect(a_jid, a_pw, server=srv)
    for i in range(4):
        a.x.send_message(mto=b_jid, mbody=f"q{i}", mtype="chat")
    err = await a.expect("message", lambda m: m["type"] == "error", "quota error")
    assert body(err) == "q3", f"the 4th message should bounce: {err}"
    assert error_condition(err) == "service-unavailable", err
    assert error_type(err) == "wait", err
    await a.roundtrip()
    errors = a.seen("message", lambda m: m["type"] == "error")
    assert len(errors) == 1, f"expected exactly one bounce, got {len(errors)}"


async def test_offline_message_survives_sigkill(make_server, xmpp):
    srv = make_server()
    (a_jid, a_pw), (b_jid, b_pw) = srv.user("dur"), srv.user("dur")
    a = await xmpp.connect(a_jid, a_pw, server=srv)
    a.x.send_message(mto=b_jid, mbody="survive the crash", mtype="chat")
    await a.roundtrip()
    srv.signal(signal.SIGKILL)
    assert srv.wait_exit(5) == -signal.SIGKILL
    await a.disconnected
    srv.start()
    b = await xmpp.connect(b_jid, b_pw, server=srv)
    m = await b.expect_message("survive the crash")
    assert m.xml.find(f"{{{DELAY}}}delay") is not None


async def test_only_negative_priority_resources_means_offline(server, xmpp):
    """RFC 6121 §8.5.2.1.1: with only negative-priority resources a message is stored."""
    (a_jid, a_pw), (b_jid, b_pw) = server.user("off"), server.user("off")
    a = await xmpp.connect(a_jid, a_pw)
    neg = await xmpp.connect(b_jid, b_pw, resource="neg", priority=-1)
    a.x.send_message(mto=b_jid, mbody="kept for later", mtype="chat")
    a.x.send_message(mto=neg.jid, mbody="marker", mtype="chat")
    await neg.expect_message("marker")
    assert not neg.seen("message", lambda m: body(m) == "kept for later")
    b = await xmpp.connect(b_jid, b_pw, resource="pos", priority=1)
    m = await b.expect_message("kept for later")
    assert m.xml.find(f"{{{DELAY}}}delay") is not None
