//! Requests to a room (XEP-0045 §§8–10: admin and owner use cases, member registration;
//! disco; XEP-0313 on the room; XEP-0425 moderation) and the room's messages that are not
//! chat (mediated invitations, declines, voice requests).

use std::sync::Arc;

use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use super::config::*;
use super::room::Room;
use crate::ext::{now_stamp, IqRequest, Target};

pub async fn on_room_iq(room: &mut Room, el: Element, from: Jid) {
    let kind = el.attr("type").unwrap_or("");
    if !matches!(kind, "get" | "set") {
        return;
    }
    let set = kind == "set";
    let payload = match crate::ext::payload_of(&el) {
        Ok(p) => p.clone(),
        Err(e) => return room.error_reply(&el, e).await,
    };
    if payload.is("query", ns::MAM) && set {
        return mam_query(room, &el, &payload, &from).await;
    }
    let res = match (payload.name.as_str(), payload.ns.as_str(), set) {
        ("query", ns::DISCO_INFO, false) => disco_info(room, &payload),
        ("query", ns::DISCO_ITEMS, false) => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
        ("query", MUC_ADMIN, false) => admin_get(room, &payload, &from),
        ("query", MUC_ADMIN, true) => admin_set(room, &payload, &from).await,
        ("query", MUC_OWNER, false) => owner_get(room, &from),
        ("query", MUC_OWNER, true) => owner_set(room, &payload, &from).await,
        ("query", "jabber:iq:register", false) => register_get(room, &from),
        ("query", "jabber:iq:register", true) => register_set(room, &payload, &from).await,
        ("moderate", MODERATE, true) => moderate(room, &payload, &from).await,
        ("ping", ns::PING, false) => Ok(None),
        ("vCard", ns::VCARD, false) => Ok(Some(Element::new("vCard", ns::VCARD))),
        ("query", ns::MAM, false) => Ok(Some(mam_form())),
        _ => Err(StanzaError::new(Cond::ServiceUnavailable)),
    };
    crate::router::route(&room.server, crate::ext::iq_reply(&el, res)).await
}

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

fn info_field(var: &str, label: &str, v: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("label", label)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(v))
}

fn disco_info(room: &Room, q: &Element) -> Result<Option<Element>, StanzaError> {
    if q.attr("node").is_some() {
        return Err(StanzaError::new(Cond::ItemNotFound));
    }
    let c = &room.cfg;
    let name = if c.name.is_empty() {
        room.jid.node().unwrap_or("")
    } else {
        c.name.as_str()
    };
    let mut r = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", name),
    );
    let mut features = vec![
        MUC,
        STABLE_ID,
        SELF_PING,
        OCCUPANT_ID,
        ns::SID,
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        "jabber:iq:register",
        "vcard-temp",
        if c.persistent {
            "muc_persistent"
        } else {
            "muc_temporary"
        },
        if c.public { "muc_public" } else { "muc_hidden" },
        if c.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        },
        if c.moderated {
            "muc_moderated"
        } else {
            "muc_unmoderated"
        },
        if c.password_protected() {
            "muc_passwordprotected"
        } else {
            "muc_unsecured"
        },
        if c.whois_anyone {
            "muc_nonanonymous"
        } else {
            "muc_semianonymous"
        },
    ];
    if archives(room) {
        features.push(ns::MAM);
        features.push(MODERATE);
    }
    features.sort_unstable();
    for f in features {
        r.push(feature(f));
    }
    let form = crate::ext::disco::result_form(ROOMINFO)
        .with_child(info_field("muc#roomconfig_roomname", "Name", name))
        .with_child(info_field(
            "muc#roominfo_description",
            "Description",
            &c.description,
        ))
        .with_child(info_field("muc#roominfo_subject", "Subject", &room.subject))
        .with_child(info_field(
            "muc#roominfo_occupants",
            "Occupants",
            &room.occupants.len().to_string(),
        ))
        .with_child(info_field("muc#roominfo_lang", "Language", &c.lang))
        .with_child(info_field(
            "muc#maxhistoryfetch",
            "History",
            &c.history_length.to_string(),
        ))
        .with_child(info_field(
            "muc#roomconfig_changesubject",
            "Occupants may change the subject",
            if c.change_subject { "1" } else { "0" },
        ))
        .with_child(info_field(
            "muc#roomconfig_allowinvites",
            "Occupants may invite",
            if c.allow_invites { "1" } else { "0" },
        ));
    r.push(form);
    Ok(Some(r))
}

/// Messages are archived: the room is persistent and logging.
fn archives(room: &Room) -> bool {
    room.cfg.logging && room.cfg.persistent
}

fn forbidden(text: &str) -> StanzaError {
    StanzaError::new(Cond::Forbidden).with_text(text)
}

/// The requester's role in the room, if an occupant.
fn role_of(room: &Room, from: &Jid) -> Role {
    room.occupant_of(from).map(|o| o.role).unwrap_or(Role::None)
}

// -----------------------------------------------------------------------------------------
// muc#admin

fn admin_get(room: &Room, q: &Element, from: &Jid) -> Result<Option<Element>, StanzaError> {
    let item = q
        .child("item", MUC_ADMIN)
        .ok_or_else(|| StanzaError::new(Cond::BadRequest))?;
    let my_aff = room.affiliation(from);
    let my_role = role_of(room, from);
    let mut out = Element::new("query", MUC_ADMIN);
    if let Some(a) = item.attr("affiliation") {
        let aff = Affiliation::parse(a)
            .filter(|a| *a != Affiliation::None)
            .ok_or_else(|| StanzaError::new(Cond::BadRequest))?;
        let allowed = match aff {
            Affiliation::Member => {
                my_aff >= Affiliation::Admin || room.cfg.member_list_roles.contains(&my_role)
            }
            _ => my_aff >= Affiliation::Admin,
        };
        if !allowed {
            return Err(forbidden("you may not see this list"));
        }
        for jid in room.list(aff) {
            let e = &room.affiliations[&jid];
            let mut it = Element::new("item", MUC_ADMIN)
                .with_attr("affiliation", aff.as_str())
                .with_attr("jid", jid.as_str());
            if let Some(n) = &e.nick {
                it.set_attr("nick", n.as_str());
            }
            if let Some(r) = &e.reason {
                it.push(Element::new("reason", MUC_ADMIN).with_text(r.as_str()));
            }
            out.push(it);
        }
        return Ok(Some(out));
    }
    if let Some(r) = item.attr("role") {
        let role = Role::parse(r)
            .filter(|r| *r != Role::None)
            .ok_or_else(|| StanzaError::new(Cond::BadRequest))?;
        if my_role != Role::Moderator {
            return Err(forbidden("only moderators may see roles"));
        }
        let mut list: Vec<_> = room.occupants.values().filter(|o| o.role == role).collect();
        list.sort_by(|a, b| a.nick.cmp(&b.nick));
        for o in list {
            let mut it = Element::new("item", MUC_ADMIN)
                .with_attr("role", role.as_str())
                .with_attr("nick", o.nick.as_str())
                .with_attr("affiliation", room.affiliation(&o.real).as_str());
            if let Some(s) = o.sessions.first() {
                it.set_attr("jid", s.as_str());
            }
            out.push(it);
        }
        return Ok(Some(out));
    }
    Err(StanzaError::new(Cond::BadRequest))
}

enum Change {
    Role {
        nick: String,
        role: Role,
        reason: Option<String>,
    },
    Affiliation {
        jid: String,
        aff: Affiliation,
        nick: Option<String>,
        reason: Option<String>,
    },
}

/// Checks one requested change against the requester's standing (XEP-0045 §§8, 9, 10).
fn check_change(room: &Room, from: &Jid, item: &Element) -> Result<Change, StanzaError> {
    let reason = item.child("reason", MUC_ADMIN).map(|r| r.text());
    let my_aff = room.affiliation(from);
    let my_role = role_of(room, from);
    if let Some(a) = item.attr("affiliation") {
        let aff = Affiliation::parse(a).ok_or_else(|| StanzaError::new(Cond::BadRequest))?;
        // By JID, or (as some clients send it) by the nick of a present occupant.
        let jid = match (item.attr("jid"), item.attr("nick")) {
            (Some(j), _) => Jid::parse(j).map_err(|_| StanzaError::new(Cond::JidMalformed))?,
            (None, Some(n)) => room
                .occupants
                .get(n)
                .map(|o| o.real.clone())
                .ok_or_else(|| {
                    StanzaError::new(Cond::ItemNotFound).with_text("no occupant with that nick")
                })?,
            (None, None) => {
                return Err(StanzaError::new(Cond::BadRequest).with_text("an item needs a jid"))
            }
        };
        // Affiliations are for bare or domain JIDs.
        let target = jid.bare();
        let current = room
            .affiliations
            .get(target.as_str())
            .map(|a| a.affiliation)
            .unwrap_or(Affiliation::None);
        match my_aff {
            Affiliation::Owner => {
                if current == Affiliation::Owner
                    && aff != Affiliation::Owner
                    && room.owners().len() <= 1
                {
                    return Err(StanzaError::new(Cond::Conflict)
                        .with_text("a room needs at least one owner"));
                }
            }
            Affiliation::Admin => {
                if aff >= Affiliation::Admin || current >= Affiliation::Admin {
                    return Err(StanzaError::new(Cond::NotAllowed)
                        .with_text("admins may only change members, outcasts and others"));
                }
            }
            _ => return Err(forbidden("only admins and owners may change affiliations")),
        }
        let nick = room
            .affiliations
            .get(target.as_str())
            .and_then(|a| a.nick.clone())
            .or_else(|| item.attr("nick").map(str::to_string));
        return Ok(Change::Affiliation {
            jid: target.as_str().to_string(),
            aff,
            nick: if aff >= Affiliation::Member {
                nick
            } else {
                None
            },
            reason,
        });
    }
    if let Some(r) = item.attr("role") {
        let role = Role::parse(r).ok_or_else(|| StanzaError::new(Cond::BadRequest))?;
        let nick = item
            .attr("nick")
            .ok_or_else(|| StanzaError::new(Cond::BadRequest).with_text("an item needs a nick"))?;
        let target = room
            .occupants
            .get(nick)
            .ok_or_else(|| StanzaError::new(Cond::ItemNotFound).with_text("no such occupant"))?;
        if my_role != Role::Moderator {
            return Err(forbidden("only moderators may change roles"));
        }
        let target_aff = room.affiliation(&target.real);
        match role {
            Role::None | Role::Visitor => {
                // §8.2/§8.4: not against admins and owners (nor oneself as the last word).
                if target_aff >= Affiliation::Admin && target_aff >= my_aff {
                    return Err(StanzaError::new(Cond::NotAllowed)
                        .with_text("admins and owners cannot be kicked or silenced"));
                }
                if target_aff >= Affiliation::Admin {
                    return Err(StanzaError::new(Cond::NotAllowed)
                        .with_text("admins and owners cannot be kicked or silenced"));
                }
            }
            Role::Participant => {
                if target.role == Role::Moderator {
                    if my_aff < Affiliation::Admin {
                        return Err(forbidden("only admins may revoke moderator status"));
                    }
                    if target_aff >= Affiliation::Admin {
                        return Err(StanzaError::new(Cond::NotAllowed)
                            .with_text("admins and owners are always moderators"));
                    }
                }
            }
            Role::Moderator => {
                if my_aff < Affiliation::Admin {
                    return Err(forbidden("only admins may grant moderator status"));
                }
            }
        }
        return Ok(Change::Role {
            nick: nick.to_string(),
            role,
            reason,
        });
    }
    Err(StanzaError::new(Cond::BadRequest))
}

async fn admin_set(
    room: &mut Room,
    q: &Element,
    from: &Jid,
) -> Result<Option<Element>, StanzaError> {
    let items: Vec<&Element> = q.elements().filter(|e| e.is("item", MUC_ADMIN)).collect();
    if items.is_empty() {
        return Err(StanzaError::new(Cond::BadRequest));
    }
    // All or nothing: every item is checked before any is applied.
    let mut changes = Vec::with_capacity(items.len());
    for it in items {
        changes.push(check_change(room, from, it)?);
    }
    let actor = room.occupant_of(from).map(|o| o.nick.clone());
    for ch in changes {
        apply_change(room, ch, actor.as_deref()).await?;
    }
    Ok(None)
}

async fn apply_change(room: &mut Room, ch: Change, actor: Option<&str>) -> Result<(), StanzaError> {
    match ch {
        Change::Role { nick, role, reason } => {
            if role == Role::None {
                room.remove_occupant(&nick, &[307], actor, reason.as_deref(), None)
                    .await;
            } else if let Some(o) = room.occupants.get_mut(&nick) {
                o.role = role;
                room.announce(&nick, actor, reason.as_deref()).await;
            }
        }
        Change::Affiliation {
            jid,
            aff,
            nick,
            reason,
        } => {
            room.set_affiliation(&jid, aff, nick, reason.clone())
                .await?;
            let affected: Vec<String> = room
                .occupants
                .values()
                .filter(|o| o.real.as_str() == jid || o.real.domain() == jid)
                .map(|o| o.nick.clone())
                .collect();
            for n in affected {
                let real = room.occupants[&n].real.clone();
                let now = room.affiliation(&real);
                if now == Affiliation::Outcast {
                    room.remove_occupant(&n, &[301], actor, reason.as_deref(), Some(now))
                        .await;
                } else if room.cfg.members_only && now < Affiliation::Member {
                    room.remove_occupant(&n, &[321], actor, reason.as_deref(), Some(now))
                        .await;
                } else {
                    let role = room.default_role(now);
                    if let Some(o) = room.occupants.get_mut(&n) {
                        o.role = role;
                    }
                    room.announce(&n, actor, reason.as_deref()).await;
                }
            }
        }
    }
    Ok(())
}

// -----------------------------------------------------------------------------------------
// muc#owner

fn owner_get(room: &Room, from: &Jid) -> Result<Option<Element>, StanzaError> {
    if room.affiliation(from) != Affiliation::Owner {
        return Err(forbidden("only owners may configure the room"));
    }
    let form = config_form(
        &room.cfg,
        &room.owners(),
        &room.list(Affiliation::Admin),
        room.server.settings.raw.muc.max_users,
    );
    Ok(Some(Element::new("query", MUC_OWNER).with_child(form)))
}

async fn owner_set(
    room: &mut Room,
    q: &Element,
    from: &Jid,
) -> Result<Option<Element>, StanzaError> {
    if room.affiliation(from) != Affiliation::Owner {
        return Err(forbidden("only owners may configure or destroy the room"));
    }
    if let Some(d) = q.child("destroy", MUC_OWNER) {
        destroy(
            room,
            d.attr("jid"),
            d.child("reason", MUC_OWNER).map(|r| r.text()),
        )
        .await?;
        return Ok(None);
    }
    let Some(form) = q.child("x", ns::DATA_FORMS) else {
        return Err(StanzaError::new(Cond::BadRequest));
    };
    match form.attr("type") {
        Some("cancel") => {
            // §10.1.3: cancelling the initial configuration destroys the new room.
            if room.locked {
                destroy(room, None, None).await?;
            }
            return Ok(None);
        }
        Some("submit") => {}
        _ => return Err(StanzaError::new(Cond::BadRequest)),
    }
    let muc = &room.server.settings.raw.muc;
    let before = room.cfg.clone();
    let mut cfg = room.cfg.clone();
    let lists = apply_form(&mut cfg, form, muc.max_users, muc.max_history)?;
    // Owner/admin lists from the form replace the current ones.
    let mut aff_changes: Vec<(String, Affiliation)> = Vec::new();
    for (list, aff) in [
        (&lists.owners, Affiliation::Owner),
        (&lists.admins, Affiliation::Admin),
    ] {
        let Some(list) = list else { continue };
        let mut wanted = Vec::new();
        for j in list.iter().filter(|j| !j.is_empty()) {
            let jid = Jid::parse(j).map_err(|_| StanzaError::new(Cond::JidMalformed))?;
            wanted.push(jid.bare_str().to_string());
        }
        for cur in room.list(aff) {
            if !wanted.contains(&cur) {
                aff_changes.push((cur, Affiliation::None));
            }
        }
        for w in wanted {
            aff_changes.push((w, aff));
        }
    }
    let owners_after = {
        let mut o = room.owners();
        for (j, a) in &aff_changes {
            o.retain(|x| x != j);
            if *a == Affiliation::Owner {
                o.push(j.clone());
            }
        }
        o
    };
    if owners_after.is_empty() {
        return Err(StanzaError::new(Cond::NotAcceptable).with_text("a room needs an owner"));
    }
    let was_locked = room.locked;
    let was_persistent = room.cfg.persistent;
    room.cfg = cfg;
    room.locked = false;
    if was_persistent && !room.cfg.persistent {
        if room.stored {
            room.server
                .storage
                .delete_room(room.jid.as_str())
                .await
                .map_err(crate::ext::storage_error)?;
            room.stored = false;
        }
    } else if let Err(e) = room.save().await {
        room.cfg = before;
        room.locked = was_locked;
        return Err(e);
    }
    for (j, a) in aff_changes {
        let nick = room.affiliations.get(&j).and_then(|e| e.nick.clone());
        room.set_affiliation(&j, a, nick, None).await?;
    }
    if !was_locked {
        // §10.2.1: occupants learn what changed.
        let mut codes = vec![104];
        if before.whois_anyone != room.cfg.whois_anyone {
            codes.push(if room.cfg.whois_anyone { 172 } else { 173 });
        }
        let logged = |c: &RoomConfig| c.logging && c.persistent;
        if logged(&before) != logged(&room.cfg) {
            codes.push(if logged(&room.cfg) { 170 } else { 171 });
        }
        room.status_message(&codes).await;
    }
    // Members-only now: non-members leave (§9.? status 322).
    if room.cfg.members_only && !before.members_only {
        let out: Vec<String> = room
            .occupants
            .values()
            .filter(|o| room.affiliation(&o.real) < Affiliation::Member)
            .map(|o| o.nick.clone())
            .collect();
        for n in out {
            room.remove_occupant(&n, &[322], None, None, None).await;
        }
    }
    // Roles follow affiliations and moderation.
    let nicks: Vec<String> = room.occupants.keys().cloned().collect();
    for n in nicks {
        let (real, role) = {
            let o = &room.occupants[&n];
            (o.real.clone(), o.role)
        };
        let want = room.default_role(room.affiliation(&real));
        let changed = match (role, want) {
            (Role::Moderator, w) if w != Role::Moderator => {
                room.affiliation(&real) < Affiliation::Admin
            }
            (r, Role::Moderator) => r != Role::Moderator,
            _ => false,
        };
        if changed {
            if let Some(o) = room.occupants.get_mut(&n) {
                o.role = want;
            }
            room.announce(&n, None, None).await;
        }
    }
    Ok(None)
}

/// §10.9: every occupant is told the room is gone (with an alternate venue if given).
pub async fn destroy(
    room: &mut Room,
    alternate: Option<&str>,
    reason: Option<String>,
) -> Result<(), StanzaError> {
    if room.stored {
        room.server
            .storage
            .delete_room(room.jid.as_str())
            .await
            .map_err(crate::ext::storage_error)?;
        room.stored = false;
    }
    let mut d = Element::new("destroy", MUC_USER);
    if let Some(a) = alternate {
        d.set_attr("jid", a);
    }
    if let Some(r) = &reason {
        d.push(Element::new("reason", MUC_USER).with_text(r.as_str()));
    }
    let sessions: Vec<Jid> = room
        .occupants
        .values()
        .flat_map(|o| o.sessions.clone())
        .collect();
    for s in sessions {
        room.leave(&s, &[], Some(d.clone())).await;
    }
    room.destroyed = true;
    Ok(())
}

// -----------------------------------------------------------------------------------------
// Member registration (§7.10)

fn register_get(room: &Room, from: &Jid) -> Result<Option<Element>, StanzaError> {
    let mut q = Element::new("query", "jabber:iq:register");
    if let Some(nick) = room
        .affiliations
        .get(from.bare_str())
        .and_then(|a| a.nick.clone())
    {
        q.push(Element::new("registered", "jabber:iq:register"));
        q.push(Element::new("username", "jabber:iq:register").with_text(nick));
        return Ok(Some(q));
    }
    if room.affiliation(from) == Affiliation::Outcast {
        return Err(forbidden("you are banned from this room"));
    }
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::DATA_FORMS).with_text("Register a nickname"))
        .with_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(REGISTER_FORM)),
        )
        .with_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "muc#register_roomnick")
                .with_attr("type", "text-single")
                .with_attr("label", "Nickname")
                .with_child(Element::new("required", ns::DATA_FORMS)),
        );
    q.push(form);
    Ok(Some(q))
}

async fn register_set(
    room: &mut Room,
    q: &Element,
    from: &Jid,
) -> Result<Option<Element>, StanzaError> {
    let aff = room.affiliation(from);
    if aff == Affiliation::Outcast {
        return Err(forbidden("you are banned from this room"));
    }
    let bare = from.bare_str().to_string();
    if q.child("remove", "jabber:iq:register").is_some() {
        let keep = if aff >= Affiliation::Admin {
            aff
        } else {
            Affiliation::None
        };
        room.set_affiliation(&bare, keep, None, None).await?;
        return Ok(None);
    }
    let nick = q
        .child("x", ns::DATA_FORMS)
        .and_then(|x| {
            x.elements()
                .find(|f| f.attr("var") == Some("muc#register_roomnick"))
        })
        .and_then(|f| f.child("value", ns::DATA_FORMS))
        .map(|v| v.text().trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StanzaError::new(Cond::BadRequest).with_text("a nickname is required"))?;
    let nick = herald_core::jid::prepare_resource(&nick)
        .map_err(|_| StanzaError::new(Cond::JidMalformed))?
        .into_owned();
    if room.cfg.members_only && aff < Affiliation::Member {
        return Err(StanzaError::new(Cond::RegistrationRequired)
            .with_text("only members may register in a members-only room"));
    }
    let taken = room
        .affiliations
        .iter()
        .any(|(j, a)| a.nick.as_deref() == Some(nick.as_str()) && *j != bare)
        || room
            .occupants
            .get(&nick)
            .is_some_and(|o| o.real.bare_str() != bare);
    if taken {
        return Err(StanzaError::new(Cond::Conflict).with_text("that nickname is taken"));
    }
    let new_aff = aff.max(Affiliation::Member);
    room.set_affiliation(&bare, new_aff, Some(nick), None)
        .await?;
    let present: Vec<String> = room
        .occupants
        .values()
        .filter(|o| o.real.bare_str() == bare)
        .map(|o| o.nick.clone())
        .collect();
    for n in present {
        let role = {
            let o = &room.occupants[&n];
            if o.role == Role::Visitor {
                Role::Participant
            } else {
                o.role
            }
        };
        if let Some(o) = room.occupants.get_mut(&n) {
            o.role = role;
        }
        room.announce(&n, None, None).await;
    }
    Ok(None)
}

// -----------------------------------------------------------------------------------------
// Archive (XEP-0313) and moderation (XEP-0425)

fn mam_form() -> Element {
    Element::new("query", ns::MAM).with_child(
        Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(ns::MAM)),
            )
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "with")
                    .with_attr("type", "jid-single"),
            )
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "start")
                    .with_attr("type", "text-single"),
            )
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "end")
                    .with_attr("type", "text-single"),
            ),
    )
}

/// XEP-0313 §4 on a room: who may read it is who may be in it.
async fn mam_query(room: &Room, el: &Element, payload: &Element, from: &Jid) {
    let aff = room.affiliation(from);
    let allowed = if !archives(room) {
        Err(StanzaError::new(Cond::ServiceUnavailable).with_text("this room keeps no archive"))
    } else if aff == Affiliation::Outcast {
        Err(forbidden("you are banned from this room"))
    } else if room.cfg.members_only && aff < Affiliation::Member && room.occupant_of(from).is_none()
    {
        Err(forbidden(
            "the archive of a members-only room is for members",
        ))
    } else if room.cfg.password_protected()
        && room.occupant_of(from).is_none()
        && aff < Affiliation::Member
    {
        Err(forbidden("join the room to read its archive"))
    } else {
        Ok(())
    };
    let server: &Arc<crate::Server> = &room.server;
    let reply = match allowed {
        Err(e) => e.reply_to(el),
        Ok(()) => {
            let req = IqRequest {
                from,
                to: &room.jid,
                target: Target::OtherAccount,
                set: true,
                payload,
                stanza: el,
                session: None,
            };
            crate::ext::iq_reply(el, crate::ext::mam::query(server, &req, &room.jid).await)
        }
    };
    crate::router::route(server, reply).await
}

async fn moderate(
    room: &mut Room,
    q: &Element,
    from: &Jid,
) -> Result<Option<Element>, StanzaError> {
    let Some(me) = room.occupant_of(from) else {
        return Err(forbidden("only moderators may moderate messages"));
    };
    if me.role != Role::Moderator {
        return Err(forbidden("only moderators may moderate messages"));
    }
    if q.child("retract", RETRACT).is_none() {
        return Err(StanzaError::new(Cond::BadRequest).with_text("only retraction is supported"));
    }
    let id = q
        .attr("id")
        .ok_or_else(|| StanzaError::new(Cond::BadRequest).with_text("which message?"))?
        .to_string();
    let reason = q.child("reason", MODERATE).map(|r| r.text());
    let by = room.nick_jid(&me.nick);
    let my_oid = me.occupant_id.clone();
    let moderated = Element::new("moderated", MODERATE)
        .with_attr("by", by.as_str())
        .with_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", my_oid.as_str()));
    // The archived message becomes a tombstone (XEP-0425 §4: its retracted form).
    let mut found = room.forget_history(&id).is_some();
    if archives(room) {
        let filter = herald_storage::ArchiveFilter {
            ids: vec![id.clone()],
            ..Default::default()
        };
        let paging = herald_storage::ArchivePaging {
            max: 1,
            ..Default::default()
        };
        let page = room
            .server
            .storage
            .query_archive(room.jid.as_str(), &filter, &paging)
            .await
            .map_err(crate::ext::storage_error)?;
        let orig = page
            .and_then(|p| p.items.into_iter().next())
            .and_then(|i| crate::ext::parse_fragment(&i.stanza));
        if let Some(orig) = orig {
            if orig.child("retracted", RETRACT).is_none() {
                let mut t = Element::new("message", ns::CLIENT).with_attr("type", "groupchat");
                for a in ["from", "id"] {
                    if let Some(v) = orig.attr(a) {
                        t.set_attr(a, v);
                    }
                }
                if let Some(oid) = orig.child("occupant-id", OCCUPANT_ID) {
                    t.push(oid.clone());
                }
                let mut r = Element::new("retracted", RETRACT)
                    .with_attr("stamp", now_stamp())
                    .with_child(moderated.clone());
                if let Some(reason) = &reason {
                    r.push(Element::new("reason", MODERATE).with_text(reason.as_str()));
                }
                t.push(r);
                room.server
                    .storage
                    .replace_archived(room.jid.as_str(), &id, &crate::ext::to_stored(&t))
                    .await
                    .map_err(crate::ext::storage_error)?;
            }
            found = true;
        }
    }
    if !found {
        return Err(StanzaError::new(Cond::ItemNotFound).with_text("no such message"));
    }
    let mut retract = Element::new("retract", RETRACT)
        .with_attr("id", id.as_str())
        .with_child(moderated);
    if let Some(r) = &reason {
        retract.push(Element::new("reason", MODERATE).with_text(r.as_str()));
    }
    let m = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("from", room.jid.as_str())
        .with_attr("id", crate::ext::mam::new_stanza_id())
        .with_child(retract);
    room.broadcast_from_room(&m).await;
    Ok(None)
}

// -----------------------------------------------------------------------------------------
// Invitations and voice requests

/// §7.8.2: a mediated invitation, sent on by the room.
pub async fn invite(room: &mut Room, el: &Element, from: &Jid) {
    let Some(me) = room.occupant_of(from) else {
        return room
            .error_reply(
                el,
                StanzaError::new(Cond::NotAcceptable).with_text("only occupants may invite"),
            )
            .await;
    };
    let my_aff = room.affiliation(from);
    let my_nick = me.nick.clone();
    let may_add_members = my_aff >= Affiliation::Admin || room.cfg.allow_invites;
    if room.cfg.members_only && !may_add_members {
        return room
            .error_reply(
                el,
                forbidden("only admins may invite to this members-only room"),
            )
            .await;
    }
    let x = el.child("x", MUC_USER).expect("checked by caller");
    let invites: Vec<Element> = x
        .elements()
        .filter(|i| i.is("invite", MUC_USER))
        .take(20)
        .cloned()
        .collect();
    for inv in invites {
        let Some(to) = inv.attr("to").and_then(|t| Jid::parse(t).ok()) else {
            room.error_reply(el, StanzaError::new(Cond::JidMalformed))
                .await;
            continue;
        };
        if room.cfg.members_only && room.affiliation(&to) < Affiliation::Member {
            if room.affiliation(&to) == Affiliation::Outcast {
                continue;
            }
            let nick = None;
            if let Err(e) = room
                .set_affiliation(to.bare_str(), Affiliation::Member, nick, None)
                .await
            {
                room.error_reply(el, e).await;
                continue;
            }
        }
        let mut out_inv = Element::new("invite", MUC_USER).with_attr("from", from.as_str());
        if let Some(r) = inv.child("reason", MUC_USER) {
            out_inv.push(r.clone());
        }
        if let Some(c) = inv.child("continue", MUC_USER) {
            out_inv.push(c.clone());
        }
        let mut ux = Element::new("x", MUC_USER).with_child(out_inv);
        if let Some(p) = &room.cfg.password {
            ux.push(Element::new("password", MUC_USER).with_text(p.as_str()));
        }
        let body = format!(
            "{} invites you to the room {}",
            from.bare_str(),
            room.jid.as_str()
        );
        let m = Element::new("message", ns::CLIENT)
            .with_attr("from", room.jid.as_str())
            .with_attr("to", to.as_str())
            .with_attr("id", crate::ext::mam::new_stanza_id())
            .with_child(ux)
            .with_child(Element::new("body", ns::CLIENT).with_text(body));
        room.send(m).await;
        let _ = &my_nick;
    }
}

/// §7.8.2: an invitee declines; the inviter hears of it from the room.
pub async fn decline(room: &mut Room, el: &Element, from: &Jid) {
    let x = el.child("x", MUC_USER).expect("checked by caller");
    let Some(d) = x.child("decline", MUC_USER) else {
        return;
    };
    let Some(to) = d.attr("to").and_then(|t| Jid::parse(t).ok()) else {
        return room
            .error_reply(el, StanzaError::new(Cond::JidMalformed))
            .await;
    };
    let mut out = Element::new("decline", MUC_USER).with_attr("from", from.bare_str());
    if let Some(r) = d.child("reason", MUC_USER) {
        out.push(r.clone());
    }
    let m = Element::new("message", ns::CLIENT)
        .with_attr("from", room.jid.as_str())
        .with_attr("to", to.as_str())
        .with_child(Element::new("x", MUC_USER).with_child(out));
    room.send(m).await;
}

fn form_value(form: &Element, var: &str) -> Option<String> {
    form.elements()
        .find(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some(var))
        .and_then(|f| f.child("value", ns::DATA_FORMS))
        .map(|v| v.text().trim().to_string())
}

/// §7.13 / §8.6: a visitor asks for voice (forwarded to moderators), or a moderator
/// answers such a request.
pub async fn voice_request(room: &mut Room, el: &Element, form: &Element, from: &Jid) {
    if form_value(form, "FORM_TYPE").as_deref() != Some(REQUEST) {
        return room
            .error_reply(el, StanzaError::new(Cond::BadRequest))
            .await;
    }
    let Some(me) = room.occupant_of(from) else {
        return room
            .error_reply(
                el,
                StanzaError::new(Cond::NotAcceptable).with_text("you are not in this room"),
            )
            .await;
    };
    if me.role == Role::Moderator {
        // An approval: muc#request_allow=true grants voice to muc#roomnick.
        let allow = matches!(
            form_value(form, "muc#request_allow").as_deref(),
            Some("1" | "true")
        );
        let actor = me.nick.clone();
        if let (true, Some(nick)) = (allow, form_value(form, "muc#roomnick")) {
            let visitor = room
                .occupants
                .get(&nick)
                .is_some_and(|o| o.role == Role::Visitor);
            if visitor {
                if let Some(o) = room.occupants.get_mut(&nick) {
                    o.role = Role::Participant;
                }
                room.announce(&nick, Some(&actor), None).await;
            }
        }
        return;
    }
    if me.role != Role::Visitor {
        return;
    }
    let field = |var: &str, kind: &str, label: &str, v: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("var", var)
            .with_attr("type", kind)
            .with_attr("label", label)
            .with_child(Element::new("value", ns::DATA_FORMS).with_text(v))
    };
    let real = me
        .sessions
        .first()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let f = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::DATA_FORMS).with_text("Voice request"))
        .with_child(field("FORM_TYPE", "hidden", "", REQUEST))
        .with_child(field(
            "muc#role",
            "list-single",
            "Requested role",
            "participant",
        ))
        .with_child(field("muc#jid", "jid-single", "User ID", &real))
        .with_child(field("muc#roomnick", "text-single", "Nickname", &me.nick))
        .with_child(field(
            "muc#request_allow",
            "boolean",
            "Grant voice to this person?",
            "false",
        ));
    let m = Element::new("message", ns::CLIENT)
        .with_attr("from", room.jid.as_str())
        .with_child(f);
    let moderators: Vec<Jid> = room
        .occupants
        .values()
        .filter(|o| o.role == Role::Moderator)
        .flat_map(|o| o.sessions.clone())
        .collect();
    for s in moderators {
        let mut copy = m.clone();
        copy.set_attr("to", s.as_str());
        room.send(copy).await;
    }
}
