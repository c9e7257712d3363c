//! RFC 7622 JID parsing, preparation and comparison.

use std::collections::HashSet;

use herald_core::jid::{prepare_domain, prepare_node, prepare_resource};
use herald_core::{Jid, JidError};

fn ok(s: &str) -> Jid {
    Jid::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn err(s: &str) -> JidError {
    match Jid::parse(s) {
        Ok(j) => panic!("{s:?} should be refused, got {j:?}"),
        Err(e) => e,
    }
}

#[test]
fn rfc7622_valid_examples() {
    // RFC 7622 §3.5, examples 1–15, with their expected normalized forms.
    let cases = [
        ("juliet@example.com", "juliet@example.com"),
        ("juliet@example.com/foo", "juliet@example.com/foo"),
        ("juliet@example.com/foo bar", "juliet@example.com/foo bar"),
        ("juliet@example.com/foo@bar", "juliet@example.com/foo@bar"),
        ("foo\\20bar@example.com", "foo\\20bar@example.com"),
        ("fussball@example.com", "fussball@example.com"),
        ("fußball@example.com", "fußball@example.com"),
        ("π@example.com", "π@example.com"),
        ("Σ@example.com/foo", "σ@example.com/foo"),
        ("σ@example.com/foo", "σ@example.com/foo"),
        ("ς@example.com/foo", "ς@example.com/foo"),
        ("king@example.com/♚", "king@example.com/♚"),
        ("example.com", "example.com"),
        ("example.com/foobar", "example.com/foobar"),
        ("a.example.com/b@example.net", "a.example.com/b@example.net"),
    ];
    for (input, normalized) in cases {
        assert_eq!(ok(input).as_str(), normalized, "{input}");
    }
}

#[test]
fn rfc7622_invalid_examples() {
    // RFC 7622 §3.5, examples 16–23 (and close relatives).
    assert_eq!(err("\"juliet\"@example.com"), JidError::InvalidNode);
    assert_eq!(err("foo bar@example.com"), JidError::InvalidNode);
    assert_eq!(err("henriⅣ@example.com"), JidError::InvalidNode);
    assert_eq!(err("♚@example.com"), JidError::InvalidNode);
    assert_eq!(err("juliet@"), JidError::InvalidDomain);
    assert_eq!(err("/foobar"), JidError::InvalidDomain);
    assert!(Jid::parse("@example.com/").is_err());
}

#[test]
fn empty_parts_are_errors() {
    assert_eq!(err(""), JidError::Empty);
    assert_eq!(err("@d"), JidError::InvalidNode);
    assert_eq!(err("d/"), JidError::InvalidResource);
    assert_eq!(err("a@"), JidError::InvalidDomain);
    assert_eq!(err("a@/r"), JidError::InvalidDomain);
    assert_eq!(err("@"), JidError::InvalidNode);
    assert_eq!(err("/"), JidError::InvalidDomain);
    assert_eq!(err("."), JidError::InvalidDomain);
    assert_eq!(err("a@."), JidError::InvalidDomain);
}

#[test]
fn splitting_follows_rfc7622_3_1() {
    let j = ok("a@b/c@d/e");
    assert_eq!(j.node(), Some("a"));
    assert_eq!(j.domain(), "b");
    assert_eq!(j.resource(), Some("c@d/e"));

    // An '@' after the first '/' belongs to the resource.
    let j = ok("b/c@d");
    assert_eq!(j.node(), None);
    assert_eq!(j.domain(), "b");
    assert_eq!(j.resource(), Some("c@d"));

    // A second '@' before the '/' ends up in the domain, which refuses it.
    assert_eq!(err("a@b@c"), JidError::InvalidDomain);
    assert_eq!(err("a@b@c/r"), JidError::InvalidDomain);
}

#[test]
fn localpart_forbidden_ascii() {
    for c in ['"', '&', '\'', ':', '<', '>'] {
        assert_eq!(
            err(&format!("a{c}b@example.com")),
            JidError::InvalidNode,
            "{c}"
        );
    }
    // Control characters and spaces are not in the IdentifierClass.
    assert_eq!(err("a\tb@example.com"), JidError::InvalidNode);
    assert_eq!(err("a\u{7f}b@example.com"), JidError::InvalidNode);
    // Other printable ASCII is fine.
    assert_eq!(
        ok("a!#$%*+-.=?^_`{|}~b@example.com").node(),
        Some("a!#$%*+-.=?^_`{|}~b")
    );
}

#[test]
fn localpart_identifier_class_refusals() {
    // Compatibility characters and symbols are disallowed by the
    // IdentifierClass, not mapped: ﬀ (U+FB00), Ⅷ (U+2167), ♚ (U+265A).
    for s in [
        "\u{FB00}@example.com",
        "\u{2167}@example.com",
        "\u{265A}@example.com",
    ] {
        assert_eq!(err(s), JidError::InvalidNode, "{s}");
    }
    for s in ["a\u{FB00}b", "x\u{2167}", "\u{265A}king"] {
        assert_eq!(prepare_node(s), Err(JidError::InvalidNode), "{s}");
        assert!(Jid::new(Some(s), "example.com", None).is_err(), "{s}");
    }
    // The same characters are fine in a resource (OpaqueString / FreeformClass).
    assert_eq!(
        ok("a@b/\u{FB00}\u{2167}\u{265A}").resource(),
        Some("\u{FB00}\u{2167}\u{265A}")
    );
}

#[test]
fn localpart_width_and_case_mapping() {
    // Fullwidth letters are width-mapped, then case-mapped.
    let j = ok("\u{FF2A}\u{FF35}\u{FF2C}\u{FF29}\u{FF25}\u{FF34}@example.com");
    assert_eq!(j.node(), Some("juliet"));
    assert_eq!(j, ok("juliet@example.com"));
    // A fullwidth '@' maps to '@', which the localpart may not contain.
    assert_eq!(err("a\u{FF20}b@example.com"), JidError::InvalidNode);
    assert_eq!(ok("JULIET@example.com").node(), Some("juliet"));
    assert_eq!(ok("ΣΑΣ@example.com").node(), Some("σασ"));
}

#[test]
fn comparisons() {
    assert_eq!(
        ok("JULIET@EXAMPLE.COM/Balcony"),
        ok("juliet@example.com/Balcony")
    );
    assert_ne!(
        ok("juliet@example.com/Balcony"),
        ok("juliet@example.com/balcony")
    );
    assert_eq!(
        ok("Juliet@Example.com").bare(),
        ok("juliet@example.com/x").bare()
    );
    assert_eq!(ok("example.com."), ok("EXAMPLE.COM"));
    assert_eq!(
        ok("romeo@example.net"),
        "Romeo@Example.NET".parse::<Jid>().unwrap()
    );

    let set: HashSet<Jid> = ["a@b/c", "A@B/c", "a@b./c", "a@b/C"]
        .iter()
        .map(|s| ok(s))
        .collect();
    assert_eq!(set.len(), 2);

    let mut v = vec![ok("b@x"), ok("a@x"), ok("x")];
    v.sort();
    assert_eq!(v, vec![ok("a@x"), ok("b@x"), ok("x")]);
}

#[test]
fn accessors() {
    let j = ok("Juliet@Example.com/Balcony");
    assert_eq!(j.node(), Some("juliet"));
    assert_eq!(j.domain(), "example.com");
    assert_eq!(j.resource(), Some("Balcony"));
    assert!(!j.is_bare());
    assert_eq!(j.as_str(), "juliet@example.com/Balcony");
    assert_eq!(j.bare_str(), "juliet@example.com");
    assert_eq!(j.to_string(), "juliet@example.com/Balcony");
    assert_eq!(format!("{j:?}"), "\"juliet@example.com/Balcony\"");

    let bare = j.bare();
    assert!(bare.is_bare());
    assert_eq!(bare.as_str(), "juliet@example.com");
    assert_eq!(bare.node(), Some("juliet"));
    assert_eq!(bare.resource(), None);

    let d = j.domain_jid();
    assert_eq!(d.as_str(), "example.com");
    assert_eq!(d.node(), None);
    assert_eq!(d.domain(), "example.com");
    assert!(d.is_bare());

    let r = bare.with_resource("Orchard").unwrap();
    assert_eq!(r.as_str(), "juliet@example.com/Orchard");
    assert_eq!(r.resource(), Some("Orchard"));
    let r2 = j.with_resource("x/y@z").unwrap();
    assert_eq!(r2.as_str(), "juliet@example.com/x/y@z");
    assert_eq!(j.with_resource(""), Err(JidError::InvalidResource));
    assert_eq!(j.with_resource("a\u{0}b"), Err(JidError::InvalidResource));

    let dom = ok("example.com/res");
    assert_eq!(dom.node(), None);
    assert_eq!(dom.bare_str(), "example.com");
    assert_eq!(dom.resource(), Some("res"));
    assert_eq!(dom.domain_jid(), ok("example.com"));
}

#[test]
fn new_builds_from_parts() {
    let j = Jid::new(Some("Juliet"), "Example.com", Some("Balcony")).unwrap();
    assert_eq!(j, ok("juliet@example.com/Balcony"));
    assert_eq!(
        Jid::new(None, "example.com", None).unwrap(),
        ok("example.com")
    );
    assert_eq!(
        Jid::new(Some(""), "example.com", None),
        Err(JidError::InvalidNode)
    );
    assert_eq!(
        Jid::new(Some("a@b"), "example.com", None),
        Err(JidError::InvalidNode)
    );
    assert_eq!(
        Jid::new(Some("a/b"), "example.com", None),
        Err(JidError::InvalidNode)
    );
    assert_eq!(Jid::new(None, "", None), Err(JidError::InvalidDomain));
    assert_eq!(Jid::new(None, "a/b", None), Err(JidError::InvalidDomain));
    assert_eq!(Jid::new(None, "a@b", None), Err(JidError::InvalidDomain));
    assert_eq!(
        Jid::new(None, "example.com", Some("")),
        Err(JidError::InvalidResource)
    );
    // A resource given to new() may contain '/' and '@'.
    let j = Jid::new(None, "example.com", Some("a/b@c")).unwrap();
    assert_eq!(j.as_str(), "example.com/a/b@c");
    assert_eq!(Jid::parse(j.as_str()).unwrap(), j);
}

#[test]
fn resources_keep_case_and_map_spaces() {
    assert_eq!(ok("a@b/MiXeD").resource(), Some("MiXeD"));
    // OpaqueString maps non-ASCII spaces to U+0020.
    assert_eq!(ok("a@b/x\u{3000}y").resource(), Some("x y"));
    // ...and normalizes to NFC.
    assert_eq!(ok("a@b/e\u{301}").resource(), Some("\u{e9}"));
    // Control characters are refused.
    assert_eq!(err("a@b/x\u{1}"), JidError::InvalidResource);
    assert_eq!(err("a@b/x\u{7f}"), JidError::InvalidResource);
}

#[test]
fn domains() {
    assert_eq!(ok("EXAMPLE.com").domain(), "example.com");
    assert_eq!(ok("example.com.").domain(), "example.com");
    assert_eq!(err("example.com.."), JidError::InvalidDomain);
    assert_eq!(err("example..com"), JidError::InvalidDomain);
    assert_eq!(err(".example.com"), JidError::InvalidDomain);
    assert_eq!(err("-example.com"), JidError::InvalidDomain);
    assert_eq!(err("example-.com"), JidError::InvalidDomain);
    assert_eq!(err("exa mple.com"), JidError::InvalidDomain);
    assert_eq!(err("exa:mple.com"), JidError::InvalidDomain);
    assert_eq!(err("a@exa\u{FF20}mple.com"), JidError::InvalidDomain);
    // IDNA: Unicode form, lowercased; A-labels decoded to U-labels.
    assert_eq!(ok("ÉXAMPLE.com").domain(), "éxample.com");
    assert_eq!(ok("xn--bcher-kva.example").domain(), "bücher.example");
    assert_eq!(ok("XN--BCHER-KVA.example"), ok("Bücher.example"));
    assert_eq!(ok("Bücher.example").domain(), "bücher.example");
    assert_eq!(ok("münchen.DE").domain(), "münchen.de");
    // Fullwidth full stop and letters are mapped by UTS #46.
    assert_eq!(ok("ｅｘａｍｐｌｅ\u{3002}com").domain(), "example.com");
    assert_eq!(err("xn--zz.example"), JidError::InvalidDomain);
    // IP literals.
    assert_eq!(ok("juliet@192.0.2.1/x").domain(), "192.0.2.1");
    assert_eq!(ok("[2001:DB8::1]").domain(), "[2001:db8::1]");
    assert_eq!(ok("juliet@[::1]/r").domain(), "[::1]");
    assert_eq!(err("[::1"), JidError::InvalidDomain);
    assert_eq!(err("[not-ip]"), JidError::InvalidDomain);
    // Underscores are tolerated (deployed component names use them).
    assert_eq!(
        ok("conference_1.example.com").domain(),
        "conference_1.example.com"
    );
}

#[test]
fn lengths() {
    let n1023 = "a".repeat(1023);
    let n1024 = "a".repeat(1024);
    assert!(Jid::parse(&format!("{n1023}@example.com")).is_ok());
    assert_eq!(err(&format!("{n1024}@example.com")), JidError::TooLong);
    assert!(Jid::parse(&format!("example.com/{n1023}")).is_ok());
    assert_eq!(err(&format!("example.com/{n1024}")), JidError::TooLong);
    // Labels are limited to 63 bytes.
    let l63 = "b".repeat(63);
    let l64 = "b".repeat(64);
    assert!(Jid::parse(&format!("{l63}.example")).is_ok());
    assert_eq!(err(&format!("{l64}.example")), JidError::TooLong);
    // 16 labels of 63 bytes: 1023 bytes.
    let d1023 = vec![l63.as_str(); 16].join(".");
    assert_eq!(d1023.len(), 1023);
    let full = format!("{n1023}@{d1023}/{n1023}");
    let j = ok(&full);
    assert_eq!(j.as_str(), full);
    assert_eq!(j.node().unwrap().len(), 1023);
    assert_eq!(j.resource().unwrap().len(), 1023);
    assert_eq!(j.domain().len(), 1023);
    let d1024 = format!("{d1023}b");
    assert!(Jid::parse(&d1024).is_err());
    assert_eq!(err(&"x".repeat(100_000)), JidError::TooLong);
    // Non-ASCII counts in bytes: 512 × 'é' (2 bytes) = 1024 bytes.
    assert_eq!(
        err(&format!("{}@example.com", "é".repeat(512))),
        JidError::TooLong
    );
    assert!(Jid::parse(&format!("{}@example.com", "é".repeat(511))).is_ok());
}

#[test]
fn prepare_helpers() {
    assert_eq!(prepare_node("Juliet").unwrap(), "juliet");
    assert_eq!(prepare_resource("Balcony").unwrap(), "Balcony");
    assert_eq!(prepare_domain("Example.COM.").unwrap(), "example.com");
}

#[test]
fn conversions() {
    let j: Jid = "a@b/c".try_into().unwrap();
    let s: String = j.clone().into();
    assert_eq!(s, "a@b/c");
    let r: &str = j.as_ref();
    assert_eq!(r, "a@b/c");
    assert_eq!(Jid::try_from(String::from("A@B")).unwrap(), ok("a@b"));
    assert_eq!("".parse::<Jid>(), Err(JidError::Empty));
}
