-- XEP-0045 persistent multi-user chat rooms and their affiliations. Keep in step with
-- ../postgres/0003_muc.sql.
--
-- `config` is opaque text serialized by the MUC module. Affiliations are keyed by room JID
-- without a foreign key: ad-hoc (temporary) rooms may keep affiliations with no room row.

CREATE TABLE muc_rooms (
    jid            TEXT NOT NULL PRIMARY KEY,
    service        TEXT NOT NULL,
    config         TEXT NOT NULL,
    created_micros INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX muc_rooms_service_jid ON muc_rooms (service, jid);

CREATE TABLE muc_affiliations (
    room        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    nick        TEXT,
    reason      TEXT,
    PRIMARY KEY (room, jid)
) WITHOUT ROWID;
