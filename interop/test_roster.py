"""RFC 6121 §2 roster management and §2.6 versioning."""

from conftest import IqFailed
from helpers import ROSTER, expect_push, get_roster, roster_items, roster_of
import pytest


async def test_roster_get_set_push_remove(server, xmpp):
    jid, pw = server.user("ros")
    contact, _ = server.user("ros")
    r1 = await xmpp.connect(jid, pw, resource="r1")
    r2 = await xmpp.connect(jid, pw, resource="r2")
    assert await roster_of(r1) == {}

    await r1.iq("set", None, f"<query xmlns='{ROSTER}'><item jid='{contact}' name='Friend'>"
                             "<group>Work</group><group>Chess</group></item></query>")
    for r in (r1, r2):
        push = await expect_push(r, contact, name="Friend", subscription="none")
        assert roster_items(push)[contact]["groups"] == ["Chess", "Work"]
        assert push["to"] == r.jid
    items = await roster_of(r2)
    assert items[contact]["name"] == "Friend"
    assert items[contact]["groups"] == ["Chess", "Work"]
    assert items[contact]["subscription"] == "none"

    # rename and regroup
    await r2.iq("set", None, f"<query xmlns='{ROSTER}'><item jid='{contact}' name='Pal'>"
                             "<group>Home</group></item></query>")
    await expect_push(r1, contact, name="Pal", groups=["Home"])

    await r1.iq("set", None, f"<query xmlns='{ROSTER}'><item jid='{contact}' subscription='remove'/></query>")
    for r in (r1, r2):
        await expect_push(r, contact, subscription="remove")
    assert contact not in await roster_of(r1)


async def test_roster_remove_unknown_item(server, xmpp):
    jid, pw = server.user("ros")
    c = await xmpp.connect(jid, pw)
    with pytest.raises(IqFailed) as e:
        await c.iq("set", None, f"<query xmlns='{ROSTER}'><item jid='nobody@example.test' subscription='remove'/></query>")
    assert e.value.condition == "item-not-found"


async def test_client_cannot_forge_subscription(server, xmpp):
    jid, pw = server.user("ros")
    contact, _ = server.user("ros")
    c = await xmpp.connect(jid, pw)
    try:
        await c.iq("set", None, f"<query xmlns='{ROSTER}'><item jid='{contact}' subscription='both'/></query>")
    except IqFailed:
        pass
    assert (await roster_of(c)).get(contact, {}).get("subscription", "none") == "none"


async def test_roster_versioning(server, xmpp):
    jid, pw = server.user("ros")
    contact, _ = server.user("ros")
    c = await xmpp.connect(jid, pw)
    assert "rosterver" in c.x.features, f"stream features: {c.x.features}"
    first = await get_roster(c)
    ver0 = first.xml.find(f"{{{ROSTER}}}query").get("ver")
    assert ver0 is not None, "roster result has no ver attribute"
    await c.iq("set", None, f"<query xmlns='{ROSTER}'><item jid='{contact}'/></query>")
    await expect_push(c, contact)
    full = await get_roster(c)
    ver1 = full.xml.find(f"{{{ROSTER}}}query").get("ver")
    assert ver1 != ver0, "version did not change after a roster set"
    # current version: empty result (no query element)
    same = await get_roster(c, ver=ver1)
    assert same.xml.find(f"{{{ROSTER}}}query") is None, f"expected empty result, got {same}"
    # stale version: the full roster comes back
    stale = await get_roster(c, ver=ver0)
    assert contact in roster_items(stale)


async def test_roster_of_another_user_forbidden(server, xmpp):
    jid, pw = server.user("ros")
    other, _ = server.user("ros")
    c = await xmpp.connect(jid, pw)
    with pytest.raises(IqFailed) as e:
        await c.iq("get", other, f"<query xmlns='{ROSTER}'/>")
    assert e.value.condition in ("forbidden", "service-unavailable")
