"""XEP-0114 external components."""

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import COMPONENT_DOMAIN, body, error_condition


async def test_component_roundtrip(server, xmpp):
    comp, result = await xmpp.component()
    assert result == "session", f"component handshake failed: {comp.stream_errors}"
    jid, pw = server.user("comp")
    c = await xmpp.connect(jid, pw)

    c.x.send_message(mto=f"someone@{COMPONENT_DOMAIN}", mbody="hi bot", mtype="chat")
    m = await comp.expect("message", lambda m: body(m) == "hi bot", "client message")
    assert str(m["from"]) == c.jid and str(m["to"]) == f"someone@{COMPONENT_DOMAIN}"

    comp.x.send_message(mto=c.jid, mfrom=f"someone@{COMPONENT_DOMAIN}/bot", mbody="hi human",
                        mtype="chat")
    r = await c.expect_message("hi human")
    assert str(r["from"]) == f"someone@{COMPONENT_DOMAIN}/bot"

    # the component can address the user's bare JID too
    comp.x.send_message(mto=jid, mfrom=f"someone@{COMPONENT_DOMAIN}", mbody="to bare", mtype="chat")
    await c.expect_message("to bare")

    # IQ from client to the component's domain and the answer back
    comp.x.register_handler(Callback(
        "answer-ping", MatchXPath("{jabber:component:accept}iq/{urn:xmpp:ping}ping"),
        lambda iq: iq.reply().send()))
    await c.iq("get", COMPONENT_DOMAIN, "<ping xmlns='urn:xmpp:ping'/>")


async def test_component_wrong_secret_refused(server, xmpp):
    comp, result = await xmpp.component(secret="not-the-secret")
    assert result == "disconnected", result
    assert "not-authorized" in comp.stream_errors, comp.stream_errors


async def test_component_unknown_domain_refused(server, xmpp):
    comp, result = await xmpp.component(domain="nobot.example.test")
    assert result == "disconnected", result
    assert comp.stream_errors and comp.stream_errors[0] in ("host-unknown", "not-authorized")


async def test_message_to_disconnected_component_bounces(server, xmpp):
    jid, pw = server.user("comp")
    c = await xmpp.connect(jid, pw)
    c.x.send_message(mto=f"x@{COMPONENT_DOMAIN}", mbody="anyone home", mtype="chat")
    err = await c.expect("message", lambda m: m["type"] == "error", "bounce")
    assert error_condition(err) == "service-unavailable", err
