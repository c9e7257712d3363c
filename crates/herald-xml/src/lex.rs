//! Lexical pieces of XML 1.0 (fifth edition): names, character validity, references.
//! Everything here works on complete, already UTF-8-validated tokens.

use crate::error::XmlError;

#[inline]
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_name_start(c: char) -> bool {
    match c {
        'a'..='z' | 'A'..='Z' | '_' | ':' => true,
        c if (c as u32) < 0xC0 => false,
        '\u{C0}'..='\u{D6}'
        | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}'
        | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}'
        | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}' => true,
        _ => false,
    }
}

fn is_name_char(c: char) -> bool {
    match c {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | ':' | '-' | '.' => true,
        c if (c as u32) < 0xB7 => false,
        '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}' => true,
        c => is_name_start(c),
    }
}

/// Length in bytes of the XML Name at the start of `s` (0 if none starts there).
pub(crate) fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    // ASCII fast path: almost every name on the wire is ASCII.
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = if i == 0 {
            c.is_ascii_alphabetic() || c == b'_' || c == b':'
        } else {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'-' | b'.')
        };
        if ok {
            i += 1;
        } else if c < 0x80 {
            return i;
        } else {
            break;
        }
    }
    if i == b.len() {
        return i;
    }
    for (off, ch) in s[i..].char_indices() {
        let ok = if i + off == 0 {
            is_name_start(ch)
        } else {
            is_name_char(ch)
        };
        if !ok {
            return i + off;
        }
    }
    s.len()
}

/// Splits a qualified name into (prefix, local). Namespaces 1.0 allows at most one
/// colon, with non-empty parts on both sides.
pub(crate) fn split_qname(name: &str) -> Result<(&str, &str), XmlError> {
    match name.find(':') {
        None => Ok(("", name)),
        Some(i) => {
            let (p, l) = (&name[..i], &name[i + 1..]);
            if p.is_empty() || l.is_empty() || l.contains(':') {
                Err(XmlError::NotWellFormed(format!(
                    "bad qualified name '{name}'"
                )))
            } else {
                Ok((p, l))
            }
        }
    }
}

/// XML 1.0 `Char` production.
#[inline]
fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Decodes one reference; `s` starts just after the `&`. Returns the character and the
/// number of bytes consumed including the `;`.
fn decode_ref(s: &str) -> Result<(char, usize), XmlError> {
    let semi = s
        .find(';')
        .ok_or_else(|| XmlError::nwf("unterminated reference"))?;
    let body = &s[..semi];
    let c = if let Some(num) = body.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix('x') {
            Some(h) => (h, 16),
            None => (num, 10),
        };
        if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(XmlError::nwf("bad character reference"));
        }
        let v = u32::from_str_radix(digits, radix)
            .map_err(|_| XmlError::nwf("bad character reference"))?;
        if !is_xml_char(v) {
            return Err(XmlError::nwf("character reference to a non-XML character"));
        }
        char::from_u32(v).ok_or_else(|| XmlError::nwf("bad character reference"))?
    } else {
        match body {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ if !body.is_empty() && name_len(body) == body.len() => {
                return Err(XmlError::RestrictedXml("entity"))
            }
            _ => return Err(XmlError::nwf("bad entity reference")),
        }
    };
    Ok((c, semi + 1))
}

/// Decodes character data (`attr == false`) or an attribute value (`attr == true`):
/// resolves references, normalizes line ends (and, in attributes, whitespace to spaces),
/// and rejects characters XML does not allow. `cdata` disables reference decoding.
pub(crate) fn decode(s: &str, attr: bool, cdata: bool) -> Result<String, XmlError> {
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let special = match c {
            b'&' => !cdata,
            b'\r' => true,
            b'\t' | b'\n' => attr,
            b'<' => attr,
            b'>' => !attr && !cdata && i >= 2 && b[i - 1] == b']' && b[i - 2] == b']',
            0..=0x1F => true,
            // U+FFFE and U+FFFF (EF BF BE / EF BF BF) are not XML characters.
            0xEF => b.get(i + 1) == Some(&0xBF) && matches!(b.get(i + 2), Some(0xBE | 0xBF)),
            _ => false,
        };
        if !special {
            i += 1;
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
        o.push_str(&s[run..i]);
        match c {
            b'&' => {
                let (ch, n) = decode_ref(&s[i + 1..])?;
                o.push(ch);
                i += 1 + n;
            }
            b'\r' => {
                o.push(if attr { ' ' } else { '\n' });
                i += if b.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
            }
            b'\t' | b'\n' => {
                o.push(' ');
                i += 1;
            }
            b'<' => return Err(XmlError::nwf("'<' in attribute value")),
            b'>' => return Err(XmlError::nwf("']]>' in character data")),
            _ => return Err(XmlError::nwf("character not allowed in XML")),
        }
        run = i;
    }
    Ok(match out {
        Some(mut o) => {
            o.push_str(&s[run..]);
            o
        }
        None => s.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_len("abc def"), 3);
        assert_eq!(name_len("stream:stream>"), 13);
        assert_eq!(name_len("1a"), 0);
        assert_eq!(name_len("-a"), 0);
        assert_eq!(name_len("a-1.b_c"), 7);
        assert_eq!(name_len("été x"), "été".len());
        assert_eq!(name_len("a\u{D7}"), 1);
        assert_eq!(name_len("\u{B7}"), 0);
        assert_eq!(name_len("a\u{B7}"), 3);
        assert_eq!(split_qname("a:b").unwrap(), ("a", "b"));
        assert_eq!(split_qname("b").unwrap(), ("", "b"));
        assert!(split_qname(":b").is_err());
        assert!(split_qname("a:").is_err());
        assert!(split_qname("a:b:c").is_err());
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("plain", false, false).unwrap(), "plain");
        assert_eq!(
            decode("&lt;&gt;&amp;&quot;&apos;&#65;&#x42;", false, false).unwrap(),
            "<>&\"'AB"
        );
        assert_eq!(decode("a\r\nb\rc", false, false).unwrap(), "a\nb\nc");
        assert_eq!(decode("a\r\nb\tc\nd", true, false).unwrap(), "a b c d");
        assert_eq!(decode("&#9;&#13;", true, false).unwrap(), "\t\r");
        assert_eq!(decode("&amp;", false, true).unwrap(), "&amp;");
        assert_eq!(decode("]]", false, false).unwrap(), "]]");
        assert_eq!(
            decode("&foo;", false, false),
            Err(XmlError::RestrictedXml("entity"))
        );
        for bad in [
            "&",
            "&lt",
            "&;",
            "&#;",
            "&#x;",
            "&#0;",
            "&#xD800;",
            "&#x110000;",
            "&1a;",
            "a]]>b",
            "\u{1}",
            "\u{FFFE}",
        ] {
            assert!(
                matches!(decode(bad, false, false), Err(XmlError::NotWellFormed(_))),
                "{bad:?}"
            );
        }
        assert!(decode("a<b", true, false).is_err());
        assert_eq!(decode("a]]>b", true, false).unwrap(), "a]]>b");
    }
}
