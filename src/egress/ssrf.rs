//! The SSRF guard: keygate calls only public addresses unless the operator's `egress.allow`
//! admits others. Loopback, link-local (cloud metadata at 169.254.169.254), private, shared
//! (CGNAT), unique-local, multicast, unspecified and reserved addresses are refused, whatever
//! form the address takes (`2130706433`, `0x7f000001`, `127.1` and `[::ffff:127.0.0.1]` all
//! parse to 127.0.0.1, as the `url` crate reqwest uses parses them).
//!
//! It runs twice. When a service is written, on the literal address of its URL: a host name is
//! not resolved then, since its answer at write time proves nothing about the answer at the
//! next request, and a write should not wait on DNS. When keygate connects, on every address a
//! name resolves to (`Resolver`, installed on every upstream client): a name that pointed
//! somewhere public when written and now points at 127.0.0.1 (DNS rebinding) is refused there.
//! URLs with a literal address skip DNS, so the callers check them before sending (`Guard::url`).
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The operator's allow-list (`egress.allow`): networks and host names keygate may call even
/// when they are not public.
#[derive(Debug, Default, Clone)]
pub struct Guard {
    nets: Vec<IpNet>,
    /// Lower case, no trailing dot. `.corp.example` admits every name under `corp.example`.
    hosts: Vec<String>,
}

/// A refused destination: the address and why, for the admin API's and the client's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The name as written, when the address came from DNS.
    pub host: Option<String>,
    pub ip: IpAddr,
    pub class: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(f, "{h} resolves to {}, {}", self.ip, self.class)?,
            None => write!(f, "{} is {}", self.ip, self.class)?,
        }
        write!(f, "; allow it with egress.allow (KEYGATE__EGRESS__ALLOW)")
    }
}

impl std::error::Error for Refused {}

impl Guard {
    /// Parses the allow-list: comma-separated CIDRs (`10.0.0.0/8`), addresses (`10.0.0.5`) and
    /// host names (`vllm.internal`, or `.internal` for every name under it).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut g = Self::default();
        for raw in entries
            .iter()
            .flat_map(|e| e.as_ref().split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if let Ok(net) = raw.parse::<IpNet>() {
                g.nets.push(net.trunc());
            } else if let Ok(ip) = raw.trim_matches(['[', ']']).parse::<IpAddr>() {
                g.nets.push(IpNet::from(ip));
            } else if is_host_name(raw) {
                g.hosts.push(raw.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(format!(
                    "egress.allow: {raw:?} is neither a CIDR (10.0.0.0/8), an address nor a host name"
                ));
            }
        }
        Ok(g)
    }

    /// Whether the allow-list names this host (a name, not an address).
    pub fn admits_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| {
            if h.starts_with('.') {
                host.ends_with(h.as_str())
            } else {
                *h == host
            }
        })
    }

    /// Ok when keygate may connect to `ip`: public, or inside an allowed network.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(class) = class_of(ip) else {
            return Ok(());
        };
        if self.nets.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        // `::ffff:10.0.0.5` reaches 10.0.0.5: an allowed IPv4 network admits its mapped form.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = v6.to_ipv4_mapped()
            && self.nets.iter().any(|n| n.contains(&IpAddr::V4(v4)))
        {
            return Ok(());
        }
        Err(Refused {
            host: None,
            ip,
            class,
        })
    }

    /// Checks a parsed URL's host when it is a literal address (or an allowed name). Names
    /// are left to the resolver, at connect time.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// Parses an upstream URL and checks its host, as one step before a request: reqwest takes
    /// the parsed URL, so it is parsed once.
    pub fn url(&self, raw: &str) -> Result<url::Url, UrlError> {
        let u = url::Url::parse(raw).map_err(|_| UrlError::Invalid)?;
        self.check_url(&u).map_err(UrlError::Refused)?;
        Ok(u)
    }

    /// The addresses of a resolved name that keygate may connect to; the first refusal when
    /// none is left. An allowed name keeps all its addresses.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        if self.admits_host(host) {
            return Ok(addrs);
        }
        let mut first = None;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.check_ip(a.ip()) {
                Ok(()) => true,
                Err(r) => {
                    first.get_or_insert(r);
                    false
                }
            })
            .collect();
        match (kept.is_empty(), first) {
            (true, Some(mut r)) => {
                r.host = Some(host.to_string());
                Err(r)
            }
            _ => Ok(kept),
        }
    }
}

/// Why an upstream URL is not sent.
#[derive(Debug)]
pub enum UrlError {
    Invalid,
    Refused(Refused),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => f.write_str("the upstream URL is not a valid URL"),
            Self::Refused(r) => write!(f, "upstream address refused: {r}"),
        }
    }
}

/// The refusal inside a reqwest error, when the resolver refused every address of the name.
pub fn refusal(e: &reqwest::Error) -> Option<&Refused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

/// Resolves names with the system resolver (tokio's `lookup_host`, as reqwest does by default)
/// and drops the addresses the guard refuses, so a connection is only ever opened to an
/// allowed one.
pub struct Resolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.filter(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn is_host_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').enumerate().all(|(i, label)| {
            // A leading empty label is the `.suffix` form.
            (i == 0 && label.is_empty())
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

/// Why an address is not public, or None when it is.
fn class_of(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

fn class_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_unspecified() || a == 0 {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_link_local() {
        "a link-local address (cloud metadata lives there)"
    } else if ip.is_private() {
        "a private address"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (CGNAT) address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_broadcast() || a >= 240 {
        "a reserved address"
    } else {
        return None;
    })
}

fn class_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Forms that carry an IPv4 address reach it: mapped (`::ffff:a.b.c.d`), the deprecated
    // compatible form (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`).
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return class_v4(v4);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (seg[..6] == [0; 6] && seg[6] != 0) {
        let o = ip.octets();
        return class_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    Some(if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if seg[0] & 0xffc0 == 0xfe80 {
        "a link-local address"
    } else if seg[0] & 0xffc0 == 0xfec0 {
        "a site-local address"
    } else if seg[0] & 0xfe00 == 0xfc00 {
        "a unique-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_ip(raw: &str) -> Result<(), Refused> {
        Guard::default().check_url(&url::Url::parse(raw).unwrap())
    }

    #[test]
    fn obfuscated_loopback_forms_parse_to_loopback_and_are_refused() {
        for raw in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "https://127.000.000.001:8443/v1",
        ] {
            let r = url_ip(raw).unwrap_err();
            assert_eq!(r.class, "a loopback address", "{raw}");
        }
    }

    #[test]
    fn each_non_public_range_is_refused_with_its_reason() {
        for (raw, class) in [
            (
                "http://169.254.169.254/latest",
                "a link-local address (cloud metadata lives there)",
            ),
            ("http://10.1.2.3/", "a private address"),
            ("http://172.16.0.1/", "a private address"),
            ("http://192.168.1.1/", "a private address"),
            ("http://100.64.0.1/", "a shared (CGNAT) address"),
            ("http://0.0.0.0/", "an unspecified address"),
            ("http://224.0.0.1/", "a multicast address"),
            ("http://255.255.255.255/", "a reserved address"),
            ("http://[::]/", "an unspecified address"),
            ("http://[fe80::1]/", "a link-local address"),
            ("http://[fd00::1]/", "a unique-local address"),
            ("http://[ff02::1]/", "a multicast address"),
            (
                "http://[::ffff:169.254.169.254]/",
                "a link-local address (cloud metadata lives there)",
            ),
            ("http://[64:ff9b::a00:1]/", "a private address"),
        ] {
            assert_eq!(url_ip(raw).unwrap_err().class, class, "{raw}");
        }
        for ok in [
            "https://api.openai.com/v1",
            "http://8.8.8.8/",
            "http://100.128.0.1/",
            "http://[2606:4700::1111]/",
            "http://localhost:1/",
        ] {
            assert!(url_ip(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_allow_list_admits_networks_addresses_and_names() {
        let g = Guard::parse(&[
            "127.0.0.0/8, ::1/128",
            "10.0.0.5,vllm.internal,.corp.example",
        ])
        .unwrap();
        assert!(g.check_ip("127.0.0.2".parse().unwrap()).is_ok());
        assert!(g.check_ip("::1".parse().unwrap()).is_ok());
        assert!(g.check_ip("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check_ip("10.0.0.5".parse().unwrap()).is_ok());
        assert!(g.check_ip("10.0.0.6".parse().unwrap()).is_err());
        assert!(g.check_ip("169.254.169.254".parse().unwrap()).is_err());
        assert!(g.admits_host("VLLM.internal."));
        assert!(g.admits_host("gpu.corp.example"));
        assert!(!g.admits_host("corp.example.evil"));
        let lo: SocketAddr = "169.254.169.254:80".parse().unwrap();
        assert_eq!(g.filter("vllm.internal", vec![lo]).unwrap(), vec![lo]);
        let e = g.filter("rebind.example", vec![lo]).unwrap_err();
        assert_eq!(e.host.as_deref(), Some("rebind.example"));
        assert!(
            e.to_string()
                .starts_with("rebind.example resolves to 169.254.169.254")
        );
    }

    #[test]
    fn a_name_keeps_its_public_addresses_and_loses_the_others() {
        let g = Guard::default();
        let public: SocketAddr = "1.1.1.1:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(g.filter("x", vec![private, public]).unwrap(), vec![public]);
        assert!(g.filter("x", vec![private]).is_err());
    }

    #[test]
    fn bad_allow_list_entries_are_named() {
        for bad in ["10.0.0.0/33", "not a host", "http://x"] {
            let e = Guard::parse(&[bad]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!(
            Guard::parse::<&str>(&[])
                .unwrap()
                .check_ip("127.0.0.1".parse().unwrap())
                .is_err()
        );
    }
}
