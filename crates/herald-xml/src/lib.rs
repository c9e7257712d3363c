//! XMPP stream framing with limits.
//!
//! An XMPP connection is one long XML document whose root (`<stream:stream>`) stays open
//! for the life of the session; every child of the root is a stanza. [`StreamParser`] is
//! a push parser for that shape: bytes go in as the socket delivers them, in any chunking,
//! and out come [`StreamEvent::Open`] for the root, one [`StreamEvent::Stanza`] per
//! complete child with its whole subtree as an [`Element`], and [`StreamEvent::Close`].
//! [`Element::write_to`] is the matching serializer. Message-oriented transports (XMPP over
//! WebSocket) carry one complete element per message instead; [`parse_document`] parses such
//! a standalone document under the same rules and limits.
//!
//! # Why restricted XML
//!
//! RFC 6120 §11 allows only a subset of XML, and the parser enforces it rather than
//! ignoring the rest, because each excluded feature is an attack surface on a server that
//! parses input from anyone on the network:
//!
//! * **No DTDs and no entity declarations.** Internal entities are the vehicle for
//!   expansion bombs ("billion laughs") and external ones for reading local files or
//!   probing the network. Only the five predefined entities and character references are
//!   decoded; any other named entity is `restricted-xml`.
//! * **No comments and no processing instructions.** They carry nothing a stanza needs,
//!   and accepting them would let a client hide data from filters or smuggle it to other
//!   parsers along the route. Only the XML declaration is accepted, and only before the
//!   root, because clients legitimately send it at stream start.
//! * **UTF-8 only.** RFC 6120 mandates it; accepting anything else would mean a
//!   transcoding step and ambiguity about what a filter actually saw.
//! * **CDATA sections are accepted** inside stanzas as plain text: some clients emit them
//!   and they are harmless once merged into the surrounding text.
//!
//! Namespaces are resolved fully (prefixes, defaults, scoping) so that handlers compare
//! `(local name, namespace)` pairs and never prefixes, which a sender can pick freely.
//! A stanza inherits the stream's default namespace (`jabber:client`) and may use the
//! `stream:` prefix declared on the root (`<stream:features/>`).
//!
//! # Why limits
//!
//! Every connection gets one parser, and a hostile peer controls everything it is fed, so
//! memory and CPU must be bounded per connection regardless of input:
//!
//! * [`Limits::max_stanza_bytes`] caps the raw size of a stanza (and of the stream header).
//!   It is enforced while the stanza is still arriving, so an endless stanza is cut off
//!   once that many bytes are buffered instead of when it ends (it never would).
//!   Whitespace between stanzas is discarded as it arrives and anything else there is an
//!   error, so nothing else can pile up either.
//! * [`Limits::max_depth`] bounds nesting, which keeps the element stack, recursive
//!   consumers of the tree (serializer, handlers) and the stack depth they need in check.
//! * [`Limits::max_attrs`] and [`Limits::max_name_len`] bound the per-element work that
//!   is quadratic in the worst case (duplicate checks, namespace lookups).
//!
//! Work is linear in the input: the end of a partial token is searched from where the
//! previous search stopped, and consumed bytes are dropped when the parser waits for more,
//! moving only the one unfinished token. An idle parser holds no buffer. Policy limits map
//! to the `policy-violation` stream error, syntax to `not-well-formed` and forbidden
//! constructs to `restricted-xml` ([`XmlError::stream_condition`]). Errors are final:
//! XML gives no way to resynchronize, so the stream must be closed.
//!
//! Limits and errors do not depend on how the input was split: every decision is made
//! after checking the size limit at the position being decided on, so feeding a stream
//! byte by byte or all at once yields the same events and the same error.

mod element;
mod error;
mod lex;
mod parser;

pub use element::{escape_attr, escape_text, Element, Node};
pub use error::XmlError;
pub use parser::{parse_document, Limits, StreamEvent, StreamHeader, StreamParser, XML_NS};

#[cfg(test)]
mod tests;
