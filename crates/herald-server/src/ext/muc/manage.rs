//! Room administration from the command line (`herald room ...`): persistent rooms are
//! created, changed, listed and destroyed in storage. A running server picks up a room
//! created here on its first stanza; changes to a room that is already running take
//! effect at the next restart (the room's own task owns its live state).

use herald_core::Jid;
use herald_storage::{RoomAffiliation, Storage, StoredRoom};

use super::config::{Affiliation, RoomConfig, RoomRecord};
use crate::config::{ServiceKind, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0:?} is not a room JID (name@conference.example.org)")]
    BadRoom(String),
    #[error("{0} is not a chat service of this server (muc.domain)")]
    NotMuc(String),
    #[error("{0:?} is not a valid JID")]
    BadJid(String),
    #[error("{0:?} is not an affiliation (owner, admin, member, outcast, none)")]
    BadAffiliation(String),
    #[error("room {0} already exists")]
    Exists(String),
    #[error("no room {0}")]
    NoRoom(String),
    #[error("a room needs at least one owner")]
    NoOwner,
    #[error("stored room {0} is unreadable")]
    Corrupt(String),
    #[error("storage: {0}")]
    Storage(#[from] herald_storage::StorageError),
}

/// A room's JID, checked to belong to one of the server's MUC services.
pub fn room_jid(settings: &Settings, s: &str) -> Result<Jid, ManageError> {
    let j = Jid::parse(s)
        .ok()
        .filter(|j| j.node().is_some() && j.resource().is_none())
        .ok_or_else(|| ManageError::BadRoom(s.to_string()))?;
    match settings.service(j.domain()) {
        Some(svc) if svc.kind == ServiceKind::Muc => Ok(j),
        _ => Err(ManageError::NotMuc(j.domain().to_string())),
    }
}

/// The MUC service domains of a served domain (or the service itself).
pub fn services_for(settings: &Settings, domain: &str) -> Result<Vec<String>, ManageError> {
    if let Some(s) = settings.service(domain) {
        if s.kind == ServiceKind::Muc {
            return Ok(vec![s.domain.clone()]);
        }
    }
    let v: Vec<String> = settings
        .services_of(domain)
        .filter(|s| s.kind == ServiceKind::Muc)
        .map(|s| s.domain.clone())
        .collect();
    if v.is_empty() {
        return Err(ManageError::NotMuc(domain.to_string()));
    }
    Ok(v)
}

/// What `create` sets besides the owners.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub name: Option<String>,
    pub description: Option<String>,
    pub members_only: bool,
    pub hidden: bool,
    pub password: Option<String>,
}

fn bare(s: &str) -> Result<String, ManageError> {
    Jid::parse(s)
        .map(|j| j.bare_str().to_string())
        .map_err(|_| ManageError::BadJid(s.to_string()))
}

pub async fn create(
    store: &dyn Storage,
    settings: &Settings,
    room: &Jid,
    owners: &[String],
    opts: &CreateOptions,
) -> Result<(), ManageError> {
    if owners.is_empty() {
        return Err(ManageError::NoOwner);
    }
    let owners: Vec<String> = owners.iter().map(|o| bare(o)).collect::<Result<_, _>>()?;
    if store.load_room(room.as_str()).await?.is_some() {
        return Err(ManageError::Exists(room.to_string()));
    }
    let mut cfg = RoomConfig::defaults(&settings.raw.muc);
    cfg.persistent = true;
    cfg.public = !opts.hidden;
    cfg.members_only = opts.members_only;
    cfg.name = opts.name.clone().unwrap_or_default();
    cfg.description = opts.description.clone().unwrap_or_default();
    cfg.password = opts.password.clone().filter(|p| !p.is_empty());
    let mut secret = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
    let rec = RoomRecord {
        config: cfg,
        subject: String::new(),
        subject_by: String::new(),
        secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
    };
    store
        .save_room(&StoredRoom {
            jid: room.as_str().to_string(),
            service: room.domain().to_string(),
            config: rec.to_text(),
            created_micros: crate::ext::now_micros(),
        })
        .await?;
    let list: Vec<RoomAffiliation> = owners
        .into_iter()
        .map(|jid| RoomAffiliation {
            jid,
            affiliation: "owner".into(),
            nick: None,
            reason: None,
        })
        .collect();
    store.replace_affiliations(room.as_str(), &list).await?;
    Ok(())
}

pub async fn destroy(store: &dyn Storage, room: &Jid) -> Result<(), ManageError> {
    if !store.delete_room(room.as_str()).await? {
        return Err(ManageError::NoRoom(room.to_string()));
    }
    Ok(())
}

/// Sets one affiliation of a stored room; the last owner cannot be removed.
pub async fn affiliate(
    store: &dyn Storage,
    room: &Jid,
    jid: &str,
    affiliation: &str,
) -> Result<(), ManageError> {
    let aff = Affiliation::parse(affiliation)
        .ok_or_else(|| ManageError::BadAffiliation(affiliation.to_string()))?;
    let jid = bare(jid)?;
    if store.load_room(room.as_str()).await?.is_none() {
        return Err(ManageError::NoRoom(room.to_string()));
    }
    let current = store.affiliations(room.as_str()).await?;
    let other_owners = current
        .iter()
        .filter(|a| a.affiliation == "owner" && a.jid != jid)
        .count();
    if aff != Affiliation::Owner && other_owners == 0 {
        return Err(ManageError::NoOwner);
    }
    let nick = current
        .iter()
        .find(|a| a.jid == jid)
        .and_then(|a| a.nick.clone());
    store
        .set_affiliation(
            room.as_str(),
            &RoomAffiliation {
                jid,
                affiliation: aff.as_str().to_string(),
                nick: if aff >= Affiliation::Member {
                    nick
                } else {
                    None
                },
                reason: None,
            },
        )
        .await?;
    Ok(())
}

/// A stored room for display.
pub struct RoomView {
    pub jid: String,
    pub record: RoomRecord,
    pub created_micros: i64,
    pub affiliations: Vec<RoomAffiliation>,
}

pub async fn show(
    store: &dyn Storage,
    settings: &Settings,
    room: &Jid,
) -> Result<RoomView, ManageError> {
    let r = store
        .load_room(room.as_str())
        .await?
        .ok_or_else(|| ManageError::NoRoom(room.to_string()))?;
    let record = RoomRecord::from_text(&r.config, &settings.raw.muc)
        .ok_or_else(|| ManageError::Corrupt(room.to_string()))?;
    Ok(RoomView {
        jid: r.jid,
        record,
        created_micros: r.created_micros,
        affiliations: store.affiliations(room.as_str()).await?,
    })
}

pub async fn list(
    store: &dyn Storage,
    settings: &Settings,
    domain: &str,
) -> Result<Vec<RoomView>, ManageError> {
    let mut out = Vec::new();
    for svc in services_for(settings, domain)? {
        for r in store.load_rooms(&svc).await? {
            let Some(record) = RoomRecord::from_text(&r.config, &settings.raw.muc) else {
                return Err(ManageError::Corrupt(r.jid));
            };
            let affiliations = store.affiliations(&r.jid).await?;
            out.push(RoomView {
                jid: r.jid,
                record,
                created_micros: r.created_micros,
                affiliations,
            });
        }
    }
    Ok(out)
}
