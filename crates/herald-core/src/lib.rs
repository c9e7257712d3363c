//! Herald core types shared by every layer: RFC 7622 JIDs, SASL mechanisms, typed
//! stanza/stream errors that know their wire form, and the namespaces we speak.

pub mod error;
pub mod jid;
pub mod ns;
pub mod sasl;

pub use error::{ErrorType, StanzaError, StanzaErrorCondition, StreamErrorCondition};
pub use jid::{Jid, JidError};
