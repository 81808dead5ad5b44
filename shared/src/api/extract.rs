//! Extractors that turn every kind of bad input into a precise problem response.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult, FieldError};
use crate::state::AppState;
use crate::store::{cursor, Page};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body: `415` if it is not JSON, `413` if too large, `400` if malformed,
/// `422` naming the field if a value has the wrong type or is missing.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: MAX_BODY_BYTES,
                }
            } else {
                ApiError::bad_request("body", rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(Self)
    }
}

/// Parses JSON with the failing field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                let field = match message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(missing) if path == "." => missing.to_owned(),
                    Some(missing) => format!("{path}.{missing}"),
                    None if path == "." => "body".to_owned(),
                    None => path,
                };
                ApiError::invalid(field, message)
            }
            _ => ApiError::bad_request("body", format!("malformed JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::bad_request("body", format!("malformed JSON: {err}")))?;
    Ok(value)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters: `400` naming the parameter when they do not parse.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> ApiResult<Self> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from_str(query).map(Self)
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> ApiResult<T> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let field = err.path().to_string();
        let field = if field == "." {
            "query".to_owned()
        } else {
            field
        };
        ApiError::bad_request(field, err.into_inner().to_string())
    })
}

/// `?limit=&cursor=` of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1–200 (default 50).
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Default page size.
pub const DEFAULT_LIMIT: i32 = 50;
/// Largest page size.
pub const MAX_LIMIT: i32 = 200;

/// A validated page request, bound to one list.
pub struct PageRequest {
    /// Page size.
    pub limit: i32,
    /// Where to start.
    pub start: Option<cursor::Key>,
    scope: String,
}

impl PageQuery {
    /// Validates the limit and the cursor for the list named `scope`.
    pub fn resolve(&self, state: &AppState, scope: String) -> ApiResult<PageRequest> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<i32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
        };
        let start = match &self.cursor {
            None => None,
            Some(raw) => Some(
                cursor::decode(state.keys()?.cursor_key(), &scope, raw).ok_or_else(|| {
                    ApiError::bad_request("cursor", "is not a cursor issued for this list")
                })?,
            ),
        };
        Ok(PageRequest {
            limit,
            start,
            scope,
        })
    }
}

impl PageRequest {
    /// The API's answer for a page of records: each shown as a `V`, and the next cursor.
    pub fn respond<R, V>(
        &self,
        state: &AppState,
        page: Page<R>,
    ) -> ApiResult<axum::Json<super::Page<V>>>
    where
        V: From<R> + utoipa::ToSchema,
    {
        let next_cursor = self.next_cursor(state, &page)?;
        Ok(axum::Json(super::Page {
            items: page.items.into_iter().map(V::from).collect(),
            next_cursor,
        }))
    }

    /// Encodes the next cursor of a page.
    pub fn next_cursor<T>(&self, state: &AppState, page: &Page<T>) -> ApiResult<Option<String>> {
        let keys = state.keys()?;
        page.next
            .as_ref()
            .map(|key| cursor::encode(keys.cursor_key(), &self.scope, key))
            .transpose()
            .map_err(ApiError::Internal)
    }
}

/// The version a write expects: from the body's `version` or an `If-Match` header.
pub fn expected_version(
    parts_headers: &axum::http::HeaderMap,
    body_version: Option<u64>,
) -> ApiResult<Option<u64>> {
    let header_version = match parts_headers.get(header::IF_MATCH) {
        None => None,
        Some(value) => {
            let raw = value.to_str().unwrap_or_default().trim();
            let raw = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
            Some(raw.parse::<u64>().map_err(|_| {
                ApiError::bad_request("If-Match", "must be the record's version, e.g. \"3\"")
            })?)
        }
    };
    match (header_version, body_version) {
        (Some(h), Some(b)) if h != b => Err(ApiError::invalid_fields(vec![FieldError::new(
            "version",
            "differs from the If-Match header",
        )])),
        (h, b) => Ok(h.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn field_of(err: ApiError) -> (u16, String) {
        let problem = err.problem();
        (problem.status, problem.errors[0].field.clone())
    }

    #[test]
    fn malformed_json_is_a_400() {
        let err = parse_json::<Body>(b"{\"email\": ").unwrap_err();
        assert_eq!(err.status(), 400);
        let err = parse_json::<Body>(b"{\"email\": \"a\"} trailing").unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn a_missing_field_is_named() {
        assert_eq!(
            field_of(parse_json::<Body>(b"{}").unwrap_err()),
            (422, "email".into())
        );
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"email":"a","inner":{}}"#).unwrap_err()),
            (422, "inner.count".into())
        );
    }

    #[test]
    fn a_wrong_type_is_named_with_its_path() {
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"email":"a","inner":{"count":"x"}}"#).unwrap_err()),
            (422, "inner.count".into())
        );
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"email":1}"#).unwrap_err()),
            (422, "email".into())
        );
    }

    #[test]
    fn if_match_and_body_version_must_agree() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::IF_MATCH, "\"3\"".parse().unwrap());
        assert_eq!(expected_version(&headers, None).unwrap(), Some(3));
        assert_eq!(expected_version(&headers, Some(3)).unwrap(), Some(3));
        assert!(expected_version(&headers, Some(4)).is_err());
        headers.insert(header::IF_MATCH, "soon".parse().unwrap());
        assert_eq!(expected_version(&headers, None).unwrap_err().status(), 400);
    }
}
