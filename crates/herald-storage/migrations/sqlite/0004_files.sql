-- Managed file transfer (XEP-0363 uploads): one audit record per upload slot, its
-- downloads and the recipients its link was sent to. Keep in step with
-- ../postgres/0004_files.sql.
--
-- state: 0 requested (slot granted), 1 uploaded, 2 purged (content gone; the record stays).
-- Records are not removed with their uploader's account: they are the audit log.

CREATE TABLE files (
    id                  TEXT NOT NULL PRIMARY KEY,
    uploader            TEXT NOT NULL,
    file_name           TEXT NOT NULL,
    size                INTEGER NOT NULL,
    content_type        TEXT,
    sha256              TEXT,
    created_micros      INTEGER NOT NULL,
    put_deadline_micros INTEGER NOT NULL,
    expires_micros      INTEGER,
    state               INTEGER NOT NULL,
    uploaded_micros     INTEGER,
    upload_addr         TEXT,
    purged_micros       INTEGER,
    purge_reason        TEXT
);
CREATE INDEX files_uploader_created ON files (uploader, created_micros);
CREATE INDEX files_created ON files (created_micros);
CREATE INDEX files_state_expires ON files (state, expires_micros);
CREATE INDEX files_state_deadline ON files (state, put_deadline_micros);

CREATE TABLE file_downloads (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id      TEXT NOT NULL REFERENCES files (id),
    stamp_micros INTEGER NOT NULL,
    client_addr  TEXT NOT NULL,
    downloader   TEXT
);
CREATE INDEX file_downloads_file ON file_downloads (file_id, seq);

CREATE TABLE file_recipients (
    file_id      TEXT NOT NULL REFERENCES files (id),
    recipient    TEXT NOT NULL,
    sender       TEXT NOT NULL,
    stamp_micros INTEGER NOT NULL,
    PRIMARY KEY (file_id, recipient)
);
