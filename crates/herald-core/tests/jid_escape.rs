//! XEP-0106 JID escaping.

use herald_core::jid::{escape_node, unescape_node};
use herald_core::Jid;

#[test]
fn xep0106_examples() {
    // XEP-0106 §5.1 examples 1–8, 12: raw ↔ escaped both ways.
    let pairs = [
        ("space cadet", "space\\20cadet"),
        ("call me \"ishmael\"", "call\\20me\\20\\22ishmael\\22"),
        ("at&t guy", "at\\26t\\20guy"),
        ("d'artagnan", "d\\27artagnan"),
        ("/.fanboy", "\\2f.fanboy"),
        ("::foo::", "\\3a\\3afoo\\3a\\3a"),
        ("<foo>", "\\3cfoo\\3e"),
        ("user@host", "user\\40host"),
        ("c:\\net", "c\\3a\\net"),
        ("c:\\5commas", "c\\3a\\5c5commas"),
    ];
    for (raw, escaped) in pairs {
        assert_eq!(escape_node(raw), escaped, "escape {raw}");
        assert_eq!(unescape_node(escaped), raw, "unescape {escaped}");
        // Escaped localparts are valid JID localparts.
        let jid = Jid::parse(&format!("{escaped}@example.com")).unwrap();
        assert_eq!(jid.node(), Some(escaped));
    }
}

#[test]
fn backslash_only_escaped_before_an_escape_sequence() {
    // §4.4: a backslash that does not start an escape sequence stays as is,
    // so "c:\cool stuff" escapes to "c\3a\cool\20stuff". The §5.1 table's
    // "c\3a\5ccool\20stuff" (every backslash escaped) unescapes to the same.
    assert_eq!(escape_node("c:\\cool stuff"), "c\\3a\\cool\\20stuff");
    assert_eq!(unescape_node("c\\3a\\cool\\20stuff"), "c:\\cool stuff");
    assert_eq!(unescape_node("c\\3a\\5ccool\\20stuff"), "c:\\cool stuff");
    assert_eq!(unescape_node("c\\3a\\5cnet"), "c:\\net");
    assert_eq!(unescape_node("c\\3a\\5c\\5cnet"), "c:\\\\net");
    assert_eq!(escape_node("foo\\bar"), "foo\\bar");
    assert_eq!(escape_node("\\5c"), "\\5c5c");
    assert_eq!(escape_node("\\27"), "\\5c27");
    // §4.3, Wireless Village example.
    assert_eq!(escape_node("\\3and\\2is\\5cool"), "\\5c3and\\2is\\5c5cool");
    assert_eq!(
        unescape_node("\\5c3and\\2is\\5c5cool"),
        "\\3and\\2is\\5cool"
    );
}

#[test]
fn partial_and_unknown_sequences_are_left_alone() {
    for s in [
        "\\2plus\\2is\\4",
        "foo\\bar",
        "foob\\41r",
        "\\",
        "a\\",
        "\\5",
        "\\5C",
        "\\2F",
    ] {
        assert_eq!(unescape_node(s), s, "{s}");
        assert_eq!(escape_node(s), s, "{s}");
    }
    // Unescaping is a single left-to-right pass.
    assert_eq!(unescape_node("\\5c27"), "\\27");
}

#[test]
fn non_ascii_passes_through() {
    assert_eq!(escape_node("tréville@musketeers"), "tréville\\40musketeers");
    assert_eq!(
        unescape_node("tréville\\40musketeers"),
        "tréville@musketeers"
    );
}
