//! XEP-0198: Stream Management — acks, and resumption of a dropped session.
//!
//! Counting: `h_in` counts stanzas received from the client and fully processed (so an ack
//! we give covers only what is durable or delivered); `h_out` counts stanzas written to the
//! client, each kept in `unacked` until the client's `<a h=''/>` covers it. A stream that
//! drops without `</stream:stream>` hibernates: the session stays bound, keeps receiving,
//! and a new connection that authenticates as the same user can take it over with
//! `<resume/>`, getting exactly the stanzas it had not acknowledged.

use std::collections::VecDeque;

use herald_core::ns;
use herald_xml::Element;
use tokio::sync::mpsc;

use crate::stream::Conn;

/// A new connection handed to a hibernating (or still attached) session.
pub struct Handoff {
    pub conn: Conn,
    /// The client's count of stanzas it handled from us.
    pub h: u32,
    /// XEP-0388 inline resumption: the SASL2 `<success/>` that must carry `<resumed/>`.
    pub success: Option<herald_xml::Element>,
}

/// Where the resumption id of a session leads: the task owning it.
#[derive(Clone)]
pub struct ResumeSlot {
    pub bare: String,
    pub tx: mpsc::Sender<Handoff>,
}

pub struct SmState {
    /// Set when resumption was granted.
    pub id: Option<String>,
    pub h_in: u32,
    pub h_out: u32,
    /// Sent and not yet acknowledged, oldest first; `h_out - unacked.len()` were acked.
    pub unacked: VecDeque<Element>,
    /// We sent `<r/>` and await the answer.
    pub requested: bool,
}

/// Ask for an ack once this many stanzas are unacknowledged.
const REQUEST_EVERY: usize = 5;

#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// The client acknowledged more than we sent.
    TooHigh { h: u32, sent: u32 },
}

impl SmState {
    pub fn new(id: Option<String>) -> SmState {
        SmState {
            id,
            h_in: 0,
            h_out: 0,
            unacked: VecDeque::new(),
            requested: false,
        }
    }

    pub fn sent(&mut self, el: &Element) {
        self.h_out = self.h_out.wrapping_add(1);
        self.unacked.push_back(el.clone());
    }

    /// Applies the client's count; drops what it covers.
    pub fn ack(&mut self, h: u32) -> Result<(), AckError> {
        let acked_before = self.h_out.wrapping_sub(self.unacked.len() as u32);
        let newly = h.wrapping_sub(acked_before);
        if newly as usize > self.unacked.len() {
            return Err(AckError::TooHigh {
                h,
                sent: self.h_out,
            });
        }
        self.unacked.drain(..newly as usize);
        self.requested = false;
        Ok(())
    }

    /// Whether to send `<r/>` now.
    pub fn should_request(&mut self) -> bool {
        if !self.requested && self.unacked.len() >= REQUEST_EVERY {
            self.requested = true;
            return true;
        }
        false
    }

    pub fn ack_element(&self) -> Element {
        Element::new("a", ns::SM).with_attr("h", self.h_in.to_string())
    }
}

pub fn request() -> Element {
    Element::new("r", ns::SM)
}

pub fn failed(cond: &str, h: Option<u32>) -> Element {
    let mut f = Element::new("failed", ns::SM).with_child(Element::new(cond, ns::STANZAS));
    if let Some(h) = h {
        f.set_attr("h", h.to_string());
    }
    f
}

/// Parses an `h` attribute.
pub fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> Element {
        Element::new("message", ns::CLIENT).with_attr("id", i.to_string())
    }

    #[test]
    fn acks_drop_covered_stanzas() {
        let mut sm = SmState::new(None);
        for i in 0..7 {
            sm.sent(&msg(i));
        }
        assert!(sm.should_request());
        assert!(!sm.should_request(), "one request outstanding at a time");
        sm.ack(3).unwrap();
        assert_eq!(sm.unacked.len(), 4);
        assert_eq!(sm.unacked[0].attr("id"), Some("3"));
        sm.ack(3).unwrap();
        assert_eq!(sm.unacked.len(), 4, "a repeated ack changes nothing");
        assert_eq!(sm.ack(9), Err(AckError::TooHigh { h: 9, sent: 7 }));
        sm.ack(7).unwrap();
        assert!(sm.unacked.is_empty());
    }

    #[test]
    fn counters_wrap() {
        let mut sm = SmState::new(None);
        sm.h_out = u32::MAX - 1;
        sm.sent(&msg(1));
        sm.sent(&msg(2));
        sm.sent(&msg(3));
        assert_eq!(sm.h_out, 1);
        sm.ack(u32::MAX).unwrap();
        assert_eq!(sm.unacked.len(), 2);
        sm.ack(1).unwrap();
        assert!(sm.unacked.is_empty());
    }
}
