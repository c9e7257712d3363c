//! RFC 7622: XMPP addresses (JIDs) prepared with PRECIS; XEP-0106 JID escaping.
//!
//! A [`Jid`] is always stored in its normalized form, so comparing, hashing and
//! ordering JIDs is comparing their normalized strings:
//!
//! * the localpart is enforced with the PRECIS `UsernameCaseMapped` profile
//!   (RFC 8265 §3.3) and must not contain `" & ' / : < > @` (RFC 7622 §3.3.1);
//! * the domainpart loses one trailing dot, IP literals are kept (IPv6 in
//!   brackets, lowercased), and anything else goes through UTS #46 / IDNA2008
//!   processing to its lowercased Unicode (U-label) form (RFC 7622 §3.2);
//! * the resourcepart is enforced with the PRECIS `OpaqueString` profile
//!   (RFC 8265 §4.2) and keeps its case.
//!
//! Every part is 1..=1023 bytes once prepared. The server parses a JID for
//! nearly every stanza, so plain ASCII parts take a fast path that gives the
//! same result as the full PRECIS / UTS #46 machinery without running it.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// Longest prepared localpart, domainpart or resourcepart, in bytes (RFC 7622 §3).
pub const MAX_PART_BYTES: usize = 1023;

/// Longest DNS label in its ASCII (A-label) form (RFC 1035 §2.3.4).
const MAX_LABEL_BYTES: usize = 63;

/// Raw input longer than this is refused before any preparation is attempted:
/// three maximal parts plus their separators, with room for the few mappings
/// (width, NFC, a trailing dot) that make input shrink.
const MAX_RAW_BYTES: usize = 4 * MAX_PART_BYTES + 2;

/// ASCII characters RFC 7622 §3.3.1 forbids in a localpart even though the
/// PRECIS IdentifierClass allows them.
const NODE_FORBIDDEN: &[u8] = b"\"&'/:<>@";

/// ASCII characters refused in a domain name. Letters, digits, '-', '.' are
/// the LDH rule; '_' is tolerated because deployed XMPP services use it.
const DOMAIN_DENY: AsciiDenyList = AsciiDenyList::new(true, "!\"#$%&'()*+,/:;<=>?@[\\]^`{|}~");

/// Why a string is not a valid JID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// The whole address is empty.
    #[error("empty JID")]
    Empty,
    /// The localpart is empty, or is refused by UsernameCaseMapped / RFC 7622 §3.3.1.
    #[error("invalid JID localpart")]
    InvalidNode,
    /// The domainpart is empty, not a valid IDNA2008 name, nor an IP literal.
    #[error("invalid JID domainpart")]
    InvalidDomain,
    /// The resourcepart is empty or refused by OpaqueString.
    #[error("invalid JID resourcepart")]
    InvalidResource,
    /// A part is longer than 1023 bytes (or a domain label longer than 63 bytes).
    #[error("JID part too long")]
    TooLong,
}

/// A normalized XMPP address: `[localpart@]domainpart[/resourcepart]`.
///
/// Cloning is cheap (one reference count); parts are slices of one string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    /// The normalized full form.
    full: Arc<str>,
    /// Length of the localpart in bytes; 0 means no localpart (it is never empty).
    node_len: u16,
    /// End of the domainpart; equals `full.len()` when there is no resource.
    domain_end: u16,
}

impl Jid {
    /// Parses and normalizes a JID (RFC 7622 §3.1 splitting, then §3.2–3.4
    /// preparation and enforcement of each part).
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        if s.is_empty() {
            return Err(JidError::Empty);
        }
        if s.len() > MAX_RAW_BYTES {
            return Err(JidError::TooLong);
        }
        // §3.1: the first '/' starts the resourcepart; the first '@' before it
        // ends the localpart.
        let (rest, resource) = match s.find('/') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let (node, domain) = match rest.find('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        Self::build(node, domain, resource)
    }

    /// Builds a JID from its raw parts, preparing each of them.
    pub fn new(node: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        let raw_len = node.map_or(0, str::len) + domain.len() + resource.map_or(0, str::len);
        if raw_len > MAX_RAW_BYTES {
            return Err(JidError::TooLong);
        }
        Self::build(node, domain, resource)
    }

    fn build(node: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        let node = node.map(prepare_node).transpose()?;
        let domain = prepare_domain(domain)?;
        let resource = resource.map(prepare_resource).transpose()?;
        Ok(Self::assemble(
            node.as_deref(),
            &domain,
            resource.as_deref(),
        ))
    }

    /// Joins already-prepared parts.
    fn assemble(node: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
        let mut full = String::with_capacity(
            node.map_or(0, |n| n.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1),
        );
        if let Some(n) = node {
            full.push_str(n);
            full.push('@');
        }
        full.push_str(domain);
        let domain_end = full.len();
        if let Some(r) = resource {
            full.push('/');
            full.push_str(r);
        }
        // Each part is at most 1023 bytes, so every index fits in a u16.
        Jid {
            full: Arc::from(full),
            node_len: node.map_or(0, str::len) as u16,
            domain_end: domain_end as u16,
        }
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        (self.node_len > 0).then(|| &self.full[..self.node_len as usize])
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        &self.full[self.domain_start()..self.domain_end as usize]
    }

    /// The resourcepart, if any.
    pub fn resource(&self) -> Option<&str> {
        let end = self.domain_end as usize;
        (end < self.full.len()).then(|| &self.full[end + 1..])
    }

    /// True when there is no resourcepart.
    pub fn is_bare(&self) -> bool {
        self.domain_end as usize == self.full.len()
    }

    /// The same address without its resourcepart.
    pub fn bare(&self) -> Jid {
        if self.is_bare() {
            return self.clone();
        }
        Jid {
            full: Arc::from(self.bare_str()),
            node_len: self.node_len,
            domain_end: self.domain_end,
        }
    }

    /// Just the domainpart, as a JID.
    pub fn domain_jid(&self) -> Jid {
        if self.node_len == 0 && self.is_bare() {
            return self.clone();
        }
        let domain = self.domain();
        Jid {
            full: Arc::from(domain),
            node_len: 0,
            domain_end: domain.len() as u16,
        }
    }

    /// The bare address with `resource` (prepared with OpaqueString) as its resourcepart.
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        let resource = prepare_resource(resource)?;
        let bare = self.bare_str();
        let mut full = String::with_capacity(bare.len() + 1 + resource.len());
        full.push_str(bare);
        full.push('/');
        full.push_str(&resource);
        Ok(Jid {
            full: Arc::from(full),
            node_len: self.node_len,
            domain_end: self.domain_end,
        })
    }

    /// The normalized full form.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The normalized `localpart@domainpart` or `domainpart` (a slice of [`Jid::as_str`]).
    pub fn bare_str(&self) -> &str {
        &self.full[..self.domain_end as usize]
    }

    fn domain_start(&self) -> usize {
        if self.node_len == 0 {
            0
        } else {
            self.node_len as usize + 1
        }
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

impl TryFrom<&str> for Jid {
    type Error = JidError;
    fn try_from(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

impl TryFrom<String> for Jid {
    type Error = JidError;
    fn try_from(s: String) -> Result<Jid, JidError> {
        Jid::parse(&s)
    }
}

impl AsRef<str> for Jid {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<Jid> for String {
    fn from(jid: Jid) -> String {
        jid.as_str().to_owned()
    }
}

fn check_len(s: &str) -> Result<(), JidError> {
    if s.len() > MAX_PART_BYTES {
        Err(JidError::TooLong)
    } else {
        Ok(())
    }
}

/// Prepares and enforces a localpart: PRECIS UsernameCaseMapped plus the
/// RFC 7622 §3.3.1 exclusions. Also the right preparation for SASL usernames.
pub fn prepare_node(raw: &str) -> Result<Cow<'_, str>, JidError> {
    if raw.is_empty() {
        return Err(JidError::InvalidNode);
    }
    if raw.len() > MAX_RAW_BYTES {
        return Err(JidError::TooLong);
    }
    // Fast path: printable ASCII is PVALID in the IdentifierClass, width
    // mapping, NFC and the bidi rule leave it alone, and case mapping is ASCII
    // lowercasing.
    let bytes = raw.as_bytes();
    if bytes.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        if bytes.iter().any(|b| NODE_FORBIDDEN.contains(b)) {
            return Err(JidError::InvalidNode);
        }
        check_len(raw)?;
        return Ok(if bytes.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        });
    }
    let out = UsernameCaseMapped::enforce(raw).map_err(|_| JidError::InvalidNode)?;
    // Width mapping can turn e.g. U+FF20 into '@', so check the output.
    if out.bytes().any(|b| NODE_FORBIDDEN.contains(&b)) {
        return Err(JidError::InvalidNode);
    }
    // A stored JID must reparse to itself; refuse the rare strings on which
    // enforcement is not idempotent.
    match UsernameCaseMapped::enforce(out.as_ref()) {
        Ok(again) if again == out => {}
        _ => return Err(JidError::InvalidNode),
    }
    check_len(&out)?;
    Ok(Cow::Owned(out.into_owned()))
}

/// Prepares and enforces a resourcepart with PRECIS OpaqueString.
pub fn prepare_resource(raw: &str) -> Result<Cow<'_, str>, JidError> {
    if raw.is_empty() {
        return Err(JidError::InvalidResource);
    }
    if raw.len() > MAX_RAW_BYTES {
        return Err(JidError::TooLong);
    }
    // Fast path: ASCII space and printable ASCII are valid in the
    // FreeformClass and no OpaqueString rule changes them.
    if raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        check_len(raw)?;
        return Ok(Cow::Borrowed(raw));
    }
    let out = OpaqueString::enforce(raw).map_err(|_| JidError::InvalidResource)?;
    match OpaqueString::enforce(out.as_ref()) {
        Ok(again) if again == out => {}
        _ => return Err(JidError::InvalidResource),
    }
    check_len(&out)?;
    Ok(Cow::Owned(out.into_owned()))
}

/// Prepares a domainpart (RFC 7622 §3.2): strips one trailing dot, keeps IP
/// literals, otherwise applies UTS #46 and returns the lowercased U-label form.
pub fn prepare_domain(raw: &str) -> Result<Cow<'_, str>, JidError> {
    if raw.len() > MAX_RAW_BYTES {
        return Err(JidError::TooLong);
    }
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.is_empty() {
        return Err(JidError::InvalidDomain);
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(JidError::InvalidDomain)?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| JidError::InvalidDomain)?;
        return Ok(if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        });
    }
    if raw.parse::<Ipv4Addr>().is_ok() {
        return Ok(Cow::Borrowed(raw));
    }
    if is_plain_ascii_domain(raw) {
        check_len(raw)?;
        return Ok(if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        });
    }
    let uts46 = Uts46::new();
    let (unicode, result) = uts46.to_unicode(raw.as_bytes(), DOMAIN_DENY, Hyphens::CheckFirstLast);
    if result.is_err() {
        return Err(JidError::InvalidDomain);
    }
    let unicode = unicode.into_owned();
    // Belt and braces: whatever UTS #46 mapped, the ASCII left must be LDH,
    // '_' or dots, and no label may be empty.
    if unicode
        .bytes()
        .any(|b| b.is_ascii() && !(b.is_ascii_alphanumeric() || b"-._".contains(&b)))
        || unicode.split('.').any(str::is_empty)
    {
        return Err(JidError::InvalidDomain);
    }
    let ascii = uts46
        .to_ascii(
            unicode.as_bytes(),
            DOMAIN_DENY,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map_err(|_| JidError::InvalidDomain)?;
    if ascii.split('.').any(|l| l.len() > MAX_LABEL_BYTES) {
        return Err(JidError::TooLong);
    }
    // Reprocessing the output must be a no-op, so that stored JIDs reparse to
    // themselves.
    let (again, result) =
        uts46.to_unicode(unicode.as_bytes(), DOMAIN_DENY, Hyphens::CheckFirstLast);
    if result.is_err() || again != unicode.as_str() {
        return Err(JidError::InvalidDomain);
    }
    check_len(&unicode)?;
    Ok(Cow::Owned(unicode))
}

/// True for names UTS #46 would only lowercase: LDH (and '_') labels, none
/// empty, none starting or ending with '-', none with "--" in positions 3–4
/// (which includes "xn--" A-labels, left to the full path), none too long.
fn is_plain_ascii_domain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_LABEL_BYTES
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && !(b.len() >= 4 && &b[2..4] == b"--")
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    })
}

/// The XEP-0106 escapable characters and their escapes, in order.
const ESCAPES: [(char, &str); 10] = [
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

/// The character an escape sequence's two hex digits stand for (case significant).
fn unescaped_char(hex: &[u8]) -> Option<char> {
    ESCAPES
        .iter()
        .find(|(_, h)| h.as_bytes() == hex)
        .map(|&(c, _)| c)
}

/// XEP-0106 escaping of a raw localpart (e.g. `d'artagnan` → `d\27artagnan`).
///
/// The nine disallowed characters are always escaped; a backslash is escaped
/// (as `\5c`) only when it starts a sequence that unescaping would otherwise
/// transform (XEP-0106 §4.2 rule 7, §4.4), so `foo\bar` stays as it is.
/// XEP-0106 forbids `\20` at either end of an escaped localpart: trim
/// surrounding spaces before calling this when producing a JID.
pub fn escape_node(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    let bytes = raw.as_bytes();
    for (i, c) in raw.char_indices() {
        let escape = match c {
            '\\' => bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| unescaped_char(hex).is_some()),
            _ => ESCAPES.iter().any(|&(e, _)| e == c),
        };
        if escape {
            let hex = ESCAPES.iter().find(|&&(e, _)| e == c).map_or("", |e| e.1);
            out.push('\\');
            out.push_str(hex);
        } else {
            out.push(c);
        }
    }
    out
}

/// XEP-0106 unescaping (e.g. `d\27artagnan` → `d'artagnan`). Only the ten
/// specified lowercase sequences are transformed; anything else is kept.
pub fn unescape_node(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = String::with_capacity(escaped.len());
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(c) = bytes.get(i + 1..i + 3).and_then(unescaped_char) {
                out.push_str(&escaped[last..i]);
                out.push(c);
                i += 3;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&escaped[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let j = Jid::parse("A@B/C").unwrap();
        assert_eq!(j.node(), Some("a"));
        assert_eq!(j.domain(), "b");
        assert_eq!(j.resource(), Some("C"));
        assert_eq!(j.bare_str(), "a@b");
        assert_eq!(format!("{j:?}"), "\"a@b/C\"");
    }

    #[test]
    fn fast_and_slow_paths_agree_on_ascii() {
        for s in ["Juliet", "a.b-c_d", "x!y#z$%", "~tilde", "UPPER123"] {
            let fast = prepare_node(s).unwrap();
            let slow = UsernameCaseMapped::enforce(s).unwrap();
            assert_eq!(fast, slow, "{s}");
        }
        for s in [
            "Some Resource",
            " lead",
            "trail ",
            "a@b/c",
            "!\"#$%&'()*+,-./",
        ] {
            let fast = prepare_resource(s).unwrap();
            let slow = OpaqueString::enforce(s).unwrap();
            assert_eq!(fast, slow, "{s}");
        }
        for s in ["Example.COM", "a-b.c_d", "123.example", "x.y.z"] {
            let fast = prepare_domain(s).unwrap();
            let (slow, r) =
                Uts46::new().to_unicode(s.as_bytes(), DOMAIN_DENY, Hyphens::CheckFirstLast);
            r.unwrap();
            assert_eq!(fast, slow, "{s}");
        }
    }
}
