-- Herald storage schema, PostgreSQL flavour. Keep in step with ../sqlite/0001_initial.sql.
-- Text keys use COLLATE "C" so that ORDER BY is plain code-point order (identical to SQLite
-- and to Rust's str ordering) whatever the cluster's locale, and so the indexes serve it.

CREATE TABLE accounts (
    domain     TEXT COLLATE "C" NOT NULL,
    username   TEXT COLLATE "C" NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, username)
);

CREATE TABLE credentials (
    domain     TEXT COLLATE "C" NOT NULL,
    username   TEXT COLLATE "C" NOT NULL,
    position   INTEGER NOT NULL,
    mechanism  TEXT NOT NULL,
    salt       BYTEA NOT NULL,
    iterations BIGINT NOT NULL,
    stored_key BYTEA NOT NULL,
    server_key BYTEA NOT NULL,
    PRIMARY KEY (domain, username, mechanism),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE TABLE roster_versions (
    owner   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL
);

CREATE TABLE roster_items (
    owner        TEXT COLLATE "C" NOT NULL,
    jid          TEXT COLLATE "C" NOT NULL,
    name         TEXT,
    subscription TEXT NOT NULL,
    ask          BOOLEAN NOT NULL,
    approved     BOOLEAN NOT NULL,
    groups       TEXT[] NOT NULL,
    PRIMARY KEY (owner, jid)
);

CREATE TABLE roster_pending_in (
    seq      BIGSERIAL PRIMARY KEY,
    owner    TEXT COLLATE "C" NOT NULL,
    from_jid TEXT COLLATE "C" NOT NULL,
    stanza   TEXT NOT NULL,
    UNIQUE (owner, from_jid)
);
CREATE INDEX roster_pending_in_owner_seq ON roster_pending_in (owner, seq);

CREATE TABLE offline_messages (
    id           BIGSERIAL PRIMARY KEY,
    owner        TEXT COLLATE "C" NOT NULL,
    stanza       TEXT NOT NULL,
    stamp_micros BIGINT NOT NULL
);
CREATE INDEX offline_messages_owner_id ON offline_messages (owner, id);

-- Per-owner message count, maintained in the same statement as every insert/delete of
-- offline_messages. Its row lock is what makes the quota check-and-insert atomic.
CREATE TABLE offline_counts (
    owner TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    n     BIGINT NOT NULL CHECK (n >= 0)
);

CREATE TABLE private_data (
    owner TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE TABLE blocklist (
    owner TEXT COLLATE "C" NOT NULL,
    jid   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, jid)
);

CREATE TABLE last_activity (
    owner      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    stamp_secs BIGINT NOT NULL,
    status     TEXT NOT NULL
);
