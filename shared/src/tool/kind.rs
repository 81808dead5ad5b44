//! What a tool talks to ([`ToolKind`]) and how it authenticates ([`AuthType`]), spelled as
//! the API and stored records spell them.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a tool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    /// An HTTP API; `config` holds its contract.
    Http,
    /// A database.
    Db,
    /// A SaaS product's API.
    Saas,
    /// A browser.
    Browser,
    /// A search engine.
    Search,
    /// A storage service.
    Storage,
    /// Anything else.
    Custom,
}

impl ToolKind {
    /// Every kind, in documentation order.
    pub const ALL: [ToolKind; 7] = [
        Self::Http,
        Self::Db,
        Self::Saas,
        Self::Browser,
        Self::Search,
        Self::Storage,
        Self::Custom,
    ];

    /// The kind's name as used in the API and in stored records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Db => "db",
            Self::Saas => "saas",
            Self::Browser => "browser",
            Self::Search => "search",
            Self::Storage => "storage",
            Self::Custom => "custom",
        }
    }

    /// Parses a kind's name exactly as the API spells it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        one_of(raw, &Self::ALL, |k| k.as_str())
    }
}

impl fmt::Display for ToolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tool authenticates to what it talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum AuthType {
    /// OAuth 2 client credentials (and optionally a refresh token).
    #[serde(rename = "oauth")]
    OAuth,
    /// A static API key.
    #[serde(rename = "apikey")]
    ApiKey,
    /// No authentication.
    #[default]
    #[serde(rename = "none")]
    NoAuth,
}

impl AuthType {
    /// Every auth type, in documentation order.
    pub const ALL: [AuthType; 3] = [Self::OAuth, Self::ApiKey, Self::NoAuth];

    /// The auth type's name as used in the API and in stored records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuth => "oauth",
            Self::ApiKey => "apikey",
            Self::NoAuth => "none",
        }
    }

    /// Parses an auth type's name exactly as the API spells it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        one_of(raw, &Self::ALL, |a| a.as_str())
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn one_of<T: Copy>(raw: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v) == raw)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("must be one of {}", names.join(", "))
        })
}
