//! RFC 4616 PLAIN message parsing.

use herald_core::sasl::{parse_plain, SaslError, ScramCredential, ScramHash};

#[test]
fn plain_parses() {
    assert_eq!(
        parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap(),
        (None, "tim".to_owned(), "tanstaaftanstaaf".to_owned())
    );
    assert_eq!(
        parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap(),
        (
            Some("Ursel".to_owned()),
            "Kurt".to_owned(),
            "xipj3plmq".to_owned()
        )
    );
    // UTF-8 and spaces are passed through unprepared.
    assert_eq!(
        parse_plain("\0jürgen\0pass word".as_bytes()).unwrap(),
        (None, "jürgen".to_owned(), "pass word".to_owned())
    );
}

#[test]
fn plain_refuses_malformed() {
    for m in [
        &b""[..],
        b"tim",
        b"\0tim",
        b"\0\0pass",
        b"\0tim\0",
        b"a\0tim\0pw\0extra",
        b"\0tim\0pw\0",
        b"\0\xfftim\0pw",
        b"\0\0",
    ] {
        let r = parse_plain(m);
        assert!(
            matches!(r, Err(SaslError::MalformedRequest(_))),
            "{m:?}: {r:?}"
        );
        assert_eq!(r.unwrap_err().condition(), "malformed-request");
    }
}

#[test]
fn plain_with_scram_credential() {
    let cred = ScramCredential::derive(ScramHash::Sha256, "tanstaaftanstaaf", 4096).unwrap();
    let (_, user, password) = parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
    assert_eq!(user, "tim");
    assert!(cred.verify_password(&password));
    let (_, _, wrong) = parse_plain(b"\0tim\0tanstaaf").unwrap();
    assert!(!cred.verify_password(&wrong));
}
