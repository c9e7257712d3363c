"""RFC 6121 §8 message delivery as clients observe it."""

from conftest import DOMAIN, body, error_condition


async def test_chat_both_ways(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("msg"), server.user("msg")
    a = await xmpp.connect(a_jid, a_pw, resource="ra")
    b = await xmpp.connect(b_jid, b_pw, resource="rb")
    a.x.send_message(mto=b_jid, mbody="hello b", mtype="chat")
    m = await b.expect_message("hello b")
    assert m["from"] == a.jid and m["type"] == "chat"
    b.x.send_message(mto=a.jid, mbody="hello a", mtype="chat")
    m = await a.expect_message("hello a")
    assert m["from"] == b.jid


async def test_bare_jid_goes_to_non_negative_priorities(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("msg"), server.user("msg")
    a = await xmpp.connect(a_jid, a_pw)
    hi = await xmpp.connect(b_jid, b_pw, resource="hi", priority=5)
    zero = await xmpp.connect(b_jid, b_pw, resource="zero", priority=0)
    neg = await xmpp.connect(b_jid, b_pw, resource="neg", priority=-1)
    a.x.send_message(mto=b_jid, mbody="to-bare", mtype="chat")
    await hi.expect_message("to-bare")
    await zero.expect_message("to-bare")
    # barrier: a later message from the same sender to 'neg' arrives after the bare one would
    a.x.send_message(mto=neg.jid, mbody="marker", mtype="chat")
    await neg.expect_message("marker")
    assert not neg.seen("message", lambda m: body(m) == "to-bare"), \
        "negative-priority resource got a message sent to the bare JID"


async def test_full_jid_of_offline_resource_falls_back_to_bare(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("msg"), server.user("msg")
    a = await xmpp.connect(a_jid, a_pw)
    b = await xmpp.connect(b_jid, b_pw, resource="online")
    a.x.send_message(mto=f"{b_jid}/gone", mbody="to-gone", mtype="chat")
    m = await b.expect_message("to-gone")
    assert m["to"].bare == b_jid


async def test_message_to_nonexistent_user_bounces(server, xmpp):
    a_jid, a_pw = server.user("msg")
    a = await xmpp.connect(a_jid, a_pw)
    a.x.send_message(mto=f"no-such-user@{DOMAIN}", mbody="anyone?", mtype="chat")
    err = await a.expect("message", lambda m: m["type"] == "error", "of type error")
    assert error_condition(err) == "service-unavailable", err
    assert err["from"].bare == f"no-such-user@{DOMAIN}"


async def test_message_to_other_domain_bounces(server, xmpp):
    a_jid, a_pw = server.user("msg")
    a = await xmpp.connect(a_jid, a_pw)
    a.x.send_message(mto="someone@elsewhere.invalid", mbody="far away", mtype="chat")
    err = await a.expect("message", lambda m: m["type"] == "error", "of type error")
    assert error_condition(err) in ("remote-server-not-found", "service-unavailable"), err


async def test_message_without_to_reaches_own_resources(server, xmpp):
    jid, pw = server.user("msg")
    r1 = await xmpp.connect(jid, pw, resource="r1")
    r2 = await xmpp.connect(jid, pw, resource="r2")
    r1.x.send_raw("<message type='chat'><body>note to self</body></message>")
    await r2.expect_message("note to self")
