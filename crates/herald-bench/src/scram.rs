//! The client side of SASL SCRAM (RFC 5802 / RFC 7677) without channel binding, and PLAIN.
//!
//! The bench speaks to servers that store SCRAM-SHA-1 (Prosody, ejabberd) as well as
//! SCRAM-SHA-256, so both hashes are supported. The gs2 header is always `n,,`: the bench
//! does not do channel binding, which is allowed even when the server offers `-PLUS`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A SASL mechanism the bench can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
pub enum Mech {
    #[value(name = "SCRAM-SHA-1", alias = "scram-sha-1")]
    ScramSha1,
    #[value(name = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[value(name = "PLAIN", alias = "plain")]
    Plain,
}

impl Mech {
    /// The IANA mechanism name, as offered in `<mechanisms/>`.
    pub fn name(self) -> &'static str {
        match self {
            Mech::ScramSha1 => "SCRAM-SHA-1",
            Mech::ScramSha256 => "SCRAM-SHA-256",
            Mech::Plain => "PLAIN",
        }
    }
}

/// The initial response of PLAIN: authzid empty, authcid, password.
pub fn plain_initial(user: &str, password: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(user.len() + password.len() + 2);
    v.push(0);
    v.extend_from_slice(user.as_bytes());
    v.push(0);
    v.extend_from_slice(password.as_bytes());
    v
}

/// SASLprep is not applied: bench account names and passwords are ASCII. `=` and `,` in
/// the user name are escaped as the RFC requires.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One SCRAM exchange in progress.
pub struct ScramClient {
    mech: Mech,
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    pub fn new(mech: Mech, user: &str, password: &str) -> ScramClient {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        ScramClient::with_nonce(mech, user, password, &B64.encode(raw))
    }

    /// With a fixed nonce (tests use the RFC examples).
    pub fn with_nonce(mech: Mech, user: &str, password: &str, nonce: &str) -> ScramClient {
        assert!(mech != Mech::Plain, "PLAIN is not SCRAM");
        ScramClient {
            mech,
            password: password.to_string(),
            nonce: nonce.to_string(),
            client_first_bare: format!("n={},r={nonce}", saslname(user)),
            server_signature: None,
        }
    }

    /// The client-first message (gs2 header included).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message (derives the
    /// salted password inline; see [`ScramClient::parse_server_first`] to do it elsewhere).
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let sf = self.parse_server_first(server_first)?;
        let salted = salted_password(self.mech, &self.password, &sf.salt, sf.iterations);
        Ok(self.finish(&sf, &salted))
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn mech(&self) -> Mech {
        self.mech
    }

    /// Parses and checks the server-first message.
    pub fn parse_server_first(&self, server_first: &str) -> Result<ServerFirst, String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iters = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(
                    B64.decode(v)
                        .map_err(|_| "server-first: bad salt".to_string())?,
                );
            } else if let Some(v) = part.strip_prefix("i=") {
                iters = Some(
                    v.parse::<u32>()
                        .map_err(|_| "server-first: bad iteration count".to_string())?,
                );
            } else if part.starts_with("m=") {
                return Err("server-first: unsupported mandatory extension".into());
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iters) {
            (Some(n), Some(s), Some(i)) => (n, s, i),
            _ => return Err(format!("server-first incomplete: {server_first:?}")),
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("server nonce does not extend the client nonce".into());
        }
        if iterations == 0 {
            return Err("server-first: zero iterations".into());
        }
        Ok(ServerFirst {
            raw: server_first.to_string(),
            nonce: nonce.to_string(),
            salt,
            iterations,
        })
    }

    /// The client-final message, given the salted password for `sf`.
    pub fn finish(&mut self, sf: &ServerFirst, salted: &[u8]) -> String {
        let without_proof = format!("c=biws,r={}", sf.nonce);
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, sf.raw);
        let (proof, server_sig) = match self.mech {
            Mech::ScramSha1 => keys_sha1(salted, &auth_message),
            Mech::ScramSha256 => keys_sha256(salted, &auth_message),
            Mech::Plain => unreachable!("PLAIN is not SCRAM"),
        };
        self.server_signature = Some(server_sig);
        format!("{without_proof},p={}", B64.encode(proof))
    }

    /// Checks the server-final message (`v=…`); an `e=…` is returned as the error.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(format!("server error: {e}"));
        }
        let v = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or_else(|| format!("server-final without verifier: {server_final:?}"))?;
        let got = B64
            .decode(v)
            .map_err(|_| "server-final: bad base64".to_string())?;
        match &self.server_signature {
            Some(expected) if *expected == got => Ok(()),
            _ => Err("server signature does not verify".into()),
        }
    }
}

/// A parsed server-first message.
pub struct ServerFirst {
    raw: String,
    nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

/// `Hi(password, salt, i)`: the expensive PBKDF2 step (worth caching and running off the
/// async workers).
pub fn salted_password(mech: Mech, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    fn hi<H>(password: &str, salt: &[u8], iterations: u32, len: usize) -> Vec<u8>
    where
        H: hmac::digest::KeyInit + hmac::digest::Update + hmac::digest::FixedOutput + Clone + Sync,
    {
        let mut out = vec![0u8; len];
        pbkdf2::pbkdf2::<H>(password.as_bytes(), salt, iterations, &mut out)
            .expect("HMAC accepts any key length");
        out
    }
    match mech {
        Mech::ScramSha1 => hi::<Hmac<Sha1>>(password, salt, iterations, 20),
        Mech::ScramSha256 => hi::<Hmac<Sha256>>(password, salt, iterations, 32),
        Mech::Plain => Vec::new(),
    }
}

/// Defines `fn $name(salted, auth_message) -> (ClientProof, ServerSignature)` for one
/// hash function.
macro_rules! scram_keys {
    ($name:ident, $hash:ty) => {
        fn $name(salted: &[u8], auth_message: &str) -> (Vec<u8>, Vec<u8>) {
            type H = Hmac<$hash>;
            let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
                let mut m = <H as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            };
            let client_key = hmac(salted, b"Client Key");
            let stored_key = <$hash as Digest>::digest(&client_key).to_vec();
            let client_sig = hmac(&stored_key, auth_message.as_bytes());
            let proof = client_key
                .iter()
                .zip(client_sig.iter())
                .map(|(a, b)| a ^ b)
                .collect();
            let server_key = hmac(salted, b"Server Key");
            let server_sig = hmac(&server_key, auth_message.as_bytes());
            (proof, server_sig)
        }
    };
}

scram_keys!(keys_sha1, Sha1);
scram_keys!(keys_sha256, Sha256);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5 example.
    #[test]
    fn rfc5802_sha1_example() {
        let mut c = ScramClient::with_nonce(
            Mech::ScramSha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(c.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let fin = c
            .client_final("r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_server_final("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert!(c.verify_server_final("v=AAAA").is_err());
    }

    /// RFC 7677 §3 example.
    #[test]
    fn rfc7677_sha256_example() {
        let mut c =
            ScramClient::with_nonce(Mech::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .client_final(
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            )
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn rejects_bad_server_first() {
        let mut c = ScramClient::with_nonce(Mech::ScramSha1, "u", "p", "abc");
        assert!(c
            .client_final("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096")
            .is_err());
        assert!(c.client_final("r=abc,s=QSXCR+Q6sek8bf92,i=4096").is_err());
        assert!(c.client_final("r=abcd,i=4096").is_err());
    }
}
