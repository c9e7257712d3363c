//! Property tests: the parser survives anything, stays bounded, does not care how its
//! input is split, and reads back whatever the serializer writes.

use herald_xml::{Element, Limits, StreamEvent, StreamParser, XmlError};
use proptest::prelude::*;

const STREAMS: &str = "http://etherx.jabber.org/streams";

/// Feeds `data` in chunks of the given sizes (cycled), draining after each chunk.
/// Checks the buffer bound whenever the parser waits for input.
fn drive(limits: Limits, data: &[u8], sizes: &[usize]) -> (Vec<StreamEvent>, Option<XmlError>) {
    let mut p = StreamParser::new(limits);
    let mut events = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        p.feed(chunk);
        loop {
            match p.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => {
                    assert!(
                        p.buffered() <= limits.max_stanza_bytes,
                        "buffered {} > limit {}",
                        p.buffered(),
                        limits.max_stanza_bytes
                    );
                    break;
                }
                Err(e) => {
                    assert_eq!(p.buffered(), 0);
                    assert_eq!(p.next_event(), Err(e.clone()));
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

/// Fragments that make random input reach deep into the parser's states.
fn fragments() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        1 => Just(b"<?xml version='1.0'?>".to_vec()),
        1 => Just(b"</stream:stream>".to_vec()),
        4 => Just(b"<message>".to_vec()),
        4 => Just(b"</message>".to_vec()),
        4 => Just(b"<a b='1' xmlns:p='u' p:c=\"&amp;\">".to_vec()),
        4 => Just(b"</a>".to_vec()),
        2 => Just(b"<p:x/>".to_vec()),
        1 => Just(b"<![CDATA[".to_vec()),
        1 => Just(b"]]>".to_vec()),
        1 => Just(b"<!--".to_vec()),
        1 => Just(b"&lt;&#x41;&bogus;&".to_vec()),
        2 => Just(b" \n".to_vec()),
        1 => Just(b"'\"<>/=".to_vec()),
        4 => "[a-z ]{0,6}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    (
        prop::bool::weighted(0.8),
        prop::collection::vec(piece, 0..40),
    )
        .prop_map(|(header, v)| {
            let mut out = if header { HEADER.to_vec() } else { Vec::new() };
            out.extend(v.concat());
            out
        })
}

/// A valid stream with a few bytes inserted, deleted or replaced.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(element(), 0..4),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..4),
    )
        .prop_map(|(stanzas, edits)| {
            let mut data = HEADER.to_vec();
            for s in &stanzas {
                s.write_to(&mut data, "jabber:client");
            }
            for (at, kind, byte) in edits {
                let i = at.index(data.len() + 1);
                match kind {
                    0 => data.insert(i, byte),
                    1 if i < data.len() => {
                        data.remove(i);
                    }
                    _ if i < data.len() => data[i] = byte,
                    _ => {}
                }
            }
            data
        })
}

fn soup() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![fragments(), mutated()]
}

const HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

fn small_limits() -> impl Strategy<Value = Limits> {
    (0usize..200, 0usize..6, 0usize..5, 1usize..20).prop_map(|(s, d, a, n)| Limits {
        max_stanza_bytes: s,
        max_depth: d,
        max_attrs: a,
        max_name_len: n,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn soup_never_panics_and_stays_bounded(
        data in soup(),
        limits in prop_oneof![Just(Limits::default()), small_limits()],
        sizes in prop::collection::vec(1usize..64, 1..8),
    ) {
        drive(limits, &data, &sizes);
    }

    #[test]
    fn raw_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512), size in 1usize..64) {
        drive(Limits::default(), &data, &[size]);
    }

    #[test]
    fn result_independent_of_split(
        data in soup(),
        limits in prop_oneof![Just(Limits::default()), small_limits()],
        sizes in prop::collection::vec(1usize..32, 1..8),
    ) {
        let whole = drive(limits, &data, &[usize::MAX]);
        prop_assert_eq!(drive(limits, &data, &sizes), whole);
    }
}

fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::char::range(' ', '~'),
        2 => prop::sample::select(vec!['&', '<', '>', '\'', '"', '\t', '\n', '\r', ']', 'é', '\u{1F600}', '\u{FFFD}']),
        1 => any::<char>().prop_filter("XML Char", |c| {
            matches!(*c as u32, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
        }),
    ]
}

fn xml_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(xml_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,8}",
        Just("\u{e9}l\u{e9}ment".to_string()),
        Just("body".to_string()),
    ]
}

fn ns() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("jabber:client".to_string()),
        Just("urn:a".to_string()),
        Just("urn:b&'\"<>".to_string()),
    ]
}

fn attr_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name().prop_filter("not a declaration", |n| n != "xmlns"),
        1 => Just("xml:lang".to_string()),
        2 => (prop_oneof![Just("urn:p"), Just("urn:q"), Just("jabber:client")], name())
            .prop_map(|(u, l)| format!("{{{u}}}{l}")),
    ]
}

#[derive(Debug, Clone)]
enum Child {
    Elem(Element),
    Text(String),
}

fn element() -> impl Strategy<Value = Element> {
    let leaf = (
        name(),
        ns(),
        prop::collection::vec((attr_key(), xml_string(6)), 0..4),
    )
        .prop_map(|(n, ns, attrs)| {
            let mut e = Element::new(n, ns);
            for (k, v) in attrs {
                e.set_attr(k, v);
            }
            e
        });
    leaf.prop_recursive(5, 40, 5, |inner| {
        (
            name(),
            ns(),
            prop::collection::vec((attr_key(), xml_string(6)), 0..3),
            prop::collection::vec(
                prop_oneof![
                    inner.prop_map(Child::Elem),
                    xml_string(10).prop_map(Child::Text)
                ],
                0..5,
            ),
        )
            .prop_map(|(n, ns, attrs, children)| {
                let mut e = Element::new(n, ns);
                for (k, v) in attrs {
                    e.set_attr(k, v);
                }
                // push_text merges adjacent text and drops empty text, as parsing does.
                for c in children {
                    match c {
                        Child::Elem(c) => e.push(c),
                        Child::Text(t) => e.push_text(t),
                    }
                }
                e
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn serialize_parse_round_trip(
        stanzas in prop::collection::vec(element(), 1..4),
        default_ns in prop_oneof![Just(None), Just(Some("jabber:client")), Just(Some("urn:a"))],
        sizes in prop::collection::vec(1usize..40, 1..6),
    ) {
        let mut data = format!("<stream:stream xmlns:stream='{STREAMS}'").into_bytes();
        if let Some(d) = default_ns {
            data.extend_from_slice(format!(" xmlns='{d}'").as_bytes());
        }
        data.extend_from_slice(b" version='1.0'>");
        for s in &stanzas {
            s.write_to(&mut data, default_ns.unwrap_or(""));
            data.extend_from_slice(b"\n");
        }
        data.extend_from_slice(b"</stream:stream>");

        let (events, err) = drive(Limits::default(), &data, &sizes);
        prop_assert_eq!(err, None, "{}", String::from_utf8_lossy(&data));
        prop_assert_eq!(events.len(), stanzas.len() + 2);
        prop_assert!(matches!(events[0], StreamEvent::Open(_)));
        prop_assert_eq!(events.last(), Some(&StreamEvent::Close));
        for (ev, s) in events[1..].iter().zip(&stanzas) {
            prop_assert_eq!(ev, &StreamEvent::Stanza(s.clone()));
        }
    }

    #[test]
    fn to_xml_parses_back(e in element()) {
        let mut data = format!("<s:s xmlns:s='{STREAMS}'>").into_bytes();
        data.extend_from_slice(e.to_xml().as_bytes());
        let (events, err) = drive(Limits::default(), &data, &[usize::MAX]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&events[1], &StreamEvent::Stanza(e));
    }
}
