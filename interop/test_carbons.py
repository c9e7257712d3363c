"""XEP-0280 Message Carbons as slixmpp's xep_0280 plugin sees them: every resource that
enabled carbons gets "sent" and "received" copies of its account's 1:1 chats, except
messages marked private, and nothing once it disabled carbons."""

from slixmpp.xmlstream import ET

from conftest import DOMAIN, body
from helpers import Events

CARBONS = "urn:xmpp:carbons:2"
PLUGINS = ["xep_0030", "xep_0297", "xep_0280"]


def sent_copy(text: str):
    """Predicate on a carbon_sent event: the forwarded message has this body."""
    return lambda msg: msg["carbon_sent"]["body"] == text


def received_copy(text: str):
    """Predicate on a carbon_received event: the forwarded message has this body."""
    return lambda msg: msg["carbon_received"]["body"] == text


async def test_server_advertises_carbons(server, xmpp):
    jid, pw = server.user("carb")
    c = await xmpp.connect(jid, pw, plugins=PLUGINS)
    info = await c.x.plugin["xep_0030"].get_info(jid=DOMAIN, local=False, timeout=5)
    features = info["disco_info"]["features"]
    assert CARBONS in features, f"disco#info of {DOMAIN} lacks {CARBONS}: {sorted(features)}"


async def test_sent_received_private_and_disable(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("carb"), server.user("carb")
    phone = await xmpp.connect(a_jid, a_pw, resource="phone", plugins=PLUGINS)
    desk = await xmpp.connect(a_jid, a_pw, resource="desk", plugins=PLUGINS)
    bob = await xmpp.connect(b_jid, b_pw, resource="pc")
    for c in (phone, desk):
        await c.x.plugin["xep_0280"].enable(timeout=5)
    desk_ev = Events(desk, "carbon_sent", "carbon_received")
    phone_ev = Events(phone, "carbon_sent", "carbon_received")

    # phone -> bob: desk gets a "sent" copy of exactly that message
    phone.x.send_message(mto=b_jid, mbody="from phone", mtype="chat")
    await bob.expect_message("from phone")
    copy = await desk_ev.expect("carbon_sent", sent_copy("from phone"), "for 'from phone'")
    assert copy["from"] == a_jid, f"carbon must come from the bare account JID: {copy}"
    assert copy["to"] == desk.jid, copy
    inner = copy["carbon_sent"]
    assert inner["to"] == b_jid, f"forwarded message has the wrong 'to': {copy}"
    assert inner["from"] == phone.jid, f"forwarded message has the wrong 'from': {copy}"
    assert inner["type"] == "chat", copy
    # the sender itself gets no copy: anything routed to it by its first message would
    # arrive before the answer to the drain it sends afterwards
    await phone.drain()
    assert not phone_ev.seen("carbon_sent", sent_copy("from phone")), \
        "the sending resource got a carbon of its own message"

    # bob -> phone's full JID: desk gets a "received" copy
    bob.x.send_message(mto=phone.jid, mbody="to phone", mtype="chat")
    m = await phone.expect_message("to phone")
    assert m["from"] == bob.jid
    copy = await desk_ev.expect("carbon_received", received_copy("to phone"), "for 'to phone'")
    assert copy["from"] == a_jid, f"carbon must come from the bare account JID: {copy}"
    inner = copy["carbon_received"]
    assert inner["from"] == bob.jid and inner["to"] == phone.jid, f"wrong forwarded addressing: {copy}"
    assert not phone_ev.seen("carbon_received"), "the addressed resource got a carbon as well"

    # <private/> messages are not copied. Carbons are made while the server processes the
    # sender's message, so the copy of a later ordinary message is the barrier.
    secret = phone.x.make_message(mto=b_jid, mbody="secret", mtype="chat")
    secret.append(ET.Element(f"{{{CARBONS}}}private"))
    secret.send()
    await bob.expect_message("secret")
    phone.x.send_message(mto=b_jid, mbody="not secret", mtype="chat")
    await desk_ev.expect("carbon_sent", sent_copy("not secret"), "for 'not secret'")
    assert not desk_ev.seen("carbon_sent", sent_copy("secret")), \
        "a message marked <private xmlns='urn:xmpp:carbons:2'/> was carbon-copied"

    # after disable: neither sent nor received copies. Barriers: a direct message from the
    # same sender to desk, queued for desk after any copy the server would have made.
    await desk.x.plugin["xep_0280"].disable(timeout=5)
    phone.x.send_message(mto=b_jid, mbody="after disable out", mtype="chat")
    phone.x.send_message(mto=desk.jid, mbody="barrier from phone", mtype="chat")
    await bob.expect_message("after disable out")
    await desk.expect_message("barrier from phone")
    bob.x.send_message(mto=phone.jid, mbody="after disable in", mtype="chat")
    bob.x.send_message(mto=desk.jid, mbody="barrier from bob", mtype="chat")
    await phone.expect_message("after disable in")
    await desk.expect_message("barrier from bob")
    late = desk_ev.seen("carbon_sent", sent_copy("after disable out")) + \
        desk_ev.seen("carbon_received", received_copy("after disable in"))
    assert not late, f"carbons delivered after <disable/>: {late}"
    assert not desk.seen("message", lambda m: body(m) in ("after disable out", "after disable in")), \
        "the messages themselves reached the resource that was not addressed"

    # the phone still has carbons on: bob's reply to desk is copied to it
    bob.x.send_message(mto=desk.jid, mbody="to desk", mtype="chat")
    await desk.expect_message("to desk")
    await phone_ev.expect("carbon_received", received_copy("to desk"), "for 'to desk'")
