//! RFC 7590 TLS: loads the operator's certificate or generates a self-signed one for every
//! served domain into `data_dir` on first start, and computes channel-binding data.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::Digest;

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Server TLS material shared by every listener.
pub struct TlsContext {
    pub config: Arc<ServerConfig>,
    /// RFC 5929 tls-server-end-point: hash of our certificate, fixed per certificate.
    pub end_point: Vec<u8>,
}

impl TlsContext {
    pub fn load(settings: &Settings) -> Result<TlsContext, TlsError> {
        let (certs, key) = match (&settings.raw.tls.cert, &settings.raw.tls.key) {
            (Some(c), Some(k)) => (read_certs(c)?, read_key(k)?),
            _ => self_signed(&settings.raw.server.data_dir, &settings.domains)?,
        };
        let end_point = end_point_hash(&certs[0]);
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| suite_rank(s.suite()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                TlsError::Setup(format!(
                    "certificate and key do not match or are unusable: {e}"
                ))
            })?;
        // Resumption state lives in one bounded cache (1024 sessions), not per connection.
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
        // One TLS 1.3 ticket per handshake, not rustls's default two: an XMPP client holds
        // one connection, so it resumes (if at all) one at a time.
        config.send_tls13_tickets = 1;
        // Our order, not the client's: most clients list AES-256 first, and its SHA-384 key
        // schedule runs without hardware help where SHA-256 has it (SHA-NI, ARMv8 SHA2);
        // AES-128-GCM is TLS 1.3's mandatory suite and what browsers prefer.
        config.ignore_client_order = true;
        Ok(TlsContext {
            config: Arc::new(config),
            end_point,
        })
    }
}

/// Server preference among equally strong AEAD suites: AES-128-GCM (SHA-256 key schedule),
/// then AES-256-GCM, then ChaCha20-Poly1305, in each TLS version.
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("contains no PEM certificate".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| err(format!("not a PEM key file: {e}")))?
        .ok_or_else(|| err("contains no PEM private key".into()))
}

/// Generates (once) a self-signed certificate naming every domain, kept in `data_dir` so
/// clients that pinned it keep working across restarts. Regenerated when the domain list
/// changes.
fn self_signed(
    data_dir: &Path,
    domains: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = data_dir.join("selfsigned.crt");
    let key_path = data_dir.join("selfsigned.key");
    let names_path = data_dir.join("selfsigned.names");
    let names = domains.join("\n");
    if cert_path.is_file()
        && key_path.is_file()
        && std::fs::read_to_string(&names_path).ok().as_deref() == Some(names.as_str())
    {
        return Ok((read_certs(&cert_path)?, read_key(&key_path)?));
    }
    let dir_err = |e: std::io::Error| TlsError::File {
        path: data_dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(dir_err)?;
    let mut sans = Vec::new();
    for d in domains {
        sans.push(d.clone());
        sans.push(format!("*.{d}"));
    }
    let ck =
        rcgen::generate_simple_self_signed(sans).map_err(|e| TlsError::Setup(e.to_string()))?;
    write_private(&key_path, ck.key_pair.serialize_pem().as_bytes()).map_err(dir_err)?;
    std::fs::write(&cert_path, ck.cert.pem()).map_err(dir_err)?;
    std::fs::write(&names_path, names).map_err(dir_err)?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok((read_certs(&cert_path)?, read_key(&key_path)?))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

/// RFC 5929 §4.1: hash the certificate with its signature's hash, SHA-256 for MD5/SHA-1.
fn end_point_hash(cert: &CertificateDer<'_>) -> Vec<u8> {
    // The signatureAlgorithm OID sits near the end of the DER; look for the SHA-384/512 ones
    // (RSA and ECDSA variants). Everything else binds with SHA-256.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let der: &[u8] = cert.as_ref();
    let tail = &der[der.len().saturating_sub(160)..];
    let has = |oids: &[&[u8]]| oids.iter().any(|o| tail.windows(o.len()).any(|w| w == *o));
    if has(&SHA512) {
        sha2::Sha512::digest(der).to_vec()
    } else if has(&SHA384) {
        sha2::Sha384::digest(der).to_vec()
    } else {
        sha2::Sha256::digest(der).to_vec()
    }
}
