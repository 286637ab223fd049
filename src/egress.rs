//! Outbound HTTP: the clients keygate calls upstreams with. One shared client serves every
//! service without egress settings; a service with a proxy or a private CA, and a key with its
//! own proxy, get clients of their own, built when the snapshot loads and never per request. The
//! checks the admin API applies to these settings live here too, so the API refuses up front what
//! a snapshot load could not build. Every client resolves names through the SSRF guard
//! (`ssrf`), which refuses non-public addresses the operator has not allowed.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{PemObject, SectionKind};
use sha2::{Digest, Sha256};

use crate::crypto::Cipher;

pub mod ssrf;
pub use ssrf::{Guard, Refused};

/// Proxy URL schemes keygate accepts (`socks5h` resolves names through the proxy).
pub const PROXY_SCHEMES: [&str; 4] = ["http", "https", "socks5", "socks5h"];

/// The settings every upstream client shares: a bounded connect, pooled connections kept a
/// while, names resolved through the SSRF guard, and redirects never followed. Not following
/// is simpler and stricter than a policy that checks each target: a redirect would carry the
/// key and the body to another host (possibly an internal one), and LLM APIs do not redirect;
/// a 3xx reaches the client as the upstream's answer.
pub fn builder(guard: &Arc<Guard>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(ssrf::Resolver(guard.clone())))
}

/// Checks a proxy URL (`parse_proxy`) and, when its host is a literal address, the guard too:
/// a proxy is an upstream hop like any other, so one on 127.0.0.1 or 169.254.169.254 would
/// reach keygate's own admin API or cloud metadata. A named proxy is checked when resolved.
pub fn check_proxy(guard: &Guard, raw: &str) -> Result<url::Url, String> {
    let u = parse_proxy(raw)?;
    guard.check_url(&u).map_err(|r| r.to_string())?;
    Ok(u)
}

/// Checks a proxy URL: one of `PROXY_SCHEMES`, a host, optional `user:password@` and port,
/// nothing else. The message never repeats the URL (it may hold a password).
pub fn parse_proxy(raw: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !PROXY_SCHEMES.contains(&u.scheme()) {
        return Err(format!(
            "the scheme must be one of {}",
            PROXY_SCHEMES.join(", ")
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
        return Err("a proxy URL is scheme://[user:password@]host[:port], nothing after".into());
    }
    Ok(u)
}

/// A proxy URL for display: the credentials replaced by `***` (`http://***@proxy:3128`).
pub fn mask_proxy(raw: &str) -> String {
    let Ok(u) = url::Url::parse(raw.trim()) else {
        return "(unreadable)".into();
    };
    let creds = if u.username().is_empty() && u.password().is_none() {
        ""
    } else {
        "***@"
    };
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{creds}{}{port}",
        u.scheme(),
        u.host_str().unwrap_or("")
    )
}

/// A proxy URL as stored: encrypted like upstream keys, since it may hold a password.
pub fn seal_proxy(cipher: &Cipher, url: &str) -> String {
    cipher.encrypt(url.trim())
}

/// A stored proxy URL in clear. A row written by hand holds the URL itself, which is used as is
/// (a URL never starts with the cipher's `v1:` prefix).
pub fn open_proxy(cipher: &Cipher, stored: &str) -> Result<String, crate::crypto::CryptoError> {
    if crate::crypto::is_sealed(stored) {
        cipher.decrypt(stored)
    } else {
        Ok(stored.to_string())
    }
}

/// The certificates of a private CA bundle (PEM). At least one is needed, each must parse as a
/// trust anchor, and a private key in the paste is refused rather than stored.
pub fn parse_ca(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem_text.as_bytes()) {
        match section.map_err(|_| "not valid PEM".to_string())? {
            (SectionKind::Certificate, der) => certs.push(CertificateDer::from(der)),
            (
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
                _,
            ) => {
                return Err(
                    "holds a private key: give only the CA's certificate(s), never a key".into(),
                );
            }
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store
            .add(c.clone())
            .map_err(|e| format!("certificate {} is not a usable CA certificate ({e})", i + 1))?;
    }
    Ok(certs)
}

/// Hex SHA-256 of each certificate of a PEM bundle: what the admin API shows of a private CA.
pub fn ca_fingerprints(pem_text: &str) -> Vec<String> {
    parse_ca(pem_text)
        .map(|certs| {
            certs
                .iter()
                .map(|c| hex::encode(Sha256::digest(c.as_ref())))
                .collect()
        })
        .unwrap_or_default()
}

/// A client with the shared settings plus a proxy and/or private CA roots (beside the public
/// ones). Errors name the part at fault, never the proxy URL.
pub fn client(
    guard: &Arc<Guard>,
    proxy: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<reqwest::Client, String> {
    let mut b = builder(guard);
    if let Some(p) = proxy {
        let url = check_proxy(guard, p).map_err(|e| format!("egress_proxy: {e}"))?;
        let proxy = reqwest::Proxy::all(url.as_str())
            .map_err(|_| "egress_proxy: not usable as a proxy".to_string())?;
        b = b.proxy(proxy);
    }
    if let Some(pem_text) = ca_pem {
        let roots = parse_ca(pem_text)
            .map_err(|e| format!("tls_ca_pem: {e}"))?
            .iter()
            .map(|c| reqwest::Certificate::from_der(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "tls_ca_pem: a certificate was refused".to_string())?;
        b = b.tls_certs_merge(roots);
    }
    b.build()
        .map_err(|_| "the HTTP client for these egress settings cannot be built".into())
}

/// Upstream clients by egress settings. A snapshot keeps the ones it uses so the next load
/// reuses them: a reload then keeps their connection pools, and services or keys with the same
/// settings share one client. Keyed by a digest, so no proxy password sits in a map key.
#[derive(Default)]
pub struct Clients(HashMap<[u8; 32], reqwest::Client>);

impl Clients {
    /// The client for these settings; None when there are none (the shared client serves).
    pub fn get(
        &mut self,
        guard: &Arc<Guard>,
        prev: &Clients,
        proxy: Option<&str>,
        ca_pem: Option<&str>,
    ) -> Result<Option<reqwest::Client>, String> {
        if proxy.is_none() && ca_pem.is_none() {
            return Ok(None);
        }
        let mut h = Sha256::new();
        h.update(proxy.unwrap_or("").as_bytes());
        h.update([0]);
        h.update(ca_pem.unwrap_or("").as_bytes());
        let id: [u8; 32] = h.finalize().into();
        if let Some(c) = self.0.get(&id).or_else(|| prev.0.get(&id)) {
            let c = c.clone();
            self.0.insert(id, c.clone());
            return Ok(Some(c));
        }
        let c = client(guard, proxy, ca_pem)?;
        self.0.insert(id, c.clone());
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_are_checked_without_echoing_them() {
        for ok in [
            "http://proxy:3128",
            "https://u:p@proxy",
            "socks5://127.0.0.1:1080",
            "socks5h://user:pw@proxy:1080/",
        ] {
            assert!(parse_proxy(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://proxy",
            "proxy:3128",
            "http://",
            "http://u:hunter2@proxy/path",
            "",
        ] {
            let e = parse_proxy(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn masked_proxies_keep_host_and_port_and_drop_credentials() {
        assert_eq!(
            mask_proxy("http://user:s3cret@proxy.local:3128"),
            "http://***@proxy.local:3128"
        );
        assert_eq!(
            mask_proxy("socks5://10.0.0.1:1080"),
            "socks5://10.0.0.1:1080"
        );
        assert_eq!(mask_proxy("https://token@p"), "https://***@p");
    }

    #[test]
    fn a_pem_without_certificates_or_with_a_key_is_refused() {
        assert!(
            parse_ca("hello")
                .unwrap_err()
                .contains("no PEM certificate")
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_ca(garbage).is_err());
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(parse_ca(key).unwrap_err().contains("private key"));
    }

    #[test]
    fn clients_are_reused_across_loads_by_their_settings() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let g = Arc::new(Guard::default());
        let prev = Clients::default();
        let mut first = Clients::default();
        assert!(first.get(&g, &prev, None, None).unwrap().is_none());
        first
            .get(&g, &prev, Some("http://p:1"), None)
            .unwrap()
            .unwrap();
        let mut second = Clients::default();
        second
            .get(&g, &first, Some("http://p:1"), None)
            .unwrap()
            .unwrap();
        second
            .get(&g, &first, Some("http://p:2"), None)
            .unwrap()
            .unwrap();
        assert_eq!(second.0.len(), 2);
        assert!(first.0.keys().all(|k| second.0.contains_key(k)));
        assert!(second.get(&g, &first, Some("ftp://p"), None).is_err());
        let e = second
            .get(&g, &first, Some("http://169.254.169.254:80"), None)
            .unwrap_err();
        assert!(e.contains("link-local"), "{e}");
    }
}
