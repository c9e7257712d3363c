//! Errors of the stream parser and the stream error each one maps to.

/// Why a stream could not be parsed. Every variant is fatal to the stream: the parser
/// keeps returning it, and the session answers with the `<stream:error/>` condition
/// given by [`XmlError::stream_condition`] before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0} not allowed")]
    RestrictedXml(&'static str),
    #[error("stanza exceeds the size limit")]
    StanzaTooBig,
    #[error("elements nested too deeply")]
    TooDeep,
    #[error("too many attributes on one element")]
    TooManyAttributes,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("undeclared namespace prefix '{0}'")]
    UndeclaredPrefix(String),
    /// The XML declaration named an encoding other than UTF-8.
    #[error("unsupported encoding '{0}'")]
    UnsupportedEncoding(String),
}

impl XmlError {
    /// The RFC 6120 §4.9.3 defined-condition element name for this error.
    pub fn stream_condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) | XmlError::InvalidUtf8 | XmlError::UndeclaredPrefix(_) => {
                "not-well-formed"
            }
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::StanzaTooBig
            | XmlError::TooDeep
            | XmlError::TooManyAttributes
            | XmlError::NameTooLong => "policy-violation",
            XmlError::UnsupportedEncoding(_) => "unsupported-encoding",
        }
    }

    pub(crate) fn nwf(msg: &str) -> XmlError {
        XmlError::NotWellFormed(msg.to_owned())
    }
}
