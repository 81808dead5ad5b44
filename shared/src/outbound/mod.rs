//! The one way out: every HTTP call to a URL a tenant or a model can influence (tools,
//! webhook steps, LLM endpoints, OAuth token endpoints) goes through [`Egress`].
//!
//! Before anything is sent, [`Egress::request`] checks the destination:
//!
//! 1. The scheme is `http` or `https`, without user info.
//! 2. The deployment's own endpoints are refused whatever else is allowed: every
//!    `AWS_ENDPOINT_URL*` (the local emulators hand out secrets to anyone who asks) and
//!    `AWS_LAMBDA_RUNTIME_API`.
//! 3. A destination on the allow-list (`EGRESS_ALLOW`, `host:port` exactly as the URL names
//!    them; empty by default) is reached whatever its address: the development switch for
//!    local fakes. Nothing else relaxes the policy.
//! 4. Otherwise an IP literal must be public ([`address::refusal`]), and a name is resolved
//!    by this client's own resolver, which refuses the whole name if any address it resolves
//!    to is not public. The connection goes to the addresses that were checked: there is no
//!    second lookup, so no DNS-rebinding window.
//! 5. Credentials travel only over `https`, except to an allowed address.
//!
//! The client follows no redirects (a `3xx` is an answer like any other, so a reply cannot
//! send a request, or its credentials, somewhere else) and uses no proxy from the environment.
//! A refusal is an [`Refused`] error, never a hang; callers fail the step with its text, e.g.
//! `egress refused: 127.0.0.1 is a loopback address`.
//!
//! Requests go out through [`send`]: one retry, backoff and `Retry-After` policy and one
//! response-size cap for every caller.

pub mod address;
pub mod headers;
pub mod scrub;
pub mod send;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// A destination as `host:port`, the host lower-cased (IPv6 without brackets).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Parses `host:port` (`[v6]:port` for IPv6).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let bad = || format!("{raw:?} is not host:port");
        let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(bad());
        }
        Ok(Self::new(host, port))
    }

    fn new(host: &str, port: u16) -> Self {
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        Self { host, port }
    }

    /// The same destination with every loopback spelling (`localhost`, `::1`, `127.x.y.z`)
    /// written `127.0.0.1`, so a denied loopback endpoint cannot be reached by another name.
    fn canonical(&self) -> Self {
        let loopback = self.host == "localhost"
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback {
            Self::new("127.0.0.1", self.port)
        } else {
            self.clone()
        }
    }

    /// The host and port a URL connects to.
    pub fn of_url(url: &Url) -> Option<Self> {
        let host = match url.host()? {
            Host::Domain(name) => name.to_owned(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        Some(Self::new(&host, url.port_or_known_default()?))
    }

    /// The host and port of an endpoint URL such as `http://127.0.0.1:4566`, or of a bare
    /// `host:port` (the form of `AWS_LAMBDA_RUNTIME_API`).
    pub fn of_endpoint(raw: &str) -> Option<Self> {
        Url::parse(raw)
            .ok()
            .filter(|u| u.has_host())
            .and_then(|u| Self::of_url(&u))
            .or_else(|| Self::parse(raw).ok())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Whether two absolute URLs share scheme, host and port; unparsable URLs share nothing.
pub fn same_origin(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin().is_tuple() && a.origin() == b.origin(),
        _ => false,
    }
}

/// What may be reached besides the public internet, and what never may.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Reachable although not public (`EGRESS_ALLOW`).
    pub allow: BTreeSet<HostPort>,
    /// Never reachable: the deployment's own AWS endpoints and Lambda runtime API.
    pub deny: BTreeSet<HostPort>,
}

/// Environment variables naming the deployment's own endpoints, besides every
/// `AWS_ENDPOINT_URL_<SERVICE>`.
pub const DEPLOYMENT_ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL", "AWS_LAMBDA_RUNTIME_API"];

impl EgressPolicy {
    /// A policy allowing `allow` and denying `deny`. An entry in both is denied.
    pub fn new(
        allow: impl IntoIterator<Item = HostPort>,
        deny: impl IntoIterator<Item = HostPort>,
    ) -> Self {
        Self {
            allow: allow.into_iter().collect(),
            deny: deny.into_iter().map(|d| d.canonical()).collect(),
        }
    }

    /// Adds endpoints that are never reachable.
    pub fn deny_also(&mut self, deny: impl IntoIterator<Item = HostPort>) {
        self.deny.extend(deny.into_iter().map(|d| d.canonical()));
    }

    /// Parses `EGRESS_ALLOW`: a comma-separated list of `host:port`.
    pub fn parse_allow(raw: &str) -> Result<BTreeSet<HostPort>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(HostPort::parse)
            .collect()
    }

    /// The deployment's own endpoints among `vars` (name, value): every `AWS_ENDPOINT_URL*`
    /// and `AWS_LAMBDA_RUNTIME_API`.
    pub fn deployment_endpoints<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> BTreeSet<HostPort> {
        vars.into_iter()
            .filter(|(name, _)| {
                name.starts_with("AWS_ENDPOINT_URL") || DEPLOYMENT_ENDPOINT_VARS.contains(name)
            })
            .filter_map(|(_, value)| HostPort::of_endpoint(value.trim()))
            .collect()
    }

    /// Checks a destination before any connection; `Ok(true)` when it is on the allow-list.
    fn admit(&self, url: &Url, credentials: bool) -> Result<bool, Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::new(format!(
                "the scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::new("URLs with user info are not sent".to_owned()));
        }
        let target = HostPort::of_url(url)
            .ok_or_else(|| Refused::new("the URL names no host".to_owned()))?;
        if self.deny.contains(&target.canonical()) {
            return Err(Refused::new(format!(
                "{target} is one of this deployment's own endpoints"
            )));
        }
        let allowed = self.allow.contains(&target);
        if !allowed {
            let literal = match url.host() {
                Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(why) = literal.and_then(|ip| address::refusal(ip).map(|why| (ip, why))) {
                return Err(Refused::new(format!("{} is {}", why.0, why.1)));
            }
            if credentials && url.scheme() != "https" {
                return Err(Refused::new(format!(
                    "credentials are sent only over https, not to {}",
                    url.origin().ascii_serialization()
                )));
            }
        }
        Ok(allowed)
    }
}

/// Why an outbound call was not made. Its text is safe to show to the tenant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("egress refused: {reason}")]
pub struct Refused {
    reason: String,
}

impl Refused {
    fn new(reason: String) -> Self {
        Self { reason }
    }

    /// The refusal inside a failed request, if that is why it failed.
    pub fn in_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(refused) = error.downcast_ref::<Refused>() {
                return Some(refused);
            }
            cause = error.source();
        }
        None
    }
}

/// The HTTP client for every outbound call; cheap to clone, build one per process.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    policy: EgressPolicy,
    /// Resolves through [`PublicOnly`].
    public: reqwest::Client,
    /// Resolves normally; used only for destinations on the allow-list.
    allowed: reqwest::Client,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// A client enforcing `policy`.
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("spark-ops/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
        };
        let public = builder()
            .dns_resolver(Arc::new(PublicOnly))
            .build()
            .context("Failed to build the outbound HTTP client")?;
        let allowed = builder()
            .build()
            .context("Failed to build the outbound HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                policy,
                public,
                allowed,
            }),
        })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &EgressPolicy {
        &self.inner.policy
    }

    /// The client that may call `url`, if the policy lets it out; `credentials` says whether
    /// the call will carry any (which then requires `https`). Names are checked again when
    /// the client resolves them. Build every attempt's request on the client returned.
    pub fn client_for(&self, url: &Url, credentials: bool) -> Result<&reqwest::Client, Refused> {
        Ok(if self.inner.policy.admit(url, credentials)? {
            &self.inner.allowed
        } else {
            &self.inner.public
        })
    }

    /// A request to `url`, if the policy lets it out (see [`Egress::client_for`]).
    pub fn request(
        &self,
        method: reqwest::Method,
        url: Url,
        credentials: bool,
    ) -> Result<reqwest::RequestBuilder, Refused> {
        Ok(self.client_for(&url, credentials)?.request(method, url))
    }
}

/// Resolves a name and refuses it unless every address it has is public.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| address::refusal(a.ip()).map(|why| (a.ip(), why)))
            {
                return Err(
                    Box::new(Refused::new(format!("{host} resolves to {ip}, {why}")))
                        as Box<dyn std::error::Error + Send + Sync>,
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(raw: &str) -> HostPort {
        HostPort::parse(raw).unwrap()
    }

    fn admit(policy: &EgressPolicy, url: &str, credentials: bool) -> Result<bool, String> {
        policy
            .admit(&Url::parse(url).unwrap(), credentials)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn host_ports_parse_and_normalise() {
        assert_eq!(hp("LocalHost:8080").to_string(), "localhost:8080");
        assert_eq!(hp("[::1]:9000").to_string(), "[::1]:9000");
        assert!(HostPort::parse("no-port").is_err());
        assert!(HostPort::parse("a:b").is_err());
        assert!(HostPort::parse(":80").is_err());
        assert_eq!(
            EgressPolicy::parse_allow(" 127.0.0.1:1, localhost:2 ,").unwrap(),
            BTreeSet::from([hp("127.0.0.1:1"), hp("localhost:2")])
        );
        assert_eq!(
            HostPort::of_endpoint("http://127.0.0.1:4566"),
            Some(hp("127.0.0.1:4566"))
        );
        assert_eq!(
            HostPort::of_endpoint("127.0.0.1:9001"),
            Some(hp("127.0.0.1:9001"))
        );
        assert_eq!(
            HostPort::of_url(&Url::parse("https://Example.com/x").unwrap()),
            Some(hp("example.com:443"))
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert!(same_origin(
            "https://api.openai.com/v1",
            "https://API.openai.com:443/v2"
        ));
        assert!(!same_origin(
            "https://api.openai.com/v1",
            "http://api.openai.com/v1"
        ));
        assert!(!same_origin(
            "https://api.openai.com/v1",
            "https://evil.example/v1"
        ));
        assert!(!same_origin(
            "https://api.openai.com/v1",
            "https://api.openai.com:8443/v1"
        ));
        assert!(!same_origin("not a url", "not a url"));
    }

    #[test]
    fn deployment_endpoints_come_from_every_aws_endpoint_variable() {
        let found = EgressPolicy::deployment_endpoints([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000/"),
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            found,
            BTreeSet::from([
                hp("127.0.0.1:4566"),
                hp("127.0.0.1:8000"),
                hp("127.0.0.1:9001")
            ])
        );
    }

    #[test]
    fn literals_are_judged_by_their_address_and_names_pass_to_the_resolver() {
        let policy = EgressPolicy::default();
        assert_eq!(
            admit(&policy, "http://127.0.0.1:4566/", false).unwrap_err(),
            "egress refused: 127.0.0.1 is a loopback address"
        );
        assert_eq!(
            admit(&policy, "http://0x7f.1/", false).unwrap_err(),
            "egress refused: 127.0.0.1 is a loopback address"
        );
        assert!(
            admit(&policy, "http://[::ffff:169.254.169.254]/latest", false)
                .unwrap_err()
                .contains("link-local")
        );
        assert!(admit(&policy, "http://[fd00:ec2::254]/", false).is_err());
        assert!(admit(&policy, "ftp://example.com/", false).is_err());
        assert!(admit(&policy, "https://user:pw@example.com/", false).is_err());
        assert_eq!(admit(&policy, "https://example.com/", true), Ok(false));
        assert_eq!(admit(&policy, "http://8.8.8.8/", false), Ok(false));
    }

    #[test]
    fn credentials_need_https_except_to_an_allowed_address() {
        let policy = EgressPolicy::new([hp("127.0.0.1:9000")], []);
        assert!(admit(&policy, "http://example.com/", true)
            .unwrap_err()
            .contains("only over https"));
        assert_eq!(admit(&policy, "http://127.0.0.1:9000/x", true), Ok(true));
        // The allow-list is exact: another port of the same host stays refused.
        assert!(admit(&policy, "http://127.0.0.1:9001/x", false).is_err());
    }

    #[test]
    fn the_deployments_endpoints_stay_refused_even_when_allowed() {
        let policy = EgressPolicy::new([hp("127.0.0.1:4566")], [hp("127.0.0.1:4566")]);
        assert_eq!(
            admit(&policy, "http://127.0.0.1:4566/", false).unwrap_err(),
            "egress refused: 127.0.0.1:4566 is one of this deployment's own endpoints"
        );
        let by_name = EgressPolicy::new([hp("localhost:4566")], [hp("127.0.0.1:4566")]);
        assert!(admit(&by_name, "http://localhost:4566/", false).is_err());
        assert!(admit(&by_name, "http://[::1]:4566/", false).is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_at_connection() {
        let egress = Egress::new(EgressPolicy::default()).unwrap();
        let url = Url::parse("http://localhost:1/").unwrap();
        let error = egress
            .request(reqwest::Method::GET, url, false)
            .unwrap()
            .send()
            .await
            .unwrap_err();
        let refused = Refused::in_error(&error).expect("the refusal is in the error");
        assert!(
            refused
                .to_string()
                .starts_with("egress refused: localhost resolves to"),
            "{refused}"
        );
    }
}
