//! Who the client is: the socket peer, or — when the peer is a trusted proxy — the right-most
//! `X-Forwarded-For` hop that is not itself a trusted proxy. Hops written by an untrusted peer are
//! ignored, so a forged header changes nothing.
//!
//! An IPv4 client reaching a dual-stack listener shows up as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`); proxies may write hops that way too. Every address, and every configured
//! network, is taken in its canonical form, so `10.0.0.1` in a list means that host however it
//! arrives.

use ipnet::{IpNet, Ipv4Net};
use std::net::IpAddr;

/// The client address for allowlists and the brute-force guard, in canonical form. `trusted` is
/// in canonical form ([`canonical_net`]).
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
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

/// A hop as proxies write it: an address, possibly `[v6]:port` or `v4:port`, in canonical form.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(sock) = text.parse::<std::net::SocketAddr>() {
        sock.ip()
    } else {
        text.strip_prefix('[')
            .and_then(|t| t.split_once(']'))
            .and_then(|(ip, _)| ip.parse().ok())?
    };
    Some(ip.to_canonical())
}

/// Whether `ip` is inside one of `allowed`, which is in canonical form ([`canonical_net`]).
pub fn allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    allowed.iter().any(|net| net.contains(&ip))
}

/// A network written inside the IPv4-mapped block (`::ffff:10.0.0.0/104`) as the IPv4 network it
/// stands for (`10.0.0.0/8`), since the addresses it is matched against are canonical; any other
/// network as it is.
pub fn canonical_net(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match (
        v6.network().to_ipv4_mapped(),
        v6.prefix_len().checked_sub(96),
    ) {
        (Some(v4), Some(len)) => Ipv4Net::new(v4, len).map_or(net, IpNet::V4),
        _ => net,
    }
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
    fn ipv4_mapped_addresses_are_ipv4_everywhere() {
        // a trusted proxy given as 10.0.0.1, reached through a dual-stack listener
        let trusted = nets(&["10.0.0.1/32"]);
        let xff = [&b"198.51.100.7"[..]];
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), xff.into_iter(), &trusted),
            ip("198.51.100.7")
        );
        // the client is canonical whether it is the peer or a hop
        let none: [&[u8]; 0] = [];
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), none.into_iter(), &trusted),
            ip("203.0.113.9")
        );
        let xff = [&b"::ffff:198.51.100.7, [::ffff:10.0.0.1]:8080"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), &trusted),
            ip("198.51.100.7")
        );
        // a network written in mapped form is the IPv4 network
        let mapped = [canonical_net("::ffff:10.0.0.0/104".parse().unwrap())];
        assert_eq!(mapped, nets(&["10.0.0.0/8"])[..]);
        assert_eq!(
            client_ip(ip("10.9.9.9"), [&b"192.0.2.1"[..]].into_iter(), &mapped),
            ip("192.0.2.1")
        );
        assert!(allowed(ip("::ffff:10.1.2.3"), &mapped));
        // other networks stay as written
        for net in ["2001:db8::/32", "::/0", "::ffff:0:0/95", "10.0.0.0/8"] {
            let parsed: IpNet = net.parse().unwrap();
            assert_eq!(canonical_net(parsed), parsed);
        }
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
