//! Request correlation ids.
//!
//! The server makes every request's id itself (a UUIDv7, so ids sort by time) and answers it
//! in `x-request-id`. A caller's own `x-request-id` is never trusted as the correlation id:
//! anyone could otherwise plant another request's id, or text that forges log lines. It is
//! kept, bounded and cleaned, as the log field `client_request_id`, so a caller can still
//! find their request in the logs.

use axum::http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};
use uuid::Uuid;

/// The header carrying request ids, both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client request id kept for the log; longer ones are cut.
pub const MAX_CLIENT_REQUEST_ID_CHARS: usize = 64;

/// The caller's own `x-request-id`, cleaned; a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequestId(pub String);

impl ClientRequestId {
    /// Keeps the characters that ids are made of (ASCII letters, digits and `-_.:/+=`), at
    /// most [`MAX_CLIENT_REQUEST_ID_CHARS`] of them; `None` if nothing is left.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let kept: String = value
            .as_bytes()
            .iter()
            .map(|&b| char::from(b))
            .filter(|c| c.is_ascii_alphanumeric() || "-_.:/+=".contains(*c))
            .take(MAX_CLIENT_REQUEST_ID_CHARS)
            .collect();
        (!kept.is_empty()).then_some(Self(kept))
    }
}

/// Moves the caller's `x-request-id` out of the headers into a [`ClientRequestId`] extension,
/// so the id layer after it always makes a fresh one.
pub fn take_client_request_id<B>(mut request: Request<B>) -> Request<B> {
    if let Some(value) = request.headers_mut().remove(&X_REQUEST_ID) {
        if let Some(client) = ClientRequestId::from_header(&value) {
            request.extensions_mut().insert(client);
        }
    }
    request
}

/// Makes UUIDv7 request ids.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_request_id_keeps_only_id_characters_and_is_bounded() {
        let forged = HeaderValue::from_bytes(b"abc 123\t{\"level\":\"ERROR\"}\xff").unwrap();
        assert_eq!(
            ClientRequestId::from_header(&forged),
            Some(ClientRequestId("abc123level:ERROR".to_owned()))
        );
        let long = HeaderValue::from_str(&"a".repeat(500)).unwrap();
        assert_eq!(
            ClientRequestId::from_header(&long).map(|c| c.0.len()),
            Some(MAX_CLIENT_REQUEST_ID_CHARS)
        );
        assert_eq!(
            ClientRequestId::from_header(&HeaderValue::from_static("   ")),
            None
        );
    }
}
