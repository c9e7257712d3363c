//! The client's address behind reverse proxies: the de facto `X-Forwarded-For` or RFC 7239
//! `Forwarded` (`[http] forwarded_header` says which: a proxy appends to one and passes
//! the other through as the client wrote it, so the choice is never left to the request),
//! believed only from `[http] trusted_proxies`.
//!
//! A request arriving from a trusted proxy carries the chain of addresses it passed
//! through, nearest last. The client is the nearest address that is not itself a trusted
//! proxy: walking from the end, trusted hops are skipped and the first untrusted one is
//! taken. Anything before that was written by the client and proves nothing. A hop that
//! does not parse (`unknown`, an obfuscated identifier, garbage) stops the walk at the last
//! address known good. A request from an untrusted peer keeps the peer's address whatever
//! its headers say.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// Hops examined at most, so a hostile header costs bounded work.
const MAX_HOPS: usize = 32;

/// An address range: one address, or a CIDR prefix (`10.0.0.0/8`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= 128 || (a >> shift) == (b >> shift)
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let bad = || format!("{s:?} is not an IP address or CIDR range such as \"10.0.0.0/8\"");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| bad())?.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(bad)?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which header the trusted proxies write the client's address into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, Apache, most balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1;proto=https`.
    Forwarded,
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<ForwardedHeader, String> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            _ => Err(format!(
                "{s:?} must be \"x-forwarded-for\" or \"forwarded\""
            )),
        }
    }
}

/// The address to treat as the client's for a request that arrived from `peer`.
pub fn client_addr(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let forwarded: Vec<&str> = match header {
        ForwardedHeader::XForwardedFor => header_items(headers, "x-forwarded-for").collect(),
        // An element without `for=` is a hop that names nobody: kept, as an empty entry
        // that does not parse, so the walk stops there.
        ForwardedHeader::Forwarded => header_items(headers, "forwarded")
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("for")
                            .then(|| v.trim().trim_matches('"'))
                    })
                    .unwrap_or("")
            })
            .collect(),
    };
    let mut client = peer;
    for hop in forwarded.iter().rev().take(MAX_HOPS) {
        let Some(addr) = parse_node(hop) else {
            break;
        };
        client = addr;
        if !is_trusted(addr.ip()) {
            break;
        }
    }
    client
}

/// Comma-separated items of every `name` header, in order.
fn header_items<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`;
/// port 0 where none is given.
fn parse_node(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = SocketAddr::from_str(s) {
        return Some(SocketAddr::new(a.ip().to_canonical(), a.port()));
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    IpAddr::from_str(ip)
        .ok()
        .map(|ip| SocketAddr::new(ip.to_canonical(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.200.3.4".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(
            n.contains("::ffff:10.1.2.3".parse().unwrap()),
            "IPv4-mapped"
        );
        let n: IpNet = "fd00::/8".parse().unwrap();
        assert!(n.contains("fd12::1".parse().unwrap()));
        assert!(!n.contains("fe80::1".parse().unwrap()));
        assert!(!n.contains("10.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host.example",
            "10.0.0.0/",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn untrusted_peers_keep_their_address() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let peer = addr("192.0.2.1:5000");
        assert_eq!(client_addr(peer, &h, &nets(&["127.0.0.1"]), XFF), peer);
        assert_eq!(client_addr(peer, &h, &[], XFF), peer);
    }

    #[test]
    fn x_forwarded_for_from_a_trusted_proxy() {
        let t = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = addr("127.0.0.1:40000");
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("198.51.100.7:0"));
        // Chained proxies: trusted hops are skipped, the spoofed start is ignored.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("198.51.100.7:0"));
        // The same chain split over several headers.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7, 10.1.1.1"),
        ]);
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("198.51.100.7:0"));
        // Every hop trusted: the farthest one.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("10.9.9.9:0"));
        // A hop that does not parse stops at the last good one.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage, 10.1.1.1")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("10.1.1.1:0"));
        let h = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), peer);
        // No header: the proxy itself.
        assert_eq!(client_addr(peer, &HeaderMap::new(), &t, XFF), peer);
        // IPv6, bare and bracketed.
        let h = headers(&[("x-forwarded-for", "2001:db8::7")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("[2001:db8::7]:0"));
    }

    #[test]
    fn forwarded_header() {
        let t = nets(&["::1"]);
        let peer = addr("[::1]:40000");
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https;by=203.0.113.43"#,
        )]);
        assert_eq!(
            client_addr(peer, &h, &t, FWD),
            addr("[2001:db8:cafe::17]:4711")
        );
        // Only the configured header counts: a client's own header of the other kind,
        // passed through by the proxy, is ignored.
        let h = headers(&[
            ("forwarded", "for=192.0.2.60;proto=http"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(client_addr(peer, &h, &t, FWD), addr("192.0.2.60:0"));
        assert_eq!(client_addr(peer, &h, &t, XFF), addr("198.51.100.7:0"));
        let h = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(client_addr(peer, &h, &t, XFF), peer);
        // Obfuscated identifiers are not addresses.
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_addr(peer, &h, &t, FWD), peer);
        // A proxy's element without `for=` names nobody: what the client wrote before it
        // is not believed.
        let h = headers(&[("forwarded", "for=6.6.6.6, proto=https;by=203.0.113.43")]);
        assert_eq!(client_addr(peer, &h, &t, FWD), peer);
        assert_eq!("Forwarded".parse(), Ok(FWD));
        assert_eq!("x-forwarded-for".parse(), Ok(XFF));
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
    }

    #[test]
    fn hostile_chains_cost_bounded_work() {
        let t = nets(&["0.0.0.0/0"]);
        let chain = vec!["10.0.0.1"; 5_000].join(",");
        let h = headers(&[("x-forwarded-for", chain.as_str())]);
        assert_eq!(
            client_addr(addr("127.0.0.1:1"), &h, &t, XFF),
            addr("10.0.0.1:0")
        );
    }
}
