//! Account administration shared by the CLI and (later) the admin API: create, delete,
//! change password, list. Passwords are stored only as SCRAM salted keys, one per hash.

use herald_core::sasl::{ScramCredential, ScramHash};
use herald_core::Jid;
use herald_storage::{Storage, StorageError, StoredCredential};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0:?} is not a valid user JID (expected user@domain)")]
    InvalidJid(String),
    #[error("{0} is not served by this server (server.domains)")]
    UnknownDomain(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("unusable password: {0}")]
    BadPassword(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

pub fn to_stored(c: &ScramCredential) -> StoredCredential {
    StoredCredential {
        mechanism: c.hash.mechanism().to_string(),
        salt: c.salt.clone(),
        iterations: c.iterations,
        stored_key: c.stored_key.clone(),
        server_key: c.server_key.clone(),
    }
}

pub fn from_stored(s: &StoredCredential) -> Option<ScramCredential> {
    let (hash, plus) = ScramHash::from_mechanism(&s.mechanism)?;
    (!plus).then(|| ScramCredential {
        hash,
        salt: s.salt.clone(),
        iterations: s.iterations,
        stored_key: s.stored_key.clone(),
        server_key: s.server_key.clone(),
    })
}

/// Salted keys for every SCRAM hash we offer.
pub fn derive_all(password: &str, iterations: u32) -> Result<Vec<StoredCredential>, AccountError> {
    if password.is_empty() {
        return Err(AccountError::BadPassword("empty".into()));
    }
    ScramHash::ALL
        .iter()
        .map(|h| {
            ScramCredential::derive(*h, password, iterations)
                .map(|c| to_stored(&c))
                .map_err(|e| AccountError::BadPassword(e.to_string()))
        })
        .collect()
}

/// Parses and checks a user JID against the served domains.
pub fn user_jid(raw: &str, domains: &[String]) -> Result<Jid, AccountError> {
    let j = Jid::parse(raw).map_err(|_| AccountError::InvalidJid(raw.to_string()))?;
    if j.node().is_none() || j.resource().is_some() {
        return Err(AccountError::InvalidJid(raw.to_string()));
    }
    if !domains.iter().any(|d| d == j.domain()) {
        return Err(AccountError::UnknownDomain(j.domain().to_string()));
    }
    Ok(j)
}

pub async fn add(
    store: &dyn Storage,
    jid: &Jid,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let creds = derive_all(password, iterations)?;
    match store
        .create_account(jid.domain(), jid.node().unwrap_or(""), &creds)
        .await
    {
        Err(StorageError::AlreadyExists) => Err(AccountError::Exists(jid.to_string())),
        r => Ok(r?),
    }
}

pub async fn delete(store: &dyn Storage, jid: &Jid) -> Result<(), AccountError> {
    if store
        .delete_account(jid.domain(), jid.node().unwrap_or(""))
        .await?
    {
        Ok(())
    } else {
        Err(AccountError::NotFound(jid.to_string()))
    }
}

pub async fn set_password(
    store: &dyn Storage,
    jid: &Jid,
    password: &str,
    iterations: u32,
) -> Result<(), AccountError> {
    let creds = derive_all(password, iterations)?;
    if store
        .set_credentials(jid.domain(), jid.node().unwrap_or(""), &creds)
        .await?
    {
        Ok(())
    } else {
        Err(AccountError::NotFound(jid.to_string()))
    }
}
