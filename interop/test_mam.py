"""XEP-0313 message archives with slixmpp's own xep_0313 plugin: retrieving history,
paging with RSM both ways, the query form, and XEP-0359 stanza ids matching archive ids."""

from slixmpp import JID

import pytest

from conftest import IqFailed, body

PLUGINS = ["xep_0030", "xep_0059", "xep_0297", "xep_0313", "xep_0359"]
MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"


def forwarded_body(result_msg) -> str | None:
    return result_msg["mam_result"]["forwarded"]["stanza"]["body"]


async def test_history_retrieval_and_paging(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("mam"), server.user("mam")
    a = await xmpp.connect(a_jid, a_pw, resource="a", plugins=PLUGINS)
    b = await xmpp.connect(b_jid, b_pw, resource="b", plugins=PLUGINS)

    texts = [f"history {i:02}" for i in range(15)]
    for t in texts:
        a.x.send_message(mto=b_jid, mbody=t, mtype="chat")
    live = [await b.expect("message", lambda m, t=t: body(m) == t, t) for t in texts]
    live_ids = []
    for m in live:
        ids = [e for e in m.xml.findall(f"{{{SID}}}stanza-id") if e.get("by") == b_jid]
        assert len(ids) == 1, f"one stanza-id by the recipient's account: {m}"
        live_ids.append(ids[0].get("id"))

    # Discovery on the account.
    info = await b.x.plugin["xep_0030"].get_info(jid=b_jid)
    features = info["disco_info"]["features"]
    for f in (MAM, MAM + "#extended", SID):
        assert f in features, f"{f} not in {features}"

    # One query, everything.
    res = await b.x.plugin["xep_0313"].retrieve(with_jid=JID(a_jid), rsm={"max": 50})
    results = res["mam"]["results"]
    assert [forwarded_body(r) for r in results] == texts
    assert [r["mam_result"]["id"] for r in results] == live_ids, "archive ids = stanza-ids"
    assert res["mam_fin"]["complete"] in (True, "true"), res

    # Paged forwards (4 at a time) and backwards through the sender's archive.
    fwd = [forwarded_body(m) async for m in a.x.plugin["xep_0313"].iterate(
        with_jid=JID(b_jid), rsm={"max": 4})]
    assert fwd == texts, fwd
    # Backwards from the end (<before/>, then <before>first</before>). Raw queries:
    # slixmpp's iterate(reverse=True) stops after the first page whenever the server
    # sends XEP-0059 <count/> and index (it tests first + n == count, a forward-only rule).
    back: list[str] = []
    before = ""
    for page in range(10):
        qid = f"back{page}"
        rsm = f"<before>{before}</before>" if before else "<before/>"
        r = await a.iq("set", None,
                       f"<query xmlns='{MAM}' queryid='{qid}'>"
                       f"<set xmlns='http://jabber.org/protocol/rsm'><max>4</max>{rsm}</set></query>")
        got = [forwarded_body(m) for m in a.seen(
            "message", lambda m, q=qid: m["mam_result"]["queryid"] == q)]
        assert 0 < len(got) <= 4, got
        back = got + back
        fin = r.xml.find(f"{{{MAM}}}fin")
        first = fin.find("{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}first")
        before = first.text
        if fin.get("complete") == "true":
            break
    assert back == texts, back

    # The query form lists the mandatory fields.
    form = await a.x.plugin["xep_0313"].get_fields()
    fields = [f["var"] for f in form["fields"]]
    for var in ("with", "start", "end", "before-id", "after-id", "ids"):
        assert var in fields, f"{var} not in {list(fields)}"


async def test_other_archive_is_forbidden(server, xmpp):
    (a_jid, a_pw), (b_jid, _) = server.user("mam"), server.user("mam")
    a = await xmpp.connect(a_jid, a_pw, plugins=PLUGINS)
    with pytest.raises(IqFailed) as e:
        await a.iq("set", b_jid, f"<query xmlns='{MAM}'/>")
    assert e.value.condition == "forbidden", e.value.iq
