//! XEP-0363: HTTP File Upload (`urn:xmpp:http:upload:0`) at `upload.<domain>`, with every
//! upload and download recorded for managed file transfer.
//!
//! A local user asks the service for a slot (file name, size, content type); the service
//! checks the size limit and the user's quotas, records the slot
//! ([`herald_storage::FileStore`]) and answers a PUT and a GET URL under
//! `<http_base>/upload/`. Both URLs carry an HMAC-SHA256 signature over the slot id, the
//! method and an expiry (`<id>.<expiry>.<signature>/<file name>`): the PUT URL lives
//! `upload.slot_ttl_secs`, the GET URL as long as the file (`upload.expire_after_days`).
//! The HTTP side ([`http`]) streams the content into the [`blob::BlobStore`] and serves it
//! back. A background task deletes expired files and marks their records purged; `herald
//! files purge` does the same on demand ([`purge`]).
//!
//! When a local user sends a message carrying one of our download links (in the body or a
//! XEP-0066 `jabber:x:oob` URL), the recipient is added to the file's record
//! ([`on_outbound_message`]).

pub mod blob;
pub mod http;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use dashmap::DashMap;
use herald_core::{ns, ErrorType, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::{FileQuota, FileState, NewFileSlot, Storage, StorageError};
use herald_xml::Element;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use self::blob::{BlobError, BlobStore, FsBlobStore};
use super::{now_micros, storage_error};
use crate::c2s::Session;
use crate::config::Settings;
use crate::Server;

/// XEP-0363 namespace.
pub const NS: &str = "urn:xmpp:http:upload:0";
/// XEP-0066 out-of-band data in messages.
const NS_OOB: &str = "jabber:x:oob";

const MICROS_PER_SEC: i64 = 1_000_000;
/// Unused slots are purged this long after their upload deadline (an upload that started
/// just before the deadline may still be running).
const STALE_SLOT_GRACE: i64 = 24 * 3600 * MICROS_PER_SEC;
/// How often expired files are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
const EXPIRY_BATCH: usize = 500;
/// Bytes of HMAC output kept in URLs (128 bits).
const SIG_BYTES: usize = 16;
/// Longest file name accepted, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// Download links looked at in one message.
const MAX_LINKS_PER_MESSAGE: usize = 8;

/// The upload service's state, shared by the XMPP and HTTP sides.
pub struct Upload {
    pub blobs: Arc<dyn BlobStore>,
    key: Vec<u8>,
    /// Slots with an upload in progress: one PUT at a time per slot, and the expiry task
    /// leaves them alone.
    uploading: DashMap<String, ()>,
}

/// Which request a signed URL allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlKind {
    Put,
    Get,
}

impl UrlKind {
    fn tag(self) -> &'static [u8] {
        match self {
            UrlKind::Put => b"herald-upload-put",
            UrlKind::Get => b"herald-upload-get",
        }
    }
}

/// Why a URL token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an upload URL")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("upload secret {path}: {reason}")]
    Secret { path: String, reason: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// The blob store of a configuration (for the CLI, which runs without a server).
pub fn blob_store(settings: &Settings) -> FsBlobStore {
    FsBlobStore::new(settings.raw.server.data_dir.join("uploads"))
}

impl Upload {
    /// Prepares the service: the blob store's directories and the URL signing key
    /// (`upload.secret`, else `data_dir/upload.secret`, generated on first start). With the
    /// service disabled nothing is touched on disk.
    pub async fn open(settings: &Settings) -> Result<Upload, InitError> {
        let blobs = blob_store(settings);
        let key = if !settings.raw.upload.enabled {
            rand::random::<[u8; 32]>().to_vec()
        } else {
            blobs.init().await?;
            match &settings.raw.upload.secret {
                Some(s) => s.as_bytes().to_vec(),
                None => load_or_make_secret(&settings.raw.server.data_dir.join("upload.secret"))?,
            }
        };
        Ok(Upload {
            blobs: Arc::new(blobs),
            key,
            uploading: DashMap::new(),
        })
    }

    fn mac(&self, kind: UrlKind, id: &str, expiry: u64) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(kind.tag());
        mac.update(b"\0");
        mac.update(id.as_bytes());
        mac.update(b"\0");
        mac.update(expiry.to_string().as_bytes());
        mac
    }

    /// The path segment `<id>.<expiry>.<signature>`; expiry 0 never expires.
    pub fn token(&self, kind: UrlKind, id: &str, expiry: u64) -> String {
        let tag = self.mac(kind, id, expiry).finalize().into_bytes();
        format!("{id}.{expiry}.{}", B64URL.encode(&tag[..SIG_BYTES]))
    }

    /// Checks a token for `kind` at `now_secs`; returns the slot id.
    pub fn verify<'a>(
        &self,
        kind: UrlKind,
        token: &'a str,
        now_secs: u64,
    ) -> Result<&'a str, TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(id), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        if !blob::valid_id(id) || exp.is_empty() || exp.len() > 20 {
            return Err(TokenError::Malformed);
        }
        let expiry: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = B64URL
            .decode(sig)
            .ok()
            .filter(|s| s.len() == SIG_BYTES)
            .ok_or(TokenError::Malformed)?;
        self.mac(kind, id, expiry)
            .verify_truncated_left(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if expiry != 0 && expiry <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(id)
    }

    /// Marks a slot as being uploaded; `None` if an upload for it is already running.
    fn claim(&self, id: &str) -> Option<UploadClaim<'_>> {
        use dashmap::mapref::entry::Entry;
        match self.uploading.entry(id.to_string()) {
            Entry::Occupied(_) => None,
            Entry::Vacant(v) => {
                v.insert(());
                Some(UploadClaim {
                    upload: self,
                    id: id.to_string(),
                })
            }
        }
    }

    fn is_uploading(&self, id: &str) -> bool {
        self.uploading.contains_key(id)
    }
}

/// Held while a slot's upload runs.
struct UploadClaim<'a> {
    upload: &'a Upload,
    id: String,
}

impl Drop for UploadClaim<'_> {
    fn drop(&mut self) {
        self.upload.uploading.remove(&self.id);
    }
}

fn load_or_make_secret(path: &Path) -> Result<Vec<u8>, InitError> {
    let err = |reason: String| InitError::Secret {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim();
            if s.len() < 32 {
                return Err(err(
                    "is shorter than 32 characters; delete it to generate a new one".into(),
                ));
            }
            return Ok(s.as_bytes().to_vec());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(secret.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(secret.into_bytes())
}

/// A random slot id: 16 bytes, URL-safe base64 (22 characters), never starting with `-`
/// (administrators pass ids to `herald files` and other command lines, where a leading
/// `-` reads as an option).
fn new_id() -> String {
    loop {
        let id = B64URL.encode(rand::random::<[u8; 16]>());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn now_secs() -> u64 {
    (now_micros() / MICROS_PER_SEC).max(0) as u64
}

/// Percent-encodes a file name for a URL path segment (RFC 3986 unreserved kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `1.5 MiB (1572864 bytes)`: a limit as people and programs read it.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    let v = format!("{v:.1}");
    let v = v.trim_end_matches(".0");
    format!("{v} {unit} ({n} bytes)")
}

// ---------------------------------------------------------------------------------------
// XMPP side

/// An IQ to the service at `to` (a service domain of served domain `host`); the router
/// bounces messages and drops other stanzas (`router::iq_service`).
pub(crate) async fn handle_iq(
    server: &Arc<Server>,
    el: &Element,
    from: &Jid,
    to: &Jid,
    host: &str,
) -> Result<Option<Element>, StanzaError> {
    if to.node().is_some() || to.resource().is_some() {
        return Err(StanzaError::new(Cond::ServiceUnavailable));
    }
    let payload = crate::ext::payload_of(el)?;
    let set = el.attr("type") == Some("set");
    match (payload.ns.as_str(), payload.name.as_str(), set) {
        (ns::DISCO_INFO, "query", false) => {
            if payload.attr("node").is_some() {
                return Err(StanzaError::new(Cond::ItemNotFound));
            }
            Ok(Some(disco_info(server)))
        }
        (ns::DISCO_ITEMS, "query", false) => {
            if payload.attr("node").is_some() {
                return Err(StanzaError::new(Cond::ItemNotFound));
            }
            Ok(Some(Element::new("query", ns::DISCO_ITEMS)))
        }
        (ns::PING, "ping", false) => Ok(None),
        (NS, "request", false) => request_slot(server, payload, from, host).await.map(Some),
        _ => Err(StanzaError::new(Cond::ServiceUnavailable)),
    }
}

/// XEP-0363 §2: identity store/file, the feature, and the max-file-size form.
pub fn disco_info(server: &Server) -> Element {
    let mut form = super::disco::result_form(NS);
    form.push(
        Element::new("field", ns::DATA_FORMS)
            .with_attr("var", "max-file-size")
            .with_child(
                Element::new("value", ns::DATA_FORMS)
                    .with_text(server.settings.raw.upload.max_file_size.to_string()),
            ),
    );
    let feature = |v: &str| Element::new("feature", ns::DISCO_INFO).with_attr("var", v);
    Element::new("query", ns::DISCO_INFO)
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", "HTTP File Upload"),
        )
        .with_child(feature(ns::DISCO_INFO))
        .with_child(feature(ns::DISCO_ITEMS))
        .with_child(feature(ns::PING))
        .with_child(feature(NS))
        .with_child(form)
}

fn bad_request(text: impl Into<String>) -> StanzaError {
    StanzaError::new(Cond::BadRequest).with_text(text)
}

/// Checks a file name from a slot request.
fn check_file_name(name: &str) -> Result<(), StanzaError> {
    if name.trim().is_empty() {
        return Err(bad_request("the filename is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad_request(format!(
            "the filename is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name == "." || name == ".." {
        return Err(bad_request("the filename is not a file name"));
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(bad_request(
            "the filename must not contain slashes or control characters",
        ));
    }
    Ok(())
}

/// Checks (and normalizes) a MIME type `type/subtype[; parameters]`.
fn check_content_type(ct: &str) -> Result<String, StanzaError> {
    let ct = ct.trim();
    let essence = ct.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let valid = ct.len() <= 255
        && !ct.chars().any(char::is_control)
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    if !valid {
        return Err(bad_request(format!(
            "{ct:?} is not a MIME type such as \"image/png\""
        )));
    }
    Ok(ct.to_string())
}

async fn request_slot(
    server: &Arc<Server>,
    req: &Element,
    from: &Jid,
    host: &str,
) -> Result<Element, StanzaError> {
    let cfg = &server.settings.raw.upload;
    if from.node().is_none() || from.domain() != host {
        return Err(StanzaError::new(Cond::Forbidden)
            .with_text(format!("only users of {host} may upload files here")));
    }
    if server.http_base.is_empty() {
        return Err(StanzaError::new(Cond::ServiceUnavailable)
            .with_type(ErrorType::Cancel)
            .with_text("the server has no HTTP listener for uploads"));
    }
    let name = req
        .attr("filename")
        .ok_or_else(|| bad_request("the filename attribute is missing"))?;
    check_file_name(name)?;
    let size: u64 = req
        .attr("size")
        .ok_or_else(|| bad_request("the size attribute is missing"))?
        .trim()
        .parse()
        .map_err(|_| bad_request("the size must be a whole number of bytes"))?;
    if size == 0 {
        return Err(bad_request("the size must be at least 1 byte"));
    }
    if size > cfg.max_file_size {
        return Err(StanzaError::new(Cond::NotAcceptable)
            .with_type(ErrorType::Modify)
            .with_text(format!(
                "File too large: the maximum file size is {}",
                human_bytes(cfg.max_file_size)
            ))
            .with_app(Element::new("file-too-large", NS).with_child(
                Element::new("max-file-size", NS).with_text(cfg.max_file_size.to_string()),
            )));
    }
    let content_type = req
        .attr("content-type")
        .filter(|c| !c.trim().is_empty())
        .map(check_content_type)
        .transpose()?;

    let uploader = from.bare();
    let now = now_micros();
    let day_ago = now - 24 * 3600 * MICROS_PER_SEC;
    let put_expiry = now_secs() + cfg.slot_ttl_secs;
    let expires_micros = (cfg.expire_after_days > 0)
        .then(|| now + i64::from(cfg.expire_after_days) * 24 * 3600 * MICROS_PER_SEC);
    let limit = |q: u64| (q > 0).then_some(q);
    let quota = FileQuota {
        daily_bytes: limit(cfg.quota_daily_bytes),
        total_bytes: limit(cfg.quota_total_bytes),
        since_micros: day_ago,
        now_micros: now,
    };
    let mut id = new_id();
    let mut attempts = 0;
    loop {
        let slot = NewFileSlot {
            id: &id,
            uploader: uploader.as_str(),
            file_name: name,
            size,
            content_type: content_type.as_deref(),
            created_micros: now,
            put_deadline_micros: put_expiry as i64 * MICROS_PER_SEC,
            expires_micros,
        };
        match server.storage.create_file_slot(&slot, &quota).await {
            Ok(()) => break,
            Err(StorageError::AlreadyExists) if attempts < 3 => {
                attempts += 1;
                id = new_id();
            }
            Err(StorageError::QuotaExceeded) => {
                return Err(quota_error(server, uploader.as_str(), size, &quota).await)
            }
            Err(e) => return Err(storage_error(e)),
        }
    }
    tracing::info!(
        uploader = uploader.as_str(),
        id = %id,
        size,
        "upload slot granted"
    );
    let get_expiry = expires_micros.map_or(0, |e| (e / MICROS_PER_SEC) as u64);
    let path = |kind, expiry| {
        format!(
            "{}/upload/{}/{}",
            server.http_base,
            server.upload.token(kind, &id, expiry),
            encode_segment(name)
        )
    };
    Ok(Element::new("slot", NS)
        .with_child(Element::new("put", NS).with_attr("url", path(UrlKind::Put, put_expiry)))
        .with_child(Element::new("get", NS).with_attr("url", path(UrlKind::Get, get_expiry))))
}

/// XEP-0363 §4: resource-constraint (wait) naming the quota that was reached.
async fn quota_error(server: &Server, uploader: &str, size: u64, quota: &FileQuota) -> StanzaError {
    let usage = server
        .storage
        .file_usage(uploader, quota.since_micros, quota.now_micros)
        .await
        .unwrap_or_default();
    let text = match (quota.daily_bytes, quota.total_bytes) {
        (Some(d), _) if usage.window_bytes.saturating_add(size) > d => format!(
            "Quota reached: you may upload {} per 24 hours and have used {}",
            human_bytes(d),
            human_bytes(usage.window_bytes)
        ),
        (_, Some(t)) => format!(
            "Quota reached: you may store {} and use {}",
            human_bytes(t),
            human_bytes(usage.total_bytes)
        ),
        _ => "Quota reached".to_string(),
    };
    StanzaError::new(Cond::ResourceConstraint)
        .with_type(ErrorType::Wait)
        .with_text(text)
}

// ---------------------------------------------------------------------------------------
// Recipients

/// A message a local client sends: if it carries one of our download links, the
/// recipient is added to that file's record. Costs a substring search unless a link is
/// present.
pub async fn on_outbound_message(server: &Arc<Server>, session: &Session, el: &Element, to: &Jid) {
    if server.http_base.is_empty() || !server.settings.raw.upload.enabled {
        return;
    }
    let body = el.child("body", ns::CLIENT);
    let oob = el.child("x", NS_OOB).and_then(|x| x.child("url", NS_OOB));
    // The common case, a message without a link of ours, allocates nothing.
    let may_link = |e: &Element| {
        e.children.iter().any(|n| match n {
            herald_xml::Node::Text(t) => t.contains("/upload/"),
            herald_xml::Node::Element(_) => false,
        }) || e.children.len() > 1
    };
    if !body.is_some_and(may_link) && !oob.is_some_and(may_link) {
        return;
    }
    let prefix = format!("{}/upload/", server.http_base);
    let texts: Vec<String> = body.into_iter().chain(oob).map(Element::text).collect();
    let mut ids: Vec<String> = Vec::new();
    let now = now_secs();
    for text in &texts {
        for (i, _) in text.match_indices(&prefix) {
            let rest = &text[i + prefix.len()..];
            let token = rest.split(['/', '?', '#', ' ', '\n']).next().unwrap_or("");
            if let Ok(id) = server.upload.verify(UrlKind::Get, token, now) {
                if !ids.iter().any(|x| x == id) {
                    ids.push(id.to_string());
                }
            }
            if ids.len() >= MAX_LINKS_PER_MESSAGE {
                break;
            }
        }
    }
    let sender = session.jid.bare();
    let recipient = to.bare();
    for id in ids {
        if let Err(e) = server
            .storage
            .add_file_recipient(&id, recipient.as_str(), sender.as_str(), now_micros())
            .await
        {
            tracing::warn!(error = %e, id = %id, "cannot record the recipient of an upload");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Purging and expiry

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("cannot delete the file content: {0}")]
    Blob(#[from] BlobError),
}

/// Deletes a file's content, then marks its record purged with `reason`. Returns the
/// state the file had (`Purged` when it was already), `None` when there is no such file.
/// The content is deleted first, so a record marked purged never has content left.
pub async fn purge(
    storage: &dyn Storage,
    blobs: &dyn BlobStore,
    id: &str,
    reason: &str,
) -> Result<Option<FileState>, PurgeError> {
    let Some(rec) = storage.file(id).await? else {
        return Ok(None);
    };
    if blob::valid_id(id) {
        blobs.delete(id).await?;
    }
    if rec.state == FileState::Purged {
        return Ok(Some(FileState::Purged));
    }
    Ok(storage.purge_file(id, now_micros(), reason).await?)
}

/// Deletes expired files and unused slots, a batch at a time; returns how many.
pub async fn expire_once(server: &Server) -> usize {
    let now = now_micros();
    let ids = match server
        .storage
        .expired_files(now, now - STALE_SLOT_GRACE, EXPIRY_BATCH)
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for expired uploads");
            return 0;
        }
    };
    let mut done = 0;
    for id in ids {
        if server.upload.is_uploading(&id) {
            continue;
        }
        let reason = match server.storage.file(&id).await {
            Ok(Some(r)) if r.state == FileState::Requested => "slot unused",
            Ok(Some(_)) => "expired",
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an expired upload");
                continue;
            }
        };
        match purge(&*server.storage, &*server.upload.blobs, &id, reason).await {
            Ok(_) => done += 1,
            Err(e) => tracing::warn!(error = %e, id = %id, "cannot delete an expired upload"),
        }
    }
    done
}

/// Runs until shutdown: deletes expired uploads every minute.
pub async fn expiry_task(server: Arc<Server>) {
    if !server.settings.raw.upload.enabled {
        return;
    }
    let mut shutdown = server.shutdown.clone();
    loop {
        loop {
            let n = expire_once(&server).await;
            if n > 0 {
                tracing::info!(n, "deleted expired uploads");
            }
            if n < EXPIRY_BATCH {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload() -> Upload {
        Upload {
            blobs: Arc::new(FsBlobStore::new("/nonexistent".into())),
            key: b"0123456789abcdef0123456789abcdef".to_vec(),
            uploading: DashMap::new(),
        }
    }

    #[test]
    fn ids_never_start_with_a_hyphen() {
        // One id in 64 would, by chance; 5,000 draws miss that with odds of 1 in 10^34.
        for _ in 0..5_000 {
            let id = new_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
        }
    }

    #[test]
    fn tokens_verify_only_for_their_method_id_and_time() {
        let u = upload();
        let id = new_id();
        assert_eq!(id.len(), 22);
        let t = u.token(UrlKind::Put, &id, 1000);
        assert_eq!(u.verify(UrlKind::Put, &t, 999), Ok(id.as_str()));
        assert_eq!(u.verify(UrlKind::Put, &t, 1000), Err(TokenError::Expired));
        assert_eq!(
            u.verify(UrlKind::Get, &t, 0),
            Err(TokenError::BadSignature),
            "a PUT URL does not download"
        );
        let forever = u.token(UrlKind::Get, &id, 0);
        assert_eq!(u.verify(UrlKind::Get, &forever, u64::MAX), Ok(id.as_str()));
        // Changing the expiry, the id or the signature breaks it.
        let bumped = t.replacen(".1000.", ".9999.", 1);
        assert_eq!(
            u.verify(UrlKind::Put, &bumped, 0),
            Err(TokenError::BadSignature)
        );
        let other = u.token(UrlKind::Put, &new_id(), 1000);
        let spliced = format!("{id}.{}", other.split_once('.').unwrap().1);
        assert_eq!(
            u.verify(UrlKind::Put, &spliced, 0),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "x",
            "a.b.c",
            &format!("{id}.1000"),
            &format!("{id}.-1.AAAAAAAAAAAAAAAAAAAAAA"),
            &format!("{id}.1000.AAAA"),
            &format!("../../x.1000.{}", t.rsplit('.').next().unwrap()),
        ] {
            assert_eq!(
                u.verify(UrlKind::Put, bad, 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let other_key = Upload {
            key: b"another key, another signature!!".to_vec(),
            ..upload()
        };
        assert_eq!(
            other_key.verify(UrlKind::Put, &t, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn file_names_and_types() {
        for ok in ["a.png", "Résumé 2024 (final).pdf", "日本語.txt", ".hidden"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            "  ",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a\nb",
            "a\0b",
            long.as_str(),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_content_type(" image/png ").unwrap(),
            "image/png".to_string()
        );
        assert!(check_content_type("text/plain; charset=utf-8").is_ok());
        assert!(check_content_type("application/vnd.ms-excel").is_ok());
        for bad in ["png", "image/", "/png", "a b/c", "text/plain\r\nX: y"] {
            assert!(check_content_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_encoded_for_urls() {
        assert_eq!(encode_segment("a b/c.png"), "a%20b%2Fc.png");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(encode_segment("A-z_0.~"), "A-z_0.~");
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human_bytes(10), "10 bytes");
        assert_eq!(human_bytes(1024), "1 KiB (1024 bytes)");
        assert_eq!(human_bytes(1536 * 1024), "1.5 MiB (1572864 bytes)");
        assert_eq!(human_bytes(1024 * 1024 * 1024), "1 GiB (1073741824 bytes)");
    }

    #[test]
    fn claims_are_exclusive() {
        let u = upload();
        let c = u.claim("abcdefghij").expect("first claim");
        assert!(u.claim("abcdefghij").is_none());
        assert!(u.is_uploading("abcdefghij"));
        drop(c);
        assert!(!u.is_uploading("abcdefghij"));
        assert!(u.claim("abcdefghij").is_some());
    }

    #[tokio::test]
    async fn secret_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/upload.secret");
        let a = load_or_make_secret(&p).unwrap();
        let b = load_or_make_secret(&p).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, "short").unwrap();
        assert!(load_or_make_secret(&p).is_err());
    }
}
