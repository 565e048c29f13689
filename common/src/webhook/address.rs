//! The SSRF rule: which addresses a webhook may reach.
//!
//! A webhook URL comes from whoever submits a job, and the sender runs
//! inside the cluster, next to RabbitMQ, Redis and cloud metadata services.
//! So only public unicast addresses are reached, unless an operator lists
//! the host (or the IP literal) exactly in `webhooks.allow_hosts`; a
//! wildcard never opens a non-public address. The sender applies this to
//! every address a host resolves to, at send time, and connects only to the
//! addresses it checked (so a DNS answer that changes cannot swap them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::WebhooksConfig;

/// Whether a webhook may connect to `ip`. `listed_exactly` says whether the
/// URL's host is an exact entry of `webhooks.allow_hosts`
/// ([`super::listed_exactly`]): then any address is allowed, otherwise only
/// public ones ([`is_public_address`]). `_config` is not read today: the
/// rule needs only the exact-listing answer, which the caller computes.
pub fn address_allowed(_config: &WebhooksConfig, listed_exactly: bool, ip: IpAddr) -> bool {
    listed_exactly || is_public_address(ip)
}

/// A public unicast address: not loopback, private, shared (CGNAT),
/// link-local, unique-local, site-local, unspecified, multicast, broadcast,
/// documentation, benchmarking or reserved. IPv6 addresses that embed an
/// IPv4 one (IPv4-mapped, NAT64, 6to4) are judged by the IPv4 address.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (64..=127).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local (cloud metadata)
        || (a == 172 && (16..=31).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 168) // private
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: reaches the IPv4 address it embeds.
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4: reaches the IPv4 address it embeds.
        return is_public_v4(embedded(s[1], s[2]));
    }
    // Global unicast is 2000::/3; everything else (::, ::1, IPv4-compatible,
    // 64:ff9b:1::/48, 100::/64, fc00::/7, fe80::/10, fec0::/10, ff00::/8)
    // is loopback, local, multicast or reserved.
    let global_unicast = s[0] & 0xe000 == 0x2000;
    // 2001::/23 (Teredo, benchmarking, ...) and 2001:db8::/32 (documentation).
    let special_2001 = s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8);
    // 3fff::/20: documentation.
    let special = special_2001 || (s[0] == 0x3fff && s[1] < 0x1000);
    global_unicast && !special
}
