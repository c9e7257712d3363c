//! The push parser: bytes in, stream events out.

use crate::element::{Element, Node};
use crate::error::XmlError;
use crate::lex::{decode, is_ws, name_len, split_qname};

/// The namespace the `xml` prefix is permanently bound to.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace the `xmlns` prefix is reserved for; nothing may be bound to it.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// A buffer that grew past this is released once it is empty again, so an idle
/// connection does not keep the memory of its largest stanza.
const KEEP_CAPACITY: usize = 8 * 1024;

/// Resource bounds applied to every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Raw bytes of one top-level element (a stanza, or the stream header tag).
    pub max_stanza_bytes: usize,
    /// Deepest element nesting, counting the stream root as depth 0.
    pub max_depth: usize,
    /// Attributes on one element, namespace declarations included.
    pub max_attrs: usize,
    /// Bytes in one element or attribute name (prefix included).
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 64,
            max_attrs: 64,
            max_name_len: 256,
        }
    }
}

/// The stream root's open tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Local name of the root (normally "stream").
    pub name: String,
    /// Namespace of the root (normally `http://etherx.jabber.org/streams`).
    pub ns: String,
    /// The default namespace declared on the root (e.g. `jabber:client`), if any.
    pub default_ns: Option<String>,
    /// The root's attributes other than namespace declarations.
    pub attrs: Vec<(String, String)>,
}

impl StreamHeader {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream root was opened.
    Open(StreamHeader),
    /// A complete child of the root.
    Stanza(Element),
    /// The stream root was closed.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the root element; `decl` once the XML declaration was seen.
    Prolog { decl: bool },
    /// Inside the root element.
    Open,
    /// After the root element was closed.
    Closed,
}

/// An element under construction: the stanza or one of its descendants.
#[derive(Debug)]
struct Frame {
    elem: Element,
    /// The prefix the open tag used, to check the close tag's name.
    prefix: String,
    /// Length of the namespace scope stack before this element's declarations.
    ns_mark: usize,
}

#[derive(Debug)]
struct NsDecl {
    /// "" for the default namespace.
    prefix: String,
    uri: String,
}

/// An attribute as written in a start tag, before namespace resolution.
struct RawAttr<'a> {
    prefix: &'a str,
    local: &'a str,
    qname: &'a str,
    value: String,
}

/// What one step of the tokenizer produced.
enum Step {
    /// A token was consumed; keep going.
    Continue,
    Event(StreamEvent),
    /// The current token is incomplete.
    NeedMore,
}

/// Incremental XMPP stream parser.
///
/// Feed it bytes as they arrive with [`feed`](StreamParser::feed), then call
/// [`next_event`](StreamParser::next_event) until it returns `Ok(None)`. Memory is only
/// bounded if events are drained between feeds: `feed` itself just appends.
#[derive(Debug)]
pub struct StreamParser {
    limits: Limits,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// Where the search for the end of the token at `pos` resumes (0 = from the start),
    /// so that a token arriving in many pieces is scanned once, not once per piece.
    scan: usize,
    /// Open quote character while scanning a start tag for its `>`, or 0.
    quote: u8,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Stream offset of the `<` of the stanza being built.
    stanza_start: u64,
    phase: Phase,
    /// Elements opened inside the current stanza; empty between stanzas.
    stack: Vec<Frame>,
    /// Namespace declarations in scope, innermost last; the root's stay for the stream.
    ns: Vec<NsDecl>,
    root_prefix: String,
    root_name: String,
    pending_close: bool,
    error: Option<XmlError>,
    /// One standalone document ([`parse_document`]): its root element is returned as a
    /// stanza and nothing but whitespace may follow it.
    document: bool,
}

impl StreamParser {
    pub fn new(limits: Limits) -> StreamParser {
        StreamParser {
            limits,
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            quote: 0,
            base: 0,
            stanza_start: 0,
            phase: Phase::Prolog { decl: false },
            stack: Vec::new(),
            ns: Vec::new(),
            root_prefix: String::new(),
            root_name: String::new(),
            pending_close: false,
            error: None,
            document: false,
        }
    }

    /// Appends received bytes. Ignored once the parser has failed.
    pub fn feed(&mut self, data: &[u8]) {
        if self.error.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Unconsumed bytes currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next event, `Ok(None)` when more bytes are needed. After an error the parser
    /// is dead and keeps returning that error.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.pending_close {
            self.pending_close = false;
            self.phase = Phase::Closed;
            return Ok(Some(StreamEvent::Close));
        }
        loop {
            match self.step() {
                Ok(Step::Continue) => {}
                Ok(Step::Event(ev)) => return Ok(Some(ev)),
                Ok(Step::NeedMore) => {
                    if let Err(e) = self.check_limit(self.buf.len()) {
                        return Err(self.fail(e));
                    }
                    self.compact();
                    return Ok(None);
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn fail(&mut self, e: XmlError) -> XmlError {
        self.error = Some(e.clone());
        self.buf = Vec::new();
        self.pos = 0;
        self.stack = Vec::new();
        self.ns = Vec::new();
        e
    }

    /// Frees the input buffer when everything fed has been parsed, so an idle connection
    /// holds no buffer. Call it only after `next_event` returned `Ok(None)`.
    pub fn release_idle(&mut self) {
        if self.pos >= self.buf.len() && self.buf.capacity() > 0 {
            self.compact();
            if self.buf.is_empty() {
                self.buf = Vec::new();
            }
        }
    }

    /// Drops consumed bytes. Called only when waiting for input, at which point what
    /// remains is a single partial token, so each byte is moved at most once.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        self.buf.drain(..self.pos);
        self.base += self.pos as u64;
        self.scan = self.scan.saturating_sub(self.pos);
        self.pos = 0;
        // A deep stanza leaves a large element stack and scope list behind; between
        // stanzas only the root's declarations remain, so give the rest back.
        if self.stack.is_empty() {
            if self.stack.capacity() > 8 {
                self.stack = Vec::new();
            }
            if self.ns.capacity() > 16 && self.ns.len() * 4 < self.ns.capacity() {
                self.ns.shrink_to(self.ns.len());
            }
        }
        if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() * 4 < self.buf.capacity() {
            if self.buf.is_empty() {
                self.buf = Vec::new();
            } else {
                self.buf.shrink_to(self.buf.len() * 2);
            }
        }
    }

    /// Enforces `max_stanza_bytes` on the unit being read: the current stanza, or the
    /// top-level token at `pos`. `end` is the buffer index up to which bytes have been
    /// looked at; every decision is preceded by this check so the outcome does not
    /// depend on how the input was split.
    fn check_limit(&self, end: usize) -> Result<(), XmlError> {
        let start = if self.stack.is_empty() {
            self.base + self.pos as u64
        } else {
            self.stanza_start
        };
        if self.base + end as u64 - start > self.limits.max_stanza_bytes as u64 {
            Err(XmlError::StanzaTooBig)
        } else {
            Ok(())
        }
    }

    fn consume(&mut self, end: usize) {
        self.pos = end;
        self.scan = 0;
        self.quote = 0;
    }

    fn step(&mut self) -> Result<Step, XmlError> {
        let Some(&b) = self.buf.get(self.pos) else {
            return Ok(Step::NeedMore);
        };
        if b != b'<' {
            if self.stack.is_empty() {
                // Outside any stanza only whitespace may appear (keepalives). It is
                // consumed as it arrives so it never accumulates.
                let rest = &self.buf[self.pos..];
                let n = rest.iter().take_while(|&&c| is_ws(c)).count();
                if n == rest.len() || rest[n] == b'<' {
                    self.consume(self.pos + n);
                    return Ok(Step::Continue);
                }
                return Err(XmlError::nwf(match self.phase {
                    Phase::Open => "character data at stream level",
                    Phase::Prolog { .. } => "character data before the stream root",
                    Phase::Closed => "data after the end of the stream",
                }));
            }
            return self.text();
        }
        let Some(&b1) = self.buf.get(self.pos + 1) else {
            return Ok(Step::NeedMore);
        };
        match b1 {
            b'/' => self.end_tag(),
            b'?' => self.question(),
            b'!' => self.bang(),
            _ => self.start_tag(),
        }
    }

    /// Character data inside a stanza, up to the next `<`.
    fn text(&mut self) -> Result<Step, XmlError> {
        let from = self.scan.max(self.pos);
        let Some(off) = self.buf[from..].iter().position(|&c| c == b'<') else {
            self.scan = self.buf.len();
            return Ok(Step::NeedMore);
        };
        let end = from + off;
        self.check_limit(end + 1)?;
        let s = std::str::from_utf8(&self.buf[self.pos..end]).map_err(|_| XmlError::InvalidUtf8)?;
        let text = decode(s, false, false)?;
        self.push_text(text);
        self.consume(end);
        Ok(Step::Continue)
    }

    fn push_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        let top = &mut self
            .stack
            .last_mut()
            .expect("text only inside a stanza")
            .elem;
        match top.children.last_mut() {
            Some(Node::Text(prev)) => prev.push_str(&text),
            _ => top.children.push(Node::Text(text)),
        }
    }

    /// Compares the bytes after `pos` with `expect` as far as they have arrived.
    /// Returns Ok(true) on a full match, Ok(false) if more bytes are needed, and
    /// Err(index just past the first mismatching byte) otherwise.
    fn match_prefix(&self, expect: &[u8]) -> Result<bool, usize> {
        let have = &self.buf[self.pos..];
        for (i, &e) in expect.iter().enumerate() {
            match have.get(i) {
                None => return Ok(false),
                Some(&c) if c != e => return Err(self.pos + i + 1),
                Some(_) => {}
            }
        }
        Ok(true)
    }

    /// Finds `term` at or after `from`, resuming a previous search.
    fn find_terminator(&mut self, from: usize, term: &[u8]) -> Option<usize> {
        let start = self.scan.max(from);
        let found = self.buf[start..]
            .windows(term.len())
            .position(|w| w == term)
            .map(|i| start + i);
        if found.is_none() {
            self.scan = self.buf.len().saturating_sub(term.len() - 1).max(from);
        }
        found
    }

    /// `<?`: the XML declaration before the root, otherwise a forbidden processing
    /// instruction.
    fn question(&mut self) -> Result<Step, XmlError> {
        let pi = XmlError::RestrictedXml("processing instruction");
        if self.phase != (Phase::Prolog { decl: false }) {
            self.check_limit(self.pos + 2)?;
            return Err(pi);
        }
        match self.match_prefix(b"<?xml") {
            Ok(false) => return Ok(Step::NeedMore),
            Err(at) => {
                self.check_limit(at)?;
                return Err(pi);
            }
            Ok(true) => {}
        }
        let Some(&after) = self.buf.get(self.pos + 5) else {
            return Ok(Step::NeedMore);
        };
        self.check_limit(self.pos + 6)?;
        if !is_ws(after) {
            return Err(pi);
        }
        let Some(q) = self.find_terminator(self.pos + 6, b"?>") else {
            return Ok(Step::NeedMore);
        };
        let end = q + 2;
        self.check_limit(end)?;
        let body =
            std::str::from_utf8(&self.buf[self.pos + 6..q]).map_err(|_| XmlError::InvalidUtf8)?;
        parse_decl(body)?;
        self.phase = Phase::Prolog { decl: true };
        self.consume(end);
        Ok(Step::Continue)
    }

    /// `<!`: CDATA inside a stanza; comments and DTDs are refused.
    fn bang(&mut self) -> Result<Step, XmlError> {
        let Some(&b2) = self.buf.get(self.pos + 2) else {
            return Ok(Step::NeedMore);
        };
        self.check_limit(self.pos + 3)?;
        match b2 {
            b'-' => return Err(XmlError::RestrictedXml("comment")),
            b'[' => {}
            c if c.is_ascii_alphabetic() => return Err(XmlError::RestrictedXml("dtd")),
            _ => return Err(XmlError::nwf("bad markup declaration")),
        }
        match self.match_prefix(b"<![CDATA[") {
            Ok(false) => return Ok(Step::NeedMore),
            Err(at) => {
                self.check_limit(at)?;
                return Err(XmlError::nwf("bad markup declaration"));
            }
            Ok(true) => {}
        }
        self.check_limit(self.pos + 9)?;
        if self.stack.is_empty() {
            return Err(XmlError::nwf("CDATA section outside a stanza"));
        }
        let Some(close) = self.find_terminator(self.pos + 9, b"]]>") else {
            return Ok(Step::NeedMore);
        };
        let end = close + 3;
        self.check_limit(end)?;
        let s = std::str::from_utf8(&self.buf[self.pos + 9..close])
            .map_err(|_| XmlError::InvalidUtf8)?;
        let text = decode(s, false, true)?;
        self.push_text(text);
        self.consume(end);
        Ok(Step::Continue)
    }

    fn end_tag(&mut self) -> Result<Step, XmlError> {
        let Some(gt) = self.find_terminator(self.pos + 2, b">") else {
            return Ok(Step::NeedMore);
        };
        let end = gt + 1;
        self.check_limit(end)?;
        let s =
            std::str::from_utf8(&self.buf[self.pos + 2..gt]).map_err(|_| XmlError::InvalidUtf8)?;
        let n = name_len(s);
        if n == 0 || !s[n..].bytes().all(is_ws) {
            return Err(XmlError::nwf("malformed end tag"));
        }
        let (prefix, local) = split_qname(&s[..n])?;
        let mismatch = || XmlError::NotWellFormed(format!("unexpected end tag '{}'", &s[..n]));
        let Some(top) = self.stack.last() else {
            if self.phase == Phase::Open && prefix == self.root_prefix && local == self.root_name {
                self.phase = Phase::Closed;
                self.consume(end);
                return Ok(Step::Event(StreamEvent::Close));
            }
            return Err(mismatch());
        };
        if top.prefix != prefix || top.elem.name != local {
            return Err(mismatch());
        }
        let frame = self.stack.pop().expect("checked above");
        self.ns.truncate(frame.ns_mark);
        self.consume(end);
        Ok(self.finish_element(frame.elem))
    }

    /// Attaches a completed element to its parent, or emits it if it is a stanza.
    fn finish_element(&mut self, elem: Element) -> Step {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.elem.children.push(Node::Element(elem));
                Step::Continue
            }
            None => {
                if self.document {
                    self.phase = Phase::Closed;
                }
                Step::Event(StreamEvent::Stanza(elem))
            }
        }
    }

    /// Scans a start tag for its closing `>`, skipping over quoted attribute values.
    fn find_tag_end(&mut self) -> Option<usize> {
        let from = self.scan.max(self.pos + 1);
        let mut quote = self.quote;
        for (i, &c) in self.buf[from..].iter().enumerate() {
            if quote != 0 {
                if c == quote {
                    quote = 0;
                }
            } else if c == b'>' {
                return Some(from + i);
            } else if c == b'\'' || c == b'"' {
                quote = c;
            }
        }
        self.quote = quote;
        self.scan = self.buf.len();
        None
    }

    fn start_tag(&mut self) -> Result<Step, XmlError> {
        let Some(gt) = self.find_tag_end() else {
            return Ok(Step::NeedMore);
        };
        let end = gt + 1;
        self.check_limit(end)?;
        if self.phase == Phase::Closed {
            return Err(XmlError::nwf(if self.document {
                "more than one element in the document"
            } else {
                "element after the end of the stream"
            }));
        }
        let in_prolog = matches!(self.phase, Phase::Prolog { .. });
        let is_root = in_prolog && !self.document;
        if in_prolog && self.document {
            // The document element is built like a stanza; no declaration may follow.
            self.phase = Phase::Open;
        }
        let depth = if is_root { 0 } else { self.stack.len() + 1 };
        if depth > self.limits.max_depth {
            return Err(XmlError::TooDeep);
        }
        // Take the buffer so the tag can be borrowed while the scopes are updated.
        let buf = std::mem::take(&mut self.buf);
        let res = self.open_element(&buf[self.pos + 1..gt], is_root);
        self.buf = buf;
        let (elem, prefix, ns_mark, self_closing, default_ns) = res?;
        let stanza_start = self.base + self.pos as u64;
        self.consume(end);

        if is_root {
            self.phase = Phase::Open;
            self.root_prefix = prefix;
            self.root_name = elem.name.clone();
            self.pending_close = self_closing;
            return Ok(Step::Event(StreamEvent::Open(StreamHeader {
                name: elem.name,
                ns: elem.ns,
                default_ns,
                attrs: elem.attrs,
            })));
        }
        if self.stack.is_empty() {
            self.stanza_start = stanza_start;
        }
        if self_closing {
            self.ns.truncate(ns_mark);
            return Ok(self.finish_element(elem));
        }
        self.stack.push(Frame {
            elem,
            prefix,
            ns_mark,
        });
        Ok(Step::Continue)
    }

    /// Parses a complete start tag (without `<` and `>`), pushes its namespace
    /// declarations and resolves its names.
    #[allow(clippy::type_complexity)]
    fn open_element(
        &mut self,
        tag: &[u8],
        is_root: bool,
    ) -> Result<(Element, String, usize, bool, Option<String>), XmlError> {
        let s = std::str::from_utf8(tag).map_err(|_| XmlError::InvalidUtf8)?;
        let (s, self_closing) = match s.strip_suffix('/') {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let n = name_len(s);
        if n == 0 {
            return Err(XmlError::nwf("malformed start tag"));
        }
        if n > self.limits.max_name_len {
            return Err(XmlError::NameTooLong);
        }
        let qname = &s[..n];
        let (prefix, local) = split_qname(qname)?;
        if prefix == "xmlns" {
            return Err(XmlError::nwf("element with the xmlns prefix"));
        }

        let mut raw: Vec<RawAttr<'_>> = Vec::new();
        let mut rest = &s[n..];
        loop {
            let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
            if trimmed.is_empty() {
                break;
            }
            if trimmed.len() == rest.len() {
                return Err(XmlError::nwf("missing whitespace between attributes"));
            }
            if raw.len() == self.limits.max_attrs {
                return Err(XmlError::TooManyAttributes);
            }
            let an = name_len(trimmed);
            if an == 0 {
                return Err(XmlError::nwf("malformed attribute"));
            }
            if an > self.limits.max_name_len {
                return Err(XmlError::NameTooLong);
            }
            let aname = &trimmed[..an];
            let after = trimmed[an..].trim_start_matches([' ', '\t', '\r', '\n']);
            let Some(after) = after.strip_prefix('=') else {
                return Err(XmlError::nwf("attribute without '='"));
            };
            let after = after.trim_start_matches([' ', '\t', '\r', '\n']);
            let q = match after.as_bytes().first() {
                Some(&q @ (b'\'' | b'"')) => q as char,
                _ => return Err(XmlError::nwf("unquoted attribute value")),
            };
            let Some(close) = after[1..].find(q) else {
                return Err(XmlError::nwf("unterminated attribute value"));
            };
            let value = decode(&after[1..1 + close], true, false)?;
            let (aprefix, alocal) = split_qname(aname)?;
            raw.push(RawAttr {
                prefix: aprefix,
                local: alocal,
                qname: aname,
                value,
            });
            rest = &after[close + 2..];
        }

        // Namespace declarations first: they apply to the element's own name and to
        // attributes written before them.
        let ns_mark = self.ns.len();
        let mut default_ns = None;
        let mut plain = 0;
        for a in raw.iter_mut() {
            let declared = if a.prefix.is_empty() && a.local == "xmlns" {
                ""
            } else if a.prefix == "xmlns" {
                a.local
            } else {
                plain += 1;
                continue;
            };
            if self.ns[ns_mark..].iter().any(|d| d.prefix == declared) {
                return Err(XmlError::nwf("duplicate namespace declaration"));
            }
            if declared == "xml" {
                if a.value != XML_NS {
                    return Err(XmlError::nwf("the xml prefix cannot be rebound"));
                }
                continue;
            }
            if declared == "xmlns" || a.value == XML_NS || a.value == XMLNS_NS {
                return Err(XmlError::nwf("reserved namespace binding"));
            }
            if !declared.is_empty() && a.value.is_empty() {
                return Err(XmlError::nwf("a prefix cannot be undeclared"));
            }
            if declared.is_empty() && is_root {
                default_ns = Some(a.value.clone());
            }
            self.ns.push(NsDecl {
                prefix: declared.to_owned(),
                uri: std::mem::take(&mut a.value),
            });
        }

        let ns = self.resolve(prefix)?.to_owned();
        let mut attrs: Vec<(String, String)> = Vec::with_capacity(plain);
        for a in raw {
            if (a.prefix.is_empty() && a.local == "xmlns") || a.prefix == "xmlns" {
                continue;
            }
            let key = if a.prefix.is_empty() || a.prefix == "xml" {
                a.qname.to_owned()
            } else {
                let uri = self.resolve(a.prefix)?;
                let mut k = String::with_capacity(uri.len() + a.local.len() + 2);
                k.push('{');
                k.push_str(uri);
                k.push('}');
                k.push_str(a.local);
                k
            };
            if attrs.iter().any(|(k, _)| *k == key) {
                return Err(XmlError::NotWellFormed(format!(
                    "duplicate attribute '{}'",
                    a.qname
                )));
            }
            attrs.push((key, a.value));
        }
        let elem = Element {
            name: local.to_owned(),
            ns,
            attrs,
            children: Vec::new(),
        };
        Ok((elem, prefix.to_owned(), ns_mark, self_closing, default_ns))
    }

    /// The namespace bound to `prefix` ("" = default namespace) in the current scope.
    fn resolve(&self, prefix: &str) -> Result<&str, XmlError> {
        if prefix == "xml" {
            return Ok(XML_NS);
        }
        match self.ns.iter().rev().find(|d| d.prefix == prefix) {
            Some(d) => Ok(&d.uri),
            None if prefix.is_empty() => Ok(""),
            None => Err(XmlError::UndeclaredPrefix(prefix.to_owned())),
        }
    }
}

/// Parses one complete, standalone XML document (an optional XML declaration, one element,
/// optional whitespace) under the same restrictions and limits as a stream, returning its
/// root element. Message-oriented transports use it: RFC 7395 WebSocket frames each carry
/// exactly one such document, with every namespace declared in it.
///
/// Partial elements, a second element and character data outside the element are
/// `not-well-formed`; nothing is inherited, so an element without `xmlns` is in no namespace.
pub fn parse_document(data: &[u8], limits: Limits) -> Result<Element, XmlError> {
    let mut p = StreamParser::new(limits);
    p.document = true;
    p.feed(data);
    match p.next_event()? {
        Some(StreamEvent::Stanza(el)) => match p.next_event()? {
            None if p.buffered() == 0 => Ok(el),
            _ => Err(XmlError::nwf("data after the element")),
        },
        Some(_) => Err(XmlError::nwf("not a single element")),
        None if p.stack.is_empty() && p.buffered() == 0 => Err(XmlError::nwf("no element")),
        None => Err(XmlError::nwf("incomplete element")),
    }
}

/// Checks the XML declaration's pseudo-attributes: version 1.x, UTF-8 if an encoding
/// is named, optional standalone.
fn parse_decl(body: &str) -> Result<(), XmlError> {
    let bad = || XmlError::nwf("malformed XML declaration");
    let mut rest = body.trim_matches([' ', '\t', '\r', '\n']);
    let mut seen: [bool; 3] = [false; 3];
    let names = ["version", "encoding", "standalone"];
    while !rest.is_empty() {
        let n = name_len(rest);
        let idx = names
            .iter()
            .position(|x| *x == &rest[..n])
            .ok_or_else(bad)?;
        // The pseudo-attributes must come in this order, each at most once.
        if seen[idx..].iter().any(|&s| s) || (idx > 0 && !seen[0]) {
            return Err(bad());
        }
        seen[idx] = true;
        let after = rest[n..].trim_start_matches([' ', '\t', '\r', '\n']);
        let after = after.strip_prefix('=').ok_or_else(bad)?;
        let after = after.trim_start_matches([' ', '\t', '\r', '\n']);
        let q = match after.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(bad()),
        };
        let close = after[1..].find(q).ok_or_else(bad)?;
        let value = &after[1..1 + close];
        match idx {
            0 if !value.starts_with("1.") => return Err(bad()),
            1 if !value.eq_ignore_ascii_case("utf-8") => {
                return Err(XmlError::UnsupportedEncoding(value.to_owned()))
            }
            2 if value != "yes" && value != "no" => return Err(bad()),
            _ => {}
        }
        let next = &after[close + 2..];
        let trimmed = next.trim_start_matches([' ', '\t', '\r', '\n']);
        if !trimmed.is_empty() && trimmed.len() == next.len() {
            return Err(bad());
        }
        rest = trimmed;
    }
    if !seen[0] {
        return Err(bad());
    }
    Ok(())
}
