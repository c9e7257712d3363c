-- XEP-0313 message archive (1:1 chats) and XEP-0441 preferences. Keep in step with
-- ../postgres/0002_archive.sql.
--
-- `id` orders an owner's archive (keyset paging); `stanza_id` is the random public id.
-- The store keeps `stamp_micros` non-decreasing in `id` order per owner, so time bounds
-- translate into id bounds through `archive_owner_stamp`.

CREATE TABLE archive (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner         TEXT NOT NULL,
    stanza_id     TEXT NOT NULL,
    with_bare     TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    stamp_micros  INTEGER NOT NULL,
    direction     INTEGER NOT NULL,
    stanza        TEXT NOT NULL
);
CREATE UNIQUE INDEX archive_owner_stanza_id ON archive (owner, stanza_id);
CREATE INDEX archive_owner_id ON archive (owner, id);
CREATE INDEX archive_owner_with_id ON archive (owner, with_bare, id);
CREATE INDEX archive_owner_stamp ON archive (owner, stamp_micros, id);

CREATE TABLE archive_prefs (
    owner        TEXT NOT NULL PRIMARY KEY,
    default_mode TEXT NOT NULL
);

CREATE TABLE archive_prefs_jids (
    owner  TEXT NOT NULL,
    jid    TEXT NOT NULL,
    always INTEGER NOT NULL,
    PRIMARY KEY (owner, jid)
);
