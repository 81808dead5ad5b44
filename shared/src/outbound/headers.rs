//! Rules for the headers a tenant configures on outbound calls (tools and webhook steps).
//!
//! - **Forbidden**: hop-by-hop and framing headers belong to the HTTP client. Letting a
//!   tenant set `Host`, `Content-Length` or `Transfer-Encoding` invites request smuggling and
//!   virtual-host confusion; they are refused when saved and never sent.
//! - **Sensitive**: a header whose name looks like it carries a secret (`*auth*`, `*token*`,
//!   `*key*`, `*secret*`, `*password*`, `*session*`, `*cookie*`) must take its value from
//!   stored credentials, so no secret is kept in a config or an immutable workflow version;
//!   its value is recorded as `[REDACTED]`.

/// Headers the HTTP client owns: hop-by-hop (RFC 9110 §7.6.1) and message framing.
pub const FORBIDDEN: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Headers a webhook step may not set: the sender types and signs every delivery.
pub const WEBHOOK_OWNED: [&str; 4] = [
    "content-type",
    "x-spark-ops-timestamp",
    "x-spark-ops-signature",
    "x-spark-ops-delivery",
];

/// Fragments of a header name that mark it as carrying a secret.
const SECRET_MARKERS: [&str; 7] = [
    "auth", "token", "key", "secret", "password", "session", "cookie",
];

/// Names that match a marker but carry no secret.
const NOT_SECRET: [&str; 1] = ["idempotency-key"];

/// Whether `name` is one the HTTP client owns (case-insensitive).
pub fn is_forbidden(name: &str) -> bool {
    FORBIDDEN.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// Whether `name` looks like it carries a secret (case-insensitive).
pub fn is_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !NOT_SECRET.contains(&name.as_str()) && SECRET_MARKERS.iter().any(|m| name.contains(m))
}

/// Why a configured header name cannot be used, if it cannot.
pub fn check_name(name: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err("is not a valid HTTP header name".to_owned());
    }
    if is_forbidden(name) {
        return Err(
            "is set by the HTTP client itself (hop-by-hop and framing headers cannot be configured)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Why a webhook step cannot set header `name`, if it cannot.
pub fn check_webhook_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if WEBHOOK_OWNED.iter().any(|o| o.eq_ignore_ascii_case(name)) {
        return Err("is set by the webhook sender itself".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_names_are_sensitive_whatever_their_case() {
        for name in [
            "Authorization",
            "X-Api-Key",
            "api-key",
            "X-Auth-Token",
            "Cookie",
            "X-Client-Secret",
            "X-Session-Id",
            "Proxy-Authorization",
            "X-Password",
            "apikey",
        ] {
            assert!(is_sensitive(name), "{name}");
        }
        for name in [
            "Accept",
            "X-Action",
            "Idempotency-Key",
            "Content-Language",
            "X-Customer",
        ] {
            assert!(!is_sensitive(name), "{name}");
        }
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "TE",
            "Upgrade",
        ] {
            assert!(check_name(name).is_err(), "{name}");
        }
        assert!(check_name("bad header").is_err());
        assert!(check_name("X-Action").is_ok());
    }
}
