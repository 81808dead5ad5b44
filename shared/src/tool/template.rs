//! The templates of an http tool's `url` and `headers`, parsed when the tool is saved and again
//! when it is called (so a record saved under older rules cannot slip through).
//!
//! They use the one template syntax of the product ([`crate::workflow::template`]): `{{ path }}`
//! placeholders, a path being `.<field>` or `[<index>]` steps after its root. A tool's
//! templates have two roots:
//!
//! - `{{ input }}`, `{{ input.<field>… }}`: the call's input, e.g. `{{ input.items[0].id }}`.
//!   Records saved before the syntax was shared may index a list as `.0`; that still reads
//!   the item, but `[0]` is the syntax to write.
//! - `{{ credentials.<field> }}`, in headers only: `api_key`, `access_token`, `client_id`,
//!   `client_secret`.
//!
//! Anything else between `{{` and `}}` is an error rather than text sent as is: a typo must
//! not reach a third party.
//!
//! **Where a URL may be filled.** Scheme, user info, host and port are literal: placeholders
//! may fill the path and the query only ([`check_url`]), so neither a tenant's input nor a
//! model's choice can aim a tool, and the credentials it carries, at another host. A path
//! segment that is `.` or `..` once filled is refused ([`check_filled_path`]), so an input
//! cannot climb the path either.
//!
//! **Secret headers.** A header whose name looks like it carries a secret
//! ([`headers::is_sensitive`]) must be exactly `{{ credentials.<field> }}`, optionally after an
//! auth scheme word (`Bearer {{ credentials.api_key }}`): no literal secret is ever stored in
//! a config, and no input is ever mixed into a credential.

use serde_json::Value;
use url::Url;

use crate::outbound::headers;
use crate::workflow::template::{parse_path, split, Chunk, Segment};

/// A credential a header template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialField {
    ApiKey,
    AccessToken,
    ClientId,
    ClientSecret,
}

impl CredentialField {
    /// Every field, in documentation order.
    pub const ALL: [Self; 4] = [
        Self::ApiKey,
        Self::AccessToken,
        Self::ClientId,
        Self::ClientSecret,
    ];

    /// The field's name after `credentials.`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::AccessToken => "access_token",
            Self::ClientId => "client_id",
            Self::ClientSecret => "client_secret",
        }
    }
}

/// A piece of a URL or header template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Text(String),
    /// `{{ input.a[0] }}`: the path after `input`.
    Input(Vec<Segment>),
    /// `{{ credentials.<field> }}`.
    Credential(CredentialField),
}

/// Splits a template into pieces; the error says what is wrong with it.
pub fn parse_template(source: &str) -> Result<Vec<Piece>, String> {
    split(source)?
        .into_iter()
        .map(|chunk| match chunk {
            Chunk::Text(text) => Ok(Piece::Text(text.to_owned())),
            Chunk::Placeholder(path) => parse_placeholder(path),
        })
        .collect()
}

fn parse_placeholder(path: &str) -> Result<Piece, String> {
    let unknown = || {
        format!(
            "has a placeholder `{{{{ {path} }}}}` the engine cannot fill; use \
             `{{{{ input.<field> }}}}` or `{{{{ credentials.<field> }}}}`"
        )
    };
    let mut segments = parse_path(path).ok_or_else(unknown)?.into_iter();
    match segments.next() {
        Some(Segment::Field(root)) if root == "input" => Ok(Piece::Input(segments.collect())),
        Some(Segment::Field(root)) if root == "credentials" => {
            let found = match (segments.next(), segments.next()) {
                (Some(Segment::Field(field)), None) => {
                    CredentialField::ALL.into_iter().find(|f| f.name() == field)
                }
                _ => None,
            };
            found.map(Piece::Credential).ok_or_else(|| {
                let names: Vec<&str> = CredentialField::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "has a placeholder `{{{{ {path} }}}}`; credentials offer {}",
                    names.join(", ")
                )
            })
        }
        _ => Err(unknown()),
    }
}

/// The value at `path` inside a call's input: object members by name, list items by index
/// (or, in records saved before the syntax was shared, by a field that is all digits).
pub fn lookup<'a>(input: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter()
        .try_fold(input, |at, segment| match (segment, at) {
            (Segment::Field(name), Value::Object(members)) => members.get(name),
            (Segment::Index(index), Value::Array(items)) => items.get(*index),
            (Segment::Field(legacy), Value::Array(items)) => {
                legacy.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        })
}

/// The JSON Pointer of `path`, to name a missing or bad input value.
pub fn pointer(path: &[Segment]) -> String {
    path.iter()
        .map(|segment| match segment {
            Segment::Field(name) => format!("/{}", name.replace('~', "~0").replace('/', "~1")),
            Segment::Index(index) => format!("/{index}"),
        })
        .collect()
}

/// Checks a URL template: an absolute `http(s)` URL without user info whose scheme, host and
/// port are literal, with placeholders only in the path and query, none of them credentials.
pub fn check_url(template: &str) -> Result<(), String> {
    let pieces = parse_template(template)?;
    if pieces.iter().any(|p| matches!(p, Piece::Credential(_))) {
        return Err(
            "may not use credentials, which would leak them into logs and records; \
                    send them in a header"
                .to_owned(),
        );
    }
    if let Some(open) = template.find("{{") {
        let authority_ends = template[..open]
            .find("://")
            .map(|scheme| scheme + 3)
            .and_then(|start| template[start..open].find(['/', '?']));
        if authority_ends.is_none() {
            return Err(
                "may use placeholders only in its path and query: the scheme, host \
                        and port must be written out"
                    .to_owned(),
            );
        }
    }
    let sample = sample(&pieces);
    let url = Url::parse(&sample)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| "must be an absolute http or https URL".to_owned())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("may not hold user info; put credentials in `credentials`".to_owned());
    }
    check_filled_path(&sample)
}

/// The origin (`scheme://host:port`) a URL template calls, when it is valid.
pub fn origin(template: &str) -> Option<String> {
    check_url(template).ok()?;
    Url::parse(&sample(&parse_template(template).ok()?))
        .ok()
        .map(|url| url.origin().ascii_serialization())
}

/// Whether a template fills anything from credentials.
pub fn uses_credentials(template: &str) -> bool {
    parse_template(template)
        .is_ok_and(|pieces| pieces.iter().any(|p| matches!(p, Piece::Credential(_))))
}

/// The template with every placeholder replaced by `x`: what its literal parts must parse as.
fn sample(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => text.as_str(),
            _ => "x",
        })
        .collect()
}

/// Refuses a URL whose path has a `.` or `..` segment (also percent-encoded), which would
/// move the request elsewhere on the host.
pub fn check_filled_path(url: &str) -> Result<(), String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .find('/')
        .map_or("", |start| &after_scheme[start..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let dot = path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    if dot {
        Err("has a path segment `.` or `..`, which is refused".to_owned())
    } else {
        Ok(())
    }
}

/// Checks the template of header `name`; returns its pieces. A secret-looking name must take
/// its whole value from credentials, after at most an auth scheme word.
pub fn check_header(name: &str, template: &str) -> Result<Vec<Piece>, String> {
    headers::check_name(name)?;
    let pieces = parse_template(template)?;
    if headers::is_sensitive(name) {
        let scheme = |text: &str| {
            let word = text.strip_suffix([' ', '=']).unwrap_or(text);
            !word.is_empty()
                && word.len() <= 32
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let from_credentials = match pieces.as_slice() {
            [Piece::Credential(_)] => true,
            [Piece::Text(prefix), Piece::Credential(_)] => scheme(prefix),
            _ => false,
        };
        if !from_credentials {
            return Err(
                "carries a secret, so its value must come from the tool's credentials: \
                        `{{ credentials.<field> }}`, optionally after a scheme such as \
                        `Bearer ` or a name such as `session=`; set the secret in `credentials`"
                    .to_owned(),
            );
        }
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn templates_split_into_text_input_and_credentials() {
        assert_eq!(
            parse_template("Bearer {{ credentials.api_key }}").unwrap(),
            vec![
                Piece::Text("Bearer ".into()),
                Piece::Credential(CredentialField::ApiKey)
            ]
        );
        assert_eq!(
            parse_template("{{input.customer.id}}/x").unwrap(),
            vec![
                Piece::Input(vec![
                    Segment::Field("customer".into()),
                    Segment::Field("id".into())
                ]),
                Piece::Text("/x".into())
            ]
        );
        assert_eq!(
            parse_template("plain } text").unwrap(),
            vec![Piece::Text("plain } text".into())]
        );
    }

    #[test]
    fn input_paths_use_the_one_path_syntax_and_old_dot_indexes_still_read() {
        let input = json!({"items": [{"id": "a"}, {"id": "b/c"}]});
        let pieces = parse_template("https://x.example.com/{{ input.items[1].id }}").unwrap();
        let Piece::Input(path) = &pieces[1] else {
            panic!("expected an input placeholder, got {pieces:?}");
        };
        assert_eq!(lookup(&input, path), Some(&json!("b/c")));
        assert_eq!(pointer(path), "/items/1/id");
        let legacy = parse_template("{{ input.items.1.id }}").unwrap();
        let Piece::Input(legacy) = &legacy[0] else {
            panic!("expected an input placeholder, got {legacy:?}");
        };
        assert_eq!(lookup(&input, legacy), Some(&json!("b/c")));
        assert_eq!(lookup(&input, &path[..1]).map(Value::is_array), Some(true));
        assert!(parse_template("{{ input[0] }}").is_ok());
        for bad in [
            "{{ input.items[x] }}",
            "{{ input.items[0 }}",
            "{{ input.items[] }}",
        ] {
            assert!(parse_template(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn unknown_placeholders_are_errors_not_text() {
        for bad in [
            "{{ credentials.password }}",
            "{{ credentials }}",
            "{{ credentials.api_key.x }}",
            "{{ env.HOME }}",
            "{{ input..x }}",
            "{{ input.a b }}",
            "Bearer {{ credentials.api_key",
        ] {
            assert!(parse_template(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn url_templates_fill_only_the_path_and_query() {
        for ok in [
            "https://crm.example.com/customers/{{ input.id }}",
            "https://crm.example.com/search?q={{ input.q }}",
            "https://crm.example.com:8443/{{ input.a }}/{{ input.b }}",
            "https://crm.example.com/plain",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://{{ input.host }}/x",
            "https://api.{{ input.tenant }}.example.com/x",
            "https://crm.example.com:{{ input.port }}/x",
            "{{ input.scheme }}://crm.example.com/x",
            "https://{{ input.user }}@crm.example.com/x",
            "https://user:pw@crm.example.com/x",
            "https://crm.example.com{{ input.rest }}",
            "https://crm.example.com/?key={{ credentials.api_key }}",
            "ftp://crm.example.com/{{ input.x }}",
            "https://crm.example.com/a/../admin",
            "https://crm.example.com/a/%2E%2e/admin",
        ] {
            assert!(check_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn origins_and_credential_use_are_read_from_templates() {
        assert_eq!(
            origin("https://CRM.example.com/c/{{ input.id }}").as_deref(),
            Some("https://crm.example.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin("https://{{ input.host }}/"), None);
        assert!(uses_credentials("Bearer {{ credentials.api_key }}"));
        assert!(!uses_credentials("{{ input.action }}"));
    }

    #[test]
    fn filled_dot_segments_are_refused() {
        assert!(check_filled_path("https://x.example.com/items/..").is_err());
        assert!(check_filled_path("https://x.example.com/items/./y").is_err());
        assert!(check_filled_path("https://x.example.com/items/..x?q=..").is_ok());
        assert!(check_filled_path("https://x.example.com/items?next=../..").is_ok());
    }

    #[test]
    fn secret_headers_take_their_whole_value_from_credentials() {
        for (name, ok) in [
            ("Authorization", "Bearer {{ credentials.api_key }}"),
            ("X-Api-Key", "{{ credentials.api_key }}"),
            ("X-Auth-Token", "Token {{ credentials.access_token }}"),
            ("X-Action", "{{ input.action }}"),
            ("X-Client", "{{ credentials.client_id }}"),
            ("Cookie", "session={{ credentials.api_key }}"),
        ] {
            assert!(check_header(name, ok).is_ok(), "{name}: {ok}");
        }
        for (name, bad) in [
            ("Authorization", "Bearer sk-literal-secret"),
            ("X-Session-Token", "abc123"),
            ("Authorization", "Bearer {{ input.token }}"),
            ("Authorization", "Bearer sk-x {{ credentials.api_key }}"),
            ("Cookie", "id={{ credentials.api_key }}; other=1"),
            ("Host", "evil.example.com"),
            ("Transfer-Encoding", "chunked"),
        ] {
            assert!(
                check_header(name, bad).is_err(),
                "{name}: {bad} should be refused"
            );
        }
    }
}
