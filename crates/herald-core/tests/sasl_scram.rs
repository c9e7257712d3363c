//! RFC 5802 / RFC 7677 SCRAM server: test vectors, full exchanges with a
//! client written here, channel binding (RFC 9266, RFC 5929) and failures.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use herald_core::sasl::{ChannelBinding, SaslError, ScramCredential, ScramHash, ScramServer};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

// ---- a minimal SCRAM client for the tests ----

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha256 => {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha512 => {
            let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn h(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        ScramHash::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Hi() written out from RFC 5802 §2.2, independently of the pbkdf2 crate.
fn hi(hash: ScramHash, password: &[u8], salt: &[u8], i: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(hash, password, &first);
    let mut out = u.clone();
    for _ in 1..i {
        u = hmac(hash, password, &u);
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

struct Client {
    hash: ScramHash,
    password: String,
    gs2_header: String,
    cb_data: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    salted: Vec<u8>,
    auth_message: String,
}

impl Client {
    fn new(
        hash: ScramHash,
        gs2_header: &str,
        cb_data: &[u8],
        user: &str,
        password: &str,
        nonce: &str,
    ) -> Client {
        Client {
            hash,
            password: password.into(),
            gs2_header: gs2_header.into(),
            cb_data: cb_data.to_vec(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.into(),
            salted: Vec::new(),
            auth_message: String::new(),
        }
    }

    fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    fn finish(&mut self, server_first: &[u8]) -> Vec<u8> {
        self.finish_with(server_first, None)
    }

    /// `cbind_override`: send this as the c= payload instead of the honest one.
    fn finish_with(&mut self, server_first: &[u8], cbind_override: Option<&[u8]>) -> Vec<u8> {
        let sf = std::str::from_utf8(server_first).unwrap();
        let mut parts = sf.split(',');
        let r = parts.next().unwrap().strip_prefix("r=").unwrap();
        let s = B64
            .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let i: u32 = parts
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            r.starts_with(&self.nonce),
            "server nonce must extend the client's"
        );
        assert!(r.len() > self.nonce.len());
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb_data);
        let cbind = cbind_override.map(<[u8]>::to_vec).unwrap_or(cbind);
        let without_proof = format!("c={},r={r}", B64.encode(cbind));
        self.auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);
        self.salted = hi(self.hash, self.password.as_bytes(), &s, i);
        let client_key = hmac(self.hash, &self.salted, b"Client Key");
        let stored_key = h(self.hash, &client_key);
        let sig = hmac(self.hash, &stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    fn check_server_final(&self, server_final: &[u8]) {
        let server_key = hmac(self.hash, &self.salted, b"Server Key");
        let sig = hmac(self.hash, &server_key, self.auth_message.as_bytes());
        assert_eq!(server_final, format!("v={}", B64.encode(sig)).as_bytes());
    }
}

fn cred(hash: ScramHash, password: &str) -> ScramCredential {
    ScramCredential::derive(hash, password, 4096).unwrap()
}

fn bindings() -> ChannelBinding {
    ChannelBinding {
        tls_exporter: Some(vec![0x11; 32]),
        tls_server_end_point: Some(vec![0x22; 32]),
    }
}

// ---- RFC test vectors ----

#[test]
fn rfc5802_sha1_vector() {
    let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
    let cred = ScramCredential::derive_with_salt(ScramHash::Sha1, "pencil", 4096, &salt).unwrap();
    let mut server = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false)
        .with_server_nonce("3rfcNHYJY1ZVvWVs7j");
    let cf = server
        .client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
        .unwrap();
    assert_eq!(cf.username, "user");
    assert_eq!(cf.authzid, None);
    let sf = server.server_first(Some(&cred));
    assert_eq!(
        sf,
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    );
    let v = server
        .client_final(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        .unwrap();
    assert_eq!(v, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

#[test]
fn rfc7677_sha256_vector() {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let cred = ScramCredential::derive_with_salt(ScramHash::Sha256, "pencil", 4096, &salt).unwrap();
    let mut server = ScramServer::new(ScramHash::Sha256, false, ChannelBinding::default(), false)
        .with_server_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    server
        .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        .unwrap();
    let sf = server.server_first(Some(&cred));
    assert_eq!(
        sf,
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
            .as_slice()
    );
    let v = server
        .client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .unwrap();
    assert_eq!(v, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

#[test]
fn credential_matches_independent_hi() {
    for hash in ScramHash::ALL {
        let salt = b"0123456789abcdef";
        let c = ScramCredential::derive_with_salt(hash, "pencil", 64, salt).unwrap();
        let salted = hi(hash, b"pencil", salt, 64);
        assert_eq!(c.stored_key, h(hash, &hmac(hash, &salted, b"Client Key")));
        assert_eq!(c.server_key, hmac(hash, &salted, b"Server Key"));
        assert_eq!(c.hash, hash);
        assert_eq!(c.iterations, 64);
        assert_eq!(c.salt, salt);
    }
}

// ---- full exchanges ----

fn exchange(
    hash: ScramHash,
    plus: bool,
    gs2_header: &str,
    cb_data: &[u8],
    binding: ChannelBinding,
) -> Result<(), SaslError> {
    let c = cred(hash, "pencil");
    let mut server = ScramServer::new(hash, plus, binding, true);
    let mut client = Client::new(
        hash,
        gs2_header,
        cb_data,
        "user",
        "pencil",
        "clientNONCE123",
    );
    server.client_first(&client.first())?;
    let sf = server.server_first(Some(&c));
    let cf = client.finish(&sf);
    let v = server.client_final(&cf)?;
    client.check_server_final(&v);
    Ok(())
}

#[test]
fn full_exchange_every_hash_without_binding() {
    for hash in ScramHash::ALL {
        exchange(hash, false, "n,,", b"", ChannelBinding::default()).unwrap();
        exchange(hash, false, "n,,", b"", bindings()).unwrap();
    }
}

#[test]
fn full_exchange_sha512() {
    exchange(
        ScramHash::Sha512,
        false,
        "n,,",
        b"",
        ChannelBinding::default(),
    )
    .unwrap();
    exchange(
        ScramHash::Sha512,
        false,
        "n,a=user@example.com,",
        b"",
        ChannelBinding::default(),
    )
    .unwrap();
}

#[test]
fn full_exchange_plus_every_hash_and_binding_type() {
    for hash in ScramHash::ALL {
        exchange(hash, true, "p=tls-exporter,,", &[0x11; 32], bindings()).unwrap();
        exchange(
            hash,
            true,
            "p=tls-server-end-point,,",
            &[0x22; 32],
            bindings(),
        )
        .unwrap();
        exchange(
            hash,
            true,
            "p=tls-exporter,a=juliet@example.com,",
            &[0x11; 32],
            bindings(),
        )
        .unwrap();
        // Only the binding type the connection has is needed.
        let only_exporter = ChannelBinding {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: None,
        };
        exchange(
            hash,
            true,
            "p=tls-exporter,,",
            &[7; 32],
            only_exporter.clone(),
        )
        .unwrap();
        assert_eq!(
            exchange(
                hash,
                true,
                "p=tls-server-end-point,,",
                &[7; 32],
                only_exporter
            ),
            Err(SaslError::NotAuthorized)
        );
    }
}

#[test]
fn authzid_and_saslname_decoding() {
    let mut server = ScramServer::new(ScramHash::Sha256, false, ChannelBinding::default(), false);
    let cf = server
        .client_first(b"n,a=ad=2Cmin=3D,n=us=2Cer=3D,r=abc")
        .unwrap();
    assert_eq!(cf.username, "us,er=");
    assert_eq!(cf.authzid.as_deref(), Some("ad,min="));
}

#[test]
fn wrong_password_is_not_authorized() {
    for hash in ScramHash::ALL {
        let c = cred(hash, "pencil");
        let mut server = ScramServer::new(hash, false, ChannelBinding::default(), false);
        let mut client = Client::new(hash, "n,,", b"", "user", "pen", "nonce");
        server.client_first(&client.first()).unwrap();
        let sf = server.server_first(Some(&c));
        let cf = client.finish(&sf);
        assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
    }
}

#[test]
fn channel_binding_mismatch_is_not_authorized() {
    let hash = ScramHash::Sha256;
    // Client computed different binding data (e.g. a TLS man in the middle).
    assert_eq!(
        exchange(hash, true, "p=tls-exporter,,", &[0x99; 32], bindings()),
        Err(SaslError::NotAuthorized)
    );
    assert_eq!(
        exchange(
            hash,
            true,
            "p=tls-server-end-point,,",
            &[0x11; 32],
            bindings()
        ),
        Err(SaslError::NotAuthorized)
    );
    // c= that does not repeat the gs2 header exactly.
    let c = cred(hash, "pencil");
    let mut server = ScramServer::new(hash, true, bindings(), true);
    let mut client = Client::new(
        hash,
        "p=tls-exporter,,",
        &[0x11; 32],
        "user",
        "pencil",
        "n0nce",
    );
    server.client_first(&client.first()).unwrap();
    let sf = server.server_first(Some(&c));
    let mut fake = b"p=tls-server-end-point,,".to_vec();
    fake.extend_from_slice(&[0x11; 32]);
    let cf = client.finish_with(&sf, Some(&fake));
    assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
    // Non-PLUS exchange whose c= claims a different header.
    let mut server = ScramServer::new(hash, false, bindings(), false);
    let mut client = Client::new(hash, "n,,", b"", "user", "pencil", "n0nce");
    server.client_first(&client.first()).unwrap();
    let sf = server.server_first(Some(&c));
    let cf = client.finish_with(&sf, Some(b"y,,"));
    assert_eq!(server.client_final(&cf), Err(SaslError::NotAuthorized));
}

#[test]
fn gs2_flag_rules() {
    let new = |plus, advertised| ScramServer::new(ScramHash::Sha256, plus, bindings(), advertised);
    // "y" while -PLUS was offered: downgrade attack.
    assert_eq!(
        new(false, true).client_first(b"y,,n=user,r=abc"),
        Err(SaslError::NotAuthorized)
    );
    // "y" when no -PLUS was offered is fine.
    assert!(new(false, false).client_first(b"y,,n=user,r=abc").is_ok());
    // -PLUS requires "p=".
    assert!(matches!(
        new(true, true).client_first(b"n,,n=user,r=abc"),
        Err(SaslError::MalformedRequest(_))
    ));
    assert!(matches!(
        new(true, true).client_first(b"y,,n=user,r=abc"),
        Err(SaslError::MalformedRequest(_))
    ));
    // "p=" requires -PLUS.
    assert!(matches!(
        new(false, true).client_first(b"p=tls-exporter,,n=user,r=abc"),
        Err(SaslError::MalformedRequest(_))
    ));
    // Unknown binding types.
    assert!(matches!(
        new(true, true).client_first(b"p=tls-unique,,n=user,r=abc"),
        Err(SaslError::MalformedRequest(_))
    ));
    // Binding data the connection does not have.
    let mut s = ScramServer::new(ScramHash::Sha256, true, ChannelBinding::default(), true);
    assert_eq!(
        s.client_first(b"p=tls-exporter,,n=user,r=abc"),
        Err(SaslError::NotAuthorized)
    );
    // Garbage flags.
    for m in [
        &b"x,,n=user,r=abc"[..],
        b"nn,,n=user,r=abc",
        b"P=tls-exporter,,n=user,r=abc",
    ] {
        assert!(matches!(
            new(true, true).client_first(m),
            Err(SaslError::MalformedRequest(_))
        ));
    }
}

#[test]
fn malformed_client_first() {
    let cases: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"n,,r=abc",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,n=,r=abc",
        b"n,,n=us=er,r=abc",
        b"n,,n=us=2c,r=abc",
        b"n,,n=user,r=a b",
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=user,r=abc,m=ext",
        b"n,,n=user,r=abc,",
        b"n,,n=user,r=abc,bogus",
        b"n,x=y,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,,n=\xff,r=abc",
    ];
    for m in cases {
        let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
        let r = s.client_first(m);
        assert!(
            matches!(r, Err(SaslError::MalformedRequest(_))),
            "{:?}: {r:?}",
            String::from_utf8_lossy(m)
        );
        assert_eq!(r.unwrap_err().condition(), "malformed-request");
    }
    // Optional extensions are ignored.
    let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    assert!(s.client_first(b"n,,n=user,r=abc,x=ext").is_ok());
}

#[test]
fn malformed_or_tampered_client_final() {
    let hash = ScramHash::Sha1;
    let c = cred(hash, "pencil");
    let start = || {
        let mut server = ScramServer::new(hash, false, ChannelBinding::default(), false)
            .with_server_nonce("SERVER");
        server.client_first(b"n,,n=user,r=CLIENT").unwrap();
        server.server_first(Some(&c));
        server
    };
    for m in [
        &b""[..],
        b"c=biws",
        b"c=biws,r=CLIENTSERVER",
        b"r=CLIENTSERVER,c=biws,p=AAAA",
        b"c=!!!,r=CLIENTSERVER,p=AAAA",
        b"c=biws,r=CLIENTSERVER,p=!!!",
        b"c=biws,r=CLIENTSERVER,m=x,p=AAAA",
        b"c=biws,p=AAAA",
    ] {
        let r = start().client_final(m);
        assert!(
            matches!(r, Err(SaslError::MalformedRequest(_))),
            "{:?}: {r:?}",
            String::from_utf8_lossy(m)
        );
    }
    // Well formed but wrong: nonce, proof length, proof value.
    for m in [
        &b"c=biws,r=CLIENTOTHER,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA="[..],
        b"c=biws,r=CLIENTSERVER,p=AAAA",
        b"c=biws,r=CLIENTSERVER,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        assert_eq!(start().client_final(m), Err(SaslError::NotAuthorized));
    }
    // A correct proof with the wrong nonce is refused too.
    let mut server = start();
    let mut client = Client::new(hash, "n,,", b"", "user", "pencil", "CLIENT");
    let salt = B64.encode(&c.salt);
    let sf = format!("r=CLIENTSERVER,s={salt},i=4096");
    let cf = String::from_utf8(client.finish(sf.as_bytes()))
        .unwrap()
        .replace("r=CLIENTSERVER", "r=CLIENTSERVEX");
    assert_eq!(
        server.client_final(cf.as_bytes()),
        Err(SaslError::NotAuthorized)
    );
}

#[test]
fn calls_out_of_order_fail() {
    let c = cred(ScramHash::Sha1, "pencil");
    let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    assert!(s.client_final(b"c=biws,r=abc,p=AAAA").is_err());

    let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    assert!(s.server_first(Some(&c)).is_empty());
    assert!(s.client_first(b"n,,n=user,r=abc").is_err());

    let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    s.client_first(b"n,,n=user,r=abc").unwrap();
    assert!(s.client_first(b"n,,n=user,r=abc").is_err());
    assert!(s.server_first(Some(&c)).is_empty());

    let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    s.client_first(b"n,,n=user,r=abc").unwrap();
    assert!(s.client_final(b"c=biws,r=abc,p=AAAA").is_err());

    // After a completed exchange nothing more is accepted.
    let mut server = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    let mut client = Client::new(ScramHash::Sha1, "n,,", b"", "user", "pencil", "nonce");
    server.client_first(&client.first()).unwrap();
    let sf = server.server_first(Some(&c));
    let cf = client.finish(&sf);
    server.client_final(&cf).unwrap();
    assert!(server.client_final(&cf).is_err());
    assert!(server.server_first(Some(&c)).is_empty());
    assert!(server.client_first(&client.first()).is_err());

    // A failed client-first ends the exchange.
    let mut s = ScramServer::new(ScramHash::Sha1, false, ChannelBinding::default(), false);
    assert!(s.client_first(b"garbage").is_err());
    assert!(s.client_first(b"n,,n=user,r=abc").is_err());
}

fn shape(sf: &[u8]) -> (usize, usize, String) {
    let sf = std::str::from_utf8(sf).unwrap();
    let parts: Vec<&str> = sf.split(',').collect();
    assert_eq!(parts.len(), 3, "{sf}");
    let r = parts[0].strip_prefix("r=").unwrap();
    let s = B64.decode(parts[1].strip_prefix("s=").unwrap()).unwrap();
    let i = parts[2].strip_prefix("i=").unwrap();
    (r.len(), s.len(), i.to_owned())
}

#[test]
fn unknown_user_is_indistinguishable_in_server_first() {
    let hash = ScramHash::Sha256;
    let known = cred(hash, "pencil");
    let first = |user: &str, cred: Option<&ScramCredential>| {
        let mut s = ScramServer::new(hash, false, ChannelBinding::default(), false)
            .with_server_secret(b"cluster secret");
        s.client_first(format!("n,,n={user},r=clientnonce").as_bytes())
            .unwrap();
        let sf = s.server_first(cred);
        (s, sf)
    };
    let (_, real) = first("user", Some(&known));
    let (mut s, fake) = first("nobody", None);
    assert_eq!(shape(&real), shape(&fake));
    // The fake salt is stable per user (and per case-insensitive name), and differs between users.
    let salt = |sf: &[u8]| {
        std::str::from_utf8(sf)
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(salt(&fake), salt(&first("nobody", None).1));
    assert_eq!(salt(&fake), salt(&first("NoBody", None).1));
    assert_ne!(salt(&fake), salt(&first("someone", None).1));
    // Another server (node) with the same secret gives the same salt; another secret does not.
    let mut other = ScramServer::new(hash, false, ChannelBinding::default(), false)
        .with_server_secret(b"other secret");
    other.client_first(b"n,,n=nobody,r=clientnonce").unwrap();
    assert_ne!(salt(&fake), salt(&other.server_first(None)));
    // The server nonce is random, printable and has no ','.
    let nonce = |sf: &[u8]| {
        std::str::from_utf8(sf)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_ne!(nonce(&fake), nonce(&first("nobody", None).1));
    assert!(nonce(&fake)
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
    // Whatever the client does, the unknown user fails with not-authorized.
    let mut client = Client::new(hash, "n,,", b"", "nobody", "pencil", "clientnonce");
    let cf = client.finish(&fake);
    assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));

    // A credential of another hash is treated as an unknown user.
    let sha1 = cred(ScramHash::Sha1, "pencil");
    let (mut s, sf) = first("user", Some(&sha1));
    assert_eq!(shape(&sf), shape(&real));
    let mut client = Client::new(hash, "n,,", b"", "user", "pencil", "clientnonce");
    let cf = client.finish(&sf);
    assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));

    // The advertised iteration count can match the deployment's.
    let mut s = ScramServer::new(hash, false, ChannelBinding::default(), false)
        .with_unknown_user_iterations(10_000);
    s.client_first(b"n,,n=nobody,r=abc").unwrap();
    assert!(String::from_utf8(s.server_first(None))
        .unwrap()
        .ends_with(",i=10000"));
}

#[test]
fn credentials() {
    let c = ScramCredential::derive(ScramHash::Sha256, "pencil", 4096).unwrap();
    assert_eq!(c.salt.len(), 16);
    assert_eq!(c.stored_key.len(), 32);
    assert_eq!(c.server_key.len(), 32);
    assert!(c.verify_password("pencil"));
    assert!(!c.verify_password("Pencil"));
    assert!(!c.verify_password(""));
    let c2 = ScramCredential::derive(ScramHash::Sha256, "pencil", 4096).unwrap();
    assert_ne!(c.salt, c2.salt, "salts are random");

    assert!(ScramCredential::derive(ScramHash::Sha1, "", 4096).is_err());
    assert!(ScramCredential::derive(ScramHash::Sha1, "pencil", 0).is_err());
    // OpaqueString refuses control characters...
    assert!(ScramCredential::derive(ScramHash::Sha1, "pen\u{7}cil", 16).is_err());
    // ...maps non-ASCII spaces to ASCII space and normalizes to NFC.
    let c = ScramCredential::derive_with_salt(ScramHash::Sha1, "a\u{3000}b", 16, b"salt").unwrap();
    assert!(c.verify_password("a b"));
    let c = ScramCredential::derive_with_salt(ScramHash::Sha1, "e\u{301}", 16, b"salt").unwrap();
    assert!(c.verify_password("\u{e9}"));
    // Case is significant.
    let c = ScramCredential::derive_with_salt(ScramHash::Sha512, "Secret", 16, b"salt").unwrap();
    assert!(c.verify_password("Secret"));
    assert!(!c.verify_password("secret"));
}

#[test]
fn mechanism_names_and_conditions() {
    assert_eq!(ScramHash::Sha1.mechanism(), "SCRAM-SHA-1");
    assert_eq!(ScramHash::Sha256.plus_mechanism(), "SCRAM-SHA-256-PLUS");
    assert_eq!(
        ScramHash::from_mechanism("SCRAM-SHA-512-PLUS"),
        Some((ScramHash::Sha512, true))
    );
    assert_eq!(
        ScramHash::from_mechanism("SCRAM-SHA-512"),
        Some((ScramHash::Sha512, false))
    );
    assert_eq!(ScramHash::from_mechanism("SCRAM-MD5"), None);
    assert_eq!(ScramHash::ALL.len(), 3);
    assert_eq!(
        SaslError::MalformedRequest("x").condition(),
        "malformed-request"
    );
    assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
    assert_eq!(SaslError::InvalidAuthzid.condition(), "invalid-authzid");
    assert_eq!(SaslError::InvalidMechanism.condition(), "invalid-mechanism");
    assert_eq!(
        SaslError::EncryptionRequired.condition(),
        "encryption-required"
    );
    assert_eq!(SaslError::Aborted.condition(), "aborted");
}
