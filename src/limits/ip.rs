//! Who the client is: the socket peer, or — when the peer is a trusted proxy — the right-most
//! `X-Forwarded-For` hop that is not itself a trusted proxy. Hops written by an untrusted peer are
//! ignored, so a forged header changes nothing.

use ipnet::IpNet;
use std::net::IpAddr;

/// The client address for allowlists and the brute-force guard.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several X-Forwarded-For headers form one list, in order.
    let hops: Vec<&[u8]> = forwarded_for
        .flat_map(|value| value.split(|b| *b == b','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = std::str::from_utf8(hop)
            .ok()
            .and_then(|t| parse_hop(t.trim()))
        else {
            // An unparseable hop ends what can be believed.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// A hop as proxies write it: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = text.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// Whether `ip` is inside one of `allowed` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    allowed.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_ip(ip("203.0.113.9"), [&b"1.2.3.4"[..]].into_iter(), &trusted);
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = [&b"6.6.6.6, 198.51.100.7, 10.0.0.2"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), &trusted),
            ip("198.51.100.7")
        );
        // multiple headers concatenate
        let xff = [&b"6.6.6.6"[..], &b"198.51.100.8"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), &trusted),
            ip("198.51.100.8")
        );
        // all trusted: the left-most hop
        let xff = [&b"10.1.1.1, 10.2.2.2"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), &trusted),
            ip("10.1.1.1")
        );
        // garbage stops the walk at what was believed so far
        let xff = [&b"1.1.1.1, junk, 10.2.2.2"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), &trusted),
            ip("10.2.2.2")
        );
        // ports and brackets
        let xff = [&b"[2001:db8::1]:443"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), &trusted),
            ip("2001:db8::1")
        );
        let none: [&[u8]; 0] = [];
        assert_eq!(
            client_ip(ip("10.0.0.1"), none.into_iter(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn allowlists() {
        let list = nets(&["203.0.113.0/24", "2001:db8::/32"]);
        assert!(allowed(ip("203.0.113.77"), &list));
        assert!(allowed(ip("::ffff:203.0.113.77"), &list));
        assert!(allowed(ip("2001:db8:1::5"), &list));
        assert!(!allowed(ip("198.51.100.1"), &list));
        assert!(!allowed(ip("2001:db9::1"), &list));
    }
}
