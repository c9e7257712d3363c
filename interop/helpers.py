"""Roster and subscription helpers shared by the tests."""

from conftest import Client, child

ROSTER = "jabber:iq:roster"


def roster_items(result) -> dict[str, dict]:
    """{jid: {'subscription', 'ask', 'name', 'approved', 'groups'}} of a roster result/push."""
    q = child(result, ROSTER, "query")
    out = {}
    if q is None:
        return out
    for it in q.findall(f"{{{ROSTER}}}item"):
        out[it.get("jid")] = {
            "subscription": it.get("subscription", "none"),
            "ask": it.get("ask"),
            "name": it.get("name"),
            "approved": it.get("approved"),
            "groups": sorted(g.text or "" for g in it.findall(f"{{{ROSTER}}}group")),
        }
    return out


async def get_roster(c: Client, ver: str | None = None):
    v = f" ver='{ver}'" if ver is not None else ""
    return await c.iq("get", None, f"<query xmlns='{ROSTER}'{v}/>")


async def roster_of(c: Client) -> dict[str, dict]:
    return roster_items(await get_roster(c))


def is_push(jid: str, **want):
    """Predicate: a roster push for `jid` whose attributes match `want`."""

    def pred(iq):
        if iq["type"] != "set":
            return False
        item = roster_items(iq).get(jid)
        return item is not None and all(item.get(k) == v for k, v in want.items())

    return pred


async def expect_push(c: Client, jid: str, **want):
    return await c.expect("iq", is_push(jid, **want), f"roster push for {jid} {want}")


def is_presence(frm: str, type_: str | None = None, full: bool = False):
    """Predicate: presence from `frm` (bare match unless full) with type (None=available)."""

    def pred(p):
        f = str(p["from"]) if full else p["from"].bare
        t = p.xml.get("type")
        return f == frm and t == type_

    return pred


async def subscribe_mutually(a: Client, b: Client):
    """Full RFC 6121 §3.1 handshake both ways; both end with subscription='both'."""
    for x, y in ((a, b), (b, a)):
        x.x.send_presence(pto=y.bare, ptype="subscribe")
        await y.expect("presence", is_presence(x.bare, "subscribe"), "subscribe request")
        y.x.send_presence(pto=x.bare, ptype="subscribed")
        await x.expect("presence", is_presence(y.bare, "subscribed"), "subscribed")
    await a.roundtrip()
    await b.roundtrip()
