//! XEP-0388 Extensible SASL Profile (SASL2), XEP-0386 Bind 2 and XEP-0484 FAST: a mobile
//! client authenticates, binds, enables carbons/stream management/CSI, or resumes, in one
//! round trip — and with a FAST token it skips the password entirely.
//!
//! This module holds the wire formats and the FAST token logic; the stream negotiation
//! that drives them lives in `c2s.rs`.

use base64::Engine;
use herald_core::{ns, Jid};
use herald_xml::Element;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::stream::Conn;
use crate::Server;

pub const NS: &str = "urn:xmpp:sasl:2";
pub const BIND2: &str = "urn:xmpp:bind:0";
pub const FAST: &str = "urn:xmpp:fast:0";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// FAST tokens live this long; past half of it a successful use rotates the token.
const TOKEN_LIFETIME_SECS: i64 = 21 * 24 * 3600;

/// The `<authentication/>` stream feature: the legacy mechanism list plus the inline
/// features a client may request in `<authenticate/>`.
pub fn feature(conn: &Conn, mechanisms: &Element) -> Element {
    let mut auth = Element::new("authentication", NS);
    for m in mechanisms.elements() {
        auth.push(Element::new("mechanism", NS).with_text(m.text()));
    }
    let mut inline = Element::new("inline", NS);
    let mut bind_inline = Element::new("inline", BIND2);
    // XEP-0198 is not offered over BOSH, which has acknowledgements of its own.
    let sm = conn.supports_sm();
    for var in [ns::CARBONS, ns::CSI, ns::SM] {
        if var != ns::SM || sm {
            bind_inline.push(Element::new("feature", BIND2).with_attr("var", var));
        }
    }
    inline.push(Element::new("bind", BIND2).with_child(bind_inline));
    if sm {
        inline.push(Element::new("sm", ns::SM));
    }
    let mut fast = Element::new("fast", FAST);
    for m in fast_mechanisms(conn) {
        fast.push(Element::new("mechanism", FAST).with_text(m));
    }
    inline.push(fast);
    auth.push(inline);
    auth
}

/// HT mechanisms (draft-schmaus-kitten-sasl-ht) this connection can use.
fn fast_mechanisms(conn: &Conn) -> Vec<&'static str> {
    let mut v = Vec::new();
    if conn.binding.tls_exporter.is_some() {
        v.push("HT-SHA-256-EXPR");
    }
    if conn.binding.tls_server_end_point.is_some() {
        v.push("HT-SHA-256-ENDP");
    }
    v.push("HT-SHA-256-NONE");
    v
}

/// What the client asked for in `<authenticate/>`.
#[derive(Debug, Default)]
pub struct Request {
    pub mechanism: String,
    pub initial: Vec<u8>,
    /// `<user-agent id=''>`: identifies the client installation (FAST tokens are per client).
    pub agent: Option<String>,
    pub bind: Option<BindRequest>,
    /// XEP-0198 inline resumption: previd and h.
    pub resume: Option<(String, u32)>,
    /// XEP-0484: a token is wanted for this HT mechanism.
    pub request_token: Option<String>,
    /// XEP-0484: this authentication uses a token.
    pub fast: Option<FastUse>,
}

#[derive(Debug, Default)]
pub struct BindRequest {
    pub tag: Option<String>,
    pub carbons: bool,
    /// XEP-0198 `<enable/>`: with resumption?
    pub sm: Option<bool>,
    pub csi_inactive: Option<bool>,
}

#[derive(Debug, Default)]
pub struct FastUse {
    pub invalidate: bool,
}

pub fn parse(el: &Element) -> Result<Request, &'static str> {
    let mechanism = el
        .attr("mechanism")
        .ok_or("authenticate needs a mechanism")?
        .to_string();
    let initial = match el.child("initial-response", NS) {
        Some(i) => {
            let t = i.text();
            let t = t.trim();
            if t.is_empty() || t == "=" {
                Vec::new()
            } else {
                B64.decode(t)
                    .map_err(|_| "initial-response is not base64")?
            }
        }
        None => Vec::new(),
    };
    let agent = el
        .child("user-agent", NS)
        .and_then(|u| u.attr("id"))
        .map(str::to_string);
    let bind = el.child("bind", BIND2).map(|b| BindRequest {
        tag: b
            .child("tag", BIND2)
            .map(|t| t.text())
            .filter(|t| !t.trim().is_empty()),
        carbons: b.child("enable", ns::CARBONS).is_some(),
        sm: b
            .child("enable", ns::SM)
            .map(|e| matches!(e.attr("resume"), Some("true" | "1"))),
        csi_inactive: if b.child("inactive", ns::CSI).is_some() {
            Some(true)
        } else if b.child("active", ns::CSI).is_some() {
            Some(false)
        } else {
            None
        },
    });
    let resume = el.child("resume", ns::SM).and_then(|r| {
        let h = r.attr("h")?.parse().ok()?;
        Some((r.attr("previd")?.to_string(), h))
    });
    let request_token = el
        .child("request-token", FAST)
        .and_then(|r| r.attr("mechanism"))
        .map(str::to_string);
    let fast = el.child("fast", FAST).map(|f| FastUse {
        invalidate: matches!(f.attr("invalidate"), Some("true" | "1")),
    });
    Ok(Request {
        mechanism,
        initial,
        agent,
        bind,
        resume,
        request_token,
        fast,
    })
}

pub fn failure(cond: &str, text: Option<&str>) -> Element {
    let mut f = Element::new("failure", NS).with_child(Element::new(cond, ns::SASL));
    if let Some(t) = text {
        f.push(Element::new("text", NS).with_text(t));
    }
    f
}

/// `<success/>` with the identity and the mechanism's additional data.
pub fn success(identity: &Jid, additional: Option<&[u8]>) -> Element {
    let mut s = Element::new("success", NS);
    if let Some(d) = additional {
        s.push(Element::new("additional-data", NS).with_text(B64.encode(d)));
    }
    s.push(Element::new("authorization-identifier", NS).with_text(identity.as_str()));
    s
}

/// A resource for Bind 2: the client's tag (if valid) and a random suffix.
pub fn resource(tag: Option<&str>) -> String {
    let suffix = &crate::stream::random_id()[..8];
    match tag
        .map(|t| t.trim())
        .filter(|t| !t.is_empty() && t.len() <= 64 && !t.contains('/'))
    {
        Some(t) => format!("{t}.{suffix}"),
        None => crate::stream::random_id(),
    }
}

// ---------------------------------------------------------------------------------------
// XEP-0484 FAST tokens

/// One client's token record: the current token and, during rotation, the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenRecord {
    mechanism: String,
    token: String,
    expiry: i64,
    previous: Option<(String, i64)>,
}

impl TokenRecord {
    fn encode(&self) -> String {
        let mut s = format!("{}\n{}\n{}", self.mechanism, self.token, self.expiry);
        if let Some((t, e)) = &self.previous {
            s.push_str(&format!("\n{t}\n{e}"));
        }
        s
    }

    fn decode(s: &str) -> Option<TokenRecord> {
        let mut it = s.lines();
        let mechanism = it.next()?.to_string();
        let token = it.next()?.to_string();
        let expiry = it.next()?.parse().ok()?;
        let previous = match (it.next(), it.next()) {
            (Some(t), Some(e)) => Some((t.to_string(), e.parse().ok()?)),
            _ => None,
        };
        Some(TokenRecord {
            mechanism,
            token,
            expiry,
            previous,
        })
    }
}

fn token_key(agent: Option<&str>) -> String {
    format!("fast:{}", agent.unwrap_or("-"))
}

fn now_secs() -> i64 {
    crate::ext::now_micros() / 1_000_000
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

fn hmac(key: &[u8], label: &[u8], cb: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    m.update(label);
    m.update(cb);
    m.finalize().into_bytes().to_vec()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Channel-binding data an HT mechanism covers.
pub fn ht_binding<'a>(conn: &'a Conn, mechanism: &str) -> Option<&'a [u8]> {
    match mechanism {
        "HT-SHA-256-NONE" => Some(&[]),
        "HT-SHA-256-ENDP" => conn.binding.tls_server_end_point.as_deref(),
        "HT-SHA-256-EXPR" => conn.binding.tls_exporter.as_deref(),
        _ => None,
    }
}

pub fn is_ht(mechanism: &str) -> bool {
    mechanism.starts_with("HT-SHA-256-")
}

/// Outcome of an HT (token) authentication.
pub struct HtSuccess {
    pub jid: Jid,
    /// The responder hash for `<additional-data/>`.
    pub additional: Vec<u8>,
    /// A rotated token to hand out.
    pub rotated: Option<(String, i64)>,
}

/// Verifies `authcid NUL HMAC(token, "Initiator" || cb)` against the client's stored token.
/// `cb` is the connection's binding data for the mechanism (see [`ht_binding`]).
pub async fn verify_ht(
    server: &Server,
    cb: Option<&[u8]>,
    domain: &str,
    req: &Request,
) -> Option<HtSuccess> {
    let cb = cb?;
    let nul = req.initial.iter().position(|b| *b == 0)?;
    let user = std::str::from_utf8(&req.initial[..nul]).ok()?;
    let proof = &req.initial[nul + 1..];
    let jid = Jid::new(Some(user), domain, None).ok()?;
    let key = token_key(req.agent.as_deref());
    let stored = server
        .storage
        .get_private(jid.bare_str(), &key)
        .await
        .ok()??;
    let mut rec = TokenRecord::decode(&stored)?;
    if rec.mechanism != req.mechanism {
        return None;
    }
    let now = now_secs();
    let matches = |t: &str| ct_eq(&hmac(t.as_bytes(), b"Initiator", cb), proof);
    let used_current = rec.expiry > now && matches(&rec.token);
    let used_previous = !used_current
        && rec
            .previous
            .as_ref()
            .is_some_and(|(t, e)| *e > now && matches(t));
    if !used_current && !used_previous {
        return None;
    }
    let token = if used_current {
        rec.token.clone()
    } else {
        rec.previous.clone()?.0
    };
    let additional = hmac(token.as_bytes(), b"Responder", cb);
    let fast = req.fast.as_ref();
    let mut rotated = None;
    if fast.is_some_and(|f| f.invalidate) {
        let _ = server.storage.delete_private(jid.bare_str(), &key).await;
    } else if used_current {
        // The client has the current token, so the one before it can go (§3.4); rotate when
        // past half of its life, keeping the used one valid until the new one is used.
        rec.previous = None;
        if rec.expiry - now < TOKEN_LIFETIME_SECS / 2 {
            let t = new_token();
            let e = now + TOKEN_LIFETIME_SECS;
            rec.previous = Some((rec.token.clone(), rec.expiry));
            rec.token = t.clone();
            rec.expiry = e;
            rotated = Some((t, e));
        }
        let _ = server
            .storage
            .set_private(jid.bare_str(), &key, &rec.encode())
            .await;
    }
    Some(HtSuccess {
        jid,
        additional,
        rotated,
    })
}

/// Issues a new token for the client (replacing what it had), for `mechanism`.
pub async fn issue_token(
    server: &Server,
    jid: &Jid,
    agent: Option<&str>,
    mechanism: &str,
) -> Option<(String, i64)> {
    if !mechanism.starts_with("HT-SHA-256-") {
        return None;
    }
    let token = new_token();
    let expiry = now_secs() + TOKEN_LIFETIME_SECS;
    let rec = TokenRecord {
        mechanism: mechanism.to_string(),
        token: token.clone(),
        expiry,
        previous: None,
    };
    server
        .storage
        .set_private(jid.bare_str(), &token_key(agent), &rec.encode())
        .await
        .ok()?;
    Some((token, expiry))
}

pub fn token_element(token: &str, expiry: i64) -> Element {
    Element::new("token", FAST)
        .with_attr("token", token)
        .with_attr("expiry", crate::ext::stamp_from_micros(expiry * 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_record_round_trips() {
        let r = TokenRecord {
            mechanism: "HT-SHA-256-NONE".into(),
            token: "abc".into(),
            expiry: 5,
            previous: Some(("old".into(), 3)),
        };
        assert_eq!(TokenRecord::decode(&r.encode()), Some(r.clone()));
        let r2 = TokenRecord {
            previous: None,
            ..r
        };
        assert_eq!(TokenRecord::decode(&r2.encode()), Some(r2));
    }

    #[test]
    fn parses_an_authenticate_request() {
        let el = Element::new("authenticate", NS)
            .with_attr("mechanism", "SCRAM-SHA-256")
            .with_child(Element::new("initial-response", NS).with_text(B64.encode(b"n,,n=u,r=x")))
            .with_child(Element::new("user-agent", NS).with_attr("id", "ua1"))
            .with_child(
                Element::new("bind", BIND2)
                    .with_child(Element::new("tag", BIND2).with_text("Phone"))
                    .with_child(Element::new("enable", ns::CARBONS))
                    .with_child(Element::new("enable", ns::SM).with_attr("resume", "true"))
                    .with_child(Element::new("inactive", ns::CSI)),
            )
            .with_child(
                Element::new("request-token", FAST).with_attr("mechanism", "HT-SHA-256-NONE"),
            );
        let r = parse(&el).unwrap();
        assert_eq!(r.initial, b"n,,n=u,r=x");
        assert_eq!(r.agent.as_deref(), Some("ua1"));
        let b = r.bind.unwrap();
        assert_eq!(b.tag.as_deref(), Some("Phone"));
        assert!(b.carbons);
        assert_eq!(b.sm, Some(true));
        assert_eq!(b.csi_inactive, Some(true));
        assert_eq!(r.request_token.as_deref(), Some("HT-SHA-256-NONE"));
    }

    #[test]
    fn bind2_resources_carry_the_tag() {
        let r = resource(Some("Conversations"));
        assert!(r.starts_with("Conversations.") && r.len() > "Conversations.".len());
        assert!(!resource(Some("a/b")).contains('/'));
    }
}
