//! Locators (the part of `ofi+PROV://LOCATOR` after the scheme) and the provider's raw
//! address bytes: `host:port` for socket address formats, the provider's own string for
//! `FI_ADDR_STR`, and `x<hex>` for anything else. An optional `domain/` prefix names the
//! interface or NIC (`ofi+verbs://mlx5_0/10.0.0.1:7000`), as in Mercury.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libfabric_sys as fi;
use na::NaError;

/// Splits `domain/rest` (a domain is named before the first `/`).
pub fn split_domain(locator: &str) -> (Option<&str>, &str) {
    match locator.split_once('/') {
        Some((d, rest)) if !d.is_empty() => (Some(d), rest),
        _ => (None, locator),
    }
}

/// Splits `host:port` into node and service for `fi_getinfo`.
pub fn node_service(hostport: &str) -> Result<(&str, &str), NaError> {
    let bad = || NaError::InvalidAddress {
        addr: hostport.into(),
        reason: "expected host:port".into(),
    };
    let (h, p) = hostport.rsplit_once(':').ok_or_else(bad)?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() || p.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((h, p))
}

/// The locator for a raw address of `format`.
pub fn to_locator(format: u32, raw: &[u8]) -> String {
    match format {
        fi::FI_SOCKADDR_IN if raw.len() >= 8 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            SocketAddr::V4(SocketAddrV4::new(ip, port)).to_string()
        }
        fi::FI_SOCKADDR_IN6 if raw.len() >= 24 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let mut o = [0u8; 16];
            o.copy_from_slice(&raw[8..24]);
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, 0, 0)).to_string()
        }
        fi::FI_ADDR_STR => {
            let s = String::from_utf8_lossy(raw);
            let s = s.trim_end_matches('\0');
            // `fi_shm://1234:0:0` → `1234:0:0`: the provider's scheme is implied by ours.
            let s = s.split_once("://").map_or(s, |(_, rest)| rest);
            if s.chars().all(|c| c.is_ascii_graphic() && c != '/') && !s.is_empty() {
                s.to_owned()
            } else {
                hex(raw)
            }
        }
        _ => hex(raw),
    }
}

fn hex(raw: &[u8]) -> String {
    let mut s = String::from("x");
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The raw address of `format` for a locator (without its domain prefix). String
/// addresses take the scheme (`fi_shm://`) of `own`, this endpoint's raw address.
pub fn from_locator_like(format: u32, loc: &str, own: &[u8]) -> Result<Vec<u8>, NaError> {
    if format == fi::FI_ADDR_STR && !loc.starts_with('x') {
        // (Byte-wise: this runs for every transfer whose peer is named by its address.)
        if let Some(i) = own.windows(3).position(|w| w == b"://") {
            let mut v = Vec::with_capacity(i + 4 + loc.len());
            v.extend_from_slice(&own[..i + 3]);
            v.extend_from_slice(loc.as_bytes());
            v.push(0);
            return Ok(v);
        }
    }
    from_locator(format, loc)
}

/// The raw address of `format` for a locator (without its domain prefix).
pub fn from_locator(format: u32, loc: &str) -> Result<Vec<u8>, NaError> {
    let bad = |reason: &str| NaError::InvalidAddress {
        addr: loc.into(),
        reason: reason.into(),
    };
    if let Some(h) = loc.strip_prefix('x')
        && h.len() % 2 == 0
        && !h.is_empty()
        && h.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad("bad hex")))
            .collect();
    }
    match format {
        fi::FI_SOCKADDR_IN | fi::FI_SOCKADDR_IN6 | fi::FI_SOCKADDR => {
            let sa: SocketAddr = loc
                .parse()
                .map_err(|_| bad("expected ip:port (a numeric address)"))?;
            Ok(sockaddr(&sa))
        }
        fi::FI_ADDR_STR => {
            let mut v = loc.as_bytes().to_vec();
            v.push(0);
            Ok(v)
        }
        _ => Err(bad("this provider's addresses are written as x<hex>")),
    }
}

/// A `struct sockaddr_in`/`sockaddr_in6` in memory order.
fn sockaddr(sa: &SocketAddr) -> Vec<u8> {
    match sa {
        SocketAddr::V4(a) => {
            let mut v = vec![0u8; 16];
            v[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            v[2..4].copy_from_slice(&a.port().to_be_bytes());
            v[4..8].copy_from_slice(&a.ip().octets());
            v
        }
        SocketAddr::V6(a) => {
            let mut v = vec![0u8; 28];
            v[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            v[2..4].copy_from_slice(&a.port().to_be_bytes());
            v[8..24].copy_from_slice(&a.ip().octets());
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for s in ["127.0.0.1:7000", "[::1]:9"] {
            let f = if s.starts_with('[') {
                fi::FI_SOCKADDR_IN6
            } else {
                fi::FI_SOCKADDR_IN
            };
            let raw = from_locator(f, s).unwrap();
            assert_eq!(to_locator(f, &raw), s);
        }
        let raw = vec![1, 2, 0xab];
        assert_eq!(from_locator(99, &to_locator(99, &raw)).unwrap(), raw);
    }

    #[test]
    fn string_locators_take_the_own_address_scheme() {
        let own = b"fi_shm://1234:0\0";
        let raw = from_locator_like(fi::FI_ADDR_STR, "99:1", own).unwrap();
        assert_eq!(raw, b"fi_shm://99:1\0");
        // Without a scheme in our own address: the locator as it is.
        let raw = from_locator_like(fi::FI_ADDR_STR, "99:1", b"plain\0").unwrap();
        assert_eq!(raw, b"99:1\0");
        let hex = from_locator_like(fi::FI_ADDR_STR, "xab01", own).unwrap();
        assert_eq!(hex, [0xab, 0x01]);
    }

    #[test]
    fn domains_and_bad_locators() {
        assert_eq!(split_domain("lo/1.2.3.4:5"), (Some("lo"), "1.2.3.4:5"));
        assert_eq!(split_domain("1.2.3.4:5"), (None, "1.2.3.4:5"));
        assert!(node_service("nohost").is_err());
        assert!(from_locator(fi::FI_SOCKADDR_IN, "name:1").is_err());
        assert!(from_locator(99, "plain").is_err());
    }
}
