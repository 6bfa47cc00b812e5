//! The outbound URL guard (SPEC §8), the one place that decides where the gateway may send a request:
//! webhook deliveries, and every URL a client gives it to fetch (`image_urls`).
//!
//! Two checks, because a URL alone cannot tell where a host name leads:
//! - [`Guard::check_url`] at validation and again before each request: the scheme (https, or http
//!   where `webhooks.allow_http`), no credentials, no `localhost` names, and no literal address that is
//!   not public in any spelling the URL parser accepts (decimal, octal, hex and short IPv4, IPv4-mapped
//!   IPv6, …: the `url` crate turns them all into one address before we look).
//! - [`GuardedResolver`] at connect time: host names resolve through it, and it drops every address
//!   that is not public, so a name that resolves (or later re-resolves: DNS rebinding) to a private
//!   address is never connected to. Literal addresses never reach a resolver, hence the first check.
//!
//! Ranges listed in `webhooks.allowed_private_cidrs` pass both checks. The client from [`client`]
//! never follows redirects and ignores proxy environment variables (a proxy would resolve for us).

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use crate::config::WebhookSettings;

/// What the guard lets through besides public https URLs.
#[derive(Debug, Clone)]
pub struct Guard {
    allow_http: bool,
    allowed: Vec<IpNet>,
    /// `webhooks.max_url_bytes`: longer URLs are refused before they are parsed.
    max_url_bytes: usize,
    /// The gateway's own public base URL: its `/files/…` URLs (uploads, earlier results) are its own
    /// content wherever it runs, so they pass [`Guard::check_url`].
    own_base: Option<Url>,
}

impl Default for Guard {
    /// The guard of the default settings: https only, no private range.
    fn default() -> Guard {
        Guard::new(&WebhookSettings::default())
    }
}

impl Guard {
    pub fn new(settings: &WebhookSettings) -> Guard {
        Guard {
            allow_http: settings.allow_http,
            allowed: settings.allowed_private_cidrs.clone(),
            max_url_bytes: settings.max_url_bytes.get(),
            own_base: None,
        }
    }

    /// Lets the file URLs under `public_base_url` (`{public_base_url}/files/{name}`) through.
    pub fn with_own_files(mut self, public_base_url: &str) -> Guard {
        self.own_base = Url::parse(public_base_url).ok();
        self
    }

    /// Whether `url` is one of the gateway's own file URLs (compared after parsing, so `..` cannot
    /// walk out of `/files/`).
    fn is_own_file(&self, url: &Url) -> bool {
        let Some(base) = &self.own_base else { return false };
        let prefix = format!("{}/files/", base.path().trim_end_matches('/'));
        url.origin() == base.origin()
            && url.query().is_none()
            && url.path().strip_prefix(&prefix).is_some_and(|name| !name.is_empty() && !name.contains('/'))
    }

    /// The parsed URL, or why it is refused, in words for the client.
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
        if raw.len() > self.max_url_bytes {
            return Err(format!("{} bytes; at most {} are accepted.", raw.len(), self.max_url_bytes));
        }
        let url = Url::parse(raw).map_err(|_| format!("`{}` is not a valid URL.", shorten(raw)))?;
        if self.is_own_file(&url) {
            return Ok(url);
        }
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("must use https.".into()),
            other => return Err(format!("scheme `{other}` is not allowed; use https.")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials.".into());
        }
        let refused = match url.host() {
            None => return Err("must have a host.".into()),
            // `localhost` names mean this machine whatever DNS says: judged as the loopback address.
            Some(url::Host::Domain(domain)) => is_localhost(domain) && !self.allows(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(url::Host::Ipv4(ip)) => !self.allows(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => !self.allows(IpAddr::V6(ip)),
        };
        if refused {
            return Err("must not point at a private, loopback, link-local or otherwise non-public address.".into());
        }
        Ok(url)
    }

    /// Whether the gateway may connect to `ip`: public, or inside `allowed_private_cidrs`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }
}

fn is_localhost(domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    domain == "localhost" || domain.ends_with(".localhost")
}

/// An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`) is judged as that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let segments = v6.segments();
    let embedded = Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7]));
    let compatible = segments[..6].iter().all(|&s| s == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6].iter().all(|&s| s == 0);
    let siit = segments[..4].iter().all(|&s| s == 0) && segments[4] == 0xffff && segments[5] == 0;
    if compatible || nat64 || siit {
        IpAddr::V4(embedded)
    } else {
        ip
    }
}

/// The IPv4 addresses a transition address leads to: 6to4 `2002:aabb:ccdd::/48` (the relay's
/// `a.b.c.d`) and Teredo `2001:0::/32` (its server, and its client, stored inverted). Either may end
/// up inside a private network, so each must be public too.
fn tunnelled_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match (s[0], s[1]) {
        (0x2002, _) => vec![v4(s[1], s[2])],
        (0x2001, 0) => vec![v4(s[2], s[3]), v4(!s[6], !s[7])],
        _ => Vec::new(),
    }
}

/// Public: none of loopback, private, link-local (cloud metadata), CGNAT, multicast, broadcast,
/// unspecified, documentation, benchmarking, reserved, unique-local or site-local; NAT64 local-use
/// (`64:ff9b:1::/48`, whose IPv4 part lies in a private network by definition); and no 6to4 or Teredo
/// address that tunnels to a non-public IPv4 one.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6) && tunnelled_v4(v6).into_iter().all(is_public_v4),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let cgnat = a == 100 && (64..128).contains(&b);
    let protocol_assignments = a == 192 && b == 0 && c == 0;
    let benchmarking = a == 198 && (b == 18 || b == 19);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || cgnat
        || protocol_assignments
        || benchmarking
        || a == 0
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    let site_local = (first & 0xffc0) == 0xfec0;
    let documentation = first == 0x2001 && ip.segments()[1] == 0x0db8;
    let nat64_local_use = first == 0x64 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1;
    !(nat64_local_use
        || ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || site_local
        || documentation)
}

fn shorten(raw: &str) -> String {
    raw.chars().take(100).collect()
}

/// Resolves with an inner resolver (the system's, or a test's) and keeps only the addresses the guard
/// allows; none left is an error, so the connection is never attempted.
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    guard: Guard,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Resolve>, guard: Guard) -> GuardedResolver {
        GuardedResolver { inner, guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let guard = self.guard.clone();
        let resolving = self.inner.resolve(name);
        Box::pin(async move {
            // A name that does not resolve reads like one that leads only to refused addresses: the
            // delivery log must not let clients map internal DNS.
            let refused = |lookup_failed| {
                Box::new(Refused { host: host.clone(), lookup_failed }) as Box<dyn StdError + Send + Sync>
            };
            let addrs: Vec<SocketAddr> = match resolving.await {
                Ok(addrs) => addrs.collect(),
                Err(error) => {
                    tracing::debug!(host = %host, error = %error, "outbound name lookup failed");
                    return Err(refused(true));
                }
            };
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|addr| guard.allows(addr.ip())).collect();
            if allowed.is_empty() || is_localhost(&host) && !guard.allows(IpAddr::V4(Ipv4Addr::LOCALHOST)) {
                return Err(refused(false));
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The resolver's refusal; found in a request error's source chain by [`refused_by_guard`]. Its words
/// are the same whether the name is unknown or leads only to refused addresses, and do not repeat it.
#[derive(Debug)]
pub struct Refused {
    pub host: String,
    /// The lookup itself failed (perhaps for now), rather than finding only refused addresses.
    pub lookup_failed: bool,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused by the outbound URL guard: the host name does not resolve to an address the gateway may connect to")
    }
}

impl StdError for Refused {}

/// The guard's refusal, when that is what made a request fail.
pub fn refused_by_guard<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = error.source();
    }
    None
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for requests to URLs the guard checked: host names resolve through a
/// [`GuardedResolver`] over `resolver`, redirects are never followed, proxies never used.
pub fn client(guard: &Guard, resolver: Arc<dyn Resolve>, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("aio-gateway/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver::new(resolver, guard.clone())))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> Guard {
        Guard::default()
    }

    #[test]
    fn the_gateways_own_file_urls_pass_and_nothing_else_of_its_origin() {
        let guard = strict().with_own_files("http://127.0.0.1:8080");
        assert!(guard.check_url("http://127.0.0.1:8080/files/Ab12.png").is_ok());
        for refused in [
            "http://127.0.0.1:8080/api/v1/keys",
            "http://127.0.0.1:8080/files/../api/v1/keys",
            "http://127.0.0.1:8080/files/a/b.png",
            "http://127.0.0.1:8080/files/",
            "http://127.0.0.1:8080/files/a.png?x=1",
            "http://127.0.0.1:8081/files/Ab12.png",
            "https://127.0.0.1:8080/files/Ab12.png",
        ] {
            assert!(guard.check_url(refused).is_err(), "{refused}");
        }
        assert!(strict().check_url("http://127.0.0.1:8080/files/Ab12.png").is_err(), "only when configured");
    }

    #[test]
    fn refuses_what_must_not_be_fetched() {
        for url in [
            "ftp://example.com/a.png",
            "http://example.com/a.png",
            "https://user:pw@example.com/a.png",
            "https://user@example.com/a.png",
            "https://localhost/a.png",
            "https://LOCALHOST./a.png",
            "https://api.localhost/a.png",
            "https://127.0.0.1/a.png",
            "https://127.0.0.1./a.png",
            "https://2130706433/a.png",
            "https://0x7f.0.0.1/a.png",
            "https://0x7f000001/a.png",
            "https://0177.0.0.1/a.png",
            "https://017700000001/a.png",
            "https://127.1/a.png",
            "https://%31%32%37.0.0.1/a.png",
            "https://0.0.0.0/",
            "https://0/",
            "https://10.1.2.3/a.png",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest",
            "https://100.64.0.1/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
            "https://[::1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[::127.0.0.1]/",
            "https://[64:ff9b::10.0.0.1]/",
            "https://[fd00::1]/",
            "https://[fc00::1]/",
            "https://[fe80::1]/",
            "https://[ff02::1]/",
            "https://[64:ff9b:1::a00:1]/",
            "https://[64:ff9b:1:7f00:1::]/",
            "https://[::ffff:0:7f00:1]/",
            "https://[::ffff:0:a9fe:a9fe]/",
            "https://[2002:7f00:1::1]/",
            "https://[2002:c0a8:101::]/",
            "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            "https://[2001:0:a00:1:8000:63bf:3fff:fdd2]/",
            "not a url",
        ] {
            assert!(strict().check_url(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn accepts_public_https() {
        for url in [
            "https://example.com/in.png",
            "https://93.184.216.34/in.png",
            "https://[2606:4700::1111]/",
            "https://[2002:5db8:d822::1]/",
            "https://[2001:0:4136:e378:8000:63bf:a247:2bdd]/",
        ] {
            assert!(strict().check_url(url).is_ok(), "{url} should pass");
        }
        let http = Guard { allow_http: true, ..Guard::default() };
        assert!(http.check_url("http://example.com/in.png").is_ok());
        assert!(http.check_url("http://127.0.0.1/in.png").is_err());
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(strict().check_url(&long).is_err_and(|why| why.contains("2048")));
    }

    #[test]
    fn allowed_ranges_open_exactly_those_addresses() {
        let guard = Guard { allow_http: true, allowed: vec!["127.0.0.0/8".parse().expect("cidr")], ..Guard::default() };
        assert!(guard.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(guard.check_url("http://2130706433/hook").is_ok());
        assert!(guard.check_url("http://[::ffff:127.0.0.1]/hook").is_ok());
        assert!(guard.check_url("http://localhost:9000/hook").is_ok());
        assert!(guard.check_url("http://10.0.0.1/hook").is_err());
        assert!(guard.check_url("http://[::1]/hook").is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_private_addresses_and_fails_when_none_remain() {
        struct Fixed(Vec<IpAddr>);
        impl Resolve for Fixed {
            fn resolve(&self, _name: Name) -> Resolving {
                let addrs: Vec<SocketAddr> = self.0.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
                Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
            }
        }
        let name = || "rebind.test".parse::<Name>().expect("name");
        let private = GuardedResolver::new(Arc::new(Fixed(vec!["127.0.0.1".parse().expect("ip")])), strict());
        let error = match private.resolve(name()).await {
            Ok(_) => panic!("a name resolving to 127.0.0.1 must be refused"),
            Err(error) => error,
        };
        assert!(refused_by_guard(error.as_ref()).is_some(), "{error}");

        let mixed = ["10.0.0.1", "93.184.216.34"].map(|ip| ip.parse().expect("ip")).to_vec();
        let resolver = GuardedResolver::new(Arc::new(Fixed(mixed)), strict());
        let Ok(addrs) = resolver.resolve(name()).await else { panic!("one public address remains") };
        let kept: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
        assert_eq!(kept, vec!["93.184.216.34".parse::<IpAddr>().expect("ip")]);
    }
}
