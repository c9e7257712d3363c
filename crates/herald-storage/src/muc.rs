//! XEP-0045 multi-user chat: persistent rooms and room affiliations, the contract and both
//! backends' implementations.
//!
//! The store keeps rooms and affiliations independently: affiliations are keyed by the
//! room's bare JID and need no room row (the MUC module may persist the affiliations of an
//! ad-hoc room before, or without, its configuration). Room configuration and subject are
//! opaque text; the store never parses them, nor checks affiliation names beyond treating
//! `"none"` as a deletion.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{QueryBuilder, Sqlite};

use crate::postgres::PostgresStore;
use crate::sqlite::SqliteStore;
use crate::{map_err, Result};

/// A persistent room: its configuration and subject as opaque text the MUC module
/// serializes (the store never parses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    /// Bare room JID, `room@conference.example.org`.
    pub jid: String,
    /// The service domain, `conference.example.org`.
    pub service: String,
    pub config: String,
    /// Microseconds since the Unix epoch when the room was created.
    pub created_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAffiliation {
    /// Bare (or domain) JID the affiliation is for.
    pub jid: String,
    /// "owner", "admin", "member" or "outcast" (never "none": that is a deletion).
    pub affiliation: String,
    /// Reserved nickname (XEP-0045 §7.10 registration), if any.
    pub nick: Option<String>,
    pub reason: Option<String>,
}

/// Persistent XEP-0045 rooms and their affiliation lists.
#[async_trait]
pub trait MucStore: Send + Sync {
    /// Creates or replaces a room's row (config text). Idempotent.
    async fn save_room(&self, room: &StoredRoom) -> Result<()>;
    /// Every stored room of a service domain, sorted by jid.
    async fn load_rooms(&self, service: &str) -> Result<Vec<StoredRoom>>;
    /// One room.
    async fn load_room(&self, jid: &str) -> Result<Option<StoredRoom>>;
    /// Deletes a room with its affiliations (one transaction). Ok(false) when absent.
    ///
    /// Affiliations stored under `jid` are removed even when there is no room row.
    async fn delete_room(&self, jid: &str) -> Result<bool>;
    /// Sets one JID's affiliation; "none" removes it. The room row need not exist
    /// (ad-hoc rooms keep affiliations in memory only, but the store must not care).
    async fn set_affiliation(&self, room: &str, a: &RoomAffiliation) -> Result<()>;
    /// Replaces the whole affiliation list of a room atomically (used when a temporary room becomes persistent).
    ///
    /// When a JID appears more than once the last entry wins; entries whose affiliation is
    /// "none" are not stored.
    async fn replace_affiliations(&self, room: &str, list: &[RoomAffiliation]) -> Result<()>;
    /// All affiliations of a room, sorted by jid.
    async fn affiliations(&self, room: &str) -> Result<Vec<RoomAffiliation>>;
}

const NONE: &str = "none";
/// Affiliation rows per INSERT on SQLite (5 parameters each; SQLite allows 32766).
const CHUNK: usize = 500;
/// Takes the per-room affiliation lock until the transaction ends (PostgreSQL): two
/// concurrent `replace_affiliations` must not merge their lists.
const LOCK_ROOM: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 45))";

type RoomRow = (String, String, String, i64);
type AffiliationRow = (String, String, Option<String>, Option<String>);

fn room_from((jid, service, config, created_micros): RoomRow) -> StoredRoom {
    StoredRoom {
        jid,
        service,
        config,
        created_micros,
    }
}

fn affiliation_from((jid, affiliation, nick, reason): AffiliationRow) -> RoomAffiliation {
    RoomAffiliation {
        jid,
        affiliation,
        nick,
        reason,
    }
}

/// The rows a list stands for: one per JID (the last entry wins), "none" dropped.
fn effective(list: &[RoomAffiliation]) -> Vec<&RoomAffiliation> {
    let mut by_jid = BTreeMap::new();
    for a in list {
        by_jid.insert(a.jid.as_str(), a);
    }
    by_jid
        .into_values()
        .filter(|a| a.affiliation != NONE)
        .collect()
}

#[async_trait]
impl MucStore for SqliteStore {
    async fn save_room(&self, room: &StoredRoom) -> Result<()> {
        sqlx::query(
            "INSERT INTO muc_rooms (jid, service, config, created_micros) VALUES (?, ?, ?, ?) \
             ON CONFLICT (jid) DO UPDATE SET service = excluded.service, \
               config = excluded.config, created_micros = excluded.created_micros",
        )
        .bind(&room.jid)
        .bind(&room.service)
        .bind(&room.config)
        .bind(room.created_micros)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn load_rooms(&self, service: &str) -> Result<Vec<StoredRoom>> {
        let rows: Vec<RoomRow> = sqlx::query_as(
            "SELECT jid, service, config, created_micros FROM muc_rooms \
             WHERE service = ? ORDER BY jid",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(room_from).collect())
    }

    async fn load_room(&self, jid: &str) -> Result<Option<StoredRoom>> {
        let row: Option<RoomRow> = sqlx::query_as(
            "SELECT jid, service, config, created_micros FROM muc_rooms WHERE jid = ?",
        )
        .bind(jid)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.map(room_from))
    }

    async fn delete_room(&self, jid: &str) -> Result<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = ?")
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let existed = sqlx::query("DELETE FROM muc_rooms WHERE jid = ?")
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            > 0;
        tx.commit().await.map_err(map_err)?;
        Ok(existed)
    }

    async fn set_affiliation(&self, room: &str, a: &RoomAffiliation) -> Result<()> {
        let q = if a.affiliation == NONE {
            sqlx::query("DELETE FROM muc_affiliations WHERE room = ? AND jid = ?")
                .bind(room)
                .bind(&a.jid)
        } else {
            sqlx::query(
                "INSERT INTO muc_affiliations (room, jid, affiliation, nick, reason) \
                 VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (room, jid) DO UPDATE SET affiliation = excluded.affiliation, \
                   nick = excluded.nick, reason = excluded.reason",
            )
            .bind(room)
            .bind(&a.jid)
            .bind(&a.affiliation)
            .bind(&a.nick)
            .bind(&a.reason)
        };
        q.execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn replace_affiliations(&self, room: &str, list: &[RoomAffiliation]) -> Result<()> {
        let rows = effective(list);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = ?")
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for chunk in rows.chunks(CHUNK) {
            let mut qb: QueryBuilder<'_, Sqlite> = QueryBuilder::new(
                "INSERT INTO muc_affiliations (room, jid, affiliation, nick, reason) ",
            );
            qb.push_values(chunk, |mut b, a| {
                b.push_bind(room)
                    .push_bind(a.jid.as_str())
                    .push_bind(a.affiliation.as_str())
                    .push_bind(a.nick.as_deref())
                    .push_bind(a.reason.as_deref());
            });
            qb.build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn affiliations(&self, room: &str) -> Result<Vec<RoomAffiliation>> {
        let rows: Vec<AffiliationRow> = sqlx::query_as(
            "SELECT jid, affiliation, nick, reason FROM muc_affiliations \
             WHERE room = ? ORDER BY jid",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(affiliation_from).collect())
    }
}

#[async_trait]
impl MucStore for PostgresStore {
    async fn save_room(&self, room: &StoredRoom) -> Result<()> {
        sqlx::query(
            "INSERT INTO muc_rooms (jid, service, config, created_micros) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (jid) DO UPDATE SET service = EXCLUDED.service, \
               config = EXCLUDED.config, created_micros = EXCLUDED.created_micros",
        )
        .bind(&room.jid)
        .bind(&room.service)
        .bind(&room.config)
        .bind(room.created_micros)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn load_rooms(&self, service: &str) -> Result<Vec<StoredRoom>> {
        let rows: Vec<RoomRow> = sqlx::query_as(
            "SELECT jid, service, config, created_micros FROM muc_rooms \
             WHERE service = $1 ORDER BY jid",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(room_from).collect())
    }

    async fn load_room(&self, jid: &str) -> Result<Option<StoredRoom>> {
        let row: Option<RoomRow> = sqlx::query_as(
            "SELECT jid, service, config, created_micros FROM muc_rooms WHERE jid = $1",
        )
        .bind(jid)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.map(room_from))
    }

    async fn delete_room(&self, jid: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Waits for an affiliation replacement in flight for this room, then sees its rows.
        sqlx::query(LOCK_ROOM)
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1")
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let existed = sqlx::query("DELETE FROM muc_rooms WHERE jid = $1")
            .bind(jid)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            > 0;
        tx.commit().await.map_err(map_err)?;
        Ok(existed)
    }

    async fn set_affiliation(&self, room: &str, a: &RoomAffiliation) -> Result<()> {
        let q = if a.affiliation == NONE {
            sqlx::query("DELETE FROM muc_affiliations WHERE room = $1 AND jid = $2")
                .bind(room)
                .bind(&a.jid)
        } else {
            sqlx::query(
                "INSERT INTO muc_affiliations (room, jid, affiliation, nick, reason) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (room, jid) DO UPDATE SET affiliation = EXCLUDED.affiliation, \
                   nick = EXCLUDED.nick, reason = EXCLUDED.reason",
            )
            .bind(room)
            .bind(&a.jid)
            .bind(&a.affiliation)
            .bind(&a.nick)
            .bind(&a.reason)
        };
        q.execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn replace_affiliations(&self, room: &str, list: &[RoomAffiliation]) -> Result<()> {
        let rows = effective(list);
        let jids: Vec<&str> = rows.iter().map(|a| a.jid.as_str()).collect();
        let affiliations: Vec<&str> = rows.iter().map(|a| a.affiliation.as_str()).collect();
        let nicks: Vec<Option<&str>> = rows.iter().map(|a| a.nick.as_deref()).collect();
        let reasons: Vec<Option<&str>> = rows.iter().map(|a| a.reason.as_deref()).collect();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(LOCK_ROOM)
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if !rows.is_empty() {
            // ON CONFLICT: a concurrent set_affiliation may have committed a row after the
            // DELETE's snapshot; the list then overwrites it, as if it had come first.
            sqlx::query(
                "INSERT INTO muc_affiliations (room, jid, affiliation, nick, reason) \
                 SELECT $1, a.* FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) AS a \
                 ON CONFLICT (room, jid) DO UPDATE SET affiliation = EXCLUDED.affiliation, \
                   nick = EXCLUDED.nick, reason = EXCLUDED.reason",
            )
            .bind(room)
            .bind(&jids)
            .bind(&affiliations)
            .bind(&nicks)
            .bind(&reasons)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn affiliations(&self, room: &str) -> Result<Vec<RoomAffiliation>> {
        let rows: Vec<AffiliationRow> = sqlx::query_as(
            "SELECT jid, affiliation, nick, reason FROM muc_affiliations \
             WHERE room = $1 ORDER BY jid",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(affiliation_from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aff(jid: &str, affiliation: &str) -> RoomAffiliation {
        RoomAffiliation {
            jid: jid.into(),
            affiliation: affiliation.into(),
            nick: None,
            reason: None,
        }
    }

    #[test]
    fn effective_last_wins_and_drops_none() {
        let list = [
            aff("b@x", "member"),
            aff("a@x", "owner"),
            aff("b@x", "admin"),
            aff("c@x", "member"),
            aff("c@x", "none"),
        ];
        let got: Vec<_> = effective(&list).into_iter().cloned().collect();
        assert_eq!(got, vec![aff("a@x", "owner"), aff("b@x", "admin")]);
    }
}
