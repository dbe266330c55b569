//! [`SourceKey`]: the unit of per-source accounting (connection caps, rate limits, blocks).
//!
//! An IPv4 address is its own source. An IPv6 address is grouped by a prefix (a /64 by
//! default), because one host usually controls a whole /64 and could otherwise rotate
//! through 2^64 addresses to escape every per-address limit and grow our keyed state.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a connection comes from, for accounting: an IPv4 address, or an IPv6 network of a
/// fixed prefix length. Displays as `127.0.1.5` or `2001:db8::/64`, and serializes as that
/// string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKey {
    /// One IPv4 address (IPv4-mapped IPv6 addresses land here too).
    V4(Ipv4Addr),
    /// An IPv6 network: the address with every bit past `prefix` cleared.
    V6 {
        /// The network address (host bits zero).
        net: Ipv6Addr,
        /// Prefix length, 0 to 128.
        prefix: u8,
    },
}

impl SourceKey {
    /// The source an address belongs to. `::ffff:a.b.c.d` counts as `a.b.c.d`, so a peer
    /// cannot double its allowance by switching address families on a dual-stack socket.
    /// IPv6 addresses are truncated to `ipv6_prefix` bits; a prefix above 128 counts as 128.
    pub fn from_ip(ip: IpAddr, ipv6_prefix: u8) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(v4),
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                SourceKey::V6 {
                    net: Ipv6Addr::from(u128::from(v6) & mask(prefix)),
                    prefix,
                }
            }
        }
    }

    /// The addresses this source covers, as a network (`/32` for IPv4).
    pub fn net(&self) -> IpNet {
        match *self {
            SourceKey::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
            SourceKey::V6 { net, prefix } => match Ipv6Net::new(net, prefix) {
                Ok(n) => IpNet::V6(n),
                // Unreachable: `prefix` is at most 128 by construction; fall back to the
                // single address rather than panic.
                Err(_) => IpNet::V6(Ipv6Net::from(net)),
            },
        }
    }

    /// Whether `ip` belongs to this source (after the same IPv4-mapped normalization as
    /// [`SourceKey::from_ip`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let prefix = match self {
            SourceKey::V4(_) => 128,
            SourceKey::V6 { prefix, .. } => *prefix,
        };
        SourceKey::from_ip(ip, prefix) == *self
    }
}

impl Hash for SourceKey {
    /// The fields as one integer each (an IPv4 address as a `u32`, a network as a `u128` and
    /// its prefix), which a hasher takes in one or two steps; the derived hash wrote the
    /// variant, a length and the bytes. Equal keys hash equally, as `Eq` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match *self {
            SourceKey::V4(v4) => state.write_u32(u32::from(v4)),
            SourceKey::V6 { net, prefix } => {
                state.write_u128(u128::from(net));
                state.write_u8(prefix);
            }
        }
    }
}

/// The mask that keeps the first `prefix` bits of an IPv6 address.
fn mask(prefix: u8) -> u128 {
    // checked_shl: shifting by 128 (prefix 0) would overflow; it means "keep nothing".
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(v4) => write!(f, "{v4}"),
            SourceKey::V6 { net, prefix } => write!(f, "{net}/{prefix}"),
        }
    }
}

/// Why a string is not a [`SourceKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid source `{0}`: expected an ipv4 address or an ipv6 network with its host bits zero"
)]
pub struct ParseSourceError(String);

impl FromStr for SourceKey {
    type Err = ParseSourceError;

    /// Parses what [`fmt::Display`] writes: `a.b.c.d` or `net/prefix` with the host bits zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSourceError(s.to_owned());
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            return Ok(SourceKey::V4(v4));
        }
        let net: Ipv6Net = s.parse().map_err(|_| err())?;
        let key = SourceKey::from_ip(IpAddr::V6(net.addr()), net.prefix_len());
        // Refuse a network that is really an IPv4-mapped address or has host bits set:
        // it would not print back as the same text.
        match key {
            SourceKey::V6 { net: n, .. } if n == net.addr() => Ok(key),
            _ => Err(err()),
        }
    }
}

impl Serialize for SourceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SourceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, prefix: u8) -> Result<SourceKey, std::net::AddrParseError> {
        Ok(SourceKey::from_ip(ip.parse()?, prefix))
    }

    #[test]
    fn ipv4_is_its_own_source() -> Result<(), Box<dyn std::error::Error>> {
        let k = key("127.0.1.5", 64)?;
        assert_eq!(k, SourceKey::V4(Ipv4Addr::new(127, 0, 1, 5)));
        assert_eq!(k.to_string(), "127.0.1.5");
        assert_ne!(k, key("127.0.1.6", 64)?);
        Ok(())
    }

    #[test]
    fn v4_mapped_is_normalized() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(key("::ffff:127.0.1.5", 64)?, key("127.0.1.5", 64)?);
        assert_eq!(key("::ffff:127.0.1.5", 64)?.to_string(), "127.0.1.5");
        Ok(())
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let a = key("2001:db8::1", 64)?;
        assert_eq!(a, key("2001:db8::ffff:ffff:ffff:ffff", 64)?);
        assert_ne!(a, key("2001:db8:0:1::1", 64)?);
        assert_eq!(a.to_string(), "2001:db8::/64");
        assert_eq!(key("2001:db8:0:1::1", 48)?.to_string(), "2001:db8::/48");
        assert_eq!(key("2001:db8::1", 128)?.to_string(), "2001:db8::1/128");
        assert_eq!(key("2001:db8::1", 200)?.to_string(), "2001:db8::1/128");
        assert_eq!(key("2001:db8::1", 0)?.to_string(), "::/0");
        Ok(())
    }

    #[test]
    fn net_and_contains() -> Result<(), Box<dyn std::error::Error>> {
        let a = key("2001:db8::1", 64)?;
        assert_eq!(a.net(), "2001:db8::/64".parse::<IpNet>()?);
        assert!(a.contains("2001:db8::9".parse()?));
        assert!(!a.contains("2001:db9::9".parse()?));
        let b = key("10.1.2.3", 64)?;
        assert_eq!(b.net(), "10.1.2.3/32".parse::<IpNet>()?);
        assert!(b.contains("::ffff:10.1.2.3".parse()?));
        assert!(!b.contains("10.1.2.4".parse()?));
        Ok(())
    }

    #[test]
    fn parses_what_it_prints() -> Result<(), Box<dyn std::error::Error>> {
        for k in [
            key("127.0.1.5", 64)?,
            key("2001:db8::1", 64)?,
            key("::1", 128)?,
        ] {
            assert_eq!(k.to_string().parse::<SourceKey>()?, k);
            let json = serde_json::to_string(&k)?;
            assert_eq!(json, format!("\"{k}\""));
            assert_eq!(serde_json::from_str::<SourceKey>(&json)?, k);
        }
        for bad in [
            "2001:db8::1/64",
            "::ffff:1.2.3.4/128",
            "1.2.3.4/32",
            "nope",
            "",
        ] {
            assert!(bad.parse::<SourceKey>().is_err(), "{bad}");
        }
        Ok(())
    }
}
