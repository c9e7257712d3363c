"""Helpers shared by the tests: roster and subscriptions, slixmpp events, dropped connections."""

import asyncio
from typing import Callable

from conftest import WAIT, Client, child

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


# ---------------------------------------------------------------------------------------
# slixmpp events and dropped connections (XEP-0198 / XEP-0280 tests)


class Events:
    """Records every firing of the named slixmpp events on a client; `expect()` waits
    (bounded) for one matching a predicate, like `Client.expect()` does for stanzas."""

    def __init__(self, c: Client, *names: str):
        self.c = c
        self.log: dict[str, list] = {n: [] for n in names}
        self._taken: set[int] = set()
        self._new = asyncio.Event()
        for n in names:
            c.x.add_event_handler(n, self._recorder(n))

    def _recorder(self, name: str):
        def handler(payload=None):
            self.log[name].append(payload)
            self._new.set()

        return handler

    def seen(self, name: str, pred: Callable = lambda e: True) -> list:
        return [e for e in self.log[name] if pred(e)]

    async def expect(self, name: str, pred: Callable = lambda e: True, what: str = "",
                     timeout: float = WAIT):
        """Waits for (and consumes) the first not-yet-consumed `name` event matching pred."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for e in self.log[name]:
                if id(e) not in self._taken and pred(e):
                    self._taken.add(id(e))
                    return e
            left = deadline - loop.time()
            if left <= 0:
                got = "\n  ".join(str(e) for e in self.log[name][-10:])
                raise AssertionError(
                    f"{self.c.jid}: no {name!r} event {what} within {timeout}s; last:\n  {got}"
                )
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except asyncio.TimeoutError:
                pass


async def drop_connection(c: Client):
    """Loses the connection the way a phone does: the TCP connection goes away under the
    stream, with no `</stream:stream>` and no TLS close_notify. slixmpp keeps its XEP-0198
    state (sm_id, counters) for a later resumption."""
    assert c.x.transport is not None, f"{c.jid}: not connected"
    c.x.transport.abort()
    await asyncio.wait_for(asyncio.shield(c.disconnected), WAIT)
    # the client object lives on (it may reconnect): arm the teardown future again
    c.disconnected = asyncio.get_running_loop().create_future()


async def reconnect(c: Client, server, timeout: float = 15) -> str:
    """Connects a dropped client again. Returns 'resumed' (XEP-0198 resumption), 'session'
    (a new session was bound) or 'disconnected'."""
    loop = asyncio.get_running_loop()
    outcome = loop.create_future()
    handlers = {}
    for event, result in (("session_resumed", "resumed"), ("session_start", "session"),
                          ("disconnected", "disconnected")):
        handlers[event] = lambda *_, r=result: outcome.done() or outcome.set_result(r)
        c.x.add_event_handler(event, handlers[event])
    try:
        c.x.connect(server.host, server.c2s_port)
        return await asyncio.wait_for(outcome, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{c.jid}: no resumption / session within {timeout}s of reconnecting")
    finally:
        for event, h in handlers.items():
            c.x.del_event_handler(event, h)
