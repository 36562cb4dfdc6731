use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// IP allowlists: [`IpNet`], a CIDR range over `std::net`.
///
/// A key may carry a list of ranges ([`KeyRecord::ip_allowlist`](crate::KeyRecord::ip_allowlist));
/// when the list is non-empty, a request from an address outside every range
/// fails with [`Error::IpNotAllowed`] (403,
/// `IP_NOT_ALLOWED`). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are
/// compared as the IPv4 address they carry.
///
/// A CIDR range such as `10.0.0.0/8` or `2001:db8::/32`. A bare address is a
/// range of one (`/32` or `/128`).
///
/// Host bits must be zero (`10.0.0.1/8` is rejected), so every range has one
/// spelling. A range of IPv4-mapped IPv6 addresses (inside `::ffff:0:0/96`)
/// is stored, compared and printed as the IPv4 range it maps
/// (`::ffff:10.0.0.0/104` is `10.0.0.0/8`). Other IPv6 ranges match IPv6
/// addresses only: `::/0` does not match `10.1.2.3` nor `::ffff:10.1.2.3`.
/// Serializes as its text.
///
/// ```
/// use apikey::IpNet;
/// let net: IpNet = "192.168.0.0/16".parse()?;
/// assert!(net.contains("192.168.4.2".parse().unwrap()));
/// assert!(!net.contains("10.0.0.1".parse().unwrap()));
/// assert!(net.contains("::ffff:192.168.0.9".parse().unwrap())); // IPv4-mapped
/// let v6: IpNet = "2001:db8::/32".parse()?;
/// assert!(v6.contains("2001:db8:1::7".parse().unwrap()));
/// assert!("10.0.0.1/8".parse::<IpNet>().is_err()); // host bits set
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

impl IpNet {
    /// A range from a network address and prefix length.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `len` exceeds 32 (IPv4) or 128 (IPv6) or
    /// `addr` has bits set past `len`.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::InvalidInput("CIDR prefix length too long".into()));
        }
        let net = Self { addr, len };
        if net.network_bits() != bits(addr) {
            return Err(Error::InvalidInput(
                "CIDR range has host bits set (write its network address)".into(),
            ));
        }
        Ok(net.canonical())
    }

    /// An IPv6 range inside `::ffff:0:0/96` (IPv4-mapped addresses) is the
    /// IPv4 range it maps: `::ffff:10.0.0.0/104` is `10.0.0.0/8`. Addresses
    /// are compared in their canonical form too, so such a range would
    /// otherwise match nothing.
    fn canonical(self) -> Self {
        match self.addr {
            IpAddr::V6(v6) if self.len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Self {
                    addr: IpAddr::V4(v4),
                    len: self.len - 96,
                },
                None => self,
            },
            _ => self,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn network_bits(&self) -> u128 {
        mask(bits(self.addr), self.len, self.addr.is_ipv4())
    }

    /// Whether `ip` is inside the range. IPv4-mapped IPv6 addresses match
    /// IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        mask(bits(ip), self.len, ip.is_ipv4()) == self.network_bits()
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(value: u128, len: u8, v4: bool) -> u128 {
    let width: u32 = if v4 { 32 } else { 128 };
    let len = u32::from(len).min(width);
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - len);
    let keep = if v4 {
        keep & u128::from(u32::MAX)
    } else {
        keep
    };
    value & keep
}

/// Whether `ip` is inside any range of `list`. An empty list allows every
/// address; a non-empty list allows no request whose address is unknown.
/// The public form is [`KeyView::allows_ip`](crate::KeyView::allows_ip).
pub(crate) fn ip_allowed(list: &[IpNet], ip: Option<IpAddr>) -> bool {
    if list.is_empty() {
        return true;
    }
    ip.is_some_and(|ip| list.iter().any(|n| n.contains(ip)))
}

impl FromStr for IpNet {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput("not a CIDR range (expected like 10.0.0.0/8)".into());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                if l.is_empty()
                    || l.len() > 3
                    || (l.len() > 1 && l.starts_with('0'))
                    || !l.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad());
                }
                (a, Some(l.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        let addr: IpAddr = if let Ok(v4) = addr.parse::<Ipv4Addr>() {
            IpAddr::V4(v4)
        } else {
            IpAddr::V6(addr.parse::<Ipv6Addr>().map_err(|_| bad())?)
        };
        let len = len.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Self::new(addr, len)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_allowlist_allows_every_address_and_a_list_no_unknown_one() {
        let list: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(ip_allowed(&list, Some("10.1.2.3".parse().unwrap())));
        assert!(!ip_allowed(&list, Some("11.1.2.3".parse().unwrap())));
        assert!(!ip_allowed(&list, None));
        assert!(ip_allowed(&[], None));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_contain() {
        let n: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(n.contains(ip("1.2.3.4")));
        assert!(!n.contains(ip("::1")));
        let n: IpNet = "::/0".parse().unwrap();
        assert!(n.contains(ip("::1")));
        let n: IpNet = "10.0.0.7".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.7/32");
        assert!(n.contains(ip("10.0.0.7")));
        assert!(!n.contains(ip("10.0.0.8")));
        let n: IpNet = "10.0.0.0/31".parse().unwrap();
        assert!(n.contains(ip("10.0.0.1")));
        assert!(!n.contains(ip("10.0.0.2")));
        let n: IpNet = "fe80::/10".parse().unwrap();
        assert!(n.contains(ip("febf::1")));
        assert!(!n.contains(ip("fec0::1")));
        for bad in [
            "",
            "/",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.1/8",
            "x/8",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "10.0.0.0/08",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv4_mapped_ranges_match_their_ipv4_addresses() {
        let n: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(n, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(ip("10.1.2.3")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        let one: IpNet = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        let all: IpNet = "::ffff:0.0.0.0/96".parse().unwrap();
        assert_eq!(all.to_string(), "0.0.0.0/0");
        assert!(all.contains(ip("203.0.113.1")));
        // Host bits are still checked on the IPv6 spelling.
        assert!("::ffff:10.0.0.1/104".parse::<IpNet>().is_err());
        // A shorter IPv6 range is not a mapped range.
        let v6: IpNet = "::/0".parse().unwrap();
        assert_eq!(v6.to_string(), "::/0");
        assert!(v6.contains(ip("2001:db8::1")));
        let json: IpNet = serde_json::from_str("\"::ffff:10.0.0.0/104\"").unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), "\"10.0.0.0/8\"");
    }

    #[test]
    fn serde_round_trip() {
        let n: IpNet = "2001:db8::/32".parse().unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"2001:db8::/32\"");
        assert_eq!(serde_json::from_str::<IpNet>(&j).unwrap(), n);
    }
}
