//! Attempt counters in fixed windows, in the auth table: the brakes on password guessing and
//! mass sign-up.
//!
//! An attempt is *reserved* before the work it guards (an Argon2 verification, a registration)
//! with a conditional write, so parallel requests can never pass more attempts than the limit:
//!
//! 1. Inside an open window with room left, `attempts` grows by one (`ADD` under the condition
//!    `attempts < limit`).
//! 2. With no open window, a new one opens with one attempt (a put under the condition that
//!    no open window exists).
//! 3. Otherwise the window is full: the caller is refused until it closes. Losing a race in
//!    step 2 to another request that opened the window goes back to step 1.
//!
//! The item expires through `ttl` when its window closes.

use anyhow::Context;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::expr::{Apply, Changes};
use super::{item, key, n, s, Store, StoreError, StoreResult};
use crate::domain::{ts, Email};

/// What a counter counts.
#[derive(Clone, Copy, Debug)]
pub enum Bucket<'a> {
    /// Password checks of one account (logins, account deletion, password changes).
    Password(&'a Email),
    /// Logins from one source address.
    LoginFrom(&'a str),
    /// Registrations from one source address.
    RegisterFrom(&'a str),
}

impl Bucket<'_> {
    fn pk(&self) -> String {
        match self {
            Self::Password(email) => format!("LOGIN#{email}"),
            Self::LoginFrom(address) => format!("LOGINADDR#{address}"),
            Self::RegisterFrom(address) => format!("REGISTERADDR#{address}"),
        }
    }
}

const SK: &str = "THROTTLE";

/// A counter's window.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Window {
    /// Attempts reserved in this window; absent in windows written before reservations
    /// existed, which are replaced as if closed.
    #[serde(default)]
    attempts: Option<u32>,
    /// When the window opened.
    #[serde(with = "ts")]
    window_start: DateTime<Utc>,
}

/// An attempt that was let through, which [`Store::release_attempt`] can give back.
#[derive(Clone, Debug)]
pub struct Reserved {
    pk: String,
    window_start: DateTime<Utc>,
}

/// The answer to a reservation.
#[derive(Clone, Debug)]
pub enum Reservation {
    /// The attempt may go ahead.
    Granted(Reserved),
    /// The window is full; it closes in this many seconds (at least 1).
    Refused {
        /// Seconds until the window closes.
        retry_after_secs: u64,
    },
}

/// How many times a reservation goes round the protocol when it keeps losing races.
const ROUNDS: usize = 3;

impl Store {
    /// Reserves one attempt of `bucket`, at most `limit` per `window`.
    #[tracing::instrument(skip(self), fields(bucket = ?bucket))]
    pub async fn reserve_attempt(
        &self,
        bucket: Bucket<'_>,
        limit: u32,
        window: std::time::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Reservation> {
        let window = chrono::Duration::from_std(window).context("throttle window out of range")?;
        let pk = bucket.pk();
        let cutoff = ts::format(&(now - window));
        let mut open = None;
        for _round in 0..ROUNDS {
            // 1. Count in the open window, if it has room.
            let counted = self
                .ddb
                .update_item()
                .table_name(&self.auth_table)
                .set_key(Some(key(&pk, SK)))
                .apply(
                    Changes::new()
                        .add("attempts", n(1))
                        .only_if("window_start > :cutoff AND #attempts < :limit")
                        .value(":cutoff", s(&cutoff))
                        .value(":limit", n(limit)),
                )
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match counted.map_err(|e| super::write_error(e, "reserve an attempt")) {
                Ok(out) => {
                    let counted: Window = super::record(out.attributes.unwrap_or_default())?;
                    return Ok(Reservation::Granted(Reserved {
                        window_start: counted.window_start,
                        pk,
                    }));
                }
                Err(StoreError::ConditionFailed) => {}
                Err(other) => return Err(other),
            }
            let current: Option<Window> = self
                .get_record(&self.auth_table, key(&pk, SK), "a throttle window")
                .await?;
            if let Some(current) = current {
                match current.attempts {
                    Some(attempts) if current.window_start + window > now => {
                        if attempts >= limit {
                            open = Some(current);
                            break;
                        }
                        // Another request opened this window meanwhile: count in it.
                        continue;
                    }
                    _ => {}
                }
            }
            // 2. No open window: open one holding this attempt.
            let fresh = Window {
                attempts: Some(1),
                window_start: now,
            };
            let mut fresh_item = item(&fresh, &[("pk", pk.clone()), ("sk", SK.to_owned())])?;
            fresh_item.insert("ttl".into(), n((now + window).timestamp()));
            let opened = self
                .ddb
                .put_item()
                .table_name(&self.auth_table)
                .set_item(Some(fresh_item))
                .condition_expression(
                    "attribute_not_exists(pk) OR window_start <= :cutoff OR attribute_not_exists(attempts)",
                )
                .expression_attribute_values(":cutoff", s(&cutoff))
                .send()
                .await;
            match opened.map_err(|e| super::write_error(e, "open a throttle window")) {
                Ok(_) => {
                    return Ok(Reservation::Granted(Reserved {
                        pk,
                        window_start: now,
                    }))
                }
                Err(StoreError::ConditionFailed) => {}
                Err(other) => return Err(other),
            }
        }
        let reopens = open.map_or(now, |w| w.window_start + window);
        let retry_after_secs = u64::try_from((reopens - now).num_seconds())
            .unwrap_or(0)
            .max(1);
        tracing::info!(retry_after_secs, "attempt refused by the throttle");
        Ok(Reservation::Refused { retry_after_secs })
    }

    /// Gives a reserved attempt back (a login that succeeded), if its window is still open.
    pub async fn release_attempt(&self, reserved: &Reserved) -> StoreResult<()> {
        let released = self
            .ddb
            .update_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(&reserved.pk, SK)))
            .apply(
                Changes::new()
                    .add("attempts", n(-1))
                    .only_if("window_start = :start AND #attempts > :zero")
                    .value(":zero", n(0))
                    .value(":start", s(ts::format(&reserved.window_start))),
            )
            .send()
            .await;
        match released.map_err(|e| super::write_error(e, "release an attempt")) {
            // The window closed meanwhile; nothing to give back.
            Ok(_) | Err(StoreError::ConditionFailed) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Forgets every attempt of `bucket` (a password that was right).
    pub async fn clear_attempts(&self, bucket: Bucket<'_>) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(bucket.pk(), SK)))
            .send()
            .await
            .context("Failed to clear a throttle window")?;
        Ok(())
    }
}
