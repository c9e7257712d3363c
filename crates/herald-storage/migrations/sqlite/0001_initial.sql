-- Herald storage schema, SQLite flavour. Keep in step with ../postgres/0001_initial.sql.
-- Every per-user table is keyed by `owner` (normalized bare JID) first, so that each lookup
-- and the cascade in delete_account are index range scans.

CREATE TABLE accounts (
    domain     TEXT NOT NULL,
    username   TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch()),
    PRIMARY KEY (domain, username)
) WITHOUT ROWID;

CREATE TABLE credentials (
    domain     TEXT NOT NULL,
    username   TEXT NOT NULL,
    position   INTEGER NOT NULL,
    mechanism  TEXT NOT NULL,
    salt       BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    PRIMARY KEY (domain, username, mechanism),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE roster_versions (
    owner   TEXT NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;

-- `groups` holds the group names as length-prefixed UTF-8: "<byte len>:<name>" repeated.
CREATE TABLE roster_items (
    owner        TEXT NOT NULL,
    jid          TEXT NOT NULL,
    name         TEXT,
    subscription TEXT NOT NULL,
    ask          INTEGER NOT NULL,
    approved     INTEGER NOT NULL,
    groups       TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
) WITHOUT ROWID;

-- AUTOINCREMENT: ids are never reused, so `seq` is a true arrival order.
CREATE TABLE roster_pending_in (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    owner    TEXT NOT NULL,
    from_jid TEXT NOT NULL,
    stanza   TEXT NOT NULL,
    UNIQUE (owner, from_jid)
);
CREATE INDEX roster_pending_in_owner_seq ON roster_pending_in (owner, seq);

-- AUTOINCREMENT: an id acknowledged by delete_offline(up_to_id) must never be handed out again.
CREATE TABLE offline_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    owner        TEXT NOT NULL,
    stanza       TEXT NOT NULL,
    stamp_micros INTEGER NOT NULL
);
CREATE INDEX offline_messages_owner_id ON offline_messages (owner, id);

CREATE TABLE private_data (
    owner TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;

CREATE TABLE blocklist (
    owner TEXT NOT NULL,
    jid   TEXT NOT NULL,
    PRIMARY KEY (owner, jid)
) WITHOUT ROWID;

CREATE TABLE last_activity (
    owner      TEXT NOT NULL PRIMARY KEY,
    stamp_secs INTEGER NOT NULL,
    status     TEXT NOT NULL
) WITHOUT ROWID;
