//! The network address a request came from, for per-address throttles.
//!
//! Only what the platform vouches for counts: in Lambda, the source IP API Gateway puts in the
//! request context; on the dev server, the peer of the TCP connection. Headers such as
//! `X-Forwarded-For` are written by the client and never trusted. Requests with neither (a
//! router driven in-process, as tests do) share one `unknown` bucket.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// The caller's address, if the platform told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// The throttle bucket of this address: an IPv4 address, the `/64` network of an IPv6
    /// address (one subscriber usually holds a whole `/64`), or `unknown`.
    pub fn bucket(&self) -> String {
        match self.0.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => v4.to_string(),
            Some(IpAddr::V6(v6)) => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
            None => "unknown".to_owned(),
        }
    }
}

fn lambda_source_ip(parts: &Parts) -> Option<IpAddr> {
    use lambda_http::request::RequestContext;
    let raw = match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV1(context) => context.identity.source_ip.as_deref(),
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.as_deref(),
        RequestContext::WebSocket(context) => context.identity.source_ip.as_deref(),
        #[allow(unreachable_patterns)]
        _ => None,
    }?;
    raw.trim().parse().ok()
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let address = lambda_source_ip(parts).or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.ip())
        });
        Ok(Self(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_ipv4_addresses_and_ipv6_networks() {
        let v4 = ClientAddr(Some("203.0.113.7".parse().unwrap()));
        assert_eq!(v4.bucket(), "203.0.113.7");
        let mapped = ClientAddr(Some("::ffff:203.0.113.7".parse().unwrap()));
        assert_eq!(mapped.bucket(), "203.0.113.7");
        let a = ClientAddr(Some("2001:db8:1:2:aaaa::1".parse().unwrap()));
        let b = ClientAddr(Some("2001:db8:1:2:bbbb::9".parse().unwrap()));
        assert_eq!(a.bucket(), "2001:db8:1:2::/64");
        assert_eq!(a.bucket(), b.bucket());
        assert_eq!(ClientAddr(None).bucket(), "unknown");
    }
}
