-- XEP-0313 message archive (1:1 chats) and XEP-0441 preferences. Keep in step with
-- ../sqlite/0002_archive.sql.
--
-- `id` orders an owner's archive (keyset paging); `stanza_id` is the random public id.
-- Appends for one owner are serialized (advisory lock), so ids commit in order and
-- `stamp_micros` is non-decreasing in `id` order per owner: time bounds translate into id
-- bounds through `archive_owner_stamp`.

CREATE TABLE archive (
    id            BIGSERIAL PRIMARY KEY,
    owner         TEXT COLLATE "C" NOT NULL,
    stanza_id     TEXT COLLATE "C" NOT NULL,
    with_bare     TEXT COLLATE "C" NOT NULL,
    with_resource TEXT COLLATE "C" NOT NULL,
    stamp_micros  BIGINT NOT NULL,
    direction     SMALLINT NOT NULL,
    stanza        TEXT NOT NULL
);
CREATE UNIQUE INDEX archive_owner_stanza_id ON archive (owner, stanza_id);
CREATE INDEX archive_owner_id ON archive (owner, id);
CREATE INDEX archive_owner_with_id ON archive (owner, with_bare, id);
CREATE INDEX archive_owner_stamp ON archive (owner, stamp_micros, id);

CREATE TABLE archive_prefs (
    owner        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    default_mode TEXT NOT NULL
);

CREATE TABLE archive_prefs_jids (
    owner  TEXT COLLATE "C" NOT NULL,
    jid    TEXT COLLATE "C" NOT NULL,
    always BOOLEAN NOT NULL,
    PRIMARY KEY (owner, jid)
);
