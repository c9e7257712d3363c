"""XEP-0163 PEP with slixmpp's own plugins: caps-filtered notifications (xep_0115 +
xep_0118 user tune), retrieval (xep_0060), XEP-0223 private storage, OMEMO device lists
and bundles (open access model via publish-options), XEP-0084 avatar nodes."""

from slixmpp.xmlstream import ET

from conftest import IqFailed, child, error_condition
from helpers import subscribe_mutually

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = "http://jabber.org/protocol/pubsub#event"
TUNE = "http://jabber.org/protocol/tune"
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
AXOLOTL = "eu.siacs.conversations.axolotl"
PEP_PLUGINS = ["xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163"]


def event_items(msg, node):
    ev = child(msg, EVENT, "event")
    if ev is None:
        return None
    items = ev.find(f"{{{EVENT}}}items")
    if items is None or items.get("node") != node:
        return None
    return items


def publish_options(c, **fields):
    form = c.x.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for k, v in fields.items():
        form.add_field(var=f"pubsub#{k}", value=v)
    return form


def items_of(result, ns=PUBSUB):
    items = child(result, PUBSUB, "pubsub").find(f"{{{PUBSUB}}}items")
    return {i.get("id"): i for i in items.findall(f"{{{PUBSUB}}}item")}


async def test_tune_notification_and_retrieval(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("pep"), server.user("pep")
    plugins = PEP_PLUGINS + ["xep_0118"]
    a = await xmpp.connect(a_jid, a_pw, plugins=plugins)
    b = await xmpp.connect(b_jid, b_pw, plugins=plugins)
    await subscribe_mutually(a, b)
    # Caps with tune+notify are broadcast with presence; send it again now that both
    # plugins have computed their ver, and let the server resolve it.
    b.x.send_presence()
    await b.roundtrip()
    await b.x.plugin["xep_0118"].publish_tune(artist="Nick Drake", title="Pink Moon")  # noqa
    # (bob's own publish reaches alice)
    msg = await a.expect("message", lambda m: event_items(m, TUNE) is not None, "tune event")
    assert msg["from"].bare == b_jid
    assert msg["type"] == "headline"
    title = event_items(msg, TUNE).find(f"{{{EVENT}}}item/{{{TUNE}}}tune/{{{TUNE}}}title")
    assert title is not None and title.text == "Pink Moon"

    r = await a.x.plugin["xep_0060"].get_items(b_jid, TUNE, timeout=5)
    got = items_of(r)
    assert list(got) == ["current"], got

    nodes = await a.x.plugin["xep_0030"].get_items(jid=b_jid, timeout=5)
    assert TUNE in {i[1] for i in nodes["disco_items"]["items"]}
    info = await a.x.plugin["xep_0030"].get_info(jid=b_jid, timeout=5)
    assert ("pubsub", "pep") in {(i[0], i[1]) for i in info["disco_info"]["identities"]}
    assert f"{PUBSUB}#publish-options" in info["disco_info"]["features"]


async def test_omemo_devicelist_and_bundle(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("omemo"), server.user("omemo")
    a = await xmpp.connect(a_jid, a_pw, plugins=PEP_PLUGINS)
    b = await xmpp.connect(b_jid, b_pw, plugins=PEP_PLUGINS)
    devices = ET.fromstring(
        f"<list xmlns='{AXOLOTL}'><device id='1234'/><device id='5678'/></list>"
    )
    await a.x.plugin["xep_0060"].publish(
        None, DEVICELIST, id="current", payload=devices,
        options=publish_options(a, access_model="open"), timeout=5)
    bundle = ET.fromstring(
        f"<bundle xmlns='{AXOLOTL}'><signedPreKeyPublic signedPreKeyId='1'>AAAA</signedPreKeyPublic>"
        f"<signedPreKeySignature>BBBB</signedPreKeySignature><identityKey>CCCC</identityKey>"
        f"<prekeys><preKeyPublic preKeyId='1'>DDDD</preKeyPublic></prekeys></bundle>"
    )
    await a.x.plugin["xep_0060"].publish(
        None, f"{AXOLOTL}.bundles:1234", id="current", payload=bundle,
        options=publish_options(a, access_model="open"), timeout=5)

    # bob is no contact of alice: open nodes are still readable.
    r = await b.x.plugin["xep_0060"].get_items(a_jid, DEVICELIST, timeout=5)
    lst = items_of(r)["current"].find(f"{{{AXOLOTL}}}list")
    assert {d.get("id") for d in lst} == {"1234", "5678"}
    r = await b.x.plugin["xep_0060"].get_items(a_jid, f"{AXOLOTL}.bundles:1234", timeout=5)
    assert items_of(r)["current"].find(f"{{{AXOLOTL}}}bundle/{{{AXOLOTL}}}identityKey").text == "CCCC"

    # Republishing with a conflicting access model is refused (precondition-not-met).
    try:
        await a.x.plugin["xep_0060"].publish(
            None, DEVICELIST, id="current", payload=devices,
            options=publish_options(a, access_model="presence"), timeout=5)
        raise AssertionError("conflicting publish-options accepted")
    except Exception as e:  # slixmpp IqError
        iq = getattr(e, "iq", None)
        assert iq is not None and error_condition(iq) == "conflict", e


async def test_private_storage_xep0223(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("priv"), server.user("priv")
    a = await xmpp.connect(a_jid, a_pw, plugins=PEP_PLUGINS + ["xep_0223", "xep_0402"])
    b = await xmpp.connect(b_jid, b_pw, plugins=PEP_PLUGINS)
    await subscribe_mutually(a, b)
    node = "urn:xmpp:bookmarks:1"
    conf = a.x.plugin["xep_0402"].stanza.Conference()
    conf["name"] = "Coven"
    conf["autojoin"] = True
    await a.x.plugin["xep_0223"].store(conf, node=node, id="coven@chat.example.test", timeout=5)
    r = await a.x.plugin["xep_0223"].retrieve(node, timeout=5)
    assert "coven@chat.example.test" in items_of(r)
    # Even a contact sharing presence cannot read it.
    try:
        await b.iq("get", a_jid, f"<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>")
        raise AssertionError("private node readable by a contact")
    except IqFailed as e:
        assert e.condition == "not-allowed", e.condition


async def test_avatar_nodes_xep0084(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("av"), server.user("av")
    plugins = PEP_PLUGINS + ["xep_0084"]
    a = await xmpp.connect(a_jid, a_pw, plugins=plugins)
    b = await xmpp.connect(b_jid, b_pw, plugins=plugins)
    await subscribe_mutually(a, b)
    b.x.send_presence()
    await b.roundtrip()
    data = b"\x89PNG fake image bytes"
    av = a.x.plugin["xep_0084"]
    r = await av.publish_avatar(data, timeout=5)
    item_id = child(r, PUBSUB, "pubsub").find(f"{{{PUBSUB}}}publish/{{{PUBSUB}}}item").get("id")
    await av.publish_avatar_metadata(
        items=[{"id": item_id, "type": "image/png", "bytes": len(data)}], timeout=5)
    meta_ns = "urn:xmpp:avatar:metadata"
    await b.expect("message", lambda m: event_items(m, meta_ns) is not None, "metadata event")
    r = await b.x.plugin["xep_0060"].get_items(a_jid, "urn:xmpp:avatar:data", timeout=5)
    assert item_id in items_of(r)
