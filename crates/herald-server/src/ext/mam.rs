//! XEP-0313: Message Archive Management for 1:1 chats, with XEP-0359 stanza ids, XEP-0059
//! paging and XEP-0441 preferences.
//!
//! Every archived message lives in its owner's archive under a random, unguessable id that
//! is also its XEP-0359 `<stanza-id by='owner'/>`: a message arriving for a local user is
//! archived (direction "in") and stamped with that id before delivery, so the client can
//! match live and archived copies; a message a local client sends is archived in the
//! sender's archive (direction "out"). Stanza ids claiming to come from the user's own
//! account are removed from everything passing through (XEP-0359 §6 spoofing rule).
//!
//! Query results are written to the requesting session ahead of the IQ result through
//! `Session::before_reply`. Retention (`[mam] retention_days`, per-domain overrides) hides
//! expired messages from every query at once and deletes them lazily: on the owner's next
//! archive write or query, at most hourly per owner, plus [`retention_task`] for a sweep.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dashmap::DashMap;
use herald_core::{ns, Jid, StanzaError, StanzaErrorCondition as Cond};
use herald_storage::{
    ArchiveDefault, ArchiveFilter, ArchivePage, ArchivePaging, ArchivePrefs, Direction, NewArchived,
};
use herald_xml::Element;
use rand::RngCore;

use super::{
    now_micros, parse_fragment, storage_error, to_stored, IqHandler, IqRegistry, IqRequest,
    IqResult, Target,
};
use crate::c2s::Session;
use crate::Server;

/// Payloads besides `<body/>` that make a message worth archiving.
const RETRACT: &str = "urn:xmpp:message-retract:1";
const REACTIONS: &str = "urn:xmpp:reactions:0";
const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
const OMEMO: &str = "urn:xmpp:omemo:2";
const OPENPGP: &str = "urn:xmpp:openpgp:0";

/// RSM counts are given when the result set has at most this many messages (an indexed
/// scan of at most this many entries); larger sets omit `<count/>` (XEP-0059 §2.6).
const COUNT_LIMIT: u64 = 10_000;
/// Lazy expiry runs at most this often per owner.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);
const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

pub fn register(r: &mut IqRegistry) {
    r.register(ns::MAM, Mam);
    r.account_features
        .extend([ns::MAM, ns::MAM_EXTENDED, ns::SID]);
}

struct Mam;

#[async_trait]
impl IqHandler for Mam {
    async fn handle(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> IqResult {
        match req.target {
            Target::OwnAccount => {}
            // XEP-0313 §9.1: an archive is its owner's alone.
            Target::OtherAccount => return Err(StanzaError::new(Cond::Forbidden)),
            Target::Server => return Err(StanzaError::new(Cond::ServiceUnavailable)),
        }
        let owner = req.from.bare();
        match (req.payload.name.as_str(), req.set) {
            ("query", false) => Ok(Some(query_form())),
            ("query", true) => query(server, req, &owner).await,
            ("prefs", false) => {
                let prefs = load_prefs(server, &owner).await.map_err(storage_error)?;
                Ok(Some(prefs_element(&prefs)))
            }
            ("prefs", true) => set_prefs(server, req, &owner).await,
            ("metadata", false) => metadata(server, &owner).await,
            _ => Err(StanzaError::new(Cond::BadRequest)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Archiving

/// A fresh XEP-0359 id: 128 random bits, base64url.
pub(crate) fn new_stanza_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// XEP-0359 §6: removes stanza-ids claiming to be assigned by `by` (our user's account).
fn strip_own_ids(el: &mut Element, by: &str) {
    el.children.retain(|n| {
        !matches!(n, herald_xml::Node::Element(e)
            if e.is("stanza-id", ns::SID) && e.attr("by") == Some(by))
    });
}

/// XEP-0313 §5.1.1: chat/normal messages with a body (or another conversation payload),
/// unless hinted not to be stored (XEP-0334).
fn archivable(el: &Element) -> bool {
    if el.name != "message" || !matches!(el.attr("type").unwrap_or("normal"), "chat" | "normal") {
        return false;
    }
    let mut payload = false;
    for c in el.elements() {
        if c.ns == ns::HINTS && matches!(c.name.as_str(), "no-store" | "no-permanent-store") {
            return false;
        }
        // Server-made wrappers are never the user's conversation.
        if c.ns == ns::CARBONS || c.is("result", ns::MAM) {
            return false;
        }
        payload |= c.is("body", ns::CLIENT)
            || c.is("store", ns::HINTS)
            || c.is("retract", RETRACT)
            || c.is("reactions", REACTIONS)
            || c.is("encrypted", OMEMO_LEGACY)
            || c.is("encrypted", OMEMO)
            || c.is("openpgp", OPENPGP);
    }
    payload
}

fn config_default(server: &Server) -> ArchiveDefault {
    ArchiveDefault::parse(&server.settings.raw.mam.default).unwrap_or(ArchiveDefault::Always)
}

/// The owner's preferences; for an online user from the session registry's cache, so
/// the message path reads no database for them.
async fn load_prefs(
    server: &Server,
    owner: &Jid,
) -> Result<Arc<ArchivePrefs>, herald_storage::StorageError> {
    let cache = server.registry.cache(owner.as_str());
    if let Some(p) = cache.as_ref().and_then(|c| {
        c.mam_prefs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }) {
        return Ok(p);
    }
    let prefs = Arc::new(
        server
            .storage
            .archive_prefs(owner.as_str())
            .await?
            .unwrap_or_else(|| ArchivePrefs {
                default: config_default(server),
                always: Vec::new(),
                never: Vec::new(),
            }),
    );
    if let Some(c) = cache {
        *c.mam_prefs.write().unwrap_or_else(|p| p.into_inner()) = Some(prefs.clone());
    }
    Ok(prefs)
}

/// XEP-0441 §2.3: whether `owner` archives traffic with `contact`.
async fn wanted(server: &Server, owner: &Jid, contact: &Jid) -> bool {
    let prefs = match load_prefs(server, owner).await {
        Ok(p) => p,
        Err(e) => {
            storage_error(e);
            return false;
        }
    };
    // A listed bare JID matches any resource; a listed full JID only itself.
    let listed = |l: &[String]| {
        l.iter()
            .any(|j| j == contact.as_str() || j == contact.bare_str())
    };
    if listed(&prefs.never) {
        return false;
    }
    if listed(&prefs.always) {
        return true;
    }
    match prefs.default {
        ArchiveDefault::Always => true,
        ArchiveDefault::Never => false,
        ArchiveDefault::Roster => {
            match super::roster::load_item(server, owner.as_str(), contact.bare_str()).await {
                Ok(item) => item.is_some(),
                Err(e) => {
                    storage_error(e);
                    false
                }
            }
        }
    }
}

/// Oldest stamp still visible under the owner's domain's retention.
fn cutoff(server: &Server, owner: &Jid) -> Option<i64> {
    let days = server
        .settings
        .raw
        .mam
        .retention_for(retention_domain(server, owner.domain()));
    (days > 0).then(|| now_micros() - i64::from(days) * MICROS_PER_DAY)
}

/// Deletes the owner's expired messages, at most once per [`EXPIRY_INTERVAL`].
async fn maybe_expire(server: &Arc<Server>, owner: &Jid) {
    static LAST: OnceLock<DashMap<(usize, String), Instant>> = OnceLock::new();
    let Some(before) = cutoff(server, owner) else {
        return;
    };
    let key = (Arc::as_ptr(server) as usize, owner.as_str().to_string());
    let last = LAST.get_or_init(DashMap::new);
    let now = Instant::now();
    match last.get(&key) {
        Some(t) if now.duration_since(*t) < EXPIRY_INTERVAL => return,
        _ => {}
    }
    last.insert(key, now);
    match server.storage.expire_archive(owner.as_str(), before).await {
        Ok(n) if n > 0 => tracing::debug!(owner = %owner, n, "expired archived messages"),
        Ok(_) => {}
        Err(e) => {
            storage_error(e);
        }
    }
}

/// Deletes expired messages of every served domain with a retention limit; returns how
/// many. Meant to run periodically (see [`retention_task`]).
/// Room archives (at `conference.example.org`) follow their served domain's retention.
fn retention_domain<'a>(server: &'a Server, domain: &'a str) -> &'a str {
    server
        .settings
        .service(domain)
        .map(|s| s.host.as_str())
        .unwrap_or(domain)
}

pub async fn expire_all(server: &Server) -> u64 {
    let mut total = 0;
    let archives = server.settings.domains.iter().chain(
        server
            .settings
            .services
            .values()
            .filter(|s| s.kind == crate::config::ServiceKind::Muc)
            .map(|s| &s.domain),
    );
    for d in archives {
        let days = server
            .settings
            .raw
            .mam
            .retention_for(retention_domain(server, d));
        if days == 0 {
            continue;
        }
        let before = now_micros() - i64::from(days) * MICROS_PER_DAY;
        match server.storage.expire_archive_domain(d, before).await {
            Ok(n) => total += n,
            Err(e) => {
                storage_error(e);
            }
        }
    }
    total
}

/// Hourly retention sweep until shutdown; for `start` to spawn. Without it, expired
/// messages are still hidden from queries and deleted when their owner is next active.
pub async fn retention_task(server: Arc<Server>) {
    let mut shutdown = server.shutdown.clone();
    loop {
        let n = expire_all(&server).await;
        if n > 0 {
            tracing::info!(n, "expired archived messages");
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

async fn append(
    server: &Arc<Server>,
    owner: &Jid,
    stanza_id: &str,
    with: &Jid,
    direction: Direction,
    stanza: &str,
) -> bool {
    let msg = NewArchived {
        stanza_id,
        with_bare: with.bare_str(),
        with_resource: with.resource().unwrap_or(""),
        stamp_micros: now_micros(),
        direction,
        stanza,
    };
    match server.storage.append_archive(owner.as_str(), &msg).await {
        Ok(_) => {
            maybe_expire(server, owner).await;
            true
        }
        Err(e) => {
            storage_error(e);
            false
        }
    }
}

/// Archives a message arriving for `to` and stamps it with its stanza-id.
pub async fn on_inbound(server: &Arc<Server>, el: &mut Element, to: &Jid) {
    if el.name != "message" || to.node().is_none() {
        return;
    }
    let owner = to.bare();
    strip_own_ids(el, owner.as_str());
    if !archivable(el) {
        return;
    }
    let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
        return;
    };
    // The router bounces messages for accounts that do not exist; nothing to archive.
    if !crate::router::account_exists(server, to).await || !wanted(server, &owner, &from).await {
        return;
    }
    let id = new_stanza_id();
    el.push(
        Element::new("stanza-id", ns::SID)
            .with_attr("by", owner.as_str())
            .with_attr("id", id.as_str()),
    );
    let stored = to_stored(el);
    if !append(server, &owner, &id, &from, Direction::In, &stored).await {
        // Not archived: do not hand out an id that resolves to nothing.
        el.children.pop();
    }
}

/// Archives the sender's copy of a message a local client sends.
pub async fn on_outbound(server: &Arc<Server>, session: &Session, el: &mut Element, to: &Jid) {
    if el.name != "message" {
        return;
    }
    let owner = session.jid.bare();
    strip_own_ids(el, owner.as_str());
    // A message to oneself is archived once, on arrival.
    if to.bare_str() == owner.as_str() || !archivable(el) || !wanted(server, &owner, to).await {
        return;
    }
    let stored = to_stored(el);
    append(
        server,
        &owner,
        &new_stanza_id(),
        to,
        Direction::Out,
        &stored,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Queries

fn field(var: &str, kind: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind)
}

/// §4.1.5: the fields a query form may carry.
fn query_form() -> Element {
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(ns::MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(
            field("ids", "list-multi").with_child(
                Element::new("validate", ns::XDATA_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", ns::XDATA_VALIDATE)),
            ),
        );
    Element::new("query", ns::MAM).with_child(form)
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::new(Cond::BadRequest).with_text(text)
}

/// XEP-0082 DateTime with microseconds: archive stamps round-trip exactly through
/// 'start'/'end', so a client can use a result's stamp as an inclusive bound.
fn stamp_from_micros(micros: i64) -> String {
    let t = ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(::time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// XEP-0082 DateTime to microseconds since the epoch.
pub(crate) fn parse_stamp(s: &str) -> Option<i64> {
    let t =
        ::time::OffsetDateTime::parse(s.trim(), &::time::format_description::well_known::Rfc3339)
            .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

struct Query {
    filter: ArchiveFilter,
    paging: ArchivePaging,
    flip: bool,
}

fn parse_query(server: &Server, payload: &Element) -> Result<Query, StanzaError> {
    let cfg = &server.settings.raw.mam;
    if payload.attr("node").is_some() {
        return Err(
            StanzaError::new(Cond::FeatureNotImplemented).with_text("no pubsub archives here")
        );
    }
    let mut filter = ArchiveFilter::default();
    if let Some(x) = payload.child("x", ns::DATA_FORMS) {
        if !matches!(x.attr("type"), Some("submit") | None) {
            return Err(bad("the query form must be of type 'submit'"));
        }
        for f in x.elements().filter(|f| f.is("field", ns::DATA_FORMS)) {
            let values: Vec<String> = f
                .elements()
                .filter(|v| v.is("value", ns::DATA_FORMS))
                .map(|v| v.text().trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let var = f.attr("var").unwrap_or("");
            let single = || -> Result<Option<&str>, StanzaError> {
                match values.as_slice() {
                    [] => Ok(None),
                    [v] => Ok(Some(v.as_str())),
                    _ => Err(bad(format!("field '{var}' takes one value"))),
                }
            };
            match var {
                "FORM_TYPE" => {
                    if single()?.is_some_and(|v| v != ns::MAM) {
                        return Err(bad("FORM_TYPE must be urn:xmpp:mam:2"));
                    }
                }
                "with" => {
                    if let Some(v) = single()? {
                        let j = Jid::parse(v).map_err(|_| {
                            StanzaError::new(Cond::JidMalformed).with_text("'with'")
                        })?;
                        filter.with_bare = Some(j.bare_str().to_string());
                        filter.with_resource = j.resource().map(str::to_string);
                    }
                }
                "start" | "end" => {
                    if let Some(v) = single()? {
                        let t = parse_stamp(v)
                            .ok_or_else(|| bad(format!("'{var}' is not an XEP-0082 DateTime")))?;
                        if var == "start" {
                            filter.start = Some(t);
                        } else {
                            filter.end = Some(t);
                        }
                    }
                }
                "after-id" => filter.after_id = single()?.map(str::to_string),
                "before-id" => filter.before_id = single()?.map(str::to_string),
                "ids" => {
                    if values.len() > cfg.max_page_size {
                        return Err(StanzaError::new(Cond::PolicyViolation)
                            .with_text(format!("at most {} ids per query", cfg.max_page_size)));
                    }
                    filter.ids = values.clone();
                }
                // §4.1.5: unknown fields are refused, not ignored.
                other => {
                    return Err(StanzaError::new(Cond::FeatureNotImplemented)
                        .with_text(format!("unsupported field '{other}'")))
                }
            }
        }
    }
    let mut paging = ArchivePaging {
        max: cfg.default_page_size,
        count_limit: COUNT_LIMIT,
        ..ArchivePaging::default()
    };
    if let Some(set) = payload.child("set", ns::RSM) {
        if let Some(m) = set.child("max", ns::RSM) {
            let n: usize = m
                .text()
                .trim()
                .parse()
                .map_err(|_| bad("RSM <max/> is not a number"))?;
            paging.max = n.min(cfg.max_page_size);
        }
        if let Some(a) = set.child("after", ns::RSM) {
            let t = a.text().trim().to_string();
            paging.after = (!t.is_empty()).then_some(t);
        }
        if let Some(b) = set.child("before", ns::RSM) {
            // Empty <before/> is the last page; with an id, the page before it.
            paging.from_end = true;
            let t = b.text().trim().to_string();
            paging.before = (!t.is_empty()).then_some(t);
        }
        if set.child("index", ns::RSM).is_some() {
            return Err(
                StanzaError::new(Cond::FeatureNotImplemented).with_text("page by id, not by index")
            );
        }
    }
    Ok(Query {
        filter,
        paging,
        flip: payload.child("flip-page", ns::MAM).is_some(),
    })
}

/// Stanzas written to the requester before the IQ result.
async fn emit_before_reply(server: &Arc<Server>, req: &IqRequest<'_>, els: Vec<Element>) {
    match req.session {
        Some(s) => s.to_client(els),
        // Reached through the router: routed in order, ahead of the reply routed later.
        None => {
            for el in els {
                crate::router::route(server, el).await;
            }
        }
    }
}

async fn run_query(
    server: &Arc<Server>,
    owner: &Jid,
    filter: &ArchiveFilter,
    paging: &ArchivePaging,
) -> Result<ArchivePage, StanzaError> {
    let mut filter = filter.clone();
    if let Some(c) = cutoff(server, owner) {
        filter.start = Some(filter.start.map_or(c, |s| s.max(c)));
        maybe_expire(server, owner).await;
    }
    server
        .storage
        .query_archive(owner.as_str(), &filter, paging)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| {
            StanzaError::new(Cond::ItemNotFound).with_text("no such message in the archive")
        })
}

pub(crate) async fn query(server: &Arc<Server>, req: &IqRequest<'_>, owner: &Jid) -> IqResult {
    let q = parse_query(server, req.payload)?;
    let page = run_query(server, owner, &q.filter, &q.paging).await?;
    let queryid = req.payload.attr("queryid");
    let mut out = Vec::with_capacity(page.items.len());
    for item in &page.items {
        let Some(original) = parse_fragment(&item.stanza) else {
            tracing::warn!(owner = %owner, id = %item.stanza_id, "unreadable archived stanza");
            continue;
        };
        let mut result = Element::new("result", ns::MAM).with_attr("id", item.stanza_id.as_str());
        if let Some(qid) = queryid {
            result.set_attr("queryid", qid);
        }
        result.push(
            Element::new("forwarded", ns::FORWARD)
                .with_child(
                    Element::new("delay", ns::DELAY)
                        .with_attr("stamp", stamp_from_micros(item.stamp_micros)),
                )
                .with_child(original),
        );
        out.push(
            Element::new("message", ns::CLIENT)
                .with_attr("to", req.from.as_str())
                .with_attr("from", owner.as_str())
                .with_child(result),
        );
    }
    if q.flip {
        out.reverse();
    }
    emit_before_reply(server, req, out).await;

    let mut set = Element::new("set", ns::RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        let mut f = Element::new("first", ns::RSM).with_text(first.stanza_id.as_str());
        if let Some(i) = page.first_index {
            f.set_attr("index", i.to_string());
        }
        set.push(f);
        set.push(Element::new("last", ns::RSM).with_text(last.stanza_id.as_str()));
    }
    if let Some(c) = page.count {
        set.push(Element::new("count", ns::RSM).with_text(c.to_string()));
    }
    Ok(Some(
        Element::new("fin", ns::MAM)
            .with_attr("complete", if page.complete { "true" } else { "false" })
            .with_child(set),
    ))
}

/// §5: the first and last message of the archive.
async fn metadata(server: &Arc<Server>, owner: &Jid) -> IqResult {
    let mut md = Element::new("metadata", ns::MAM);
    let one = ArchivePaging {
        max: 1,
        ..ArchivePaging::default()
    };
    let all = ArchiveFilter::default();
    let first = run_query(server, owner, &all, &one).await?;
    let last = run_query(
        server,
        owner,
        &all,
        &ArchivePaging {
            from_end: true,
            ..one
        },
    )
    .await?;
    if let (Some(f), Some(l)) = (first.items.first(), last.items.first()) {
        for (name, m) in [("start", f), ("end", l)] {
            md.push(
                Element::new(name, ns::MAM)
                    .with_attr("id", m.stanza_id.as_str())
                    .with_attr("timestamp", stamp_from_micros(m.stamp_micros)),
            );
        }
    }
    Ok(Some(md))
}

// ---------------------------------------------------------------------------------------
// Preferences (XEP-0441)

fn prefs_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut e = Element::new(name, ns::MAM);
        for j in jids {
            e.push(Element::new("jid", ns::MAM).with_text(j.as_str()));
        }
        e
    };
    Element::new("prefs", ns::MAM)
        .with_attr("default", p.default.as_str())
        .with_child(list("always", &p.always))
        .with_child(list("never", &p.never))
}

fn jid_list(prefs: &Element, name: &str) -> Result<Vec<String>, StanzaError> {
    let Some(list) = prefs.child(name, ns::MAM) else {
        return Ok(Vec::new());
    };
    list.elements()
        .filter(|j| j.is("jid", ns::MAM))
        .map(|j| {
            Jid::parse(j.text().trim())
                .map(|j| j.as_str().to_string())
                .map_err(|_| {
                    StanzaError::new(Cond::JidMalformed)
                        .with_text(format!("invalid JID in <{name}/>"))
                })
        })
        .collect()
}

async fn set_prefs(server: &Arc<Server>, req: &IqRequest<'_>, owner: &Jid) -> IqResult {
    let default = req
        .payload
        .attr("default")
        .and_then(ArchiveDefault::parse)
        .ok_or_else(|| bad("'default' must be always, never or roster"))?;
    let prefs = ArchivePrefs {
        default,
        always: jid_list(req.payload, "always")?,
        never: jid_list(req.payload, "never")?,
    };
    server
        .storage
        .set_archive_prefs(owner.as_str(), &prefs)
        .await
        .map_err(storage_error)?;
    if let Some(c) = server.registry.cache(owner.as_str()) {
        *c.mam_prefs.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
    // The applied preferences (normalized, deduplicated, "never" winning).
    let applied = load_prefs(server, owner).await.map_err(storage_error)?;
    Ok(Some(prefs_element(&applied)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        parse_fragment(xml).expect("test stanza parses")
    }

    #[test]
    fn what_is_archived() {
        assert!(archivable(&msg(
            "<message type='chat'><body>x</body></message>"
        )));
        assert!(archivable(&msg("<message><body>x</body></message>")));
        assert!(!archivable(&msg(
            "<message type='groupchat'><body>x</body></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='headline'><body>x</body></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='error'><body>x</body></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(!archivable(&msg(
            "<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(archivable(&msg(
            "<message type='chat'><store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(archivable(&msg(
            "<message type='chat'><encrypted xmlns='urn:xmpp:omemo:2'/></message>"
        )));
        assert!(!archivable(&msg("<presence/>")));
    }

    #[test]
    fn own_stanza_ids_are_stripped() {
        let mut m = msg("<message><body>x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='a@x' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.x' id='kept'/></message>");
        strip_own_ids(&mut m, "a@x");
        let ids: Vec<_> = m
            .elements()
            .filter(|e| e.is("stanza-id", ns::SID))
            .map(|e| e.attr("id").unwrap_or(""))
            .collect();
        assert_eq!(ids, vec!["kept"]);
    }

    #[test]
    fn stanza_ids_are_random_and_url_safe() {
        let a = new_stanza_id();
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, new_stanza_id());
    }

    #[test]
    fn stamps() {
        assert_eq!(parse_stamp("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_stamp("1970-01-01T01:00:01.5+01:00"), Some(1_500_000));
        assert_eq!(parse_stamp("yesterday"), None);
        assert_eq!(
            parse_stamp(&stamp_from_micros(1_234_567_891)),
            Some(1_234_567_891)
        );
        assert_eq!(stamp_from_micros(1_500_001), "1970-01-01T00:00:01.500001Z");
    }
}
