//! Step payloads (requests and responses) too large for a step record, kept whole in S3.
//!
//! A DynamoDB item holds at most 400 KB, and a step's request or response can be a tool's
//! multi-megabyte reply. Every payload a step record keeps goes through [`Payloads::keep`]:
//! up to [`INLINE_PAYLOAD_BYTES`] of JSON stays in the record; a larger one becomes the S3
//! object `runs/<run_id>/<sha256>.json` of the payload bucket (`PAYLOAD_BUCKET`), and the
//! record keeps a [`PayloadRef`] (key, size, SHA-256) in its place. Objects are named by
//! their content, so writing one twice (a retried attempt) is harmless. The bucket expires
//! `runs/` after [`PAYLOAD_RETENTION_DAYS`] days. Nothing is truncated.
//!
//! The engine reads stored outputs back ([`Payloads::load`], checking size and digest) when
//! a slice needs them, within its in-memory cap (`PAYLOAD_SLICE_CAP_BYTES`); the API hands
//! out presigned links ([`Payloads::link`]) valid for [`LINK_TTL`].

use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::tokens::digest;
use crate::config::Config;

/// Largest payload a step record keeps inline, in bytes of JSON text: two of them (request
/// and response) leave a record far below DynamoDB's 400 KB.
pub const INLINE_PAYLOAD_BYTES: usize = 32 * 1024;

/// Days the payload bucket keeps `runs/` objects before its lifecycle rule expires them.
pub const PAYLOAD_RETENTION_DAYS: i32 = 90;

/// How long a presigned payload link works.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// Where a payload kept in S3 is, and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The object key, `runs/<run_id>/<sha256>.json`.
    pub key: String,
    /// Bytes of JSON text.
    pub size: u64,
    /// Hex SHA-256 of the JSON text.
    pub sha256: String,
}

/// A payload as a step record keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// Small enough to stay in the record.
    Inline(Value),
    /// Kept in S3; the record points to it.
    Stored(PayloadRef),
}

impl Payload {
    /// Bytes kept in S3 (0 for an inline payload).
    pub fn stored_bytes(&self) -> u64 {
        match self {
            Self::Inline(_) => 0,
            Self::Stored(stored) => stored.size,
        }
    }
}

/// A presigned GET of a stored payload.
#[derive(Clone, Debug)]
pub struct PayloadLink {
    /// The URL; plain HTTP GET, no credentials.
    pub url: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// The payload bucket.
#[derive(Clone, Debug)]
pub struct Payloads {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Payloads {
    /// The payload bucket `config` names, through `s3`.
    pub fn new(s3: aws_sdk_s3::Client, config: &Config) -> Self {
        Self {
            s3,
            bucket: config.payload_bucket.clone(),
        }
    }

    /// `value` as run `run_id`'s step record keeps it: inline if small, else stored in S3.
    pub async fn keep(&self, run_id: Uuid, value: Value) -> anyhow::Result<Payload> {
        let text = value.to_string();
        if text.len() <= INLINE_PAYLOAD_BYTES {
            return Ok(Payload::Inline(value));
        }
        let sha256 = digest(&text);
        let stored = PayloadRef {
            key: format!("runs/{run_id}/{sha256}.json"),
            size: text.len() as u64,
            sha256,
        };
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&stored.key)
            .content_type("application/json")
            .body(ByteStream::from(text.into_bytes()))
            .send()
            .await
            .with_context(|| format!("Failed to store the step payload {}", stored.key))?;
        Ok(Payload::Stored(stored))
    }

    /// The payload `stored` points to, checked against its size and digest.
    pub async fn load(&self, stored: &PayloadRef) -> anyhow::Result<Value> {
        let object = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&stored.key)
            .send()
            .await
            .with_context(|| format!("Failed to read the step payload {}", stored.key))?;
        let bytes = object
            .body
            .collect()
            .await
            .with_context(|| format!("Failed to read the step payload {}", stored.key))?
            .into_bytes();
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("the step payload {} is not UTF-8", stored.key))?;
        anyhow::ensure!(
            text.len() as u64 == stored.size && digest(text) == stored.sha256,
            "the step payload {} does not match its recorded size and SHA-256",
            stored.key
        );
        serde_json::from_str(text)
            .with_context(|| format!("the step payload {} is not JSON", stored.key))
    }

    /// A presigned GET of `stored`, valid for [`LINK_TTL`] from now.
    pub async fn link(&self, stored: &PayloadRef) -> anyhow::Result<PayloadLink> {
        let now = SystemTime::now();
        let presigning = PresigningConfig::builder()
            .start_time(now)
            .expires_in(LINK_TTL)
            .build()
            .context("Failed to configure a presigned payload link")?;
        let request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&stored.key)
            .presigned(presigning)
            .await
            .with_context(|| format!("Failed to presign the step payload {}", stored.key))?;
        Ok(PayloadLink {
            url: request.uri().to_owned(),
            expires_at: DateTime::<Utc>::from(now + LINK_TTL),
        })
    }
}
