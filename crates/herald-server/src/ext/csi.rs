//! XEP-0352: Client State Indication. While a client says it is inactive (a phone in a
//! pocket), presence updates for it are held and de-duplicated per sender; anything that
//! matters (messages with content, IQs, subscription requests) flushes what is held, then
//! goes out at once, so order is kept and nothing is lost.

use herald_core::ns;
use herald_xml::Element;

#[derive(Default)]
pub struct Csi {
    pub inactive: bool,
    /// Held availability presence, at most one per sender (the newest).
    held: Vec<Element>,
}

/// What the session should do with an outgoing stanza.
pub enum Verdict {
    /// Write it now.
    Send(Element),
    /// Write these held stanzas first, then it.
    FlushThenSend(Vec<Element>, Element),
    /// Kept back.
    Held,
}

fn holdable(el: &Element) -> bool {
    el.name == "presence" && matches!(el.attr("type"), None | Some("unavailable"))
}

impl Csi {
    /// A session's initial state (XEP-0386 lets a client start inactive).
    pub fn starting(inactive: bool) -> Csi {
        Csi {
            inactive,
            held: Vec::new(),
        }
    }

    pub fn filter(&mut self, el: Element, max_held: usize) -> Verdict {
        if !self.inactive {
            return Verdict::Send(el);
        }
        if holdable(&el) {
            let from = el.attr("from").unwrap_or("").to_string();
            self.held.retain(|h| h.attr("from").unwrap_or("") != from);
            self.held.push(el);
            if self.held.len() > max_held {
                return Verdict::FlushThenSend(
                    self.take_all_but_last(),
                    self.held.pop().expect("pushed"),
                );
            }
            return Verdict::Held;
        }
        if self.held.is_empty() {
            Verdict::Send(el)
        } else {
            Verdict::FlushThenSend(std::mem::take(&mut self.held), el)
        }
    }

    fn take_all_but_last(&mut self) -> Vec<Element> {
        let last = self.held.pop();
        let rest = std::mem::take(&mut self.held);
        if let Some(l) = last {
            self.held.push(l);
        }
        rest
    }

    /// `<active/>`: everything held goes out.
    pub fn activate(&mut self) -> Vec<Element> {
        self.inactive = false;
        std::mem::take(&mut self.held)
    }

    pub fn take_held(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.held)
    }
}

pub fn is_csi(el: &Element) -> bool {
    el.ns == ns::CSI && matches!(el.name.as_str(), "active" | "inactive")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(from: &str, show: &str) -> Element {
        Element::new("presence", ns::CLIENT)
            .with_attr("from", from)
            .with_child(Element::new("show", ns::CLIENT).with_text(show))
    }

    #[test]
    fn holds_latest_presence_per_sender_and_flushes_before_messages() {
        let mut c = Csi {
            inactive: true,
            ..Csi::default()
        };
        assert!(matches!(
            c.filter(presence("a@x/1", "away"), 10),
            Verdict::Held
        ));
        assert!(matches!(
            c.filter(presence("b@x/1", "dnd"), 10),
            Verdict::Held
        ));
        assert!(matches!(
            c.filter(presence("a@x/1", "xa"), 10),
            Verdict::Held
        ));
        let msg = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        match c.filter(msg, 10) {
            Verdict::FlushThenSend(held, m) => {
                assert_eq!(held.len(), 2);
                assert_eq!(held[1].child("show", ns::CLIENT).unwrap().text(), "xa");
                assert_eq!(m.name, "message");
            }
            _ => panic!("message must flush"),
        }
        assert!(c.activate().is_empty());
        assert!(matches!(
            c.filter(presence("a@x/1", "away"), 10),
            Verdict::Send(_)
        ));
    }

    #[test]
    fn bounded() {
        let mut c = Csi {
            inactive: true,
            ..Csi::default()
        };
        for i in 0..3 {
            assert!(matches!(
                c.filter(presence(&format!("u{i}@x/r"), "away"), 3),
                Verdict::Held
            ));
        }
        match c.filter(presence("u9@x/r", "away"), 3) {
            Verdict::FlushThenSend(held, p) => {
                assert_eq!(held.len(), 3);
                assert_eq!(p.attr("from"), Some("u9@x/r"));
            }
            _ => panic!("over the bound flushes"),
        }
    }
}
