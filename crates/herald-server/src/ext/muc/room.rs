//! One room: its state and the task that owns it.
//!
//! Every stanza for a room goes through its task's queue, so the room sees one total order
//! of joins, messages and changes and needs no locks. Work per stanza is proportional to
//! what it produces: a join sends the joiner one presence per occupant and every occupant
//! one presence; a message is one copy per occupant session. Copies to local sessions go
//! straight into their outboxes; only a full outbox makes the room wait (see
//! [`Room::send`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::{ArchiveFilter, ArchivePaging, Direction, NewArchived, RoomAffiliation};
use herald_xml::{Element, Node};
use hmac::{Hmac, Mac};
use tokio::sync::mpsc;

use super::config::*;
use crate::ext::{iq_result, now_micros, parse_fragment, stamp_from_micros, to_stored};
use crate::Server;

/// Bare JIDs → affiliation entries (for JIDs with an affiliation other than none, or a
/// reserved nick).
#[derive(Clone, Debug)]
pub struct AffEntry {
    pub affiliation: Affiliation,
    pub nick: Option<String>,
    pub reason: Option<String>,
}

pub struct Occupant {
    pub nick: String,
    pub real: Jid,
    /// Full JIDs of the user's clients sharing this nick (XEP-0045 §7.2.? multi-session).
    pub sessions: Vec<Jid>,
    pub role: Role,
    /// The client's last presence payload (show, status, caps...), without addressing.
    pub presence: Element,
    pub occupant_id: String,
}

struct HistoryEntry {
    /// The message as broadcast, without `to`.
    msg: Element,
    stamp: i64,
    chars: usize,
}

pub struct Room {
    pub server: Arc<Server>,
    pub jid: Jid,
    pub host: String,
    pub cfg: RoomConfig,
    pub subject: String,
    pub subject_by: String,
    pub secret: String,
    pub affiliations: HashMap<String, AffEntry>,
    pub occupants: HashMap<String, Occupant>,
    /// Full JID → nick.
    pub by_session: HashMap<String, String>,
    history: VecDeque<HistoryEntry>,
    /// Created by a join and not configured yet (§10.1: nobody else may enter).
    pub locked: bool,
    /// The room has a row in storage.
    pub stored: bool,
    pub created_micros: i64,
    /// IQs relayed between occupants: (responder's full JID, relay id) → the request.
    pending_iq: HashMap<(String, String), RelayedIq>,
    /// Makes relay ids unique within the room.
    next_relay_id: u64,
    /// Set when the room is destroyed; the task ends.
    pub destroyed: bool,
    /// What the service reads without asking the task.
    pub info: Arc<std::sync::RwLock<super::RoomInfo>>,
}

/// Relayed IQs awaiting an answer, per room and per requesting account (all its
/// sessions together, so many resources cannot fill the room's share).
const MAX_PENDING_IQ: usize = 1024;
const MAX_PENDING_IQ_PER_ASKER: usize = 32;
/// A relayed IQ not answered in this time is answered `remote-server-timeout` (when the
/// room next needs room for a relay) and forgotten.
const IQ_RELAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// An IQ request relayed from one occupant to another (XEP-0045: IQs to an occupant JID). The
/// room sends it under an id of its own, so two requesters using the same id cannot
/// collide, and restores the requester's id on the answer.
struct RelayedIq {
    asker: Jid,
    id: String,
    /// The responder's nick when asked (the `from` of a timeout error).
    nick: String,
    sent: std::time::Instant,
}

impl Room {
    pub fn new(server: Arc<Server>, jid: Jid, host: String) -> Room {
        let cfg = RoomConfig::defaults(&server.settings.raw.muc);
        let mut secret = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
        Room {
            server,
            jid,
            host,
            cfg,
            subject: String::new(),
            subject_by: String::new(),
            secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
            affiliations: HashMap::new(),
            occupants: HashMap::new(),
            by_session: HashMap::new(),
            history: VecDeque::new(),
            locked: false,
            stored: false,
            created_micros: now_micros(),
            pending_iq: HashMap::new(),
            next_relay_id: 0,
            destroyed: false,
            info: Arc::default(),
        }
    }

    /// Refreshes the service-visible summary.
    pub fn publish(&mut self) {
        let mut i = self.info.write().unwrap_or_else(|p| p.into_inner());
        i.name.clone_from(&self.cfg.name);
        i.public = self.cfg.public;
        i.persistent = self.cfg.persistent;
        i.locked = self.locked;
        i.occupants = self.occupants.len();
    }

    /// A persistent room from storage, with its history reloaded from its archive.
    pub async fn from_store(
        server: Arc<Server>,
        stored: herald_storage::StoredRoom,
        host: String,
    ) -> Option<Room> {
        let jid = Jid::parse(&stored.jid).ok()?;
        let rec = RoomRecord::from_text(&stored.config, &server.settings.raw.muc)?;
        let mut room = Room::new(server.clone(), jid, host);
        room.cfg = rec.config;
        room.subject = rec.subject;
        room.subject_by = rec.subject_by;
        if !rec.secret.is_empty() {
            room.secret = rec.secret;
        }
        room.stored = true;
        room.created_micros = stored.created_micros;
        match server.storage.affiliations(&stored.jid).await {
            Ok(list) => {
                for a in list {
                    if let Some(aff) = Affiliation::parse(&a.affiliation) {
                        room.affiliations.insert(
                            a.jid,
                            AffEntry {
                                affiliation: aff,
                                nick: a.nick,
                                reason: a.reason,
                            },
                        );
                    }
                }
            }
            Err(e) => {
                tracing::error!(room = %stored.jid, error = %e, "cannot load room affiliations");
                return None;
            }
        }
        room.reload_history().await;
        Some(room)
    }

    async fn reload_history(&mut self) {
        if !self.cfg.logging || self.cfg.history_length == 0 {
            return;
        }
        let paging = ArchivePaging {
            from_end: true,
            max: self.cfg.history_length as usize,
            ..ArchivePaging::default()
        };
        let page = match self
            .server
            .storage
            .query_archive(self.jid.as_str(), &ArchiveFilter::default(), &paging)
            .await
        {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(room = %self.jid, error = %e, "cannot reload room history");
                return;
            }
        };
        for item in page.items {
            if let Some(msg) = parse_fragment(&item.stanza) {
                let chars = item.stanza.len();
                self.history.push_back(HistoryEntry {
                    msg,
                    stamp: item.stamp_micros,
                    chars,
                });
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Lookups

    pub fn affiliation(&self, real: &Jid) -> Affiliation {
        if self
            .server
            .settings
            .raw
            .muc
            .admins
            .iter()
            .any(|a| a == real.bare_str())
        {
            return Affiliation::Owner;
        }
        if let Some(a) = self.affiliations.get(real.bare_str()) {
            return a.affiliation;
        }
        // A ban of a whole domain.
        match self.affiliations.get(real.domain()) {
            Some(a) if a.affiliation == Affiliation::Outcast => Affiliation::Outcast,
            _ => Affiliation::None,
        }
    }

    pub fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.cfg.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    pub fn occupant_of(&self, full: &Jid) -> Option<&Occupant> {
        self.by_session
            .get(full.as_str())
            .and_then(|n| self.occupants.get(n))
    }

    pub fn nick_jid(&self, nick: &str) -> Jid {
        self.jid
            .with_resource(nick)
            .unwrap_or_else(|_| self.jid.clone())
    }

    fn occupant_id(&self, real: &Jid) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(real.bare_str().as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
    }

    pub fn owners(&self) -> Vec<String> {
        self.list(Affiliation::Owner)
    }

    pub fn list(&self, aff: Affiliation) -> Vec<String> {
        let mut v: Vec<String> = self
            .affiliations
            .iter()
            .filter(|(_, a)| a.affiliation == aff)
            .map(|(j, _)| j.clone())
            .collect();
        v.sort();
        v
    }

    // ---------------------------------------------------------------------------------
    // Sending

    /// Sends a stanza whose `to` is set. A local session's full queue makes the room wait
    /// for it (up to `c2s.outbox_timeout_secs`, after which that session is dropped as too
    /// slow): waiting keeps each occupant's stanzas in order — a joiner's own presence must
    /// come after everyone else's — at the price of one stuck reader delaying the room for
    /// that long.
    pub async fn send(&self, el: Element) {
        let Some(to) = el.attr("to").and_then(|t| Jid::parse(t).ok()) else {
            return;
        };
        if to.resource().is_some() && self.server.serves(to.domain()) {
            if let Some(s) = self.server.registry.session(&to) {
                if let Err(el) = s.try_send(el) {
                    if let Err(u) = s.send(el, self.server.outbox_timeout()).await {
                        crate::router::reroute_undelivered(&self.server, u.0).await;
                    }
                }
                return;
            }
        }
        crate::router::route(&self.server, el).await
    }

    async fn send_to_all_sessions(&self, o: &Occupant, el: &Element) {
        for s in &o.sessions {
            let mut copy = el.clone();
            copy.set_attr("to", s.as_str());
            self.send(copy).await;
        }
    }

    pub async fn error_reply(&self, el: &Element, err: StanzaError) {
        if el.attr("type") == Some("error") {
            return;
        }
        crate::router::route(&self.server, err.reply_to(el)).await
    }

    /// `<x xmlns='muc#user'><item .../>...</x>` describing `o` for one recipient.
    fn user_x(&self, o: &Occupant, show_jid: bool, statuses: &[u16]) -> Element {
        let aff = self.affiliation(&o.real);
        let mut item = Element::new("item", MUC_USER)
            .with_attr("affiliation", aff.as_str())
            .with_attr("role", o.role.as_str());
        if show_jid {
            if let Some(s) = o.sessions.first() {
                item.set_attr("jid", s.as_str());
            }
        }
        let mut x = Element::new("x", MUC_USER).with_child(item);
        for c in statuses {
            x.push(Element::new("status", MUC_USER).with_attr("code", c.to_string()));
        }
        x
    }

    fn sees_jids(&self, viewer: &Occupant) -> bool {
        self.cfg.whois_anyone || viewer.role == Role::Moderator
    }

    /// `o`'s current presence as seen by `viewer`.
    fn presence_for(&self, o: &Occupant, viewer: &Occupant, statuses: &[u16]) -> Element {
        let mut p = o.presence.clone();
        p.set_attr("from", self.nick_jid(&o.nick).as_str());
        p.push(self.user_x(o, self.sees_jids(viewer), statuses));
        p.push(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.occupant_id.as_str()));
        p
    }

    /// Sends `o`'s presence to every occupant (self-presence with 110 and `self_codes`).
    async fn broadcast_presence(&self, o: &Occupant, codes: &[u16], self_codes: &[u16]) {
        for viewer in self.occupants.values() {
            let is_self = viewer.real.bare_str() == o.real.bare_str() && viewer.nick == o.nick;
            let mut statuses: Vec<u16> = codes.to_vec();
            if is_self {
                statuses.extend_from_slice(self_codes);
                statuses.push(110);
            }
            let p = self.presence_for(o, viewer, &statuses);
            self.send_to_all_sessions(viewer, &p).await;
        }
    }

    /// An occupant leaves (or is removed): `unavailable` to everyone still there and to
    /// the leaver's own sessions.
    async fn broadcast_unavailable(
        &self,
        o: &Occupant,
        codes: &[u16],
        item_extra: impl Fn(&mut Element),
        new_aff: Option<Affiliation>,
        extra: Option<Element>,
    ) {
        let aff = new_aff.unwrap_or_else(|| self.affiliation(&o.real));
        let build = |viewer_sees: bool, is_self: bool| {
            let mut item = Element::new("item", MUC_USER)
                .with_attr("affiliation", aff.as_str())
                .with_attr("role", "none");
            if viewer_sees {
                if let Some(s) = o.sessions.first() {
                    item.set_attr("jid", s.as_str());
                }
            }
            item_extra(&mut item);
            let mut x = Element::new("x", MUC_USER).with_child(item);
            for c in codes {
                x.push(Element::new("status", MUC_USER).with_attr("code", c.to_string()));
            }
            if is_self {
                x.push(Element::new("status", MUC_USER).with_attr("code", "110"));
            }
            if let Some(e) = &extra {
                x.push(e.clone());
            }
            let mut p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", self.nick_jid(&o.nick).as_str())
                .with_child(x);
            p.push(
                Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.occupant_id.as_str()),
            );
            p
        };
        for viewer in self.occupants.values() {
            let p = build(self.sees_jids(viewer), false);
            self.send_to_all_sessions(viewer, &p).await;
        }
        let p = build(true, true);
        self.send_to_all_sessions(o, &p).await;
    }

    /// A groupchat message from the room itself (status changes and the like).
    async fn room_message(&self, codes: &[u16]) {
        let mut x = Element::new("x", MUC_USER);
        for c in codes {
            x.push(Element::new("status", MUC_USER).with_attr("code", c.to_string()));
        }
        let m = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.as_str())
            .with_attr("id", crate::ext::mam::new_stanza_id())
            .with_child(x);
        self.broadcast(&m).await;
    }

    /// One copy of `m` (without `to`) to every occupant session.
    async fn broadcast(&self, m: &Element) {
        for o in self.occupants.values() {
            self.send_to_all_sessions(o, m).await;
        }
    }

    // ---------------------------------------------------------------------------------
    // Persistence

    pub fn record(&self) -> RoomRecord {
        RoomRecord {
            config: self.cfg.clone(),
            subject: self.subject.clone(),
            subject_by: self.subject_by.clone(),
            secret: self.secret.clone(),
        }
    }

    /// Writes the room row (config, subject) when the room is persistent.
    pub async fn save(&mut self) -> Result<(), StanzaError> {
        if !self.cfg.persistent {
            return Ok(());
        }
        let row = herald_storage::StoredRoom {
            jid: self.jid.as_str().to_string(),
            service: self.jid.domain().to_string(),
            config: self.record().to_text(),
            created_micros: self.created_micros,
        };
        self.server
            .storage
            .save_room(&row)
            .await
            .map_err(crate::ext::storage_error)?;
        if !self.stored {
            let list: Vec<RoomAffiliation> = self
                .affiliations
                .iter()
                .map(|(j, a)| RoomAffiliation {
                    jid: j.clone(),
                    affiliation: a.affiliation.as_str().to_string(),
                    nick: a.nick.clone(),
                    reason: a.reason.clone(),
                })
                .collect();
            self.server
                .storage
                .replace_affiliations(self.jid.as_str(), &list)
                .await
                .map_err(crate::ext::storage_error)?;
            self.stored = true;
        }
        Ok(())
    }

    /// Sets an affiliation in memory and, for persistent rooms, in storage (first).
    pub async fn set_affiliation(
        &mut self,
        jid: &str,
        aff: Affiliation,
        nick: Option<String>,
        reason: Option<String>,
    ) -> Result<(), StanzaError> {
        if self.stored {
            self.server
                .storage
                .set_affiliation(
                    self.jid.as_str(),
                    &RoomAffiliation {
                        jid: jid.to_string(),
                        affiliation: aff.as_str().to_string(),
                        nick: nick.clone(),
                        reason: reason.clone(),
                    },
                )
                .await
                .map_err(crate::ext::storage_error)?;
        }
        if aff == Affiliation::None && nick.is_none() {
            self.affiliations.remove(jid);
        } else {
            self.affiliations.insert(
                jid.to_string(),
                AffEntry {
                    affiliation: aff,
                    nick,
                    reason,
                },
            );
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Dispatch

    /// Handles one stanza addressed to the room or one of its occupants.
    pub async fn handle(&mut self, el: Element) {
        let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return;
        };
        let to = el.attr("to").and_then(|t| Jid::parse(t).ok());
        let nick = to.as_ref().and_then(|t| t.resource().map(str::to_string));
        match el.name.as_str() {
            "presence" => self.on_presence(el, from, nick).await,
            "message" => match nick {
                None => self.on_room_message(el, from).await,
                Some(n) => self.on_private_message(el, from, n).await,
            },
            "iq" => match nick {
                None => super::iq::on_room_iq(self, el, from).await,
                Some(n) => self.on_occupant_iq(el, from, n).await,
            },
            _ => {}
        }
    }

    // ---------------------------------------------------------------------------------
    // Presence: join, update, nick change, leave

    async fn on_presence(&mut self, el: Element, from: Jid, nick: Option<String>) {
        match el.attr("type") {
            None => {}
            Some("unavailable") => return self.leave(&from, &[], None).await,
            Some("error") => {
                if self.by_session.contains_key(from.as_str()) {
                    self.leave(&from, &[333], None).await;
                }
                return;
            }
            _ => return,
        }
        let Some(nick) = nick else {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::JidMalformed).with_text("a nickname is required"),
                )
                .await;
        };
        if nick.trim().is_empty() {
            return self
                .error_reply(&el, StanzaError::new(Cond::JidMalformed))
                .await;
        }
        let current = self.by_session.get(from.as_str()).cloned();
        match current {
            Some(cur) if cur == nick => self.presence_update(el, &nick).await,
            Some(cur) => self.change_nick(el, &from, cur, nick).await,
            None => self.join(el, from, nick).await,
        }
    }

    fn client_payload(el: &Element) -> Element {
        let mut p = Element::new("presence", ns::CLIENT);
        for c in el.elements() {
            if c.ns == MUC || c.ns == MUC_USER || c.is("occupant-id", OCCUPANT_ID) {
                continue;
            }
            p.push(c.clone());
        }
        p
    }

    async fn presence_update(&mut self, el: Element, nick: &str) {
        let payload = Self::client_payload(&el);
        let Some(o) = self.occupants.get_mut(nick) else {
            return;
        };
        o.presence = payload;
        let o = &self.occupants[nick];
        self.broadcast_presence(o, &[], &[]).await;
    }

    pub fn may_create(&self, from: &Jid) -> bool {
        let muc = &self.server.settings.raw.muc;
        if muc.admins.iter().any(|a| a == from.bare_str()) {
            return true;
        }
        match muc.create.as_str() {
            "anyone" => true,
            "local" => from.domain() == self.host,
            _ => false,
        }
    }

    /// Is the room new (nobody ever joined, not stored)?
    pub fn is_fresh(&self) -> bool {
        !self.stored && self.occupants.is_empty() && self.affiliations.is_empty()
    }

    async fn join(&mut self, el: Element, from: Jid, nick: String) {
        let muc_x = el.child("x", MUC);
        let mut created = false;
        if self.is_fresh() {
            if !self.may_create(&from) {
                return self
                    .error_reply(
                        &el,
                        StanzaError::new(Cond::NotAllowed).with_text("you may not create rooms"),
                    )
                    .await;
            }
            created = true;
            // §10.1.1: a room made by a MUC-aware client stays locked until configured;
            // an old groupchat-1.0 client gets an instant room.
            self.locked = muc_x.is_some();
            self.affiliations.insert(
                from.bare_str().to_string(),
                AffEntry {
                    affiliation: Affiliation::Owner,
                    nick: None,
                    reason: None,
                },
            );
        }
        let aff = self.affiliation(&from);
        if self.locked && aff != Affiliation::Owner {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::ItemNotFound)
                        .with_text("the room is being created; try again shortly"),
                )
                .await;
        }
        if aff == Affiliation::Outcast {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::Forbidden).with_text("you are banned from this room"),
                )
                .await;
        }
        if self.cfg.members_only && aff < Affiliation::Member {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::RegistrationRequired)
                        .with_text("this room is members-only"),
                )
                .await;
        }
        if self.cfg.password_protected() && !created {
            let given = muc_x
                .and_then(|x| x.child("password", MUC))
                .map(|p| p.text());
            if given.as_deref() != self.cfg.password.as_deref() {
                return self
                    .error_reply(
                        &el,
                        StanzaError::new(Cond::NotAuthorized).with_text("a password is required"),
                    )
                    .await;
            }
        }
        let nick = match herald_core::jid::prepare_resource(&nick) {
            Ok(n) => n.into_owned(),
            Err(_) => {
                return self
                    .error_reply(&el, StanzaError::new(Cond::JidMalformed))
                    .await
            }
        };
        let same_user = match self.occupants.get(&nick) {
            Some(o) if o.real.bare_str() == from.bare_str() => true,
            Some(_) => {
                return self
                    .error_reply(
                        &el,
                        StanzaError::new(Cond::Conflict).with_text("that nickname is in use"),
                    )
                    .await
            }
            None => false,
        };
        if self.nick_reserved_by_other(&nick, &from) {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::Conflict)
                        .with_text("that nickname is registered by someone else"),
                )
                .await;
        }
        let limit = match self.cfg.max_users {
            0 => self.server.settings.raw.muc.max_users,
            n => n.min(self.server.settings.raw.muc.max_users),
        } as usize;
        if !same_user && self.occupants.len() >= limit && aff < Affiliation::Admin {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::ServiceUnavailable).with_text("the room is full"),
                )
                .await;
        }
        // An instant room (old client) that the service makes persistent by default is
        // stored now; a locked one is stored when its owner submits the configuration.
        if created && !self.locked && self.cfg.persistent {
            if let Err(e) = self.save().await {
                return self.error_reply(&el, e).await;
            }
        }
        let history_req = muc_x.and_then(|x| x.child("history", MUC)).cloned();
        let payload = Self::client_payload(&el);
        self.by_session
            .insert(from.as_str().to_string(), nick.clone());
        if same_user {
            // Another client of the same user shares the nick: it gets the room's state;
            // the others already know this occupant.
            let o = self.occupants.get_mut(&nick).expect("checked");
            o.sessions.push(from.clone());
            o.presence = payload;
        } else {
            let occupant_id = self.occupant_id(&from);
            self.occupants.insert(
                nick.clone(),
                Occupant {
                    nick: nick.clone(),
                    real: from.bare(),
                    sessions: vec![from.clone()],
                    role: self.default_role(aff),
                    presence: payload,
                    occupant_id,
                },
            );
        }
        let me = &self.occupants[&nick];
        // 1. Everyone else's presence to the new session.
        for o in self.occupants.values() {
            if o.nick == nick {
                continue;
            }
            let mut p = self.presence_for(o, me, &[]);
            p.set_attr("to", from.as_str());
            self.send(p).await;
        }
        // 2. The joiner's presence: to everyone (self-presence last in line, with codes).
        let mut self_codes = vec![];
        if self.cfg.whois_anyone {
            self_codes.push(100);
        }
        if self.cfg.logging && self.cfg.persistent {
            self_codes.push(170);
        }
        if created {
            self_codes.push(201);
        }
        if same_user {
            let mut codes = self_codes.clone();
            codes.push(110);
            let mut p = self.presence_for(me, me, &codes);
            p.set_attr("to", from.as_str());
            self.send(p).await;
        } else {
            for viewer in self.occupants.values() {
                if viewer.nick == nick {
                    continue;
                }
                let p = self.presence_for(me, viewer, &[]);
                self.send_to_all_sessions(viewer, &p).await;
            }
            let mut codes = self_codes.clone();
            codes.push(110);
            let mut p = self.presence_for(me, me, &codes);
            p.set_attr("to", from.as_str());
            self.send(p).await;
        }
        // 3. History, then 4. the subject (always, even empty: §7.2.15).
        self.send_history(&from, history_req.as_ref()).await;
        let subj_from = if self.subject_by.is_empty() {
            self.jid.clone()
        } else {
            self.nick_jid(&self.subject_by)
        };
        let subject = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", subj_from.as_str())
            .with_attr("to", from.as_str())
            .with_attr("id", crate::ext::mam::new_stanza_id())
            .with_child(Element::new("subject", ns::CLIENT).with_text(self.subject.as_str()));
        self.send(subject).await;
    }

    fn nick_reserved_by_other(&self, nick: &str, from: &Jid) -> bool {
        self.affiliations
            .iter()
            .any(|(j, a)| a.nick.as_deref() == Some(nick) && j != from.bare_str())
    }

    async fn send_history(&self, to: &Jid, req: Option<&Element>) {
        let max_stanzas = req
            .and_then(|h| h.attr("maxstanzas"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
            .min(self.cfg.history_length as usize);
        let max_chars = req
            .and_then(|h| h.attr("maxchars"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let now = now_micros();
        let since = req.and_then(|h| {
            let mut t = None;
            if let Some(s) = h.attr("seconds").and_then(|v| v.parse::<i64>().ok()) {
                t = Some(now - s.saturating_mul(1_000_000));
            }
            if let Some(s) = h.attr("since").and_then(crate::ext::mam::parse_stamp) {
                t = Some(t.map_or(s, |x: i64| x.max(s)));
            }
            t
        });
        if max_stanzas == 0 || max_chars == 0 {
            return;
        }
        let mut chosen = Vec::new();
        let mut chars = 0usize;
        for h in self.history.iter().rev() {
            if chosen.len() >= max_stanzas {
                break;
            }
            if since.is_some_and(|s| h.stamp < s) {
                break;
            }
            if chars + h.chars > max_chars {
                break;
            }
            chars += h.chars;
            chosen.push(h);
        }
        for h in chosen.into_iter().rev() {
            let mut m = h.msg.clone();
            m.set_attr("to", to.as_str());
            m.push(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("stamp", stamp_from_micros(h.stamp)),
            );
            self.send(m).await;
        }
    }

    async fn change_nick(&mut self, el: Element, from: &Jid, old: String, new: String) {
        let new = match herald_core::jid::prepare_resource(&new) {
            Ok(n) => n.into_owned(),
            Err(_) => {
                return self
                    .error_reply(&el, StanzaError::new(Cond::JidMalformed))
                    .await
            }
        };
        if self.occupants.contains_key(&new) || self.nick_reserved_by_other(&new, from) {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::Conflict).with_text("that nickname is in use"),
                )
                .await;
        }
        if self.occupants[&old].sessions.len() > 1 {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::NotAcceptable).with_text(
                        "another client of yours shares this nickname; leave with it first",
                    ),
                )
                .await;
        }
        let payload = Self::client_payload(&el);
        let mut o = self.occupants.remove(&old).expect("occupant");
        let new_c = new.clone();
        self.broadcast_unavailable(
            &o,
            &[303],
            move |item| item.set_attr("nick", new_c.as_str()),
            None,
            None,
        )
        .await;
        o.nick = new.clone();
        o.presence = payload;
        self.by_session
            .insert(from.as_str().to_string(), new.clone());
        self.occupants.insert(new.clone(), o);
        let o = &self.occupants[&new];
        self.broadcast_presence(o, &[], &[]).await;
    }

    /// A session leaves (unavailable presence, an error, or removal by the room).
    pub async fn leave(&mut self, from: &Jid, codes: &[u16], extra: Option<Element>) {
        let Some(nick) = self.by_session.remove(from.as_str()) else {
            return;
        };
        let Some(o) = self.occupants.get_mut(&nick) else {
            return;
        };
        if o.sessions.len() > 1 {
            o.sessions.retain(|s| s != from);
            // Only this client learns it left.
            let mut codes = codes.to_vec();
            codes.push(110);
            let mut p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", self.nick_jid(&nick).as_str())
                .with_attr("to", from.as_str())
                .with_child(self.user_x(&self.occupants[&nick], true, &codes));
            p.children.iter_mut().for_each(|n| {
                if let Node::Element(x) = n {
                    if let Some(item) = x.child_mut("item", MUC_USER) {
                        item.set_attr("role", "none");
                    }
                }
            });
            self.send(p).await;
            return;
        }
        let o = self.occupants.remove(&nick).expect("occupant");
        self.broadcast_unavailable(&o, codes, |_| {}, None, extra)
            .await;
        if self.occupants.is_empty() {
            self.locked = false;
        }
    }

    /// Removes an occupant entirely (kick, ban, members-only), telling everyone why.
    pub async fn remove_occupant(
        &mut self,
        nick: &str,
        codes: &[u16],
        actor: Option<&str>,
        reason: Option<&str>,
        new_aff: Option<Affiliation>,
    ) {
        let Some(o) = self.occupants.remove(nick) else {
            return;
        };
        for s in &o.sessions {
            self.by_session.remove(s.as_str());
        }
        let actor = actor.map(str::to_string);
        let reason = reason.map(str::to_string);
        self.broadcast_unavailable(
            &o,
            codes,
            move |item| {
                if let Some(a) = &actor {
                    item.push(Element::new("actor", MUC_USER).with_attr("nick", a.as_str()));
                }
                if let Some(r) = &reason {
                    item.push(Element::new("reason", MUC_USER).with_text(r.as_str()));
                }
            },
            new_aff,
            None,
        )
        .await;
    }

    /// Re-announces an occupant after a role or affiliation change.
    pub async fn announce(&self, nick: &str, actor: Option<&str>, reason: Option<&str>) {
        let Some(o) = self.occupants.get(nick) else {
            return;
        };
        for viewer in self.occupants.values() {
            let is_self = viewer.nick == o.nick;
            let mut p = self.presence_for(o, viewer, if is_self { &[110] } else { &[] });
            if actor.is_some() || reason.is_some() {
                for n in p.children.iter_mut() {
                    if let Node::Element(x) = n {
                        if x.is("x", MUC_USER) {
                            if let Some(item) = x.child_mut("item", MUC_USER) {
                                if let Some(a) = actor {
                                    item.push(Element::new("actor", MUC_USER).with_attr("nick", a));
                                }
                                if let Some(r) = reason {
                                    item.push(Element::new("reason", MUC_USER).with_text(r));
                                }
                            }
                        }
                    }
                }
            }
            self.send_to_all_sessions(viewer, &p).await;
        }
    }

    // ---------------------------------------------------------------------------------
    // Messages

    async fn on_room_message(&mut self, el: Element, from: Jid) {
        match el.attr("type") {
            Some("groupchat") => self.groupchat(el, from).await,
            Some("error") => {
                if is_technical_error(&el) && self.by_session.contains_key(from.as_str()) {
                    self.leave(&from, &[333], None).await;
                }
            }
            _ => {
                if let Some(x) = el.child("x", MUC_USER) {
                    if x.child("invite", MUC_USER).is_some() {
                        return super::iq::invite(self, &el, &from).await;
                    }
                    if x.child("decline", MUC_USER).is_some() {
                        return super::iq::decline(self, &el, &from).await;
                    }
                }
                if let Some(form) = el.child("x", ns::DATA_FORMS) {
                    return super::iq::voice_request(self, &el, form, &from).await;
                }
                self.error_reply(
                    &el,
                    StanzaError::new(Cond::BadRequest)
                        .with_text("messages to the room must be of type groupchat"),
                )
                .await
            }
        }
    }

    async fn groupchat(&mut self, mut el: Element, from: Jid) {
        let Some(nick) = self.by_session.get(from.as_str()).cloned() else {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::NotAcceptable)
                        .with_text("only occupants may send messages to the room"),
                )
                .await;
        };
        let role = self.occupants[&nick].role;
        if role < Role::Participant {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::Forbidden)
                        .with_text("visitors may not speak in this moderated room"),
                )
                .await;
        }
        let has_body = el.child("body", ns::CLIENT).is_some();
        let subject = el.child("subject", ns::CLIENT).map(|s| s.text());
        if let (Some(subject), false) = (&subject, has_body) {
            if !(role == Role::Moderator || self.cfg.change_subject) {
                return self
                    .error_reply(
                        &el,
                        StanzaError::new(Cond::Forbidden)
                            .with_text("you may not change the subject"),
                    )
                    .await;
            }
            self.subject = subject.clone();
            self.subject_by = nick.clone();
            if let Err(e) = self.save().await {
                return self.error_reply(&el, e).await;
            }
        }
        // Room-assigned ids replace anything the sender claimed (XEP-0359 §5, XEP-0421 §4).
        let by = self.jid.as_str().to_string();
        el.children.retain(|n| match n {
            Node::Element(e) => {
                !(e.is("stanza-id", ns::SID) && e.attr("by") == Some(by.as_str())
                    || e.is("occupant-id", OCCUPANT_ID)
                    || e.is("delay", ns::DELAY))
            }
            Node::Text(_) => true,
        });
        el.remove_attr("to");
        el.set_attr("from", self.nick_jid(&nick).as_str());
        let o = &self.occupants[&nick];
        el.push(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.occupant_id.as_str()));
        let stanza_id = crate::ext::mam::new_stanza_id();
        el.push(
            Element::new("stanza-id", ns::SID)
                .with_attr("id", stanza_id.as_str())
                .with_attr("by", by.as_str()),
        );
        let stamp = now_micros();
        if has_body {
            if self.cfg.logging && self.cfg.persistent && !no_store(&el) {
                let stored = to_stored(&el);
                let rec = NewArchived {
                    stanza_id: &stanza_id,
                    with_bare: self.jid.as_str(),
                    with_resource: &nick,
                    stamp_micros: stamp,
                    direction: Direction::In,
                    stanza: &stored,
                };
                // Durable before anyone sees it: a room that cannot archive refuses.
                if let Err(e) = self
                    .server
                    .storage
                    .append_archive(self.jid.as_str(), &rec)
                    .await
                {
                    let mut orig = el.clone();
                    orig.set_attr("from", from.as_str());
                    orig.set_attr("to", self.jid.as_str());
                    return self.error_reply(&orig, crate::ext::storage_error(e)).await;
                }
            }
            if self.cfg.history_length > 0 {
                let chars = to_stored(&el).len();
                self.history.push_back(HistoryEntry {
                    msg: el.clone(),
                    stamp,
                    chars,
                });
                while self.history.len() > self.cfg.history_length as usize {
                    self.history.pop_front();
                }
            }
        }
        self.broadcast(&el).await;
    }

    /// XEP-0425: drops a message from the join history (the archive keeps a tombstone).
    pub fn forget_history(&mut self, stanza_id: &str) -> Option<Element> {
        let i = self.history.iter().position(|h| {
            h.msg.child("stanza-id", ns::SID).and_then(|s| s.attr("id")) == Some(stanza_id)
        })?;
        self.history.remove(i).map(|h| h.msg)
    }

    pub async fn broadcast_from_room(&self, m: &Element) {
        self.broadcast(m).await
    }

    pub async fn status_message(&self, codes: &[u16]) {
        self.room_message(codes).await
    }

    async fn on_private_message(&mut self, mut el: Element, from: Jid, to_nick: String) {
        if el.attr("type") == Some("error") {
            if is_technical_error(&el) && self.by_session.contains_key(from.as_str()) {
                self.leave(&from, &[333], None).await;
            }
            return;
        }
        let Some(nick) = self.by_session.get(from.as_str()).cloned() else {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::NotAcceptable)
                        .with_text("only occupants may send private messages"),
                )
                .await;
        };
        if el.attr("type") == Some("groupchat") {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::BadRequest)
                        .with_text("private messages may not be of type groupchat"),
                )
                .await;
        }
        if !self.cfg.allow_pm.allows(self.occupants[&nick].role) {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::Forbidden)
                        .with_text("private messages are not allowed in this room"),
                )
                .await;
        }
        let Some(target) = self.occupants.get(&to_nick) else {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::ItemNotFound).with_text("no such occupant"),
                )
                .await;
        };
        el.set_attr("from", self.nick_jid(&nick).as_str());
        if el.child("x", MUC_USER).is_none() {
            el.push(Element::new("x", MUC_USER));
        }
        el.push(
            Element::new("occupant-id", OCCUPANT_ID)
                .with_attr("id", self.occupants[&nick].occupant_id.as_str()),
        );
        self.send_to_all_sessions(target, &el).await;
    }

    // ---------------------------------------------------------------------------------
    // IQs to occupants

    async fn on_occupant_iq(&mut self, mut el: Element, from: Jid, nick: String) {
        let kind = el.attr("type").unwrap_or("").to_string();
        if kind == "result" || kind == "error" {
            // An answer to a relayed request: back to whoever asked.
            let id = el.attr("id").unwrap_or("").to_string();
            let key = (from.as_str().to_string(), id);
            let Some(asked) = self.pending_iq.remove(&key) else {
                return;
            };
            // From the occupant JID the request was sent to, even if that occupant has
            // since changed nick or left (a bounce for a departed session comes this way).
            el.set_attr("from", self.nick_jid(&asked.nick).as_str());
            el.set_attr("to", asked.asker.as_str());
            el.set_attr("id", asked.id.as_str());
            return self.send(el).await;
        }
        let Some(my_nick) = self.by_session.get(from.as_str()).cloned() else {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::NotAcceptable).with_text("you are not in this room"),
                )
                .await;
        };
        // XEP-0410: a ping to one's own occupant JID is answered by the room.
        if my_nick == nick && el.elements().any(|c| c.is("ping", ns::PING)) {
            let mut reply = iq_result(&el, None);
            reply.set_attr("from", self.nick_jid(&nick).as_str());
            return self.send(reply).await;
        }
        // vCards belong to the account, not to one client (XEP-0054 §3.2 via XEP-0045).
        let dest = match self.occupants.get(&nick) {
            None => {
                return self
                    .error_reply(
                        &el,
                        StanzaError::new(Cond::ItemNotFound).with_text("no such occupant"),
                    )
                    .await
            }
            Some(t) if el.elements().any(|c| c.is("vCard", ns::VCARD)) => t.real.clone(),
            Some(t) => match t.sessions.first() {
                Some(s) => s.clone(),
                None => return,
            },
        };
        let at_limit = |p: &HashMap<(String, String), RelayedIq>| {
            p.len() >= MAX_PENDING_IQ
                || p.values()
                    .filter(|r| r.asker.bare_str() == from.bare_str())
                    .count()
                    >= MAX_PENDING_IQ_PER_ASKER
        };
        if at_limit(&self.pending_iq) {
            self.expire_relayed_iqs().await;
        }
        if at_limit(&self.pending_iq) {
            return self
                .error_reply(
                    &el,
                    StanzaError::new(Cond::ResourceConstraint)
                        .with_text("too many requests awaiting an answer"),
                )
                .await;
        }
        self.next_relay_id += 1;
        let relay_id = format!("muc-relay-{}", self.next_relay_id);
        let asked = RelayedIq {
            asker: from,
            id: el.attr("id").unwrap_or("").to_string(),
            nick,
            sent: std::time::Instant::now(),
        };
        self.pending_iq
            .insert((dest.as_str().to_string(), relay_id.clone()), asked);
        el.set_attr("from", self.nick_jid(&my_nick).as_str());
        el.set_attr("to", dest.as_str());
        el.set_attr("id", relay_id.as_str());
        self.send(el).await;
    }

    /// Forgets relayed IQs unanswered for `IQ_RELAY_TIMEOUT`, telling each requester.
    async fn expire_relayed_iqs(&mut self) {
        let now = std::time::Instant::now();
        let expired: Vec<(String, String)> = self
            .pending_iq
            .iter()
            .filter(|(_, r)| now.duration_since(r.sent) >= IQ_RELAY_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let Some(r) = self.pending_iq.remove(&key) else {
                continue;
            };
            // The request as the requester sent it, to answer it with an error.
            let request = Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", r.id.as_str())
                .with_attr("from", r.asker.as_str())
                .with_attr("to", self.nick_jid(&r.nick).as_str());
            let err = StanzaError::new(Cond::RemoteServerTimeout)
                .with_text("the occupant did not answer");
            self.error_reply(&request, err).await;
        }
    }
}

/// Errors that mean "this client is gone" (a bounce from its server), not a complaint about
/// one stanza.
fn is_technical_error(el: &Element) -> bool {
    el.child("error", ns::CLIENT)
        .map(|e| {
            e.elements().any(|c| {
                c.ns == ns::STANZAS
                    && matches!(
                        c.name.as_str(),
                        "service-unavailable"
                            | "recipient-unavailable"
                            | "remote-server-not-found"
                            | "remote-server-timeout"
                            | "gone"
                            | "item-not-found"
                    )
            })
        })
        .unwrap_or(false)
}

fn no_store(el: &Element) -> bool {
    el.child("no-store", ns::HINTS).is_some() || el.child("no-permanent-store", ns::HINTS).is_some()
}

/// The room's task: handles stanzas in order until the room is destroyed or, for a
/// temporary room, its last occupant leaves.
pub async fn run(mut room: Room, mut rx: mpsc::Receiver<Element>, me: mpsc::Sender<Element>) {
    while let Some(el) = rx.recv().await {
        room.handle(el).await;
        room.publish();
        let empty_temp = room.occupants.is_empty() && !room.cfg.persistent;
        if room.destroyed || empty_temp {
            let key = room.jid.as_str().to_string();
            room.server
                .muc
                .rooms
                .remove_if(&key, |_, h| h.tx.same_channel(&me));
            if room.stored && !room.destroyed && !room.cfg.persistent {
                let _ = room.server.storage.delete_room(&key).await;
            }
            // Whatever is still queued goes to the service again (a new room, or an
            // item-not-found for a destroyed one).
            rx.close();
            while let Ok(el) = rx.try_recv() {
                let server = room.server.clone();
                let host = room.host.clone();
                tokio::spawn(async move { super::reroute(&server, el, &host).await });
            }
            return;
        }
    }
}
