"""XEP-0357 push notifications: a slixmpp client enables push on its account, a slixmpp
ComponentXMPP plays the App Server's push service and receives the pubsub publishes.

The slixmpp in requirements.txt ships no xep_0357 plugin, so the client sends the
`<enable/>`/`<disable/>` payloads as raw XML (as the XEP's examples write them); the
component side parses what Herald publishes with ElementTree.
"""

from conftest import COMPONENT_DOMAIN, IqFailed

PUSH = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
XDATA = "jabber:x:data"
COMP = "jabber:component:accept"


def enable_xml(node: str, secret: str | None = None) -> str:
    form = ""
    if secret:
        form = (
            "<x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"<field var='secret'><value>{secret}</value></field></x>"
        )
    return f"<enable xmlns='{PUSH}' jid='{COMPONENT_DOMAIN}' node='{node}'>{form}</enable>"


def publish_of(iq):
    return iq.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")


def is_publish(iq) -> bool:
    return iq["type"] == "set" and publish_of(iq) is not None


def fields(x) -> dict[str, str]:
    out = {}
    for f in x.findall(f"{{{XDATA}}}field"):
        v = f.find(f"{{{XDATA}}}value")
        out[f.get("var")] = "" if v is None else (v.text or "")
    return out


def summary(iq) -> dict[str, str]:
    x = publish_of(iq).find(f"{{{PUBSUB}}}item/{{{PUSH}}}notification/{{{XDATA}}}x")
    assert x is not None, f"no summary form in {iq}"
    return fields(x)


def answer(comp, iq, error: tuple[str, str] | None = None):
    to = iq["from"]
    if error is None:
        comp.send(f"<iq xmlns='{COMP}' type='result' id='{iq['id']}' from='{COMPONENT_DOMAIN}' to='{to}'/>")
    else:
        kind, cond = error
        comp.send(
            f"<iq xmlns='{COMP}' type='error' id='{iq['id']}' from='{COMPONENT_DOMAIN}' to='{to}'>"
            f"<error type='{kind}'><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )


async def test_push_enable_notify_disable(server, xmpp):
    comp, result = await xmpp.component()
    assert result == "session", comp.stream_errors
    ajid, apw = server.user("pusha")
    bjid, bpw = server.user("pushb")

    a = await xmpp.connect(ajid, apw, resource="phone")
    info = await a.iq("get", ajid, "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    feats = {f.get("var") for f in info.xml.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert PUSH in feats, feats
    await a.iq("set", None, enable_xml("node-1", secret="s3cr3t"))
    await a.close()

    b = await xmpp.connect(bjid, bpw)
    b.x.send_message(mto=ajid, mbody="for your eyes only", mtype="chat")
    iq = await comp.expect("iq", is_publish, "push publish")
    assert str(iq["from"]) == ajid and str(iq["to"]) == COMPONENT_DOMAIN
    assert publish_of(iq).get("node") == "node-1"
    s = summary(iq)
    assert s["FORM_TYPE"] == "urn:xmpp:push:summary"
    assert s["message-count"] == "1"
    assert s["last-message-sender"] == b.jid
    assert "last-message-body" not in s, "bodies stay out by default"
    opts = iq.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options/{{{XDATA}}}x")
    assert opts is not None and fields(opts)["secret"] == "s3cr3t"
    answer(comp, iq)

    # Disable: no more publishes to that node. (Logging in without presence leaves the
    # offline messages waiting, so the count keeps growing.)
    a = await xmpp.connect(ajid, apw, resource="phone", presence=False)
    await a.iq("set", None, f"<disable xmlns='{PUSH}' jid='{COMPONENT_DOMAIN}' node='node-1'/>")
    await a.iq("set", None, enable_xml("node-2"))
    await a.close()
    b.x.send_message(mto=ajid, mbody="second", mtype="chat")
    iq = await comp.expect("iq", is_publish, "publish to node-2")
    assert publish_of(iq).get("node") == "node-2"
    assert summary(iq)["message-count"] == "2"
    # Publishes for one message go out in registration order: node-1's would have come first.
    assert len(comp.seen("iq", lambda i: is_publish(i) and publish_of(i).get("node") == "node-1")) == 1
    # The app server says the node is gone: the registration is disabled.
    answer(comp, iq, ("cancel", "item-not-found"))

    # Bad requests are refused.
    a = await xmpp.connect(ajid, apw, resource="phone", presence=False)
    try:
        await a.iq("set", None, f"<enable xmlns='{PUSH}' node='x'/>")
        raise AssertionError("enable without jid accepted")
    except IqFailed as e:
        assert e.condition == "bad-request", e
    await a.iq("set", None, enable_xml("node-3"))
    await a.close()
    b.x.send_message(mto=ajid, mbody="third", mtype="chat")
    iq = await comp.expect("iq", is_publish, "publish to node-3")
    assert publish_of(iq).get("node") == "node-3", f"node-2 was disabled by the error: {iq}"
    assert summary(iq)["message-count"] == "3"
    answer(comp, iq)
    assert len(comp.seen("iq", lambda i: is_publish(i) and publish_of(i).get("node") == "node-2")) == 1
