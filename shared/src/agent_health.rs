//! Agent health, derived from heartbeats: an agent is `healthy` until it has missed
//! [`DEGRADED_AFTER_MISSED`] heartbeat intervals, `degraded` until it has missed
//! [`UNHEALTHY_AFTER_MISSED`], and `unhealthy` after that. An agent that never reported counts
//! from its creation. Health is never stored as a status that could go stale: it is computed
//! from the clock on every read, and the instants at which it changes are stored so that an
//! index can answer "which agents are degraded now".

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Missed intervals after which an agent is degraded.
pub const DEGRADED_AFTER_MISSED: i32 = 2;
/// Missed intervals after which an agent is unhealthy.
pub const UNHEALTHY_AFTER_MISSED: i32 = 5;

/// An agent's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Reported within the last two intervals.
    Healthy,
    /// Missed two intervals.
    Degraded,
    /// Missed five intervals.
    Unhealthy,
}

impl HealthStatus {
    /// The status as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Parses `healthy`, `degraded` or `unhealthy`.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "healthy" => Some(Self::Healthy),
            "degraded" => Some(Self::Degraded),
            "unhealthy" => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The instants at which an agent's health changes if it stops reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthWindow {
    /// From this instant on, the agent is degraded.
    pub degraded_at: DateTime<Utc>,
    /// From this instant on, the agent is unhealthy.
    pub unhealthy_at: DateTime<Utc>,
}

impl HealthWindow {
    /// The window after a report (or creation) at `last` with a heartbeat every
    /// `interval_seconds`.
    pub fn after(last: DateTime<Utc>, interval_seconds: u32) -> Self {
        let interval = Duration::seconds(i64::from(interval_seconds));
        Self {
            degraded_at: last + interval * DEGRADED_AFTER_MISSED,
            unhealthy_at: last + interval * UNHEALTHY_AFTER_MISSED,
        }
    }

    /// The health at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> HealthStatus {
        if now < self.degraded_at {
            HealthStatus::Healthy
        } else if now < self.unhealthy_at {
            HealthStatus::Degraded
        } else {
            HealthStatus::Unhealthy
        }
    }
}

/// The health at `now` of an agent that last reported (or was created) at `last`.
pub fn health_at(last: DateTime<Utc>, interval_seconds: u32, now: DateTime<Utc>) -> HealthStatus {
    HealthWindow::after(last, interval_seconds).status_at(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn an_agent_is_healthy_until_two_intervals_are_missed() {
        assert_eq!(health_at(at(0), 30, at(0)), HealthStatus::Healthy);
        assert_eq!(health_at(at(0), 30, at(59)), HealthStatus::Healthy);
        assert_eq!(health_at(at(0), 30, at(60)), HealthStatus::Degraded);
    }

    #[test]
    fn an_agent_is_unhealthy_from_five_missed_intervals_on() {
        assert_eq!(health_at(at(0), 30, at(149)), HealthStatus::Degraded);
        assert_eq!(health_at(at(0), 30, at(150)), HealthStatus::Unhealthy);
        assert_eq!(health_at(at(0), 30, at(86_400)), HealthStatus::Unhealthy);
    }

    #[test]
    fn the_interval_scales_the_window() {
        let window = HealthWindow::after(at(0), 3600);
        assert_eq!(window.degraded_at, at(7200));
        assert_eq!(window.unhealthy_at, at(18_000));
        assert_eq!(window.status_at(at(7199)), HealthStatus::Healthy);
        assert_eq!(health_at(at(0), 5, at(10)), HealthStatus::Degraded);
    }

    #[test]
    fn a_report_in_the_future_counts_as_healthy() {
        assert_eq!(health_at(at(100), 30, at(0)), HealthStatus::Healthy);
    }

    #[test]
    fn statuses_parse_from_their_api_names() {
        for status in [
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Unhealthy,
        ] {
            assert_eq!(HealthStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(HealthStatus::parse("Healthy"), None);
    }
}
