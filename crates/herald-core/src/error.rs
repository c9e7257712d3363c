//! Typed XMPP errors (RFC 6120 §4.9 stream errors, §8.3 stanza errors) that render their own
//! wire form, so a handler returns a value and never builds error XML by hand.

use herald_xml::Element;

use crate::ns;

/// RFC 6120 §8.3.2 error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

macro_rules! conditions {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $wire:literal, $ty:ident;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant,)* }
        impl $name {
            /// The defined-condition element name on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)* }
            }
            /// The error type RFC 6120 §8.3.3 suggests for this condition.
            pub fn default_type(self) -> ErrorType {
                match self { $($name::$variant => ErrorType::$ty,)* }
            }
        }
    };
}

conditions! {
    /// RFC 6120 §8.3.3 defined stanza error conditions.
    StanzaErrorCondition {
        BadRequest => "bad-request", Modify;
        Conflict => "conflict", Cancel;
        FeatureNotImplemented => "feature-not-implemented", Cancel;
        Forbidden => "forbidden", Auth;
        Gone => "gone", Cancel;
        InternalServerError => "internal-server-error", Cancel;
        ItemNotFound => "item-not-found", Cancel;
        JidMalformed => "jid-malformed", Modify;
        NotAcceptable => "not-acceptable", Modify;
        NotAllowed => "not-allowed", Cancel;
        NotAuthorized => "not-authorized", Auth;
        PolicyViolation => "policy-violation", Modify;
        RecipientUnavailable => "recipient-unavailable", Wait;
        Redirect => "redirect", Modify;
        RegistrationRequired => "registration-required", Auth;
        RemoteServerNotFound => "remote-server-not-found", Cancel;
        RemoteServerTimeout => "remote-server-timeout", Wait;
        ResourceConstraint => "resource-constraint", Wait;
        ServiceUnavailable => "service-unavailable", Cancel;
        SubscriptionRequired => "subscription-required", Auth;
        UndefinedCondition => "undefined-condition", Cancel;
        UnexpectedRequest => "unexpected-request", Wait;
    }
}

conditions! {
    /// RFC 6120 §4.9.3 stream error conditions.
    StreamErrorCondition {
        BadFormat => "bad-format", Cancel;
        BadNamespacePrefix => "bad-namespace-prefix", Cancel;
        Conflict => "conflict", Cancel;
        ConnectionTimeout => "connection-timeout", Cancel;
        HostGone => "host-gone", Cancel;
        HostUnknown => "host-unknown", Cancel;
        ImproperAddressing => "improper-addressing", Cancel;
        InternalServerError => "internal-server-error", Cancel;
        InvalidFrom => "invalid-from", Cancel;
        InvalidNamespace => "invalid-namespace", Cancel;
        InvalidXml => "invalid-xml", Cancel;
        NotAuthorized => "not-authorized", Cancel;
        NotWellFormed => "not-well-formed", Cancel;
        PolicyViolation => "policy-violation", Cancel;
        RemoteConnectionFailed => "remote-connection-failed", Cancel;
        Reset => "reset", Cancel;
        ResourceConstraint => "resource-constraint", Cancel;
        RestrictedXml => "restricted-xml", Cancel;
        SeeOtherHost => "see-other-host", Cancel;
        SystemShutdown => "system-shutdown", Cancel;
        UndefinedCondition => "undefined-condition", Cancel;
        UnsupportedEncoding => "unsupported-encoding", Cancel;
        UnsupportedFeature => "unsupported-feature", Cancel;
        UnsupportedStanzaType => "unsupported-stanza-type", Cancel;
        UnsupportedVersion => "unsupported-version", Cancel;
    }
}

impl StreamErrorCondition {
    /// Maps a framing error's RFC 6120 condition name back to the typed condition.
    pub fn from_wire(name: &str) -> StreamErrorCondition {
        match name {
            "not-well-formed" => StreamErrorCondition::NotWellFormed,
            "restricted-xml" => StreamErrorCondition::RestrictedXml,
            "policy-violation" => StreamErrorCondition::PolicyViolation,
            "bad-namespace-prefix" => StreamErrorCondition::BadNamespacePrefix,
            "invalid-namespace" => StreamErrorCondition::InvalidNamespace,
            "unsupported-encoding" => StreamErrorCondition::UnsupportedEncoding,
            "bad-format" => StreamErrorCondition::BadFormat,
            _ => StreamErrorCondition::UndefinedCondition,
        }
    }

    /// `<stream:error><condition xmlns='...streams'/><text>..</text></stream:error>`.
    pub fn to_element(self, text: Option<&str>) -> Element {
        let mut e =
            Element::new("error", ns::STREAM).with_child(Element::new(self.as_str(), ns::STREAMS));
        if let Some(t) = text {
            e.push(
                Element::new("text", ns::STREAMS)
                    .with_attr("xml:lang", "en")
                    .with_text(t),
            );
        }
        e
    }
}

/// A stanza error as a value: condition, type, optional human text and an optional
/// application-specific child (e.g. XEP-0191 `<blocked/>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: StanzaErrorCondition,
    pub kind: ErrorType,
    pub text: Option<String>,
    /// Boxed: errors travel in `Result`s on hot paths and should stay small.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: StanzaErrorCondition) -> StanzaError {
        StanzaError {
            condition,
            kind: condition.default_type(),
            text: None,
            app: None,
        }
    }

    pub fn with_type(mut self, kind: ErrorType) -> StanzaError {
        self.kind = kind;
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> StanzaError {
        self.text = Some(text.into());
        self
    }

    pub fn with_app(mut self, app: Element) -> StanzaError {
        self.app = Some(Box::new(app));
        self
    }

    /// The `<error/>` child element in the stanza namespace.
    pub fn to_element(&self, by: Option<&str>) -> Element {
        let mut e = Element::new("error", ns::CLIENT).with_attr("type", self.kind.as_str());
        if let Some(by) = by {
            e.set_attr("by", by);
        }
        e.push(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(t) = &self.text {
            e.push(
                Element::new("text", ns::STANZAS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        if let Some(app) = &self.app {
            e.push((**app).clone());
        }
        e
    }

    /// Turns the offending stanza into its error reply (RFC 6120 §8.3.1): addresses swapped,
    /// type='error', the original payload kept for context and the error appended.
    pub fn reply_to(&self, stanza: &Element) -> Element {
        let mut reply = Element::new(stanza.name.clone(), stanza.ns.clone());
        if let Some(id) = stanza.attr("id") {
            reply.set_attr("id", id);
        }
        if let Some(from) = stanza.attr("from") {
            reply.set_attr("to", from);
        }
        if let Some(to) = stanza.attr("to") {
            reply.set_attr("from", to);
        }
        reply.set_attr("type", "error");
        // IQ replies carry no payload (keeps error bounces small); messages and presences keep
        // their children so the sender can tell which one bounced.
        if stanza.name != "iq" {
            for c in stanza.elements() {
                if !c.is("error", &stanza.ns) {
                    reply.push(c.clone());
                }
            }
        }
        reply.push(self.to_element(None));
        reply
    }
}

impl From<StanzaErrorCondition> for StanzaError {
    fn from(c: StanzaErrorCondition) -> Self {
        StanzaError::new(c)
    }
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.condition.as_str())?;
        if let Some(t) = &self.text {
            write!(f, ": {t}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StanzaError {}
