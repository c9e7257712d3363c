//! Unit tests of the stream parser.

use crate::*;

const STREAMS: &str = "http://etherx.jabber.org/streams";
const OPEN: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

/// Feeds the chunks one by one, draining events after each. Stops at the first error.
fn run_chunks(limits: Limits, chunks: &[&[u8]]) -> (Vec<StreamEvent>, Option<XmlError>) {
    let mut p = StreamParser::new(limits);
    let mut events = Vec::new();
    for chunk in chunks {
        p.feed(chunk);
        loop {
            match p.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(p.next_event(), Err(e.clone()), "error must be sticky");
                    assert_eq!(p.buffered(), 0);
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

fn run(input: &str) -> (Vec<StreamEvent>, Option<XmlError>) {
    run_chunks(Limits::default(), &[input.as_bytes()])
}

fn stanzas(input: &str) -> Vec<Element> {
    let (events, err) = run(&format!("{OPEN}{input}"));
    assert_eq!(err, None, "{input}");
    events
        .into_iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn stanza(input: &str) -> Element {
    let mut v = stanzas(input);
    assert_eq!(v.len(), 1, "{input}");
    v.remove(0)
}

/// The error produced by `input` placed inside an open stream.
fn err_in_stream(input: &str) -> XmlError {
    let (_, err) = run(&format!("{OPEN}{input}"));
    err.unwrap_or_else(|| panic!("no error for {input}"))
}

#[test]
fn open_stanzas_close() {
    let input = format!(
        "{OPEN}<message to='a@b' type='chat'><body>hi</body></message>\n \
         <presence/></stream:stream>"
    );
    let (events, err) = run(&input);
    assert_eq!(err, None);
    assert_eq!(events.len(), 4);
    let StreamEvent::Open(h) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(h.name, "stream");
    assert_eq!(h.ns, STREAMS);
    assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
    assert_eq!(
        h.attrs,
        vec![
            ("to".to_string(), "example.com".to_string()),
            ("version".to_string(), "1.0".to_string()),
            ("xml:lang".to_string(), "en".to_string()),
        ]
    );
    assert_eq!(h.attr("to"), Some("example.com"));
    let expected = Element::new("message", "jabber:client")
        .with_attr("to", "a@b")
        .with_attr("type", "chat")
        .with_child(Element::new("body", "jabber:client").with_text("hi"));
    assert_eq!(events[1], StreamEvent::Stanza(expected));
    assert_eq!(
        events[2],
        StreamEvent::Stanza(Element::new("presence", "jabber:client"))
    );
    assert_eq!(events[3], StreamEvent::Close);
}

#[test]
fn declaration_variants() {
    for decl in [
        "",
        "<?xml version='1.0'?>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
        "<?xml version='1.0' encoding='utf-8' standalone='yes' ?>",
        "\n<?xml version='1.0'?>\n",
    ] {
        let (events, err) = run(&format!("{decl}<stream:stream xmlns:stream='{STREAMS}'>"));
        assert_eq!(err, None, "{decl}");
        assert_eq!(events.len(), 1);
    }
    for (decl, cond) in [
        (
            "<?xml version='1.0' encoding='ISO-8859-1'?>",
            "unsupported-encoding",
        ),
        ("<?xml encoding='UTF-8'?>", "not-well-formed"),
        ("<?xml version='1.0' foo='x'?>", "not-well-formed"),
        (
            "<?xml version='1.0'?><?xml version='1.0'?>",
            "restricted-xml",
        ),
        ("<?xml-stylesheet href='a'?>", "restricted-xml"),
        ("<?php x ?>", "restricted-xml"),
    ] {
        let (_, err) = run(&format!("{decl}<stream:stream xmlns:stream='{STREAMS}'>"));
        assert_eq!(err.expect(decl).stream_condition(), cond, "{decl}");
    }
}

#[test]
fn self_closing_root() {
    let (events, err) = run(&format!("<stream:stream xmlns:stream='{STREAMS}'/>"));
    assert_eq!(err, None);
    assert!(matches!(events[0], StreamEvent::Open(_)));
    assert_eq!(events[1], StreamEvent::Close);
    assert_eq!(events.len(), 2);
    // Whitespace after the end is fine, anything else is not.
    let (_, err) = run(&format!("<stream:stream xmlns:stream='{STREAMS}'/>\n "));
    assert_eq!(err, None);
    let (_, err) = run(&format!("<stream:stream xmlns:stream='{STREAMS}'/><a/>"));
    assert_eq!(err.unwrap().stream_condition(), "not-well-formed");
}

#[test]
fn namespaces() {
    // Stream prefix in scope for stanzas.
    let f = stanza(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
    );
    assert!(f.is("features", STREAMS));
    assert!(f
        .child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .is_some());

    // Prefixed stanza elements and children.
    let e = stanza("<c:iq xmlns:c='jabber:client' type='get'><q:query xmlns:q='jabber:iq:roster'><q:item/><other/></q:query></c:iq>");
    assert!(e.is("iq", "jabber:client"));
    let q = e.child("query", "jabber:iq:roster").unwrap();
    assert!(q.child("item", "jabber:iq:roster").is_some());
    // An unprefixed child takes the default namespace, which is still jabber:client.
    assert!(q.child("other", "jabber:client").is_some());

    // Default namespace redeclaration and undeclaration, scoped per element.
    let e = stanza(
        "<message><x xmlns='urn:a'><y/><z xmlns='urn:b'><w/></z><v xmlns=''/></x><body/></message>",
    );
    let x = e.child("x", "urn:a").unwrap();
    assert!(x.child("y", "urn:a").is_some());
    assert!(x.child("z", "urn:b").unwrap().child("w", "urn:b").is_some());
    assert!(x.child("v", "").is_some());
    assert!(e.child("body", "jabber:client").is_some());

    // Prefix redeclared on a child, and the scope ends with the element.
    let e = stanza("<p:a xmlns:p='urn:1'><p:b xmlns:p='urn:2'/><p:c/></p:a>");
    assert!(e.is("a", "urn:1"));
    assert!(e.child("b", "urn:2").is_some());
    assert!(e.child("c", "urn:1").is_some());
    let (_, err) = run(&format!("{OPEN}<a><p:b xmlns:p='urn:1'/><p:c/></a>"));
    assert_eq!(err, Some(XmlError::UndeclaredPrefix("p".into())));

    // Attributes: xml:lang kept as is, other prefixes in {uri}local form, declarations
    // dropped, a declaration after its use still applies.
    let e = stanza("<message xml:lang='de' p:x='1' xmlns:p='urn:p' y='2'/>");
    assert_eq!(
        e.attrs,
        vec![
            ("xml:lang".to_string(), "de".to_string()),
            ("{urn:p}x".to_string(), "1".to_string()),
            ("y".to_string(), "2".to_string()),
        ]
    );
    // The same attribute through two prefixes of one namespace is a duplicate.
    assert_eq!(
        err_in_stream("<a xmlns:p='u' xmlns:q='u' p:x='1' q:x='2'/>").stream_condition(),
        "not-well-formed"
    );
    // But the same local name in two namespaces is not.
    let e = stanza("<a xmlns:p='u' xmlns:q='v' p:x='1' q:x='2' x='3'/>");
    assert_eq!(e.attrs.len(), 3);
}

#[test]
fn namespace_errors() {
    for (input, expected) in [
        ("<p:a/>", XmlError::UndeclaredPrefix("p".into())),
        ("<a p:x='1'/>", XmlError::UndeclaredPrefix("p".into())),
    ] {
        assert_eq!(err_in_stream(input), expected);
        assert_eq!(expected.stream_condition(), "not-well-formed");
    }
    for input in [
        "<a xmlns:p=''/>",
        "<a xmlns:xml='urn:x'/>",
        "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        "<a xmlns:xmlns='urn:x'/>",
        "<a xmlns='urn:1' xmlns='urn:1'/>",
        "<xmlns:a/>",
        "<a:b:c xmlns:a='u'/>",
        "<a b:='1'/>",
        "<a></b>",
        "<a><b></a></b>",
        "<p:a xmlns:p='u' xmlns:q='u'></q:a>",
    ] {
        let e = err_in_stream(input);
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{input}: {e:?}");
    }
    // Binding xml to its own namespace is allowed and harmless.
    stanza("<a xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>");
}

#[test]
fn syntax_errors() {
    for input in [
        "<a b='1' b='2'/>",
        "<a b='<'/>",
        "<a b=1/>",
        "<a b/>",
        "<a b='1'c='2'/>",
        "<1a/>",
        "< a/>",
        "<a>x]]>y</a>",
        "<a>&lt</a>",
        "<a>&#xZZ;</a>",
        "<a>&#0;</a>",
        "<a>\u{1}</a>",
        "<a b='\u{0}'/>",
        "<a>&;</a>",
        "</stream:foo>",
        "text",
        "<a/>x",
        "</a>",
        "<![CDATA[x]]>",
        "<!1>",
        "<![CDATX[",
    ] {
        let e = err_in_stream(input);
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{input}: {e:?}");
        assert_eq!(e.stream_condition(), "not-well-formed");
    }
    let (_, err) = run("junk<stream:stream>");
    assert!(matches!(err, Some(XmlError::NotWellFormed(_))));
    let (_, err) = run(&format!("<a xmlns='{STREAMS}'/></a>"));
    assert!(matches!(err, Some(XmlError::NotWellFormed(_))));
}

#[test]
fn restricted_xml() {
    for (input, what) in [
        ("<!-- hi -->", "comment"),
        ("<a><!-- hi --></a>", "comment"),
        ("<?foo bar?>", "processing instruction"),
        ("<a><?xml version='1.0'?></a>", "processing instruction"),
        ("<!DOCTYPE x>", "dtd"),
        ("<!ENTITY x 'y'>", "dtd"),
        ("<a>&foo;</a>", "entity"),
        ("<a b='&xxe;'/>", "entity"),
    ] {
        let e = err_in_stream(input);
        assert_eq!(e, XmlError::RestrictedXml(what), "{input}");
        assert_eq!(e.stream_condition(), "restricted-xml");
    }
    let (_, err) = run("<!DOCTYPE stream><stream:stream>");
    assert_eq!(err, Some(XmlError::RestrictedXml("dtd")));
    let (_, err) = run("<!-- c --><stream:stream>");
    assert_eq!(err, Some(XmlError::RestrictedXml("comment")));
}

#[test]
fn invalid_utf8() {
    for input in [
        &b"<a>\xff</a>"[..],
        b"<a b='\xc3'/>",
        b"<a\xe2\x82/>",
        b"<a>\xed\xa0\x80</a>",
    ] {
        let mut bytes = OPEN.as_bytes().to_vec();
        bytes.extend_from_slice(input);
        let (_, err) = run_chunks(Limits::default(), &[&bytes]);
        assert_eq!(err, Some(XmlError::InvalidUtf8));
        assert_eq!(XmlError::InvalidUtf8.stream_condition(), "not-well-formed");
    }
    let (events, err) = run(&format!("{OPEN}<a>h\u{e9}llo \u{1F600} \u{4e2d}</a>"));
    assert_eq!(err, None);
    let StreamEvent::Stanza(e) = &events[1] else {
        panic!()
    };
    assert_eq!(e.text(), "h\u{e9}llo \u{1F600} \u{4e2d}");
}

#[test]
fn entities_and_text() {
    let e = stanza("<body a='&lt;&amp;&#x41;&#66;&quot;&apos;'>&lt;b&gt; &amp; &quot;&apos; &#x1F600;&#65;</body>");
    assert_eq!(e.attr("a"), Some("<&AB\"'"));
    assert_eq!(e.text(), "<b> & \"' \u{1F600}A");
    // Attribute value normalization; character references survive it.
    let e = stanza("<a b='x\ty\nz\r\nw&#10;v'/>");
    assert_eq!(e.attr("b"), Some("x y z w\nv"));
    // Line ends in text.
    let e = stanza("<a>1\r\n2\r3\n4</a>");
    assert_eq!(e.text(), "1\n2\n3\n4");
    // '>' alone and a lone ']]' are fine in text; '>' in attributes too.
    let e = stanza("<a b='>'>a > b ]] c</a>");
    assert_eq!(e.text(), "a > b ]] c");
    assert_eq!(e.attr("b"), Some(">"));
    // Whitespace inside stanzas is kept.
    let e = stanza("<a> <b/> </a>");
    assert_eq!(e.children.len(), 3);
}

#[test]
fn cdata() {
    let e = stanza("<body>a<![CDATA[<b>&amp;]]]]><![CDATA[>]]>c</body>");
    assert_eq!(e.children, vec![Node::Text("a<b>&amp;]]>c".into())]);
    let e = stanza("<body><![CDATA[]]></body>");
    assert!(e.children.is_empty());
    let e = stanza("<body><![CDATA[x\r\ny]]></body>");
    assert_eq!(e.text(), "x\ny");
}

#[test]
fn whitespace_keepalives() {
    let input = format!("{OPEN} \n\t\r <presence/>\n\n \n<presence/> ");
    let (events, err) = run(&input);
    assert_eq!(err, None);
    assert_eq!(events.len(), 3);
    // Keepalives are consumed as they come: an idle stream buffers nothing.
    let mut p = StreamParser::new(Limits::default());
    p.feed(OPEN.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Open(_)))));
    for _ in 0..100_000 {
        p.feed(b" ");
        assert_eq!(p.next_event(), Ok(None));
    }
    assert_eq!(p.buffered(), 0);
}

#[test]
fn stanza_too_big_while_streaming() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(OPEN.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Open(_)))));
    p.feed(b"<message><body>");
    assert_eq!(p.next_event(), Ok(None));
    let chunk = vec![b'a'; 4096];
    let mut fed = 0;
    let err = loop {
        p.feed(&chunk);
        fed += chunk.len();
        assert!(fed < 300 * 1024, "never cut off");
        match p.next_event() {
            Ok(None) => assert!(p.buffered() <= 262_144 + 4096),
            Ok(Some(ev)) => panic!("{ev:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, XmlError::StanzaTooBig);
    assert_eq!(err.stream_condition(), "policy-violation");
    assert_eq!(p.buffered(), 0);
    p.feed(b"</body></message>");
    assert_eq!(p.next_event(), Err(XmlError::StanzaTooBig));

    // Many small elements add up too, though each is consumed into the tree.
    let mut p = StreamParser::new(Limits::default());
    p.feed(OPEN.as_bytes());
    p.next_event().unwrap();
    p.feed(b"<message>");
    let err = loop {
        p.feed(b"<a/>");
        match p.next_event() {
            Ok(None) => assert!(p.buffered() < 16),
            Ok(Some(ev)) => panic!("{ev:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, XmlError::StanzaTooBig);

    // A complete 300 KiB stanza in one piece.
    let big = format!(
        "{OPEN}<message><body>{}</body></message>",
        "x".repeat(300 * 1024)
    );
    assert_eq!(run(&big).1, Some(XmlError::StanzaTooBig));
}

#[test]
fn stanza_limit_is_exact() {
    let body = "<a>xxxxxxxx</a>";
    let limits = |n| Limits {
        max_stanza_bytes: n,
        ..Limits::default()
    };
    let input = format!("<s xmlns='{STREAMS}'>{body}{body}");
    // The header alone is bounded too.
    let header_len = input.len() - 2 * body.len();
    let (_, err) = run_chunks(limits(header_len - 1), &[input.as_bytes()]);
    assert_eq!(err, Some(XmlError::StanzaTooBig));
    let n = header_len.max(body.len());
    let (events, err) = run_chunks(limits(n), &[input.as_bytes()]);
    assert_eq!((events.len(), err), (3, None));
    let input = format!("<s>{body}{body}");
    let (events, err) = run_chunks(limits(body.len()), &[input.as_bytes()]);
    assert_eq!((events.len(), err), (3, None));
    let (events, err) = run_chunks(limits(body.len() - 1), &[input.as_bytes()]);
    assert_eq!((events.len(), err), (1, Some(XmlError::StanzaTooBig)));
}

#[test]
fn depth_limit() {
    let nest = |n: usize| {
        let mut s = String::new();
        for _ in 0..n {
            s.push_str("<a>");
        }
        for _ in 0..n {
            s.push_str("</a>");
        }
        s
    };
    // The root is depth 0, so 64 nested elements reach depth 64.
    assert_eq!(stanzas(&nest(64)).len(), 1);
    let e = err_in_stream(&nest(65));
    assert_eq!(e, XmlError::TooDeep);
    assert_eq!(e.stream_condition(), "policy-violation");
    assert_eq!(err_in_stream(&"<a>".repeat(1000)), XmlError::TooDeep);
}

#[test]
fn attribute_and_name_limits() {
    let attrs = |n: usize| {
        let mut s = String::from("<a");
        for i in 0..n {
            s.push_str(&format!(" a{i}='v'"));
        }
        s.push_str("/>");
        s
    };
    assert_eq!(stanza(&attrs(64)).attrs.len(), 64);
    let e = err_in_stream(&attrs(65));
    assert_eq!(e, XmlError::TooManyAttributes);
    assert_eq!(e.stream_condition(), "policy-violation");
    // Namespace declarations count.
    let mut s = attrs(63);
    s.insert_str(2, " xmlns='u'");
    assert_eq!(stanza(&s).attrs.len(), 63);
    s.insert_str(2, " xmlns:p='u'");
    assert_eq!(err_in_stream(&s), XmlError::TooManyAttributes);

    let long = "n".repeat(257);
    let e = err_in_stream(&format!("<{long}/>"));
    assert_eq!(e, XmlError::NameTooLong);
    assert_eq!(e.stream_condition(), "policy-violation");
    assert_eq!(
        err_in_stream(&format!("<a {long}='1'/>")),
        XmlError::NameTooLong
    );
    stanza(&format!("<{}/>", "n".repeat(256)));
}

/// Runs `input` fed whole, byte by byte, and split in two at every position; all must
/// produce the same events and the same final error.
fn assert_split_invariant(limits: Limits, input: &[u8]) {
    let whole = run_chunks(limits, &[input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run_chunks(limits, &bytes), whole, "byte by byte");
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(run_chunks(limits, &[a, b]), whole, "split at {i}");
    }
}

#[test]
fn every_split_position() {
    let full = format!(
        "{OPEN}<message xmlns:x='urn:x' x:a='1&amp;2' b=\"'>'\"><body>h\u{e9}llo &lt;&#x1F600;\r\n\
         <![CDATA[<]]]]><![CDATA[>]]></body><x:y/></message> \n<stream:features><f xmlns='urn:f'/>\
         </stream:features><iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>\
         </stream:stream>"
    );
    let (events, err) = run(&full);
    assert_eq!(err, None);
    assert_eq!(events.len(), 5);
    assert_split_invariant(Limits::default(), full.as_bytes());

    // Errors, too, must not depend on the split, including the size limit.
    for bad in [
        "<a>&bogus;</a>",
        "<a><!-- x --></a>",
        "<a></b>",
        "<a b='1' b='2'/>",
        "<a>\u{e9}</a><?pi?>",
        "<a><![CDATA[x]]></a><![CDATX[",
    ] {
        assert_split_invariant(Limits::default(), format!("{OPEN}{bad}").as_bytes());
    }
    let mut with_bad_utf8 = OPEN.as_bytes().to_vec();
    with_bad_utf8.extend_from_slice(b"<a>\xe2\x82</a>");
    assert_split_invariant(Limits::default(), &with_bad_utf8);
    for max in [0, 1, 3, 5, 9, 20, 60] {
        let limits = Limits {
            max_stanza_bytes: max,
            max_depth: 3,
            max_attrs: 2,
            max_name_len: 8,
        };
        assert_split_invariant(limits, full.as_bytes());
        assert_split_invariant(limits, b"<?xml version='1.0'?><s><a>t<![CDATA[c]]><!--");
        assert_split_invariant(limits, b"<?xmz?><s>");
        assert_split_invariant(limits, b"<s><a b='1' c='2' d='3'/><bbbbbbbbbbbbbbbbbb/>");
    }
}

#[test]
fn idle_parser_is_small() {
    assert!(std::mem::size_of::<StreamParser>() <= 256);
    let mut p = StreamParser::new(Limits::default());
    p.feed(OPEN.as_bytes());
    p.next_event().unwrap();
    let stanza = format!("<message><body>{}</body></message>", "x".repeat(100_000));
    p.feed(stanza.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    assert_eq!(p.next_event(), Ok(None));
    assert_eq!(p.buffered(), 0);
    assert_eq!(p.buffer_capacity(), 0, "large buffer released when idle");
}

#[test]
fn standalone_documents() {
    let lim = Limits::default();
    let el = parse_document(
        b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>",
        lim,
    )
    .unwrap();
    assert_eq!(el.name, "open");
    assert_eq!(el.ns, "urn:ietf:params:xml:ns:xmpp-framing");
    assert_eq!(el.attr("to"), Some("example.com"));

    // A declaration and surrounding whitespace are fine; children resolve as usual.
    let el = parse_document(
        b"<?xml version='1.0'?>\n <message xmlns='jabber:client' to='a@b'><body>hi &amp; bye</body></message>\n",
        lim,
    )
    .unwrap();
    assert_eq!(el.ns, "jabber:client");
    assert_eq!(
        el.child("body", "jabber:client").unwrap().text(),
        "hi & bye"
    );

    // Nothing is inherited: no xmlns means no namespace.
    assert_eq!(parse_document(b"<iq type='get'/>", lim).unwrap().ns, "");

    let nwf = |input: &[u8]| match parse_document(input, lim) {
        Err(XmlError::NotWellFormed(_)) | Err(XmlError::UndeclaredPrefix(_)) => {}
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    };
    nwf(b"");
    nwf(b"   ");
    nwf(b"<message xmlns='jabber:client'>");
    nwf(b"<a/><b/>");
    nwf(b"<a/>text");
    nwf(b"text<a/>");
    nwf(b"</a>");
    nwf(b"<a></b>");
    nwf(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
    nwf(b"<stream:stream xmlns='jabber:client'/>");
    assert!(matches!(
        parse_document(b"<a/><?pi x?>", lim),
        Err(XmlError::RestrictedXml(_))
    ));
    assert!(matches!(
        parse_document(b"<!-- c --><a/>", lim),
        Err(XmlError::RestrictedXml(_))
    ));
    assert!(matches!(
        parse_document(b"<a><?xml version='1.0'?></a>", lim),
        Err(XmlError::RestrictedXml(_))
    ));

    // The size limit covers the element, as for a stanza.
    let small = Limits {
        max_stanza_bytes: 20,
        ..Limits::default()
    };
    assert!(parse_document(b"<a>0123456789</a>", small).is_ok());
    assert_eq!(
        parse_document(b"<a>0123456789abcdef</a>", small),
        Err(XmlError::StanzaTooBig)
    );
    let deep = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    assert!(parse_document(b"<a><b/></a>", deep).is_ok());
    assert_eq!(
        parse_document(b"<a><b><c/></b></a>", deep),
        Err(XmlError::TooDeep)
    );
}
