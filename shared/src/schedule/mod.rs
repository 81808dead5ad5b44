//! Schedules: what starts runs without a person asking. This module owns the record, its
//! enums, cron evaluation in a time zone ([`cron`]) and the pure decision of what one tick
//! does with a due schedule ([`plan`]); the store, the use cases and the scheduler
//! ([`crate::scheduler`]) act on it.
//!
//! A fire is identified by `(schedule id, nominal time)`: the slot the expression names,
//! whatever instant it was claimed at.

pub mod cron;
pub mod plan;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{json_text, ts, Env};

pub use cron::{parse_timezone, CronSpec, FireTime};

/// Default of [`Schedule::catchup_window_seconds`]: 5 minutes.
pub const DEFAULT_CATCHUP_WINDOW_SECONDS: u32 = 300;
/// Largest [`Schedule::catchup_window_seconds`]: 7 days.
pub const MAX_CATCHUP_WINDOW_SECONDS: u32 = 7 * 24 * 3600;

/// How long a fire sent to be started counts as unfinished without an outcome (its message
/// may have been lost): after that, overlap is judged by the last run alone.
pub const IN_FLIGHT_TIMEOUT: chrono::Duration = chrono::Duration::minutes(15);

/// What fires a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleType {
    /// A cron expression in a time zone.
    Cron,
    /// A signed inbound HTTP call.
    Webhook,
    /// An event on the bus matching a pattern.
    Event,
}

impl ScheduleType {
    /// Parses `cron`, `webhook` or `event`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "cron" => Ok(Self::Cron),
            "webhook" => Ok(Self::Webhook),
            "event" => Ok(Self::Event),
            _ => Err("must be one of cron, webhook, event".to_owned()),
        }
    }

    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cron => "cron",
            Self::Webhook => "webhook",
            Self::Event => "event",
        }
    }
}

/// Whether a schedule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleStatus {
    /// It fires.
    Active,
    /// It records nothing and starts nothing; resuming starts from the next slot after now.
    Paused,
}

impl ScheduleStatus {
    /// Parses `active` or `paused`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "active" => Ok(Self::Active),
            "paused" => Ok(Self::Paused),
            _ => Err("must be one of active, paused".to_owned()),
        }
    }

    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
        }
    }
}

/// What a fire does while the schedule's previous run is unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Records the fire `skipped_overlap` and starts nothing.
    Skip,
    /// Keeps one fire `buffered` and starts it once the previous run ends; further fires
    /// meanwhile are `skipped_overlap`.
    BufferOne,
    /// Starts every fire.
    Allow,
}

impl OverlapPolicy {
    /// Parses `skip`, `buffer_one` or `allow`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "skip" => Ok(Self::Skip),
            "buffer_one" => Ok(Self::BufferOne),
            "allow" => Ok(Self::Allow),
            _ => Err("must be one of skip, buffer_one, allow".to_owned()),
        }
    }
}

/// A schedule, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    /// Schedule id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Display name.
    pub name: String,
    /// What fires it.
    #[serde(rename = "type")]
    pub kind: ScheduleType,
    /// For `cron`, the five-field expression.
    pub expression: String,
    /// IANA time zone the expression is evaluated in.
    pub timezone: String,
    /// The workflow its runs run.
    pub target_workflow_id: Uuid,
    /// The version its runs use; `None`: the workflow's current version at fire time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_version: Option<u64>,
    /// The agent of its runs.
    pub agent_id: Uuid,
    /// The environment of its runs.
    pub env: Env,
    /// The input of its runs (an object); `input.event` is added at fire time.
    #[serde(with = "json_text")]
    pub input: Value,
    /// Free-form metadata, an object.
    #[serde(with = "json_text")]
    pub metadata: Value,
    /// Whether it fires.
    pub status: ScheduleStatus,
    /// What a fire does while the previous run is unfinished.
    pub overlap_policy: OverlapPolicy,
    /// Slots older than this when found are `skipped_missed`; those within collapse into one
    /// catch-up run.
    pub catchup_window_seconds: u32,
    /// The next slot, while active.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<DateTime<Utc>>,
    /// When the tick should look at it next: `next_run_at`, or the time a fire was buffered
    /// while one waits. Absent while paused; it keys the due index.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// The slot of the buffered fire, under `buffer_one`.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub buffered: Option<DateTime<Utc>>,
    /// The slot of the fire sent to be started whose outcome is not recorded yet.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<DateTime<Utc>>,
    /// When the fire in flight was claimed: one without an outcome for
    /// [`IN_FLIGHT_TIMEOUT`] no longer holds back the next.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<DateTime<Utc>>,
    /// When its last run was started.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<DateTime<Utc>>,
    /// Its last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<Uuid>,
    /// The user it acts as: its fires start runs with this user's current role.
    pub owner_user_id: Uuid,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change through the API.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version, bumped by every change through the API.
    pub version: u64,
}

impl Schedule {
    /// Whether a fire sent to be started at or before `now` still waits for its outcome.
    pub fn fire_in_flight(&self, now: DateTime<Utc>) -> bool {
        self.in_flight.is_some()
            && self
                .claimed_at
                .is_some_and(|claimed| claimed + IN_FLIGHT_TIMEOUT > now)
    }

    /// The parsed cron expression of a `cron` schedule; `None` for other types (or a stored
    /// expression that no longer parses, which validation prevents).
    pub fn cron(&self) -> Option<CronSpec> {
        if self.kind != ScheduleType::Cron {
            return None;
        }
        let tz = parse_timezone(&self.timezone).ok()?;
        CronSpec::parse(&self.expression, tz).ok()
    }
}

/// What became of a fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// Claimed and sent to be started; the outcome follows.
    Pending,
    /// Started a run (`run_id`).
    Started,
    /// Not started: the previous run was unfinished (`skip`, or a second fire under
    /// `buffer_one`).
    SkippedOverlap,
    /// Not started: found later than the catch-up window allows.
    SkippedMissed,
    /// Not started on its own: inside the catch-up window with later slots, it was folded
    /// into the one catch-up run of the latest slot.
    Collapsed,
    /// Waiting for the previous run to end (`buffer_one`).
    Buffered,
    /// Not started: the schedule's owner may not start runs in the project (`reason`).
    Denied,
}

/// One fire of a schedule, as stored and listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// The schedule.
    pub schedule_id: Uuid,
    /// The slot.
    #[serde(with = "ts")]
    pub nominal_time: DateTime<Utc>,
    /// What became of it.
    pub outcome: FireOutcome,
    /// The run it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// Why it was denied or folded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the outcome was recorded.
    #[serde(with = "ts")]
    pub recorded_at: DateTime<Utc>,
}

impl Fire {
    /// A fire of `schedule_id` at `nominal_time` with `outcome`, recorded `now`.
    pub fn new(
        schedule_id: Uuid,
        nominal_time: DateTime<Utc>,
        outcome: FireOutcome,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            schedule_id,
            nominal_time,
            outcome,
            run_id: None,
            reason: None,
            recorded_at: now,
        }
    }

    /// The same fire with a reason.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}
