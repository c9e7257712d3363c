"""XEP-0045 multi-user chat at conference.<domain>, driven by slixmpp's own plugins
(xep_0045, xep_0249, xep_0313, xep_0410, xep_0421, xep_0425): room creation and
configuration, occupants, messages with XEP-0359 stanza ids and XEP-0421 occupant ids,
subject and join history, affiliations and roles, members-only and password-protected
rooms, invitations, temporary and persistent rooms (across a SIGKILL), room archives,
moderation, self-ping, nick changes, private messages and destruction.

What is asserted is what a client observes. The 1,000-occupant room is tested in Rust
with raw clients: 1,000 slixmpp logins do not fit this tier's time budget.
"""

import itertools
import os
import signal

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from conftest import DOMAIN, WAIT, IqFailed, Server, _shutdown, body, error_condition
from helpers import Events

CONF = f"conference.{DOMAIN}"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = MUC + "#user"
ROOMCONFIG = MUC + "#roomconfig"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
SID = "urn:xmpp:sid:0"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
DELAY = "urn:xmpp:delay"
RETRACT = "urn:xmpp:message-retract:1"
MODERATE = "urn:xmpp:message-moderate:1"
CONFERENCE = "jabber:x:conference"

PLUGINS = ["xep_0004", "xep_0030", "xep_0045", "xep_0059", "xep_0199", "xep_0203",
           "xep_0249", "xep_0297", "xep_0313", "xep_0359", "xep_0410", "xep_0421",
           "xep_0424", "xep_0425"]

_rooms = itertools.count(1)


def new_room(prefix: str = "room") -> str:
    return f"{prefix}{os.getpid()}-{next(_rooms)}@{CONF}"


# ---------------------------------------------------------------------------------------
# servers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("test_muc"))
    srv.start()
    yield srv
    _shutdown(srv)


def own_server(make_server) -> Server:
    return make_server()


# ---------------------------------------------------------------------------------------
# stanza inspection


def muc_x(st):
    return st.xml.find(f"{{{MUC_USER}}}x")


def codes(st) -> set[int]:
    x = muc_x(st)
    if x is None:
        return set()
    return {int(s.get("code")) for s in x.findall(f"{{{MUC_USER}}}status")}


def item(st) -> dict:
    """Attributes of the muc#user <item/> (affiliation, role, jid, nick)."""
    x = muc_x(st)
    it = None if x is None else x.find(f"{{{MUC_USER}}}item")
    return {} if it is None else dict(it.attrib)


def occupant_id(st) -> str | None:
    e = st.xml.find(f"{{{OCCUPANT_ID}}}occupant-id")
    return None if e is None else e.get("id")


def stanza_ids(st, by: str) -> list[str]:
    return [e.get("id") for e in st.xml.findall(f"{{{SID}}}stanza-id") if e.get("by") == by]


def presence_from(room: str, nick: str, type_: str | None = None, has=(), lacks=(), **attrs):
    """Predicate: presence from room/nick of `type_` with the status codes `has`, none of
    `lacks`, and muc#user item attributes `attrs`."""
    full = f"{room}/{nick}"

    def pred(p):
        c = codes(p)
        it = item(p)
        return (p.xml.get("from") == full and p.xml.get("type") == type_
                and set(has) <= c and not set(lacks) & c
                and all(it.get(k) == v for k, v in attrs.items()))

    return pred


def groupchat(frm: str, text: str):
    return lambda m: m["type"] == "groupchat" and m.xml.get("from") == frm and body(m) == text


def error_for(text: str):
    return lambda m: m["type"] == "error" and body(m) == text


def skip_seen(*clients):
    """Marks everything received so far as consumed (later expects see only new stanzas)."""
    for c in clients:
        for stanzas in c.received.values():
            c._taken.update(id(s) for s in stanzas)


def position(c, kind: str, pred) -> int:
    """Index of the first `kind` stanza matching pred among all c received (-1: none)."""
    return next((i for i, s in enumerate(c.received[kind]) if pred(s)), -1)


def disco_features(info_iq) -> set[str]:
    q = info_iq.xml.find(f"{{{DISCO_INFO}}}query")
    return {f.get("var") for f in q.findall(f"{{{DISCO_INFO}}}feature")}


def disco_name(info_iq) -> str | None:
    q = info_iq.xml.find(f"{{{DISCO_INFO}}}query")
    ident = q.find(f"{{{DISCO_INFO}}}identity")
    return None if ident is None else ident.get("name")


# ---------------------------------------------------------------------------------------
# clients and rooms


async def user(srv, xmpp, prefix: str = "muc"):
    jid, pw = srv.user(prefix)
    c = await xmpp.connect(jid, pw, plugins=PLUGINS, server=srv)
    c.password = pw
    return c


def muc(c):
    return c.x.plugin["xep_0045"]


async def join(c, room: str, nick: str, **kw):
    """slixmpp's join: (self-presence, subject message, occupant presences, history)."""
    pres, subject, occupants, history = await muc(c).join_muc_wait(
        JID(room), nick, timeout=WAIT, **kw)
    # got_online also fires for the self-presence: keep the others.
    others = [p for p in occupants if 110 not in codes(p)]
    return pres, subject, others, history


async def join_error(c, room: str, nick: str, **kw) -> str:
    with pytest.raises(PresenceError) as e:
        await muc(c).join_muc_wait(JID(room), nick, timeout=WAIT, **kw)
    return e.value.condition


async def configure(c, room: str, **values):
    """Fetches the muc#owner form, sets `values` (by field var) and submits it."""
    form = await muc(c).get_room_config(room, timeout=WAIT)
    fields = form.get_fields()
    for var, v in values.items():
        assert var in fields, f"{var} not in the room configuration form: {list(fields)}"
        fields[var]["value"] = v
    await muc(c).set_room_config(room, form, timeout=WAIT)


async def create(c, room: str, nick: str, **config):
    """Creates a room: join (201), then the configuration form with `config`, or the empty
    submit form (an instant room) without."""
    pres, _, _, _ = await join(c, room, nick)
    assert {110, 201} <= codes(pres), f"no 201 on creation: {pres}"
    if config:
        await configure(c, room, **config)
    else:
        await c.iq("set", room, f"<query xmlns='{MUC}#owner'><x xmlns='{DATA}' type='submit'/></query>")
    return pres


async def say(c, room: str, text: str, *observers):
    """Sends a groupchat message; returns the reflected copy (and waits for observers')."""
    c.x.send_message(mto=room, mbody=text, mtype="groupchat")
    mine = await c.expect("message", lambda m: m["type"] == "groupchat" and body(m) == text
                          and JID(m.xml.get("from")).bare == room, f"reflection of {text!r}")
    for o in observers:
        await o.expect("message", lambda m: m["type"] == "groupchat" and body(m) == text, text)
    return mine


async def aff_list(c, room: str, aff: str) -> set[str]:
    return {str(j) for j in await muc(c).get_affiliation_list(room, aff, timeout=WAIT)}


async def iq_error(coro) -> str:
    with pytest.raises(IqError) as e:
        await coro
    return e.value.condition


async def room_gone(c, room: str):
    with pytest.raises(IqFailed) as e:
        await c.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    assert e.value.condition == "item-not-found", e.value.iq


async def service_rooms(c) -> set[str]:
    r = await c.iq("get", CONF, f"<query xmlns='{DISCO_ITEMS}'/>")
    q = r.xml.find(f"{{{DISCO_ITEMS}}}query")
    return {i.get("jid") for i in q.findall(f"{{{DISCO_ITEMS}}}item")}


def mam_result(m):
    return m.xml.find(f"{{{MAM}}}result")


def mam_forwarded(m):
    """The archived stanza of a MAM result message."""
    return mam_result(m).find(f"{{{FORWARD}}}forwarded").find("{jabber:client}message")


async def mam_page(c, room: str, qid: str, rsm: str = "", form: str = ""):
    """One raw MAM query on the room: (result messages in order, <fin/>)."""
    r = await c.iq("set", room, f"<query xmlns='{MAM}' queryid='{qid}'>{form}"
                                f"<set xmlns='{RSM}'>{rsm}</set></query>")
    got = c.seen("message", lambda m: mam_result(m) is not None
                 and mam_result(m).get("queryid") == qid)
    fin = r.xml.find(f"{{{MAM}}}fin")
    assert fin is not None, r
    return got, fin


def rsm_of(fin, name: str) -> str | None:
    e = fin.find(f"{{{RSM}}}set/{{{RSM}}}{name}")
    return None if e is None else e.text


# ---------------------------------------------------------------------------------------
# 1. creation, configuration, joining and leaving


async def test_create_configure_join_leave(server, xmpp):
    owner, guest = await user(server, xmpp), await user(server, xmpp)
    room = new_room()

    pres, subject, others, history = await join(owner, room, "Owner")
    assert {110, 201} <= codes(pres), pres
    assert item(pres)["affiliation"] == "owner" and item(pres)["role"] == "moderator", pres
    assert others == [] and history == []

    # Locked until configured (§10.1.1): nobody else gets in.
    assert await join_error(guest, room, "Guest") == "item-not-found"

    form = await muc(owner).get_room_config(room, timeout=WAIT)
    fields = form.get_fields()
    assert fields["FORM_TYPE"]["value"] in (ROOMCONFIG, [ROOMCONFIG])
    for var in ("muc#roomconfig_persistentroom", "muc#roomconfig_roomname",
                "muc#roomconfig_membersonly", "muc#roomconfig_roomowners"):
        assert var in fields, f"{var} missing: {list(fields)}"
    assert owner.bare in fields["muc#roomconfig_roomowners"]["value"]
    fields["muc#roomconfig_persistentroom"]["value"] = True
    fields["muc#roomconfig_roomname"]["value"] = "Interop Room"
    fields["muc#roomconfig_membersonly"]["value"] = False
    await muc(owner).set_room_config(room, form, timeout=WAIT)

    again = (await muc(owner).get_room_config(room, timeout=WAIT)).get_fields()
    assert again["muc#roomconfig_persistentroom"]["value"] is True
    assert again["muc#roomconfig_roomname"]["value"] == "Interop Room"
    info = await guest.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    assert disco_name(info) == "Interop Room"
    feats = disco_features(info)
    assert {MUC, "muc_persistent", "muc_open", "muc_semianonymous"} <= feats, feats

    pres, subject, others, _ = await join(guest, room, "Guest")
    assert 110 in codes(pres) and 201 not in codes(pres), pres
    assert (item(pres)["affiliation"], item(pres)["role"]) == ("none", "participant")
    subj = subject.xml.find("{jabber:client}subject")
    assert subj is not None and not subj.text, f"an empty subject is still sent: {subject}"
    assert [p.xml.get("from") for p in others] == [f"{room}/Owner"]
    seen = item(others[0])
    assert (seen["affiliation"], seen["role"]) == ("owner", "moderator"), seen
    assert "jid" not in seen, "semi-anonymous room: a participant sees no real JIDs"
    # §7.2.3: the others' presence first, then the self-presence.
    assert 0 <= position(guest, "presence", presence_from(room, "Owner")) \
        < position(guest, "presence", presence_from(room, "Guest", has=[110]))
    # The owner (a moderator) sees the newcomer with its real JID.
    p = await owner.expect("presence", presence_from(room, "Guest", lacks=[110]), "guest joined")
    assert (item(p)["affiliation"], item(p)["role"], item(p)["jid"]) == ("none", "participant", guest.jid)
    assert occupant_id(p), p

    muc(guest).leave_muc(JID(room), "Guest")
    p = await guest.expect("presence", presence_from(room, "Guest", "unavailable", has=[110]))
    assert item(p)["role"] == "none"
    p = await owner.expect("presence", presence_from(room, "Guest", "unavailable", lacks=[110]))
    assert item(p)["role"] == "none"


# ---------------------------------------------------------------------------------------
# 2. groupchat messages, stanza-id, occupant-id


async def test_groupchat_reflection_stanza_id_and_occupant_id(server, xmpp):
    a, b = await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(a, room, "alice")
    _, _, others, _ = await join(b, room, "bob")
    a_oid = occupant_id(others[0])

    # The sender's id and origin-id come back unchanged: that is how it knows its echo.
    a.send(f"<message to='{room}' type='groupchat' id='hello-1'><body>hello room</body>"
           f"<origin-id xmlns='{SID}' id='origin-1'/></message>")
    mine = await a.expect("message", groupchat(f"{room}/alice", "hello room"))
    assert mine["id"] == "hello-1", mine
    origin = mine.xml.find(f"{{{SID}}}origin-id")
    assert origin is not None and origin.get("id") == "origin-1", mine
    theirs = await b.expect("message", groupchat(f"{room}/alice", "hello room"))
    ids = stanza_ids(mine, room)
    assert len(ids) == 1 and ids == stanza_ids(theirs, room), (mine, theirs)
    assert occupant_id(mine) == occupant_id(theirs) == a_oid, (mine, theirs)

    # What a sender claims is replaced by what the room assigns.
    b.send(f"<message to='{room}' type='groupchat'><body>forged ids</body>"
           f"<occupant-id xmlns='{OCCUPANT_ID}' id='alice-forged'/>"
           f"<stanza-id xmlns='{SID}' by='{room}' id='forged-id'/></message>")
    m = await a.expect("message", groupchat(f"{room}/bob", "forged ids"))
    assert "forged-id" not in stanza_ids(m, room) and len(stanza_ids(m, room)) == 1, m
    assert len(m.xml.findall(f"{{{OCCUPANT_ID}}}occupant-id")) == 1, m
    b_oid = occupant_id(m)
    assert b_oid and b_oid != "alice-forged" and b_oid != a_oid, m

    # Stable across a rejoin (even under another nick), distinct between users.
    muc(b).leave_muc(JID(room), "bob")
    await b.expect("presence", presence_from(room, "bob", "unavailable", has=[110]))
    pres, _, _, _ = await join(b, room, "robert")
    assert occupant_id(pres) == b_oid
    m = await say(b, room, "back again")
    assert occupant_id(m) == b_oid
    m = await a.expect("message", groupchat(f"{room}/robert", "back again"))
    assert occupant_id(m) == b_oid and stanza_ids(m, room)


# ---------------------------------------------------------------------------------------
# 3. subject and join history


async def test_subject_and_history(server, xmpp):
    a, b, c = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(a, room, "mod")
    await join(b, room, "part")

    muc(a).set_subject(room, "Topic one")
    for x in (a, b):
        m = await x.expect("message", lambda m: m["type"] == "groupchat" and m["subject"] == "Topic one",
                           "subject change")
        assert m.xml.get("from") == f"{room}/mod" and body(m) is None, m
    # Participants may not change the subject by default.
    b.send(f"<message to='{room}' type='groupchat'><subject>Mine now</subject></message>")
    err = await b.expect("message", lambda m: m["type"] == "error", "subject refused")
    assert error_condition(err) == "forbidden", err

    texts = [f"history {i}" for i in range(5)]
    for t in texts:
        await say(a, room, t, b)

    _, subject, _, history = await join(c, room, "late", maxstanzas=2)
    assert [body(m) for m in history] == texts[3:], history
    for m in history:
        d = m.xml.find(f"{{{DELAY}}}delay")
        assert d is not None and d.get("from") == room and d.get("stamp"), m
        assert m.xml.get("from") == f"{room}/mod"
    assert subject["subject"] == "Topic one" and subject.xml.get("from") == f"{room}/mod", subject
    await c.drain()
    got = c.seen("message", lambda m: body(m) in texts)
    assert [body(m) for m in got] == texts[3:], "exactly the last two messages of history"
    # §7.2.3 order: self-presence, history, subject.
    assert position(c, "presence", presence_from(room, "late", has=[110])) >= 0
    assert c.received["message"].index(got[-1]) \
        < position(c, "message", lambda m: m["subject"] == "Topic one")


# ---------------------------------------------------------------------------------------
# 4. affiliations and roles


async def test_affiliation_changes_and_lists(server, xmpp):
    o, a, b = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner")
    await join(a, room, "ann")
    await join(b, room, "ben")

    for aff, role in (("member", "participant"), ("admin", "moderator")):
        await muc(o).set_affiliation(room, aff, jid=a.bare, timeout=WAIT)
        await a.expect("presence", presence_from(room, "ann", has=[110], affiliation=aff, role=role),
                       f"own {aff} presence")
        await b.expect("presence", presence_from(room, "ann", affiliation=aff, role=role),
                       f"ann {aff} seen by ben")
    await muc(o).set_affiliation(room, "owner", jid=b.bare, timeout=WAIT)
    p = await a.expect("presence", presence_from(room, "ben", affiliation="owner", role="moderator"))
    assert item(p)["jid"] == b.jid, "moderators see real JIDs"

    m = muc(o)
    assert await aff_list(o, room, "admin") == {a.bare}
    assert await aff_list(o, room, "owner") == {o.bare, b.bare}
    assert await aff_list(o, room, "member") == set()
    assert set(await m.get_roles_list(room, "moderator", timeout=WAIT)) == {"owner", "ann", "ben"}

    # An admin may not touch owners (§9.4: not-allowed).
    ma = muc(a)
    assert await iq_error(ma.set_affiliation(room, "outcast", jid=o.bare, timeout=WAIT)) == "not-allowed"
    assert await iq_error(ma.set_affiliation(room, "member", jid=b.bare, timeout=WAIT)) == "not-allowed"
    assert await iq_error(ma.set_affiliation(room, "owner", jid=a.bare, timeout=WAIT)) == "not-allowed"
    # ... and only admins and owners see the admin list.
    c = await user(server, xmpp)
    await join(c, room, "cid")
    assert await iq_error(muc(c).get_affiliation_list(room, "admin", timeout=WAIT)) == "forbidden"
    # Owner demoted back to none by another owner.
    await m.set_affiliation(room, "none", jid=b.bare, timeout=WAIT)
    await c.expect("presence", presence_from(room, "ben", affiliation="none", role="participant"))


async def test_kick_and_ban(server, xmpp):
    o, p, x = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner")
    await join(p, room, "pat")
    await join(x, room, "xav")

    # A participant may not kick.
    assert await iq_error(muc(p).set_role(room, "xav", "none", timeout=WAIT)) == "forbidden"

    await muc(o).set_role(room, "xav", "none", reason="calm down", timeout=WAIT)
    gone = await x.expect("presence", presence_from(room, "xav", "unavailable", has=[307, 110]), "kicked")
    assert item(gone)["role"] == "none"
    reason = muc_x(gone).find(f"{{{MUC_USER}}}item/{{{MUC_USER}}}reason")
    assert reason is not None and reason.text == "calm down", gone
    await p.expect("presence", presence_from(room, "xav", "unavailable", has=[307], lacks=[110]))
    await o.expect("presence", presence_from(room, "xav", "unavailable", has=[307], lacks=[110]))

    # A kick is not a ban.
    await join(x, room, "xav")
    await muc(o).set_affiliation(room, "outcast", jid=x.bare, reason="spammer", timeout=WAIT)
    gone = await x.expect("presence", presence_from(room, "xav", "unavailable", has=[301, 110]), "banned")
    assert item(gone)["affiliation"] == "outcast", gone
    await p.expect("presence", presence_from(room, "xav", "unavailable", has=[301], lacks=[110],
                                             affiliation="outcast"))
    assert await join_error(x, room, "xav") == "forbidden"
    assert await join_error(x, room, "other-nick") == "forbidden"
    assert await aff_list(o, room, "outcast") == {x.bare}


async def test_voice_in_moderated_room(server, xmpp):
    o, v = await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner", **{"muc#roomconfig_moderatedroom": True})
    pres, _, _, _ = await join(v, room, "vis")
    assert item(pres)["role"] == "visitor", pres

    v.x.send_message(mto=room, mbody="can I speak?", mtype="groupchat")
    err = await v.expect("message", error_for("can I speak?"), "visitor refused")
    assert error_condition(err) == "forbidden", err

    await muc(o).set_role(room, "vis", "participant", timeout=WAIT)
    await v.expect("presence", presence_from(room, "vis", has=[110], role="participant"), "voice granted")
    await say(v, room, "thanks for the voice", o)

    await muc(o).set_role(room, "vis", "visitor", timeout=WAIT)
    await v.expect("presence", presence_from(room, "vis", has=[110], role="visitor"), "voice revoked")
    await o.expect("presence", presence_from(room, "vis", role="visitor"))
    v.x.send_message(mto=room, mbody="silenced?", mtype="groupchat")
    err = await v.expect("message", error_for("silenced?"), "visitor refused again")
    assert error_condition(err) == "forbidden", err
    await o.drain()
    assert not o.seen("message", lambda m: body(m) == "silenced?" and m["type"] == "groupchat")


# ---------------------------------------------------------------------------------------
# 5. members-only rooms and invitations


async def test_members_only_and_mediated_invitation(server, xmpp):
    o, n, i = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner", **{"muc#roomconfig_membersonly": True})

    assert await join_error(n, room, "newbie") == "registration-required"
    await muc(o).set_affiliation(room, "member", jid=n.bare, timeout=WAIT)
    pres, _, _, _ = await join(n, room, "newbie")
    assert item(pres)["affiliation"] == "member", pres

    # A plain member may not invite into a members-only room (allowinvites is off).
    muc(n).invite(room, i.bare, reason="join us")
    err = await n.expect("message", lambda m: m["type"] == "error", "invite refused")
    assert error_condition(err) == "forbidden", err

    invites = Events(i, "groupchat_invite")
    muc(o).invite(room, i.bare, reason="please come")
    inv = await invites.expect("groupchat_invite")
    assert inv.xml.get("from") == room, inv
    el = muc_x(inv).find(f"{{{MUC_USER}}}invite")
    assert JID(el.get("from")).bare == o.bare, inv
    assert el.find(f"{{{MUC_USER}}}reason").text == "please come"
    # The invitation made the invitee a member.
    assert i.bare in await aff_list(o, room, "member")

    muc(i).decline(room, el.get("from"), reason="too busy")
    d = await o.expect("message", lambda m: muc_x(m) is not None
                       and muc_x(m).find(f"{{{MUC_USER}}}decline") is not None, "decline")
    assert d.xml.get("from") == room, d
    dec = muc_x(d).find(f"{{{MUC_USER}}}decline")
    assert JID(dec.get("from")).bare == i.bare, d
    assert dec.find(f"{{{MUC_USER}}}reason").text == "too busy"


async def test_direct_invitation(server, xmpp):
    a, b = await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(a, room, "host")
    invites = Events(b, "groupchat_direct_invite")
    a.x.plugin["xep_0249"].send_invitation(JID(b.bare), JID(room), reason="party", password="pw")
    inv = await invites.expect("groupchat_direct_invite")
    assert str(inv["from"]) == a.jid
    x = inv.xml.find(f"{{{CONFERENCE}}}x")
    assert (x.get("jid"), x.get("reason"), x.get("password")) == (room, "party", "pw"), inv


# ---------------------------------------------------------------------------------------
# 6. password-protected rooms


async def test_password_protected_room(server, xmpp):
    o, j = await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner", **{"muc#roomconfig_passwordprotectedroom": True,
                                      "muc#roomconfig_roomsecret": "s3cret"})
    info = await j.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    assert "muc_passwordprotected" in disco_features(info)
    assert await join_error(j, room, "joe") == "not-authorized"
    assert await join_error(j, room, "joe", password="wrong") == "not-authorized"
    pres, _, _, _ = await join(j, room, "joe", password="s3cret")
    assert 110 in codes(pres)
    await o.expect("presence", presence_from(room, "joe"))


# ---------------------------------------------------------------------------------------
# 7. temporary rooms disappear with their last occupant


async def test_temporary_room_disappears(server, xmpp):
    o, a = await user(server, xmpp), await user(server, xmpp)
    room = new_room("temp")
    await create(o, room, "owner")  # instant room: the defaults, temporary
    info = await a.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    assert "muc_temporary" in disco_features(info)
    assert room in await service_rooms(a)
    await join(a, room, "ann")

    muc(a).leave_muc(JID(room), "ann")
    await o.expect("presence", presence_from(room, "ann", "unavailable"))
    # Not empty yet: still there.
    await a.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    muc(o).leave_muc(JID(room), "owner")
    await o.expect("presence", presence_from(room, "owner", "unavailable", has=[110]))

    await room_gone(a, room)
    assert room not in await service_rooms(a)
    # A message to the vanished room bounces.
    a.x.send_message(mto=room, mbody="anyone?", mtype="groupchat")
    err = await a.expect("message", error_for("anyone?"), "bounce from the gone room")
    assert error_condition(err) == "item-not-found", err


# ---------------------------------------------------------------------------------------
# 8. persistent rooms survive a crash


async def test_persistent_room_survives_sigkill(make_server, xmpp):
    srv = own_server(make_server)
    o = await user(srv, xmpp)
    room = new_room("durable")
    await create(o, room, "keeper", **{"muc#roomconfig_persistentroom": True,
                                       "muc#roomconfig_roomname": "Survivor"})
    muc(o).set_subject(room, "Still here")
    await o.expect("message", lambda m: m["subject"] == "Still here", "subject")
    texts = [f"before the crash {i}" for i in range(3)]
    live_ids = [stanza_ids(await say(o, room, t), room)[0] for t in texts]
    g_jid, g_pw = srv.user("muc")
    await muc(o).set_affiliation(room, "member", jid=g_jid, timeout=WAIT)
    # A destroyed persistent room stays destroyed.
    doomed = new_room("doomed")
    await create(o, doomed, "keeper", **{"muc#roomconfig_persistentroom": True})
    await muc(o).destroy(doomed, timeout=WAIT)

    srv.signal(signal.SIGKILL)
    assert srv.wait_exit(5) == -signal.SIGKILL
    await o.disconnected
    srv.start()

    g = await xmpp.connect(g_jid, g_pw, plugins=PLUGINS, server=srv)
    info = await g.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    assert disco_name(info) == "Survivor", info
    assert "muc_persistent" in disco_features(info)
    assert room in await service_rooms(g)
    await room_gone(g, doomed)
    assert doomed not in await service_rooms(g)

    pres, subject, others, history = await join(g, room, "guest")
    assert 201 not in codes(pres), "the room was re-created instead of reloaded"
    assert item(pres)["affiliation"] == "member", pres
    assert others == [], "nobody is in the room after the restart"
    assert [body(m) for m in history] == texts, history
    assert [stanza_ids(m, room) for m in history] == [[i] for i in live_ids]
    assert subject["subject"] == "Still here" and subject.xml.get("from") == f"{room}/keeper"

    res = await g.x.plugin["xep_0313"].retrieve(jid=JID(room), rsm={"max": 50}, timeout=WAIT)
    results = res["mam"]["results"]
    assert [r["mam_result"]["forwarded"]["stanza"]["body"] for r in results] == texts
    assert [r["mam_result"]["id"] for r in results] == live_ids
    # The owner is still the owner.
    o2 = await xmpp.connect(o.bare, o.password, plugins=PLUGINS, server=srv)
    pres, _, _, _ = await join(o2, room, "keeper")
    assert item(pres)["affiliation"] == "owner", pres


# ---------------------------------------------------------------------------------------
# 9. room archive paging


async def test_room_archive_paging(server, xmpp):
    o = await user(server, xmpp)
    room = new_room("archive")
    await create(o, room, "scribe", **{"muc#roomconfig_persistentroom": True})
    texts = [f"archived {i:02}" for i in range(25)]
    ids = [stanza_ids(await say(o, room, t), room)[0] for t in texts]
    assert len(set(ids)) == 25

    fwd: list[tuple[str, str]] = []
    after = ""
    for page in range(5):
        rsm = "<max>10</max>" + (f"<after>{after}</after>" if after else "")
        got, fin = await mam_page(o, room, f"fwd{page}", rsm)
        assert 0 < len(got) <= 10, got
        fwd += [(mam_result(m).get("id"), mam_forwarded(m).find("{jabber:client}body").text) for m in got]
        assert all(m.xml.get("from") == room for m in got)
        after = rsm_of(fin, "last")
        if fin.get("complete") == "true":
            break
        assert len(got) == 10
    assert fin.get("complete") == "true" and page == 2, (page, fin)
    assert fwd == list(zip(ids, texts)), fwd

    back: list[tuple[str, str]] = []
    before = ""
    for page in range(5):
        rsm = "<max>10</max>" + (f"<before>{before}</before>" if before else "<before/>")
        got, fin = await mam_page(o, room, f"back{page}", rsm)
        assert 0 < len(got) <= 10, got
        back = [(mam_result(m).get("id"), mam_forwarded(m).find("{jabber:client}body").text)
                for m in got] + back
        before = rsm_of(fin, "first")
        if fin.get("complete") == "true":
            break
        assert len(got) == 10
    assert fin.get("complete") == "true" and page == 2, (page, fin)
    assert back == list(zip(ids, texts)), back


# ---------------------------------------------------------------------------------------
# 10. moderation (XEP-0425)


async def test_moderation_retracts_message(server, xmpp):
    o, p, late = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room("moderated")
    await create(o, room, "mod", **{"muc#roomconfig_persistentroom": True})
    await join(p, room, "pat")
    info = await p.iq("get", room, f"<query xmlns='{DISCO_INFO}'/>")
    assert MODERATE in disco_features(info)
    await say(p, room, "keep this", o)
    bad = await say(p, room, "offensive words", o)
    bad_id = stanza_ids(bad, room)[0]

    # Participants may not moderate.
    assert await iq_error(p.x.plugin["xep_0425"].moderate(JID(room), bad_id, "mine", timeout=WAIT)) \
        == "forbidden"

    events = Events(p, "moderated_message")
    await o.x.plugin["xep_0425"].moderate(JID(room), bad_id, "spam", timeout=WAIT)
    for c in (o, p):
        m = await c.expect("message", lambda m: m.xml.find(f"{{{RETRACT}}}retract") is not None,
                           "retraction")
        assert m["type"] == "groupchat" and m.xml.get("from") == room, m
        r = m.xml.find(f"{{{RETRACT}}}retract")
        assert r.get("id") == bad_id, m
        mod = r.find(f"{{{MODERATE}}}moderated")
        assert mod is not None and mod.get("by") == f"{room}/mod", m
    await events.expect("moderated_message")

    form = (f"<x xmlns='{DATA}' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
            f"<field var='ids'><value>{bad_id}</value></field></x>")
    got, _ = await mam_page(p, room, "tomb", "<max>5</max>", form)
    assert len(got) == 1 and mam_result(got[0]).get("id") == bad_id, got
    tomb = mam_forwarded(got[0])
    assert tomb.find(f"{{{RETRACT}}}retracted") is not None, tomb
    assert tomb.find("{jabber:client}body") is None, "the tombstone keeps no body"

    # Nor is it in the join history any more.
    _, _, _, history = await join(late, room, "late")
    assert [body(m) for m in history] == ["keep this"], history


# ---------------------------------------------------------------------------------------
# 11. self-ping (XEP-0410)


async def test_self_ping(server, xmpp):
    o, a = await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner")
    await join(a, room, "ann")
    me = JID(f"{room}/ann")
    status = await a.x.plugin["xep_0410"].send_self_ping(me, timeout=WAIT)
    assert status.name == "JOINED", status
    r = await a.iq("get", str(me), "<ping xmlns='urn:xmpp:ping'/>")
    assert r["type"] == "result" and r.xml.get("from") == str(me)

    muc(a).leave_muc(JID(room), "ann")
    await a.expect("presence", presence_from(room, "ann", "unavailable", has=[110]))
    with pytest.raises(IqFailed) as e:
        await a.iq("get", str(me), "<ping xmlns='urn:xmpp:ping'/>")
    assert e.value.condition == "not-acceptable", e.value.iq
    status = await a.x.plugin["xep_0410"].send_self_ping(me, timeout=WAIT)
    assert status.name == "DISCONNECTED", status


# ---------------------------------------------------------------------------------------
# 12. nick changes


async def test_nick_change_and_conflict(server, xmpp):
    o, a, b = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner")
    await join(a, room, "ann")
    await join(b, room, "ben")

    assert await muc(a).set_self_nick(JID(room), "anna", timeout=WAIT) == "anna"
    for c in (o, b):
        p = await c.expect("presence", presence_from(room, "ann", "unavailable", has=[303], lacks=[110]),
                           "303 nick change")
        assert item(p)["nick"] == "anna", p
        await c.expect("presence", presence_from(room, "anna", lacks=[110]), "presence of the new nick")
        assert position(c, "presence", presence_from(room, "ann", "unavailable", has=[303])) \
            < position(c, "presence", presence_from(room, "anna")), "303 first, then the new nick"
    p = await a.expect("presence", presence_from(room, "ann", "unavailable", has=[303, 110]))
    assert item(p)["nick"] == "anna"
    await a.expect("presence", presence_from(room, "anna", has=[110]))
    m = await say(a, room, "renamed", b)
    assert m.xml.get("from") == f"{room}/anna"

    # Taking someone else's nick: conflict, and nothing changes.
    b.x.send_presence(pto=f"{room}/anna")
    err = await b.expect("presence", lambda p: p["type"] == "error", "nick conflict")
    assert error_condition(err) == "conflict" and err.xml.get("from") == f"{room}/anna", err
    c = await user(server, xmpp)
    assert await join_error(c, room, "ben") == "conflict"
    await say(b, room, "still ben")
    await o.expect("message", groupchat(f"{room}/ben", "still ben"))


# ---------------------------------------------------------------------------------------
# 13. private messages


async def test_private_message_between_occupants(server, xmpp):
    o, a, b = await user(server, xmpp), await user(server, xmpp), await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner")
    await join(a, room, "ann")
    await join(b, room, "ben")

    a.x.send_message(mto=f"{room}/ben", mbody="psst, ben", mtype="chat")
    m = await b.expect_message("psst, ben")
    assert m.xml.get("from") == f"{room}/ann" and m["type"] == "chat", m
    assert muc_x(m) is not None, "a MUC private message carries <x xmlns='muc#user'/>"
    b.x.send_message(mto=m.xml.get("from"), mbody="hi ann", mtype="chat")
    m = await a.expect_message("hi ann")
    assert m.xml.get("from") == f"{room}/ben", m
    await o.drain()
    assert not o.seen("message", lambda m: body(m) in ("psst, ben", "hi ann"))

    a.x.send_message(mto=f"{room}/nobody", mbody="to no one", mtype="chat")
    err = await a.expect("message", error_for("to no one"))
    assert error_condition(err) == "item-not-found", err


# ---------------------------------------------------------------------------------------
# 14. destruction


async def test_destroy_room(server, xmpp):
    o, a = await user(server, xmpp), await user(server, xmpp)
    room, venue = new_room("doomed"), new_room("venue")
    await create(o, room, "owner", **{"muc#roomconfig_persistentroom": True})
    await join(a, room, "ann")

    await muc(o).destroy(room, reason="moving house", altroom=venue, timeout=WAIT)
    for c, nick in ((a, "ann"), (o, "owner")):
        p = await c.expect("presence", presence_from(room, nick, "unavailable", has=[110]), "destroyed")
        d = muc_x(p).find(f"{{{MUC_USER}}}destroy")
        assert d is not None and d.get("jid") == venue, p
        assert d.find(f"{{{MUC_USER}}}reason").text == "moving house", p

    await room_gone(a, room)
    assert room not in await service_rooms(a)
    # The name is free again: joining creates a new room with the joiner as owner.
    pres = await create(a, room, "ann")
    assert item(pres)["affiliation"] == "owner"


# ---------------------------------------------------------------------------------------
# occupants whose connection ends


@pytest.mark.parametrize("initial_presence", [True, False], ids=["available", "muc-only"])
async def test_disconnect_leaves_room(server, xmpp, initial_presence):
    """RFC 6121 §4.6.3: when a session ends, its server sends unavailable to where it sent
    directed presence, so the room drops the occupant at once, also for a MUC-only client
    (a bot, say) that never sent initial presence."""
    o = await user(server, xmpp)
    jid, pw = server.user("muc")
    a = await xmpp.connect(jid, pw, plugins=PLUGINS, server=server, presence=initial_presence)
    room = new_room()
    await create(o, room, "owner")
    await join(a, room, "ann")
    await a.close()
    p = await o.expect("presence", presence_from(room, "ann", "unavailable"), "ann gone",
                       timeout=3)
    assert item(p)["role"] == "none"
    assert await muc(o).get_roles_list(room, "participant", timeout=WAIT) == []


async def test_ghost_occupant_dropped_on_bounce(server, xmpp):
    """An occupant whose client answers the room with a delivery error (its server's bounce
    for a session that is gone) is removed with status 333, and everyone is told."""
    o = await user(server, xmpp)
    a = await user(server, xmpp)
    room = new_room()
    await create(o, room, "owner")
    await join(a, room, "ann")
    a.x.send_raw(
        f"<message to='{room}' type='error' id='bounce1'>"
        "<error type='cancel'><service-unavailable "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    p = await o.expect("presence", presence_from(room, "ann", "unavailable", has=[333]), "ghost dropped")
    assert item(p)["role"] == "none"
