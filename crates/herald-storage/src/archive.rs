//! XEP-0313 message archives and XEP-0441 archiving preferences: the contract, and the
//! query planner both backends share.
//!
//! # Ordering and ids
//!
//! Each archived message has a row id (increasing in arrival order per owner, never
//! reused) and a `stanza_id`, the random public id clients see (unique per owner). Paging
//! is keyset paging on the row id: a page costs an index range scan of `max + 1` rows
//! however large the archive is; nothing ever uses `OFFSET`.
//!
//! The store keeps each owner's `stamp_micros` non-decreasing in row-id order
//! ([`ArchiveStore::append_archive`] stores `max(stamp, owner's latest stamp)`), so a time
//! bound (`start`/`end`) becomes a row-id bound with one index probe.

use async_trait::async_trait;

use crate::Result;

/// Which way an archived message went, from the owner's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the owner.
    In,
    /// Sent by the owner.
    Out,
}

impl Direction {
    pub(crate) fn code(self) -> i16 {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }

    pub(crate) fn from_code(c: i64) -> Result<Direction> {
        match c {
            0 => Ok(Direction::In),
            1 => Ok(Direction::Out),
            _ => Err(crate::StorageError::Backend(format!(
                "corrupt archive direction {c}"
            ))),
        }
    }
}

/// A message to archive.
#[derive(Clone, Copy, Debug)]
pub struct NewArchived<'a> {
    /// The public id (XEP-0359 stanza-id); unique per owner.
    pub stanza_id: &'a str,
    /// The conversation partner's bare JID.
    pub with_bare: &'a str,
    /// The partner's resource, `""` for none.
    pub with_resource: &'a str,
    pub stamp_micros: i64,
    pub direction: Direction,
    /// The stanza as XML.
    pub stanza: &'a str,
}

/// An archived message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub id: i64,
    pub stanza_id: String,
    pub with_bare: String,
    pub with_resource: String,
    /// The stored stamp (see the module docs: possibly raised to keep order).
    pub stamp_micros: i64,
    pub direction: Direction,
    pub stanza: String,
}

/// Which messages make up the result set (the XEP-0313 form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveFilter {
    /// Partner bare JID.
    pub with_bare: Option<String>,
    /// With `with_bare`: only this resource of the partner.
    pub with_resource: Option<String>,
    /// Inclusive time bounds, microseconds since the epoch.
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Exclusive bounds by stanza id ('after-id', 'before-id').
    pub after_id: Option<String>,
    pub before_id: Option<String>,
    /// Only these stanza ids ('ids'); empty means no such restriction.
    pub ids: Vec<String>,
}

/// Which page of the result set (XEP-0059).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePaging {
    /// Items after this stanza id (RSM `<after/>`).
    pub after: Option<String>,
    /// Items before this stanza id (RSM `<before>ID</before>`).
    pub before: Option<String>,
    /// Take the last `max` items of what remains (RSM `<before/>`, empty or not) instead
    /// of the first.
    pub from_end: bool,
    /// Page size; 0 asks only for the count.
    pub max: usize,
    /// Count the result set only when it has at most this many items (an indexed scan of
    /// up to this many entries); 0 never counts.
    pub count_limit: u64,
}

/// One page of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePage {
    /// Oldest first.
    pub items: Vec<ArchivedMessage>,
    /// No further items in the paging direction (the page was not cut by `max`).
    pub complete: bool,
    /// Size of the whole result set (filter only, ignoring paging), when at most
    /// `count_limit`.
    pub count: Option<u64>,
    /// Position of the first item within the result set, when `count` is known.
    pub first_index: Option<u64>,
}

/// XEP-0441 default archiving behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveDefault {
    Always,
    Never,
    Roster,
}

impl ArchiveDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Never => "never",
            ArchiveDefault::Roster => "roster",
        }
    }

    pub fn parse(s: &str) -> Option<ArchiveDefault> {
        match s {
            "always" => Some(ArchiveDefault::Always),
            "never" => Some(ArchiveDefault::Never),
            "roster" => Some(ArchiveDefault::Roster),
            _ => None,
        }
    }
}

/// XEP-0441 preferences of one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePrefs {
    pub default: ArchiveDefault,
    /// JIDs (bare or full) always archived, sorted.
    pub always: Vec<String>,
    /// JIDs never archived, sorted. A JID in both lists counts as "never".
    pub never: Vec<String>,
}

/// Message archives (XEP-0313) and their preferences (XEP-0441).
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends a message to `owner`'s archive and returns its row id.
    /// [`crate::StorageError::AlreadyExists`] if the owner has that stanza id already.
    /// The stored stamp is `max(msg.stamp_micros, owner's latest stored stamp)`.
    async fn append_archive(&self, owner: &str, msg: &NewArchived<'_>) -> Result<i64>;

    /// One page of `owner`'s archive. `Ok(None)` when a stanza id named in the filter or
    /// the paging is not in the archive (XEP-0313 item-not-found).
    async fn query_archive(
        &self,
        owner: &str,
        filter: &ArchiveFilter,
        paging: &ArchivePaging,
    ) -> Result<Option<ArchivePage>>;

    /// Replaces the stored stanza of one archived message (XEP-0425 moderation leaves a
    /// tombstone in its place); its id, stamp and position stay. `Ok(false)` when absent.
    async fn replace_archived(&self, owner: &str, stanza_id: &str, stanza: &str) -> Result<bool>;

    /// Deletes `owner`'s messages stamped before `before_micros`; returns how many.
    async fn expire_archive(&self, owner: &str, before_micros: i64) -> Result<u64>;

    /// Deletes messages of every owner `*@domain` stamped before `before_micros` (in
    /// batches; a maintenance sweep, not a hot path); returns how many.
    async fn expire_archive_domain(&self, domain: &str, before_micros: i64) -> Result<u64>;

    /// `None` when the user never set preferences.
    async fn archive_prefs(&self, owner: &str) -> Result<Option<ArchivePrefs>>;

    /// Replaces the preferences.
    async fn set_archive_prefs(&self, owner: &str, prefs: &ArchivePrefs) -> Result<()>;
}

// ---------------------------------------------------------------------------------------
// Shared query planning

/// A bind value.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    I(i64),
    S(String),
}

/// SQL text with its arguments; placeholders are `?` (SQLite) or `$n` (PostgreSQL).
#[derive(Debug)]
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
    numbered: bool,
}

impl Sql {
    fn new(numbered: bool, text: &str) -> Sql {
        Sql {
            text: text.to_string(),
            args: Vec::new(),
            numbered,
        }
    }

    fn push(&mut self, s: &str) -> &mut Sql {
        self.text.push_str(s);
        self
    }

    fn arg(&mut self, a: Arg) -> &mut Sql {
        self.args.push(a);
        if self.numbered {
            self.text.push_str(&format!("${}", self.args.len()));
        } else {
            self.text.push('?');
        }
        self
    }
}

pub(crate) const ITEM_COLUMNS: &str =
    "id, stanza_id, with_bare, with_resource, stamp_micros, direction, stanza";

/// How a backend runs the planner's statements.
#[async_trait]
pub(crate) trait ArchiveExec: Sync {
    /// Whether placeholders are numbered (`$1`).
    fn numbered(&self) -> bool;
    /// Rows of `(stanza_id, id)`.
    async fn pairs(&self, sql: Sql) -> Result<Vec<(String, i64)>>;
    async fn opt_i64(&self, sql: Sql) -> Result<Option<i64>>;
    async fn one_i64(&self, sql: Sql) -> Result<i64>;
    /// Rows of [`ITEM_COLUMNS`].
    async fn items(&self, sql: Sql) -> Result<Vec<ArchivedMessage>>;
}

/// Row-id restrictions: `lo < id < hi`, `id IN ids`.
#[derive(Clone, Debug, Default)]
struct Bounds {
    lo: Option<i64>,
    hi: Option<i64>,
    ids: Option<Vec<i64>>,
}

impl Bounds {
    fn above(&mut self, id: i64) {
        self.lo = Some(self.lo.map_or(id, |l| l.max(id)));
    }

    fn below(&mut self, id: i64) {
        self.hi = Some(self.hi.map_or(id, |h| h.min(id)));
    }
}

fn conditions(sql: &mut Sql, owner: &str, filter: &ArchiveFilter, b: &Bounds) {
    sql.push(" WHERE owner = ").arg(Arg::S(owner.to_string()));
    if let Some(w) = &filter.with_bare {
        sql.push(" AND with_bare = ").arg(Arg::S(w.clone()));
        if let Some(r) = &filter.with_resource {
            sql.push(" AND with_resource = ").arg(Arg::S(r.clone()));
        }
    }
    if let Some(lo) = b.lo {
        sql.push(" AND id > ").arg(Arg::I(lo));
    }
    if let Some(hi) = b.hi {
        sql.push(" AND id < ").arg(Arg::I(hi));
    }
    if let Some(ids) = &b.ids {
        sql.push(" AND id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.arg(Arg::I(*id));
        }
        sql.push(")");
    }
}

/// Counts the rows matching, if there are at most `limit`.
async fn bounded_count<E: ArchiveExec + ?Sized>(
    e: &E,
    owner: &str,
    filter: &ArchiveFilter,
    b: &Bounds,
    limit: u64,
) -> Result<Option<u64>> {
    let mut sql = Sql::new(e.numbered(), "SELECT COUNT(*) FROM (SELECT 1 FROM archive");
    conditions(&mut sql, owner, filter, b);
    sql.push(" LIMIT ")
        .arg(Arg::I(
            i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
        ))
        .push(") t");
    let n = crate::to_u64(e.one_i64(sql).await?, "archive count")?;
    Ok((n <= limit).then_some(n))
}

fn empty_page(count_limit: u64) -> ArchivePage {
    ArchivePage {
        items: Vec::new(),
        complete: true,
        count: (count_limit > 0).then_some(0),
        first_index: None,
    }
}

/// The shared implementation of [`ArchiveStore::query_archive`].
pub(crate) async fn run_query<E: ArchiveExec + ?Sized>(
    e: &E,
    owner: &str,
    filter: &ArchiveFilter,
    paging: &ArchivePaging,
) -> Result<Option<ArchivePage>> {
    // Every stanza id named anywhere must exist; resolve them to row ids in one probe.
    let mut names: Vec<&str> = filter.ids.iter().map(String::as_str).collect();
    for n in [
        &filter.after_id,
        &filter.before_id,
        &paging.after,
        &paging.before,
    ]
    .into_iter()
    .flatten()
    {
        names.push(n);
    }
    names.sort_unstable();
    names.dedup();
    let mut resolved = std::collections::HashMap::new();
    if !names.is_empty() {
        let mut sql = Sql::new(
            e.numbered(),
            "SELECT stanza_id, id FROM archive WHERE owner = ",
        );
        sql.arg(Arg::S(owner.to_string()))
            .push(" AND stanza_id IN (");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.arg(Arg::S(n.to_string()));
        }
        sql.push(")");
        resolved.extend(e.pairs(sql).await?);
        if names.iter().any(|n| !resolved.contains_key(*n)) {
            return Ok(None);
        }
    }
    let row = |n: &String| resolved[n.as_str()];

    let mut fb = Bounds::default();
    if let Some(a) = &filter.after_id {
        fb.above(row(a));
    }
    if let Some(b) = &filter.before_id {
        fb.below(row(b));
    }
    if !filter.ids.is_empty() {
        let mut ids: Vec<i64> = filter.ids.iter().map(row).collect();
        ids.sort_unstable();
        ids.dedup();
        fb.ids = Some(ids);
    }
    // Time bounds to row-id bounds (stamps are non-decreasing in id order per owner).
    if let Some(start) = filter.start {
        let mut sql = Sql::new(e.numbered(), "SELECT id FROM archive WHERE owner = ");
        sql.arg(Arg::S(owner.to_string()))
            .push(" AND stamp_micros >= ")
            .arg(Arg::I(start))
            .push(" ORDER BY stamp_micros, id LIMIT 1");
        match e.opt_i64(sql).await? {
            Some(id) => fb.above(id - 1),
            None => return Ok(Some(empty_page(paging.count_limit))),
        }
    }
    if let Some(end) = filter.end {
        let mut sql = Sql::new(e.numbered(), "SELECT id FROM archive WHERE owner = ");
        sql.arg(Arg::S(owner.to_string()))
            .push(" AND stamp_micros <= ")
            .arg(Arg::I(end))
            .push(" ORDER BY stamp_micros DESC, id DESC LIMIT 1");
        match e.opt_i64(sql).await? {
            Some(id) => fb.below(id + 1),
            None => return Ok(Some(empty_page(paging.count_limit))),
        }
    }

    let mut pb = fb.clone();
    if let Some(a) = &paging.after {
        pb.above(row(a));
    }
    if let Some(b) = &paging.before {
        pb.below(row(b));
    }
    let mut sql = Sql::new(e.numbered(), &format!("SELECT {ITEM_COLUMNS} FROM archive"));
    conditions(&mut sql, owner, filter, &pb);
    sql.push(if paging.from_end {
        " ORDER BY id DESC LIMIT "
    } else {
        " ORDER BY id ASC LIMIT "
    })
    .arg(Arg::I(
        i64::try_from(paging.max.saturating_add(1)).unwrap_or(i64::MAX),
    ));
    let mut items = e.items(sql).await?;
    let complete = items.len() <= paging.max;
    items.truncate(paging.max);
    if paging.from_end {
        items.reverse();
    }

    let mut count = None;
    let mut first_index = None;
    if paging.count_limit > 0 {
        count = bounded_count(e, owner, filter, &fb, paging.count_limit).await?;
        if let (Some(_), Some(first)) = (count, items.first()) {
            let mut before_first = fb.clone();
            before_first.below(first.id);
            first_index =
                bounded_count(e, owner, filter, &before_first, paging.count_limit).await?;
        }
    }
    Ok(Some(ArchivePage {
        items,
        complete,
        count,
        first_index,
    }))
}

/// Normalises preferences for storage: one rule per JID, "never" winning.
pub(crate) fn pref_rules(prefs: &ArchivePrefs) -> Vec<(String, bool)> {
    let mut rules: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    for j in &prefs.always {
        rules.insert(j.clone(), true);
    }
    for j in &prefs.never {
        rules.insert(j.clone(), false);
    }
    rules.into_iter().collect()
}

/// Builds preferences from a stored default and `(jid, always)` rules.
pub(crate) fn prefs_from(default: &str, rules: Vec<(String, bool)>) -> Result<ArchivePrefs> {
    let default = ArchiveDefault::parse(default).ok_or_else(|| {
        crate::StorageError::Backend(format!("corrupt archive default {default:?}"))
    })?;
    let mut p = ArchivePrefs {
        default,
        always: Vec::new(),
        never: Vec::new(),
    };
    for (jid, always) in rules {
        if always {
            p.always.push(jid);
        } else {
            p.never.push(jid);
        }
    }
    p.always.sort();
    p.never.sort();
    Ok(p)
}

/// Rows per batch of a domain-wide expiry.
pub(crate) const EXPIRE_BATCH: i64 = 5000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let mut s = Sql::new(true, "x");
        s.arg(Arg::I(1)).push(",").arg(Arg::S("a".into()));
        assert_eq!(s.text, "x$1,$2");
        let mut s = Sql::new(false, "x");
        s.arg(Arg::I(1)).push(",").arg(Arg::I(2));
        assert_eq!(s.text, "x?,?");
    }

    #[test]
    fn never_wins() {
        let p = ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: vec!["a@x".into(), "b@x".into()],
            never: vec!["b@x".into()],
        };
        assert_eq!(
            pref_rules(&p),
            vec![("a@x".to_string(), true), ("b@x".to_string(), false)]
        );
    }
}
