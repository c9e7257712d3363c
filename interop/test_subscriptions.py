"""RFC 6121 §3 presence subscriptions, as both parties' clients see them."""

from helpers import expect_push, is_presence, roster_of, subscribe_mutually


async def test_full_handshake_both_ways(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sub"), server.user("sub")
    a = await xmpp.connect(a_jid, a_pw, resource="a")
    b = await xmpp.connect(b_jid, b_pw, resource="b")

    a.x.send_presence(pto=b_jid, ptype="subscribe")
    await expect_push(a, b_jid, subscription="none", ask="subscribe")
    req = await b.expect("presence", is_presence(a_jid, "subscribe"), "subscribe from a")
    assert str(req["from"]) == a_jid, "subscription requests come from the bare JID"
    assert (await roster_of(a))[b_jid]["ask"] == "subscribe", "ask='subscribe' not visible while pending"

    b.x.send_presence(pto=a_jid, ptype="subscribed")
    await expect_push(b, a_jid, subscription="from")
    await expect_push(a, b_jid, subscription="to", ask=None)
    await a.expect("presence", is_presence(b_jid, "subscribed"), "subscribed")
    # approval makes b's current presence visible to a at once
    await a.expect("presence", is_presence(b.jid, None, full=True), "b's available presence")

    b.x.send_presence(pto=a_jid, ptype="subscribe")
    await a.expect("presence", is_presence(b_jid, "subscribe"), "subscribe from b")
    a.x.send_presence(pto=b_jid, ptype="subscribed")
    await b.expect("presence", is_presence(a_jid, "subscribed"), "subscribed")
    await b.expect("presence", is_presence(a.jid, None, full=True), "a's available presence")
    assert (await roster_of(a))[b_jid]["subscription"] == "both"
    assert (await roster_of(b))[a_jid]["subscription"] == "both"

    # presence changes now flow both ways
    a.x.send_presence(pstatus="busy-a", pshow="dnd")
    p = await b.expect("presence", lambda p: p["from"] == a.jid and p["status"] == "busy-a", "status update")
    assert p["show"] == "dnd"
    b.x.send_presence(pstatus="away-b", pshow="away")
    await a.expect("presence", lambda p: p["from"] == b.jid and p["status"] == "away-b", "status update")


async def test_pre_approval(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sub"), server.user("sub")
    a = await xmpp.connect(a_jid, a_pw)
    b = await xmpp.connect(b_jid, b_pw)
    assert "preapproval" in b.x.features, f"stream features: {b.x.features}"
    # b approves a before a asks (RFC 6121 §3.4)
    b.x.send_presence(pto=a_jid, ptype="subscribed")
    await expect_push(b, a_jid, approved="true", subscription="none")
    await b.roundtrip()
    await a.drain()
    assert not a.seen("presence", is_presence(b_jid, "subscribed")), "pre-approval must not be sent"

    a.x.send_presence(pto=b_jid, ptype="subscribe")
    await a.expect("presence", is_presence(b_jid, "subscribed"), "automatic approval")
    await expect_push(a, b_jid, subscription="to")
    await expect_push(b, a_jid, subscription="from")
    await a.roundtrip()
    await b.drain()
    assert not b.seen("presence", is_presence(a_jid, "subscribe")), \
        "a pre-approved request must not reach the contact"


async def test_pending_request_delivered_at_next_login(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sub"), server.user("sub")
    a = await xmpp.connect(a_jid, a_pw)
    a.x.send_presence(pto=b_jid, ptype="subscribe")
    await a.roundtrip()
    assert (await roster_of(a))[b_jid]["ask"] == "subscribe"
    b = await xmpp.connect(b_jid, b_pw)
    await b.expect("presence", is_presence(a_jid, "subscribe"), "stored subscribe request")
    # still pending until answered: a second login sees it again
    await b.close()
    b2 = await xmpp.connect(b_jid, b_pw)
    await b2.expect("presence", is_presence(a_jid, "subscribe"), "request again on next login")
    b2.x.send_presence(pto=a_jid, ptype="subscribed")
    await a.expect("presence", is_presence(b_jid, "subscribed"), "approval")
    await b2.close()
    b3 = await xmpp.connect(b_jid, b_pw)
    await b3.drain()
    assert not b3.seen("presence", is_presence(a_jid, "subscribe")), "answered request redelivered"


async def test_unsubscribe_and_unsubscribed(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sub"), server.user("sub")
    a = await xmpp.connect(a_jid, a_pw, resource="a")
    b = await xmpp.connect(b_jid, b_pw, resource="b")
    await subscribe_mutually(a, b)

    # a stops receiving b's presence
    a.x.send_presence(pto=b_jid, ptype="unsubscribe")
    await expect_push(a, b_jid, subscription="from")
    await b.expect("presence", is_presence(a_jid, "unsubscribe"), "unsubscribe")
    await expect_push(b, a_jid, subscription="to")
    await a.expect("presence", is_presence(b.jid, "unavailable", full=True), "b unavailable to a")

    # a revokes b's subscription to a's presence
    a.x.send_presence(pto=b_jid, ptype="unsubscribed")
    await expect_push(a, b_jid, subscription="none")
    await b.expect("presence", is_presence(a_jid, "unsubscribed"), "unsubscribed")
    await expect_push(b, a_jid, subscription="none")
    await b.expect("presence", is_presence(a.jid, "unavailable", full=True), "a unavailable to b")
    assert (await roster_of(a))[b_jid]["subscription"] == "none"
    assert (await roster_of(b))[a_jid]["subscription"] == "none"


async def test_denied_request(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("sub"), server.user("sub")
    a = await xmpp.connect(a_jid, a_pw)
    b = await xmpp.connect(b_jid, b_pw)
    a.x.send_presence(pto=b_jid, ptype="subscribe")
    await b.expect("presence", is_presence(a_jid, "subscribe"))
    b.x.send_presence(pto=a_jid, ptype="unsubscribed")
    await a.expect("presence", is_presence(b_jid, "unsubscribed"), "denial")
    await expect_push(a, b_jid, subscription="none", ask=None)


async def test_subscribe_to_nonexistent_user(server, xmpp):
    a_jid, a_pw = server.user("sub")
    a = await xmpp.connect(a_jid, a_pw)
    ghost = "ghost-user@example.test"
    a.x.send_presence(pto=ghost, ptype="subscribe")
    await a.expect("presence", is_presence(ghost, "unsubscribed"), "automatic denial")
