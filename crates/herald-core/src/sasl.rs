//! RFC 4422 SASL, server side: RFC 5802 / RFC 7677 SCRAM (with RFC 9266 tls-exporter and
//! RFC 5929 tls-server-end-point channel binding) and RFC 4616 PLAIN.
//!
//! [`ScramServer`] is a small state machine: `client_first` → `server_first` →
//! `client_final`, each step allowed once and in that order. Passwords are
//! prepared with the PRECIS OpaqueString profile (RFC 8265 §4.2, the successor
//! of SASLprep) before key derivation. Usernames come back decoded but
//! unprepared; prepare them as JID localparts ([`crate::jid::prepare_node`]).

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// Length of the salt [`ScramCredential::derive`] generates.
pub const SALT_LEN: usize = 16;

/// Random bytes in the server's part of the nonce.
const SERVER_NONCE_BYTES: usize = 24;

/// Iterations advertised for unknown users unless told otherwise.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512 (draft-melnikov-scram-sha-512).
    Sha512,
}

impl ScramHash {
    /// Every supported hash, weakest first.
    pub const ALL: [ScramHash; 3] = [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512];

    /// The SASL mechanism name without channel binding, e.g. `SCRAM-SHA-1`.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The SASL mechanism name with channel binding, e.g. `SCRAM-SHA-1-PLUS`.
    pub fn plus_mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1-PLUS",
            ScramHash::Sha256 => "SCRAM-SHA-256-PLUS",
            ScramHash::Sha512 => "SCRAM-SHA-512-PLUS",
        }
    }

    /// Maps a mechanism name to its hash and whether it is a `-PLUS` variant.
    pub fn from_mechanism(name: &str) -> Option<(ScramHash, bool)> {
        ScramHash::ALL.into_iter().find_map(|h| {
            if name == h.mechanism() {
                Some((h, false))
            } else if name == h.plus_mechanism() {
                Some((h, true))
            } else {
                None
            }
        })
    }

    /// Output size of the hash in bytes.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            ScramHash::Sha1 => run::<Hmac<Sha1>>(key, data),
            ScramHash::Sha256 => run::<Hmac<Sha256>>(key, data),
            ScramHash::Sha512 => run::<Hmac<Sha512>>(key, data),
        }
    }

    /// `Hi()` of RFC 5802 §2.2: PBKDF2 with HMAC over this hash.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
            ScramHash::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out)
            }
        }
        out
    }

    /// (StoredKey, ServerKey) from a SaltedPassword.
    fn keys(self, salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client_key = self.hmac(salted, b"Client Key");
        let stored_key = self.hash(&client_key);
        let server_key = self.hmac(salted, b"Server Key");
        (stored_key, server_key)
    }
}

/// Why a SASL exchange failed; [`SaslError::condition`] names the RFC 6120 §6.5 failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client's message does not follow the mechanism's syntax, or came out of order.
    #[error("malformed SASL request: {0}")]
    MalformedRequest(&'static str),
    /// Wrong credentials, unknown user, channel binding mismatch or downgrade.
    #[error("not authorized")]
    NotAuthorized,
    /// The authorization identity is not acceptable.
    #[error("invalid authzid")]
    InvalidAuthzid,
    /// The mechanism is not offered.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The mechanism needs a TLS-protected stream.
    #[error("encryption required")]
    EncryptionRequired,
    /// The client aborted the exchange.
    #[error("aborted")]
    Aborted,
    /// The data is not valid base64.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// The account is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// The credentials have expired.
    #[error("credentials expired")]
    CredentialsExpired,
    /// The mechanism is weaker than server policy allows for this account.
    #[error("mechanism too weak")]
    MechanismTooWeak,
    /// A transient server-side problem (e.g. storage unavailable).
    #[error("temporary authentication failure")]
    TemporaryAuthFailure,
    /// A password (when setting one) is empty or refused by PRECIS OpaqueString,
    /// or the iteration count is zero.
    #[error("invalid password")]
    InvalidPassword,
}

impl SaslError {
    /// The RFC 6120 §6.5 `<failure/>` child element name.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::MalformedRequest(_) => "malformed-request",
            SaslError::NotAuthorized | SaslError::InvalidPassword => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::Aborted => "aborted",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::AccountDisabled => "account-disabled",
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::MechanismTooWeak => "mechanism-too-weak",
            SaslError::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Prepares a password with PRECIS OpaqueString (RFC 8265 §4.2).
fn prepare_password(password: &str) -> Result<String, SaslError> {
    OpaqueString::enforce(password)
        .map(|p| p.into_owned())
        .map_err(|_| SaslError::InvalidPassword)
}

/// What the server stores for a SCRAM account (RFC 5802 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredential {
    /// Which SCRAM hash the keys belong to.
    pub hash: ScramHash,
    /// The salt given to the client.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives a credential with a fresh random 16-byte salt.
    pub fn derive(
        hash: ScramHash,
        password: &str,
        iterations: u32,
    ) -> Result<ScramCredential, SaslError> {
        let mut salt = [0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::derive_with_salt(hash, password, iterations, &salt)
    }

    /// Derives a credential with the given salt.
    pub fn derive_with_salt(
        hash: ScramHash,
        password: &str,
        iterations: u32,
        salt: &[u8],
    ) -> Result<ScramCredential, SaslError> {
        if iterations == 0 {
            return Err(SaslError::InvalidPassword);
        }
        let password = prepare_password(password)?;
        let salted = hash.hi(password.as_bytes(), salt, iterations);
        let (stored_key, server_key) = hash.keys(&salted);
        Ok(ScramCredential {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        })
    }

    /// True if `password` derives this credential's StoredKey (compared in
    /// constant time). Costs a full PBKDF2 run; used for PLAIN.
    pub fn verify_password(&self, password: &str) -> bool {
        let Ok(password) = prepare_password(password) else {
            return false;
        };
        if self.iterations == 0 {
            return false;
        }
        let salted = self
            .hash
            .hi(password.as_bytes(), &self.salt, self.iterations);
        let (stored_key, _) = self.hash.keys(&salted);
        ct_eq(&stored_key, &self.stored_key)
    }
}

/// Channel-binding data the server computed for this TLS connection.
#[derive(Clone, Debug, Default)]
pub struct ChannelBinding {
    /// RFC 9266: the TLS exporter value for label "EXPORTER-Channel-Binding", 32 bytes.
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929: the hash of the server certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

/// What the client-first message told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// The authentication identity, saslname-decoded (`=2C` → `,`, `=3D` → `=`), unprepared.
    pub username: String,
    /// The authorization identity, if the client sent one (decoded, unprepared).
    pub authzid: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CbType {
    TlsExporter,
    TlsServerEndPoint,
}

enum State {
    Start,
    GotClientFirst {
        /// The raw gs2 header, both commas included.
        gs2_header: Vec<u8>,
        cb: Option<CbType>,
        client_first_bare: String,
        client_nonce: String,
        username: String,
    },
    SentServerFirst {
        gs2_header: Vec<u8>,
        cb: Option<CbType>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        /// None for an unknown user (or a credential of the wrong hash).
        keys: Option<(Vec<u8>, Vec<u8>)>,
    },
    Done,
}

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    hash: ScramHash,
    plus: bool,
    binding: ChannelBinding,
    plus_advertised: bool,
    state: State,
    fixed_server_nonce: Option<String>,
    secret: Option<Vec<u8>>,
    unknown_iterations: u32,
}

/// A per-process secret for fake salts when none was configured.
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut s);
        s
    })
}

impl ScramServer {
    /// Starts an exchange. `plus`: the client chose the `-PLUS` mechanism.
    /// `plus_advertised`: this stream offered `-PLUS` mechanisms, so a client
    /// that says it saw none (gs2 flag `y`) is being downgraded.
    pub fn new(
        hash: ScramHash,
        plus: bool,
        binding: ChannelBinding,
        plus_advertised: bool,
    ) -> ScramServer {
        ScramServer {
            hash,
            plus,
            binding,
            plus_advertised,
            state: State::Start,
            fixed_server_nonce: None,
            secret: None,
            unknown_iterations: DEFAULT_ITERATIONS,
        }
    }

    /// Sets the secret fake salts for unknown users are derived from. Every
    /// node of a cluster should use the same one, otherwise salts of unknown
    /// users differ between nodes and give them away. Defaults to a random
    /// per-process secret.
    pub fn with_server_secret(mut self, secret: &[u8]) -> ScramServer {
        self.secret = Some(secret.to_vec());
        self
    }

    /// Sets the iteration count advertised for unknown users; use the count
    /// real credentials are created with. Defaults to [`DEFAULT_ITERATIONS`].
    pub fn with_unknown_user_iterations(mut self, iterations: u32) -> ScramServer {
        self.unknown_iterations = iterations.max(1);
        self
    }

    /// Test hook: use this server nonce part instead of a random one.
    #[doc(hidden)]
    pub fn with_server_nonce(mut self, nonce: &str) -> ScramServer {
        self.fixed_server_nonce = Some(nonce.to_owned());
        self
    }

    /// The hash of this exchange's mechanism.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// True if the client chose the `-PLUS` mechanism.
    pub fn is_plus(&self) -> bool {
        self.plus
    }

    /// Parses the client-first message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Done;
            return Err(SaslError::MalformedRequest(
                "unexpected client-first message",
            ));
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(msg)
            .map_err(|_| SaslError::MalformedRequest("client-first is not UTF-8"))?;

        // gs2-header = gs2-cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(SaslError::MalformedRequest("missing gs2 header"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(SaslError::MalformedRequest("missing gs2 header"))?;
        let gs2_header = &msg[..flag.len() + authzid.len() + 2];

        let cb = match flag {
            "n" => {
                if self.plus {
                    return Err(SaslError::MalformedRequest(
                        "-PLUS mechanism without channel binding",
                    ));
                }
                None
            }
            "y" => {
                if self.plus {
                    return Err(SaslError::MalformedRequest(
                        "-PLUS mechanism without channel binding",
                    ));
                }
                // RFC 5802 §6: the client supports channel binding but thinks
                // we don't; we do, so someone removed -PLUS from the offer.
                if self.plus_advertised {
                    return Err(SaslError::NotAuthorized);
                }
                None
            }
            _ => {
                let name = flag
                    .strip_prefix("p=")
                    .ok_or(SaslError::MalformedRequest("bad gs2 channel binding flag"))?;
                if !self.plus {
                    return Err(SaslError::MalformedRequest(
                        "channel binding requested with a non-PLUS mechanism",
                    ));
                }
                let (kind, available) = match name {
                    "tls-exporter" => (CbType::TlsExporter, self.binding.tls_exporter.is_some()),
                    "tls-server-end-point" => (
                        CbType::TlsServerEndPoint,
                        self.binding.tls_server_end_point.is_some(),
                    ),
                    _ => {
                        return Err(SaslError::MalformedRequest(
                            "unsupported channel binding type",
                        ))
                    }
                };
                if !available {
                    return Err(SaslError::NotAuthorized);
                }
                Some(kind)
            }
        };

        let authzid = if authzid.is_empty() {
            None
        } else {
            let name = authzid
                .strip_prefix("a=")
                .ok_or(SaslError::MalformedRequest("bad authzid"))?;
            Some(decode_saslname(name)?)
        };

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .unwrap_or_default()
            .strip_prefix("n=")
            .ok_or_else(|| {
                if bare.starts_with("m=") {
                    SaslError::MalformedRequest("mandatory extensions are not supported")
                } else {
                    SaslError::MalformedRequest("missing username")
                }
            })?;
        let username = decode_saslname(user)?;
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest("missing nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(SaslError::MalformedRequest("bad nonce"));
        }
        for ext in attrs {
            check_extension(ext)?;
        }

        self.state = State::GotClientFirst {
            gs2_header: gs2_header.as_bytes().to_vec(),
            cb,
            client_first_bare: bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
            username: username.clone(),
        };
        Ok(ClientFirst { username, authzid })
    }

    /// Produces the server-first message. `cred` is the user's credential, or
    /// `None` for an unknown user: then the message carries a salt derived from
    /// the username and the server secret, so it looks like a real one, and
    /// [`ScramServer::client_final`] fails with [`SaslError::NotAuthorized`].
    /// A credential for another hash is treated as `None`.
    ///
    /// Called out of order, it returns an empty message and the exchange fails.
    pub fn server_first(&mut self, cred: Option<&ScramCredential>) -> Vec<u8> {
        let State::GotClientFirst {
            gs2_header,
            cb,
            client_first_bare,
            client_nonce,
            username,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Vec::new();
        };
        let server_nonce = self.fixed_server_nonce.clone().unwrap_or_else(|| {
            let mut raw = [0u8; SERVER_NONCE_BYTES];
            rand::thread_rng().fill_bytes(&mut raw);
            B64.encode(raw)
        });
        let nonce = format!("{client_nonce}{server_nonce}");
        let cred = cred.filter(|c| c.hash == self.hash && c.iterations > 0);
        let (salt, iterations, keys) = match cred {
            Some(c) => (
                c.salt.clone(),
                c.iterations,
                Some((c.stored_key.clone(), c.server_key.clone())),
            ),
            None => (self.fake_salt(&username), self.unknown_iterations, None),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let out = server_first.clone().into_bytes();
        self.state = State::SentServerFirst {
            gs2_header,
            cb,
            client_first_bare,
            server_first,
            nonce,
            keys,
        };
        out
    }

    fn fake_salt(&self, username: &str) -> Vec<u8> {
        let secret: &[u8] = match &self.secret {
            Some(s) => s,
            None => process_secret(),
        };
        // Normalize as the account lookup would, so that "User" and "user"
        // get the same salt, as they would for a real account.
        let name = crate::jid::prepare_node(username)
            .map(|n| n.into_owned())
            .unwrap_or_else(|_| username.to_owned());
        let mut data = Vec::with_capacity(name.len() + 32);
        data.extend_from_slice(b"herald scram fake salt\0");
        data.extend_from_slice(self.hash.mechanism().as_bytes());
        data.push(0);
        data.extend_from_slice(name.as_bytes());
        let mut salt = ScramHash::Sha256.hmac(secret, &data);
        salt.truncate(SALT_LEN);
        salt
    }

    /// Checks the client-final message and returns the server-final `v=...`.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::SentServerFirst {
            gs2_header,
            cb,
            client_first_bare,
            server_first,
            nonce,
            keys,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(SaslError::MalformedRequest(
                "unexpected client-final message",
            ));
        };
        let msg = std::str::from_utf8(msg)
            .map_err(|_| SaslError::MalformedRequest("client-final is not UTF-8"))?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(SaslError::MalformedRequest("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest("missing channel binding"))?;
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest("missing nonce"))?;
        for ext in attrs {
            check_extension(ext)?;
        }
        let cbind = B64
            .decode(cbind)
            .map_err(|_| SaslError::MalformedRequest("bad channel binding encoding"))?;
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslError::MalformedRequest("bad proof encoding"))?;

        let mut expected_cbind = gs2_header;
        match cb {
            None => {}
            Some(CbType::TlsExporter) => expected_cbind
                .extend_from_slice(self.binding.tls_exporter.as_deref().unwrap_or(&[])),
            Some(CbType::TlsServerEndPoint) => expected_cbind
                .extend_from_slice(self.binding.tls_server_end_point.as_deref().unwrap_or(&[])),
        }
        let cbind_ok = ct_eq(&cbind, &expected_cbind);
        let nonce_ok = client_nonce == nonce;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        // Unknown users go through the same computation with throwaway keys,
        // so the failure takes about as long as a wrong password.
        let known = keys.is_some();
        let (stored_key, server_key) = keys.unwrap_or_else(|| {
            let dummy = self.hash.hash(server_first.as_bytes());
            (dummy.clone(), dummy)
        });
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof_ok = proof.len() == signature.len() && {
            let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
            ct_eq(&self.hash.hash(&client_key), &stored_key)
        };
        if !(known && cbind_ok && nonce_ok && proof_ok) {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (no ',').
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// Optional extensions are `letter "=" value`; a mandatory `m=` is refused.
fn check_extension(ext: &str) -> Result<(), SaslError> {
    let b = ext.as_bytes();
    if b.len() < 2 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
        return Err(SaslError::MalformedRequest("bad attribute"));
    }
    if b[0] == b'm' {
        return Err(SaslError::MalformedRequest(
            "mandatory extensions are not supported",
        ));
    }
    Ok(())
}

/// Decodes a RFC 5802 saslname: `=2C` → `,`, `=3D` → `=`, any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() {
        return Err(SaslError::MalformedRequest("empty saslname"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslError::MalformedRequest("bad saslname escape")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.contains('\0') {
        return Err(SaslError::MalformedRequest("NUL in saslname"));
    }
    Ok(out)
}

/// Parses a PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
/// Returns the parts unprepared; an empty authzid is `None`.
pub fn parse_plain(msg: &[u8]) -> Result<(Option<String>, String, String), SaslError> {
    let msg =
        std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest("PLAIN is not UTF-8"))?;
    let mut parts = msg.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest(
            "PLAIN needs exactly two NUL separators",
        ));
    };
    if authcid.is_empty() {
        return Err(SaslError::MalformedRequest("empty PLAIN authcid"));
    }
    if password.is_empty() {
        return Err(SaslError::MalformedRequest("empty PLAIN password"));
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    Ok((authzid, authcid.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslname() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(decode_saslname("a=2").is_err());
        assert!(decode_saslname("a=41").is_err());
        assert!(decode_saslname("").is_err());
    }

    #[test]
    fn mechanisms() {
        for h in ScramHash::ALL {
            assert_eq!(ScramHash::from_mechanism(h.mechanism()), Some((h, false)));
            assert_eq!(
                ScramHash::from_mechanism(h.plus_mechanism()),
                Some((h, true))
            );
            assert_eq!(h.hash(b"").len(), h.output_len());
        }
        assert_eq!(ScramHash::from_mechanism("scram-sha-1"), None);
        assert_eq!(ScramHash::from_mechanism("PLAIN"), None);
    }
}
