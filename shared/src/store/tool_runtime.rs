//! What the engine keeps about a tool while calling it, shared by every worker: its circuit
//! breaker, its per-minute rate-limit windows and the time of its last failed call. They live
//! in the registry table under the tool's partition.
//!
//! | pk | sk | attributes |
//! |---|---|---|
//! | `TOOL#<id>` | `BREAKER` | `consecutive_failures`, `open_until` (epoch ms; absent when closed) (`ttl`) |
//! | `TOOL#<id>` | `RATE#<yyyymmddhhmm>` | `n`: calls admitted in that UTC minute (`ttl`) |
//!
//! Every change is one atomic `UpdateItem` (`ADD`, or `SET` under a condition), never a read
//! followed by a blind write, so concurrent workers cannot lose each other's updates:
//!
//! - a failed call `ADD`s one to `consecutive_failures`; the call that reaches the threshold
//!   sets `open_until` (only if the breaker is not already open);
//! - once `open_until` has passed, the breaker is half-open: the first caller to move
//!   `open_until` from the value it read to a short lease wins the single probe call, the
//!   others still see it open; the probe's success closes the breaker, its failure re-opens it;
//! - a rate window admits a call with `ADD n 1` under `attribute_not_exists(n) OR n < limit`.

use anyhow::Context;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::tools::tool_pk;
use super::{key, n, s, Store, StoreError, StoreResult};

/// Sort key of a tool's circuit breaker.
const BREAKER_SK: &str = "BREAKER";

/// How long a breaker item outlives its last change; it is recreated on the next failure, so
/// the breakers of deleted tools do not linger.
const BREAKER_RETENTION: Duration = Duration::days(7);

/// How long a rate window outlives the end of its minute.
const RATE_WINDOW_RETENTION: Duration = Duration::minutes(2);

/// A tool's circuit breaker as stored; a tool that never failed has the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerState {
    /// Failed calls since the last success.
    pub consecutive_failures: u64,
    /// While in the future, calls fail fast; once past, one probe call may go through.
    pub open_until: Option<DateTime<Utc>>,
}

/// Whether a call may go ahead, according to a breaker read at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: calls go through.
    Closed,
    /// Open until then: calls fail fast.
    Open(DateTime<Utc>),
    /// The cooldown that ended at this instant is over: one probe may go through once it is
    /// claimed with [`Store::claim_breaker_probe`].
    HalfOpen(DateTime<Utc>),
}

impl BreakerState {
    /// What a call starting at `now` may do.
    pub fn admission(&self, now: DateTime<Utc>) -> Admission {
        match self.open_until {
            None => Admission::Closed,
            Some(until) if until > now => Admission::Open(until),
            Some(until) => Admission::HalfOpen(until),
        }
    }
}

#[derive(Deserialize)]
struct BreakerItem {
    #[serde(default)]
    consecutive_failures: u64,
    #[serde(default)]
    open_until: Option<i64>,
}

/// Sort key of the rate window of the UTC minute holding `at`.
pub fn rate_sk(at: DateTime<Utc>) -> String {
    format!("RATE#{}", at.format("%Y%m%d%H%M"))
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn breaker_ttl(now: DateTime<Utc>) -> aws_sdk_dynamodb::types::AttributeValue {
    n((now + BREAKER_RETENTION).timestamp())
}

/// Whether a write failed only because its condition did not hold.
fn condition_failed(result: &StoreResult<()>) -> bool {
    matches!(result, Err(StoreError::ConditionFailed))
}

impl Store {
    /// The circuit breaker of tool `id` (a consistent read).
    pub async fn tool_breaker(&self, id: Uuid) -> StoreResult<BreakerState> {
        let stored: Option<BreakerItem> = self
            .get_record(
                &self.registry_table,
                key(tool_pk(id), BREAKER_SK),
                "a tool's circuit breaker",
            )
            .await?;
        Ok(
            stored.map_or_else(BreakerState::default, |item| BreakerState {
                consecutive_failures: item.consecutive_failures,
                open_until: item.open_until.and_then(from_millis),
            }),
        )
    }

    /// Claims the single probe of a half-open breaker: moves `open_until` from `expired`
    /// (the value the caller read) to `lease_until`, so other callers see it open while the
    /// probe runs and a probe whose worker died is replaced once the lease passes. `false`
    /// if another caller claimed it first or the breaker changed meanwhile.
    pub async fn claim_breaker_probe(
        &self,
        id: Uuid,
        expired: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let claimed = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), BREAKER_SK)))
            .update_expression("SET open_until = :lease, #ttl = :ttl")
            .condition_expression("open_until = :expired")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":lease", n(millis(lease_until)))
            .expression_attribute_values(":expired", n(millis(expired)))
            .expression_attribute_values(":ttl", breaker_ttl(now))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| super::write_error(e, "claim a circuit breaker probe"));
        match claimed {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Records a call the tool answered. After the probe holding `probe_lease`, this closes
    /// the breaker; after any other call, it resets a non-zero failure count unless the
    /// breaker opened meanwhile (a call that started earlier does not close it). Returns
    /// whether anything changed.
    pub async fn record_breaker_success(
        &self,
        id: Uuid,
        probe_lease: Option<DateTime<Utc>>,
    ) -> StoreResult<bool> {
        let update = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), BREAKER_SK)))
            .expression_attribute_values(":zero", n(0));
        let update = match probe_lease {
            Some(lease) => update
                .update_expression("SET consecutive_failures = :zero REMOVE open_until")
                .condition_expression("open_until = :lease")
                .expression_attribute_values(":lease", n(millis(lease))),
            None => update
                .update_expression("SET consecutive_failures = :zero")
                .condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(open_until) \
                     AND consecutive_failures > :zero",
                ),
        };
        let result = update
            .send()
            .await
            .map(|_| ())
            .map_err(|e| super::write_error(e, "close a circuit breaker"));
        if condition_failed(&result) {
            return Ok(false);
        }
        result.map(|()| true)
    }

    /// Records a failed call. A failed probe (holding `probe_lease`) re-opens the breaker
    /// until `open_until`; any other failure counts one more and, when the count reaches
    /// `threshold`, opens the breaker until `open_until` unless it is open already. Returns
    /// whether this call opened it.
    pub async fn record_breaker_failure(
        &self,
        id: Uuid,
        threshold: u64,
        open_until: DateTime<Utc>,
        probe_lease: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        if let Some(lease) = probe_lease {
            let reopened = self
                .ddb
                .update_item()
                .table_name(&self.registry_table)
                .set_key(Some(key(tool_pk(id), BREAKER_SK)))
                .update_expression(
                    "SET open_until = :until, #ttl = :ttl ADD consecutive_failures :one",
                )
                .condition_expression("open_until = :lease")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":until", n(millis(open_until)))
                .expression_attribute_values(":lease", n(millis(lease)))
                .expression_attribute_values(":ttl", breaker_ttl(now))
                .expression_attribute_values(":one", n(1))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| super::write_error(e, "re-open a circuit breaker"));
            // A probe that outlived its lease lost it to another probe: count it like any
            // other failure.
            if !condition_failed(&reopened) {
                return reopened.map(|()| true);
            }
        }
        let counted = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), BREAKER_SK)))
            .update_expression("SET #ttl = :ttl ADD consecutive_failures :one")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":ttl", breaker_ttl(now))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .context("Failed to count a failed tool call")?;
        let failures = counted
            .attributes
            .as_ref()
            .and_then(|a| a.get("consecutive_failures"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_default();
        if failures < threshold {
            return Ok(false);
        }
        let opened = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), BREAKER_SK)))
            .update_expression("SET open_until = :until")
            .condition_expression("attribute_not_exists(open_until) OR open_until <= :now")
            .expression_attribute_values(":until", n(millis(open_until)))
            .expression_attribute_values(":now", n(millis(now)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| super::write_error(e, "open a circuit breaker"));
        if condition_failed(&opened) {
            return Ok(false);
        }
        opened.map(|()| true)
    }

    /// Admits one call of tool `id` in the UTC minute of `now` if fewer than `limit` were
    /// admitted in it; `false` when the limit is reached. Windows expire two minutes after
    /// their minute ends.
    pub async fn take_rate_slot(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<bool> {
        let minute_end = now.timestamp() - now.timestamp().rem_euclid(60) + 60;
        let taken = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), rate_sk(now))))
            .update_expression("SET #ttl = :ttl ADD #n :one")
            .condition_expression("attribute_not_exists(#n) OR #n < :limit")
            .expression_attribute_names("#n", "n")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .expression_attribute_values(
                ":ttl",
                n(minute_end + RATE_WINDOW_RETENTION.num_seconds()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| super::write_error(e, "take a tool rate-limit slot"));
        match taken {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Sets the tool's `last_error_at`; a tool deleted meanwhile is left alone.
    pub async fn mark_tool_failed(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        let marked = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), "TOOL")))
            .update_expression("SET last_error_at = :at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", s(crate::domain::ts::format(&at)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| super::write_error(e, "record a tool's last error"));
        if condition_failed(&marked) {
            return Ok(());
        }
        marked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn rate_windows_are_utc_minutes() {
        assert_eq!(rate_sk(at("2025-03-04T05:06:59.999Z")), "RATE#202503040506");
        assert_eq!(rate_sk(at("2025-03-04T05:07:00Z")), "RATE#202503040507");
    }

    #[test]
    fn a_breaker_is_open_until_its_cooldown_ends_then_half_open() {
        let now = at("2025-03-04T05:06:00Z");
        assert_eq!(BreakerState::default().admission(now), Admission::Closed);
        let until = now + Duration::seconds(30);
        let open = BreakerState {
            consecutive_failures: 5,
            open_until: Some(until),
        };
        assert_eq!(open.admission(now), Admission::Open(until));
        assert_eq!(open.admission(until), Admission::HalfOpen(until));
    }
}
