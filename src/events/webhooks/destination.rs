//! Which webhook destinations are allowed (spec §8.2): scheme, credentials, and the addresses a
//! host resolves to, checked when a webhook is created and again before every delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::WebhooksConfig;

/// How long resolving a webhook's host may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// The IPv4 address an IPv6 address carries, in any of the forms that reach it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002:aabb:ccdd::/48`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(from(s[1], s[2]));
    }
    None
}

/// Cloud metadata endpoints: refused whatever the configuration says, in every IPv6 form too.
fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets() == [169, 254, 169, 254],
        IpAddr::V6(v6) => {
            v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
                || embedded_v4(v6).is_some_and(|v4| is_metadata(IpAddr::V4(v4)))
        }
    }
}

/// Why an address is not a public destination (spec §8.2), or `None` when it is.
fn private_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("carrier-grade NAT")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast")
            } else if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
                Some("benchmarking")
            } else if o[0] >= 240 {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            // Translated and tunnelled forms lead to an IPv4 host by a path that is not
            // checked here: none of them is a public destination.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_reason(IpAddr::V4(v4));
            }
            if embedded_v4(v6).is_some() {
                return Some("IPv4-translating");
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Refuses an address as a destination; metadata addresses always, the rest unless private
/// networks are allowed.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), String> {
    if is_metadata(ip) {
        return Err(format!("{ip} is a cloud metadata address"));
    }
    match private_reason(ip) {
        Some(reason) if !allow_private => Err(format!("{ip} is a {reason} address")),
        _ => Ok(()),
    }
}

/// A destination that passed the checks: the URL and the addresses it may be reached at.
#[derive(Debug)]
pub struct Destination {
    pub url: reqwest::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Parses and checks a webhook URL, resolving its host (spec §8.2). The error is a sentence for
/// the client.
pub async fn check_url(text: &str, settings: &WebhooksConfig) -> Result<Destination, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    match url.scheme() {
        "https" => {}
        "http" if settings.allow_http_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) => {}
        "http" => return Err(format!("http is not allowed for {host}; use https")),
        other => return Err(format!("the scheme {other} is not allowed; use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| format!("resolving the host {host} took longer than {} s", DNS_TIMEOUT.as_secs()))?
            .map_err(|_| format!("the host {host} does not resolve"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("the host {host} does not resolve"));
    }
    for addr in &addrs {
        check_address(addr.ip(), settings.allow_private_networks)?;
    }
    Ok(Destination { url, host, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_addresses_are_refused_even_when_private_networks_are_allowed() {
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(check_address(ip.parse().unwrap(), true).is_err(), "{ip}");
            assert!(check_address(ip.parse().unwrap(), false).is_err(), "{ip}");
        }
    }

    #[test]
    fn private_ranges_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "::8.8.8.8",
        ] {
            assert!(check_address(ip.parse().unwrap(), false).is_err(), "{ip} accepted");
            assert!(
                check_address(ip.parse().unwrap(), true).is_ok(),
                "{ip} refused when allowed"
            );
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "100.128.0.1"] {
            assert!(check_address(ip.parse().unwrap(), false).is_ok(), "{ip} refused");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_credentials_and_destination() {
        let strict = WebhooksConfig::default();
        assert!(
            check_url("http://169.254.169.254/latest/meta-data", &strict)
                .await
                .is_err()
        );
        let open = WebhooksConfig {
            allow_http_hosts: vec!["169.254.169.254".into(), "127.0.0.1".into()],
            allow_private_networks: true,
            ..WebhooksConfig::default()
        };
        assert!(
            check_url("http://169.254.169.254/latest/meta-data", &open)
                .await
                .unwrap_err()
                .contains("metadata")
        );
        for mapped in ["https://[::ffff:169.254.169.254]/", "https://[::ffff:a9fe:a9fe]/latest"] {
            let refused = check_url(mapped, &open).await.unwrap_err();
            assert!(refused.contains("metadata"), "{mapped}: {refused}");
        }
        assert!(check_url("http://127.0.0.1:9/hook", &strict).await.is_err());
        assert!(
            check_url("https://127.0.0.1:9/hook", &strict)
                .await
                .unwrap_err()
                .contains("loopback")
        );
        assert!(check_url("http://127.0.0.1:9/hook", &open).await.is_ok());
        assert!(
            check_url("https://user:pw@93.184.216.34/hook", &strict)
                .await
                .unwrap_err()
                .contains("credentials")
        );
        assert!(check_url("ftp://93.184.216.34/hook", &strict).await.is_err());
        assert!(check_url("https://93.184.216.34/hook", &strict).await.is_ok());
    }
}
