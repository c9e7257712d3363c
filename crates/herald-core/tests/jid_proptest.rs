//! Property tests: JID parsing never panics and normalized forms are stable;
//! XEP-0106 escaping round-trips.

use herald_core::jid::{escape_node, unescape_node};
use herald_core::Jid;
use proptest::prelude::*;

/// Strings built from characters that exercise splitting, mapping and refusals.
fn jidish() -> impl Strategy<Value = String> {
    let chars = prop_oneof![
        Just('@'),
        Just('/'),
        Just('.'),
        Just('\\'),
        Just(' '),
        Just('-'),
        Just('['),
        Just(']'),
        Just(':'),
        Just('\u{3002}'),
        Just('\u{FF20}'),
        Just('\u{FB00}'),
        Just('\u{2167}'),
        Just('\u{3a3}'),
        Just('\u{301}'),
        Just('\u{5d0}'),
        Just('\u{627}'),
        Just('\u{200d}'),
        Just('ß'),
        proptest::char::range('a', 'z'),
        proptest::char::range('A', 'Z'),
        proptest::char::range('0', '9'),
        proptest::char::range('\u{FF21}', '\u{FF3A}'),
        any::<char>(),
    ];
    proptest::collection::vec(chars, 0..40).prop_map(|v| v.into_iter().collect())
}

fn check(s: &str) -> Result<(), TestCaseError> {
    if let Ok(j) = Jid::parse(s) {
        let again = Jid::parse(j.as_str());
        prop_assert_eq!(again, Ok(j.clone()), "{:?} -> {:?}", s, j);
        let bare = j.bare();
        prop_assert_eq!(j.bare_str(), bare.as_str());
        prop_assert_eq!(Jid::parse(j.bare_str()), Ok(bare));
        prop_assert_eq!(Jid::parse(j.domain()), Ok(j.domain_jid()));
        prop_assert_eq!(Jid::new(j.node(), j.domain(), j.resource()), Ok(j.clone()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_any_string(s in any::<String>()) {
        check(&s)?;
    }

    #[test]
    fn parse_jidish(s in jidish()) {
        check(&s)?;
    }

    #[test]
    fn parse_structured(node in jidish(), domain in "[a-zA-Z0-9\u{e0}-\u{ff}.-]{1,20}", res in jidish()) {
        check(&format!("{node}@{domain}/{res}"))?;
    }

    #[test]
    fn escape_round_trips(s in jidish()) {
        prop_assert_eq!(unescape_node(&escape_node(&s)), s);
    }

    #[test]
    fn escaped_has_no_forbidden_ascii(s in jidish()) {
        let e = escape_node(&s);
        prop_assert!(!e.contains(['"', '&', '\'', '/', ':', '<', '>', '@', ' ']));
    }
}
