//! Request planning: a tool's URL and header templates filled from the input before any I/O,
//! then the request finished with credentials, ready to send any number of times.

use std::collections::BTreeSet;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use super::credentials::Resolved;
use super::{ToolError, REDACTED};
use crate::outbound::headers;
use crate::tool::template::{
    self as tool_template, lookup, parse_template, pointer, CredentialField, Piece,
};
use crate::tool::{HttpConfig, HttpMethod};
use crate::workflow::template::{json_len, Segment, MAX_RENDERED_BYTES};

/// A value as template text: strings as they are, anything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A header template with its input placeholders filled in; credentials still to come.
struct HeaderPlan {
    /// The name as configured, for the record.
    configured: String,
    name: HeaderName,
    pieces: Vec<Piece>,
    sensitive: bool,
}

/// Everything about the request that does not need credentials, worked out before any I/O.
pub(super) struct Plan {
    method: Method,
    pub(super) url: url::Url,
    headers: Vec<HeaderPlan>,
    body: Option<Value>,
    pub(super) credential_fields: BTreeSet<CredentialField>,
}

/// The header carrying a call's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

impl Plan {
    pub(super) fn new(config: &HttpConfig, input: &Value) -> Result<Self, ToolError> {
        // The URL and headers together, measured before each value is copied in.
        let filled = std::cell::Cell::new(0usize);
        let fill_input = |pieces: Vec<Piece>, what: &str, encode: bool| {
            pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Input(path) => {
                        let value =
                            lookup(input, &path).ok_or_else(|| ToolError::InvalidInput {
                                pointer: pointer(&path),
                                message: format!("is required by the tool's {what}"),
                            })?;
                        let length = match value {
                            Value::String(text) => text.len(),
                            other => json_len(other),
                        };
                        filled.set(filled.get().saturating_add(length));
                        if filled.get() > MAX_RENDERED_BYTES {
                            return Err(ToolError::InvalidInput {
                                pointer: pointer(&path),
                                message: format!(
                                    "makes the tool's URL and headers longer than \
                                     {MAX_RENDERED_BYTES} bytes"
                                ),
                            });
                        }
                        let text = text_of(value);
                        Ok(Piece::Text(if encode {
                            percent_encode(&text)
                        } else {
                            text
                        }))
                    }
                    other => Ok(other),
                })
                .collect::<Result<Vec<Piece>, ToolError>>()
        };

        // Checked again here, not only when saved: a record saved under older rules must not
        // let an input choose the host.
        tool_template::check_url(&config.url)
            .map_err(|why| ToolError::Config(format!("its `url` {why}")))?;
        let url_pieces = parse_template(&config.url)
            .map_err(|why| ToolError::Config(format!("its `url` {why}")))?;
        let dots = url_pieces.iter().find_map(|piece| match piece {
            Piece::Input(path) => lookup(input, path)
                .map(text_of)
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b == b'.'))
                .map(|_| pointer(path)),
            _ => None,
        });
        let url_text: String = fill_input(url_pieces, "url", true)?
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => text,
                _ => String::new(),
            })
            .collect();
        if tool_template::check_filled_path(&url_text).is_err() {
            return Err(ToolError::InvalidInput {
                pointer: dots.unwrap_or_default(),
                message: "fills a segment of the tool's URL path with `.` or `..`, which is \
                          refused"
                    .to_owned(),
            });
        }
        let mut url = url::Url::parse(&url_text).map_err(|_| {
            ToolError::Config("its `url` is not a valid URL once filled in".to_owned())
        })?;

        let mut headers = Vec::with_capacity(config.headers.len());
        let mut credential_fields = BTreeSet::new();
        for (name, template) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ToolError::Config(format!("`{name}` is not a valid header name")))?;
            let pieces = tool_template::check_header(name, template)
                .map_err(|why| ToolError::Config(format!("its header `{name}` {why}")))?;
            let pieces = fill_input(pieces, &format!("header `{name}`"), false)?;
            let mut sensitive = headers::is_sensitive(name);
            for piece in &pieces {
                if let Piece::Credential(field) = piece {
                    credential_fields.insert(*field);
                    sensitive = true;
                }
            }
            headers.push(HeaderPlan {
                configured: name.clone(),
                name: header,
                pieces,
                sensitive,
            });
        }

        let method = match config.method {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Delete => Method::DELETE,
        };
        let body = if method == Method::GET {
            for (name, value) in query_parameters(input)? {
                url.query_pairs_mut().append_pair(&name, &value);
            }
            None
        } else {
            Some(input.clone())
        };
        Ok(Self {
            method,
            url,
            headers,
            body,
            credential_fields,
        })
    }

    /// Sends `key` as the [`IDEMPOTENCY_HEADER`], unless the tool's headers set it already.
    pub(super) fn idempotency_key(&mut self, key: &str) -> Result<(), ToolError> {
        let name = HeaderName::from_static("idempotency-key");
        if self.headers.iter().any(|h| h.name == name) {
            return Ok(());
        }
        if HeaderValue::from_str(key).is_err() {
            return Err(ToolError::Config(
                "the idempotency key is not a valid header value".to_owned(),
            ));
        }
        self.headers.push(HeaderPlan {
            configured: IDEMPOTENCY_HEADER.to_owned(),
            name,
            pieces: vec![Piece::Text(key.to_owned())],
            sensitive: false,
        });
        Ok(())
    }

    /// The request, with credentials filled in.
    pub(super) fn finish(self, secrets: &Resolved) -> Result<Prepared, ToolError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if self.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let mut recorded = Map::new();
        for header in self.headers {
            let mut text = String::new();
            for piece in &header.pieces {
                match piece {
                    Piece::Text(part) => text.push_str(part),
                    Piece::Credential(field) => match secrets.values.get(field) {
                        Some(value) => text.push_str(value.expose_secret()),
                        None => {
                            return Err(ToolError::Unexpected(anyhow::anyhow!(
                                "credential `{}` was not resolved",
                                field.name()
                            )))
                        }
                    },
                    // Already filled in by `Plan::new`.
                    Piece::Input(_) => {}
                }
            }
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                if header.sensitive {
                    ToolError::Credentials {
                        message: format!(
                            "header `{}` would not be a valid HTTP header value",
                            header.name
                        ),
                        retryable: false,
                    }
                } else {
                    ToolError::InvalidInput {
                        pointer: String::new(),
                        message: format!(
                            "header `{}` would not be a valid HTTP header value",
                            header.name
                        ),
                    }
                }
            })?;
            value.set_sensitive(header.sensitive);
            recorded.insert(
                header.configured,
                Value::String(if header.sensitive {
                    REDACTED.to_owned()
                } else {
                    secrets.scrub(&text)
                }),
            );
            headers.insert(header.name, value);
        }
        let body = match &self.body {
            Some(body) => Some(Bytes::from(serde_json::to_vec(body).map_err(|e| {
                ToolError::Unexpected(anyhow::Error::new(e).context("Failed to encode the input"))
            })?)),
            None => None,
        };
        let mut record = json!({
            "method": self.method.as_str(),
            "url": self.url.as_str(),
            "headers": recorded,
        });
        if let (Some(input), Some(map)) = (&self.body, record.as_object_mut()) {
            map.insert("body".to_owned(), secrets.scrub_value(input));
        }
        Ok(Prepared {
            method: self.method,
            url: self.url,
            headers,
            body,
            record,
        })
    }
}

/// A GET tool's input as query parameters: an object of scalars or lists of scalars.
fn query_parameters(input: &Value) -> Result<Vec<(String, String)>, ToolError> {
    let members = match input {
        Value::Null => return Ok(Vec::new()),
        Value::Object(members) => members,
        _ => {
            return Err(ToolError::InvalidInput {
                pointer: String::new(),
                message: "must be an object: a GET tool sends its input as query parameters"
                    .to_owned(),
            })
        }
    };
    let mut pairs = Vec::new();
    for (name, value) in members {
        let scalar = |value: &Value| match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(text_of(value)),
            _ => None,
        };
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    match scalar(item) {
                        Some(text) => pairs.push((name.clone(), text)),
                        None => {
                            return Err(ToolError::InvalidInput {
                                pointer: pointer(&[Segment::Field(name.clone())]),
                                message: "must list only strings, numbers or booleans: a GET \
                                          tool sends its input as query parameters"
                                    .to_owned(),
                            })
                        }
                    }
                }
            }
            other => match scalar(other) {
                Some(text) => pairs.push((name.clone(), text)),
                None => {
                    return Err(ToolError::InvalidInput {
                        pointer: pointer(&[Segment::Field(name.clone())]),
                        message: "must be a string, number, boolean or a list of those: a GET \
                                  tool sends its input as query parameters"
                            .to_owned(),
                    })
                }
            },
        }
    }
    Ok(pairs)
}

/// A request ready to send, any number of times.
pub(super) struct Prepared {
    pub(super) method: Method,
    pub(super) url: url::Url,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<Bytes>,
    pub(super) record: Value,
}

impl Prepared {
    pub(super) fn builder(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let builder = client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        match &self.body {
            Some(body) => builder.body(body.clone()),
            None => builder,
        }
    }
}
