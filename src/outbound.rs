//! The outbound URL guard, as far as a URL can be judged without resolving it: URLs the gateway will
//! fetch or call (`image_urls`, `callback_url`) must be http(s), carry no credentials and not name a
//! private, loopback or link-local address. (Checking the address actually connected to comes with
//! outgoing webhooks.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;

/// `Err` says why the URL is refused, in words for the client.
pub fn check_url(raw: &str, allow_http: bool) -> Result<(), String> {
    let url = Url::parse(raw).map_err(|_| format!("`{}` is not a valid URL.", shorten(raw)))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("must use https.".into()),
        other => return Err(format!("scheme `{other}` is not allowed; use https.")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials.".into());
    }
    match url.host() {
        None => Err("must have a host.".into()),
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if domain == "localhost" || domain.ends_with(".localhost") {
                Err("must not point at this machine.".into())
            } else {
                Ok(())
            }
        }
        Some(url::Host::Ipv4(ip)) => public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => public(IpAddr::V6(ip)),
    }
}

fn public(ip: IpAddr) -> Result<(), String> {
    if is_public(ip) {
        Ok(())
    } else {
        Err("must not point at a private, loopback or link-local address.".into())
    }
}

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let cgnat = a == 100 && (64..128).contains(&b);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || cgnat
        || a == 0
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || unique_local || link_local)
}

fn shorten(raw: &str) -> String {
    raw.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_must_not_be_fetched() {
        for url in [
            "ftp://example.com/a.png",
            "http://example.com/a.png",
            "https://user:pw@example.com/a.png",
            "https://localhost/a.png",
            "https://127.0.0.1/a.png",
            "https://2130706433/a.png",
            "https://0x7f.0.0.1/a.png",
            "https://0177.0.0.1/a.png",
            "https://10.1.2.3/a.png",
            "https://169.254.169.254/latest",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[fd00::1]/",
            "not a url",
        ] {
            assert!(check_url(url, false).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn accepts_public_https() {
        assert!(check_url("https://example.com/in.png", false).is_ok());
        assert!(check_url("https://93.184.216.34/in.png", false).is_ok());
        assert!(check_url("http://example.com/in.png", true).is_ok());
    }
}
