"""XEP-0402 bookmarks unified with XEP-0048 (private storage via xep_0049, PEP via
xep_0223), and XEP-0398 avatar conversion (xep_0084 <-> xep_0054/xep_0153), driven by
slixmpp's own plugins."""

import hashlib

from slixmpp.xmlstream import ET

from conftest import child
from helpers import is_presence, subscribe_mutually

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = "http://jabber.org/protocol/pubsub#event"
NATIVE = "urn:xmpp:bookmarks:1"
LEGACY = "storage:bookmarks"
DATA = "urn:xmpp:avatar:data"
META = "urn:xmpp:avatar:metadata"
VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
BASE = ["xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163"]
BOOKMARK_PLUGINS = BASE + ["xep_0223", "xep_0049", "xep_0048", "xep_0402"]
AVATAR_PLUGINS = BASE + ["xep_0084", "xep_0054"]

# A PNG header with a 24x16 IHDR (the server only sniffs type and size).
PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x18\0\0\0\x10\x08\x06\0\0\0\x01\x02\x03\x04"


def items_of(result):
    items = child(result, PUBSUB, "pubsub").find(f"{{{PUBSUB}}}items")
    return {i.get("id"): i for i in items.findall(f"{{{PUBSUB}}}item")}


def native_options(c):
    form = c.x.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in (("persist_items", "true"), ("max_items", "max"),
                       ("send_last_published_item", "never"), ("access_model", "whitelist")):
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def open_options(c):
    form = c.x.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    form.add_field(var="pubsub#access_model", value="open")
    return form


def legacy_conferences(storage):
    return {c.get("jid"): c for c in storage.findall(f"{{{LEGACY}}}conference")}


async def test_account_features(server, xmpp):
    jid, pw = server.user("bm")
    a = await xmpp.connect(jid, pw, plugins=BASE)
    info = await a.x.plugin["xep_0030"].get_info(jid=jid, timeout=5)
    features = info["disco_info"]["features"]
    for f in (f"{NATIVE}#compat", f"{NATIVE}#compat-pep", "urn:xmpp:pep-vcard-conversion:0"):
        assert f in features, f


async def test_private_storage_bookmarks_seen_by_native_and_pep_clients(server, xmpp):
    jid, pw = server.user("bm")
    old = await xmpp.connect(jid, pw, resource="old", plugins=BOOKMARK_PLUGINS)
    new = await xmpp.connect(jid, pw, resource="new", plugins=BOOKMARK_PLUGINS)
    bm = old.x.plugin["xep_0048"].stanza.Bookmarks()
    bm.add_conference("coven@chat.example.test", "Puck", name="Coven", autojoin=True,
                      password="hush")
    bm.add_url("https://example.test/", name="Site")
    await old.x.plugin["xep_0048"].set_bookmarks(bm, method="xep_0049", timeout=5)

    r = await new.x.plugin["xep_0060"].get_items(jid, NATIVE, timeout=5)
    item = items_of(r)["coven@chat.example.test"]
    conf = item.find(f"{{{NATIVE}}}conference")
    assert conf.get("name") == "Coven"
    assert conf.get("autojoin") in ("true", "1")
    assert conf.find(f"{{{NATIVE}}}nick").text == "Puck"
    assert conf.find(f"{{{NATIVE}}}password").text == "hush"

    r = await new.x.plugin["xep_0048"].get_bookmarks(method="xep_0223", timeout=5)
    storage = items_of(r)["current"].find(f"{{{LEGACY}}}storage")
    assert "coven@chat.example.test" in legacy_conferences(storage)
    assert storage.find(f"{{{LEGACY}}}url").get("url") == "https://example.test/"


async def test_native_bookmarks_seen_by_legacy_clients(server, xmpp):
    jid, pw = server.user("bm")
    new = await xmpp.connect(jid, pw, resource="new", plugins=BOOKMARK_PLUGINS)
    old = await xmpp.connect(jid, pw, resource="old", plugins=BOOKMARK_PLUGINS)
    conf = new.x.plugin["xep_0402"].stanza.Conference()
    conf["name"] = "Council"
    conf["autojoin"] = True
    conf["nick"] = "Oberon"
    conf.append(ET.fromstring(
        f"<extensions xmlns='{NATIVE}'><state xmlns='urn:example:state' minimized='true'/></extensions>"))
    await new.x.plugin["xep_0060"].publish(
        None, NATIVE, id="council@chat.example.test", payload=conf,
        options=native_options(new), timeout=5)

    r = await old.x.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=5)
    storage = child(r, "jabber:iq:private", "query").find(f"{{{LEGACY}}}storage")
    c = legacy_conferences(storage)["council@chat.example.test"]
    assert c.get("name") == "Council"
    assert c.get("autojoin") == "true"
    assert c.find(f"{{{LEGACY}}}nick").text == "Oberon"
    assert c.find("{urn:example:state}state").get("minimized") == "true"

    # The legacy PEP client edits the list (drops the room): the native item goes away.
    empty = old.x.plugin["xep_0048"].stanza.Bookmarks()
    await old.x.plugin["xep_0048"].set_bookmarks(empty, method="xep_0223", id="current",
                                                 timeout=5)
    r = await new.x.plugin["xep_0060"].get_items(jid, NATIVE, timeout=5)
    assert "council@chat.example.test" not in items_of(r)
    r = await old.x.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=5)
    storage = child(r, "jabber:iq:private", "query").find(f"{{{LEGACY}}}storage")
    assert legacy_conferences(storage) == {}


async def test_pep_avatar_becomes_vcard_and_presence_hash(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("av"), server.user("av")
    a = await xmpp.connect(a_jid, a_pw, plugins=AVATAR_PLUGINS)
    b = await xmpp.connect(b_jid, b_pw, plugins=AVATAR_PLUGINS)
    await subscribe_mutually(a, b)
    av = a.x.plugin["xep_0084"]
    await av.publish_avatar(PNG, options=open_options(a), timeout=5)
    item_id = hashlib.sha1(PNG).hexdigest()
    await av.publish_avatar_metadata(
        items=[{"id": item_id, "type": "image/png", "bytes": len(PNG)}],
        options=open_options(a), timeout=5)

    r = await b.x.plugin["xep_0054"].get_vcard(a_jid, cached=False, timeout=5)
    assert r["vcard_temp"]["PHOTO"]["BINVAL"] == PNG
    assert r["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"

    a.x.send_presence(pstatus="with avatar")
    p = await b.expect("presence", lambda p: is_presence(a_jid)(p) and p["status"] == "with avatar",
                       "presence with status")
    photo = p.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    assert photo is not None and photo.text == item_id, str(p)


async def test_vcard_avatar_becomes_pep_avatar(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("av"), server.user("av")
    a = await xmpp.connect(a_jid, a_pw, plugins=BASE + ["xep_0054", "xep_0153"])
    b = await xmpp.connect(b_jid, b_pw, plugins=AVATAR_PLUGINS)
    await subscribe_mutually(a, b)
    await a.x.plugin["xep_0153"].set_avatar(avatar=PNG, mtype="image/png", timeout=5)
    item_id = hashlib.sha1(PNG).hexdigest()

    r = await b.x.plugin["xep_0060"].get_items(a_jid, META, timeout=5)
    info = items_of(r)[item_id].find(f"{{{META}}}metadata/{{{META}}}info")
    assert info.get("type") == "image/png"
    assert info.get("bytes") == str(len(PNG))
    assert (info.get("width"), info.get("height")) == ("24", "16")
    r = await b.x.plugin["xep_0060"].get_items(a_jid, DATA, timeout=5)
    assert item_id in items_of(r)

    # A presence without the client's own hash gets the server's.
    a.send("<presence><status>plain</status></presence>")
    p = await b.expect("presence", lambda p: is_presence(a_jid)(p) and p["status"] == "plain",
                       "plain presence")
    photo = p.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    assert photo is not None and photo.text == item_id, str(p)
