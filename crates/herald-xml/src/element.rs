//! The element tree handed out by the parser and built by handlers, and its serializer.

/// A child of an [`Element`]: another element or a run of character data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element with its namespace already resolved.
///
/// `name` is the local name (never prefixed) and `ns` its namespace URI ("" for none).
/// Attribute keys are plain local names for unqualified attributes, `xml:…` for the
/// predefined `xml` prefix, and `{uri}local` for any other namespaced attribute.
/// Namespace declarations are not attributes: the serializer writes them as needed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Element {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    pub fn with_child(mut self, child: Element) -> Element {
        self.push(child);
        self
    }

    /// Builder form of [`Element::push_text`].
    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.push_text(text);
        self
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an attribute, replacing the value of an existing one with the same key.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let idx = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(idx).1)
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The first direct child element with this name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.is(name, ns) => Some(e),
            _ => None,
        })
    }

    /// Direct element children, in document order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Appends character data. Empty text is dropped and text following text is merged
    /// into one node, so that built trees compare equal to what the parser produces
    /// from their serialization.
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(prev)) => prev.push_str(&text),
            _ => self.children.push(Node::Text(text)),
        }
    }

    /// Concatenation of the direct text children (not of descendants).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Removes every direct child element with this name and namespace; returns how many.
    pub fn remove_children(&mut self, name: &str, ns: &str) -> usize {
        let before = self.children.len();
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.is(name, ns)));
        before - self.children.len()
    }

    /// Serializes the element. `xmlns='…'` is written only when the element's namespace
    /// differs from `parent_ns`, which is the namespace the reader will already have in
    /// scope as its default (the parent element's, or the stream's for a stanza).
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if self.ns != parent_ns {
            out.extend_from_slice(b" xmlns='");
            escape_attr(&self.ns, out);
            out.push(b'\'');
        }
        // Namespaced attributes need a prefix; one is generated per distinct URI on this
        // element. Element names are always written unprefixed, so these prefixes can
        // never clash with an element's own name resolution.
        let mut prefixes: Vec<&str> = Vec::new();
        for (key, value) in &self.attrs {
            out.push(b' ');
            match split_clark(key) {
                Some((uri, local)) => {
                    let idx = match prefixes.iter().position(|u| *u == uri) {
                        Some(i) => i,
                        None => {
                            prefixes.push(uri);
                            let i = prefixes.len() - 1;
                            out.extend_from_slice(b"xmlns:a");
                            push_usize(out, i);
                            out.extend_from_slice(b"='");
                            escape_attr(uri, out);
                            out.extend_from_slice(b"' ");
                            i
                        }
                    };
                    out.push(b'a');
                    push_usize(out, idx);
                    out.push(b':');
                    out.extend_from_slice(local.as_bytes());
                }
                None => out.extend_from_slice(key.as_bytes()),
            }
            out.extend_from_slice(b"='");
            escape_attr(value, out);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    /// Serializes as a standalone fragment: the root always carries its `xmlns`
    /// (unless its namespace is empty).
    pub fn to_xml(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out, "");
        // Only UTF-8 strings and ASCII markup were written.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Splits an attribute key of the form `{uri}local`.
fn split_clark(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix('{')?;
    let close = rest.find('}')?;
    Some((&rest[..close], &rest[close + 1..]))
}

fn push_usize(out: &mut Vec<u8>, n: usize) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Copies `s` to `out`, replacing each byte for which `repl` returns an entity.
#[inline]
fn escape_with(s: &str, out: &mut Vec<u8>, repl: impl Fn(u8) -> Option<&'static [u8]>) {
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(r) = repl(b) {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(r);
            run = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Escapes character data: `&`, `<` and `>` (the latter so `]]>` can never appear).
/// A carriage return is written as `&#13;` because a literal one would be turned into
/// a line feed by any XML reader.
pub fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, |b| match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\r' => Some(b"&#13;"),
        _ => None,
    });
}

/// Escapes an attribute value for either quote style: `&`, `<`, `>`, `'`, `"`.
/// Tab, line feed and carriage return are written as character references because an
/// XML reader normalizes literal ones to spaces.
pub fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, |b| match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\'' => Some(b"&apos;"),
        b'"' => Some(b"&quot;"),
        b'\t' => Some(b"&#9;"),
        b'\n' => Some(b"&#10;"),
        b'\r' => Some(b"&#13;"),
        _ => None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_accessors() {
        let mut e = Element::new("iq", "jabber:client")
            .with_attr("type", "get")
            .with_attr("type", "set")
            .with_child(Element::new("ping", "urn:xmpp:ping"))
            .with_text("a")
            .with_text("b")
            .with_text("");
        assert_eq!(e.attr("type"), Some("set"));
        assert_eq!(e.attrs.len(), 1);
        assert!(e.is("iq", "jabber:client"));
        assert!(e.child("ping", "urn:xmpp:ping").is_some());
        assert!(e.child("ping", "other").is_none());
        assert_eq!(e.text(), "ab");
        assert_eq!(e.children.len(), 2);
        e.child_mut("ping", "urn:xmpp:ping")
            .unwrap()
            .set_attr("x", "1");
        assert_eq!(e.elements().next().unwrap().attr("x"), Some("1"));
        assert_eq!(e.remove_attr("type"), Some("set".into()));
        assert_eq!(e.remove_attr("type"), None);
        e.push(Element::new("ping", "urn:xmpp:ping"));
        assert_eq!(e.remove_children("ping", "urn:xmpp:ping"), 2);
        assert_eq!(e.elements().count(), 0);
    }

    #[test]
    fn serialize_namespaces() {
        let e = Element::new("message", "jabber:client")
            .with_attr("to", "a@b")
            .with_child(Element::new("body", "jabber:client").with_text("1 < 2 & 3 > 0"))
            .with_child(Element::new("x", "urn:x").with_child(Element::new("y", "urn:x")));
        assert_eq!(
            e.to_xml(),
            "<message xmlns='jabber:client' to='a@b'><body>1 &lt; 2 &amp; 3 &gt; 0</body>\
             <x xmlns='urn:x'><y/></x></message>"
        );
        let mut out = Vec::new();
        e.write_to(&mut out, "jabber:client");
        assert!(out.starts_with(b"<message to="));
        let none = Element::new("a", "").with_child(Element::new("b", "u"));
        assert_eq!(none.to_xml(), "<a><b xmlns='u'/></a>");
        let back = Element::new("a", "u").with_child(Element::new("b", ""));
        assert_eq!(back.to_xml(), "<a xmlns='u'><b xmlns=''/></a>");
    }

    #[test]
    fn serialize_attrs() {
        let e = Element::new("a", "u")
            .with_attr("xml:lang", "en")
            .with_attr("{urn:p}x", "1")
            .with_attr("{urn:q}y", "2")
            .with_attr("{urn:p}z", "'\"\t");
        assert_eq!(
            e.to_xml(),
            "<a xmlns='u' xml:lang='en' xmlns:a0='urn:p' a0:x='1' xmlns:a1='urn:q' a1:y='2' \
             a0:z='&apos;&quot;&#9;'/>"
        );
    }

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        escape_text("a&b<c>d'\"\r", &mut out);
        assert_eq!(out, b"a&amp;b&lt;c&gt;d'\"&#13;");
        out.clear();
        escape_attr("a&b<c>d'\"\n", &mut out);
        assert_eq!(out, b"a&amp;b&lt;c&gt;d&apos;&quot;&#10;");
    }
}
