//! What one tick does with a due cron schedule, decided without I/O so every rule is tested
//! on its own:
//!
//! - slots from `next_run_at` that are older than the catch-up window are `skipped_missed`;
//! - the slots inside the window collapse into **one** fire of the latest slot, the others
//!   recorded `collapsed`;
//! - that fire starts unless the previous run is unfinished: then `skip` records it
//!   `skipped_overlap`, `buffer_one` keeps it `buffered` (one at most) and `allow` starts it
//!   anyway;
//! - a buffered fire starts at the first tick that finds the previous run ended. While one
//!   waits, the schedule stays due (its `due_at` is when it was buffered), so each tick looks
//!   at it; a look that changes nothing writes nothing.
//!
//! Everything is bounded, whatever the outage: the earliest [`MAX_MISSED_RECORDS`] missed
//! slots and the earliest [`MAX_COLLAPSED_RECORDS`] collapsed ones are recorded, so a claim
//! fits one DynamoDB transaction and a year offline is not a year of writes.

use chrono::{DateTime, Duration, Utc};

use super::{CronSpec, Fire, FireOutcome, OverlapPolicy, Schedule};

/// Most `skipped_missed` fires one tick records for one schedule.
pub const MAX_MISSED_RECORDS: usize = 40;
/// Most `collapsed` fires one tick records for one schedule.
pub const MAX_COLLAPSED_RECORDS: usize = 40;

/// What a tick writes and starts for one schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// New fire records, written with the claim.
    pub records: Vec<Fire>,
    /// The buffered fire released now: its record goes from `buffered` to `pending`.
    pub released: Option<DateTime<Utc>>,
    /// The slots to start now, in order.
    pub dispatch: Vec<DateTime<Utc>>,
    /// The schedule's next slot after now.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The fire left buffered.
    pub buffered: Option<DateTime<Utc>>,
    /// When the tick should look again.
    pub due_at: Option<DateTime<Utc>>,
}

impl Plan {
    /// Whether the plan changes nothing (a buffered fire still waiting): no write needed.
    pub fn is_idle(&self, schedule: &Schedule) -> bool {
        self.records.is_empty()
            && self.dispatch.is_empty()
            && self.released.is_none()
            && self.buffered == schedule.buffered
            && self.next_run_at == schedule.next_run_at
    }
}

/// The plan for `schedule` (a due cron schedule evaluated by `spec`) at `now`;
/// `previous_unfinished`: its last run has not ended, or the last fire sent to be started
/// has no outcome yet.
pub fn plan(
    schedule: &Schedule,
    spec: &CronSpec,
    now: DateTime<Utc>,
    previous_unfinished: bool,
) -> Plan {
    let horizon = now - Duration::seconds(i64::from(schedule.catchup_window_seconds));
    let next_run_at = spec.next_after(now, false);
    let mut records = Vec::new();
    let Some(first) = schedule.next_run_at.filter(|at| *at <= now) else {
        return decide(
            schedule,
            now,
            previous_unfinished,
            records,
            None,
            next_run_at,
        );
    };
    let mut cursor = Some(first);
    while let Some(at) = cursor.filter(|at| *at < horizon) {
        if records.len() == MAX_MISSED_RECORDS {
            break;
        }
        records.push(Fire::new(schedule.id, at, FireOutcome::SkippedMissed, now));
        cursor = spec.next_after(at, false);
    }
    let candidate = spec
        .last_until(now)
        .filter(|at| *at >= first && *at >= horizon);
    if let Some(latest) = candidate {
        let folded = format!(
            "collapsed into the catch-up fire of {}",
            crate::domain::ts::format(&latest)
        );
        let mut cursor = spec.next_after(first.max(horizon), true);
        while let Some(at) = cursor.filter(|at| *at < latest) {
            if records.len() == MAX_MISSED_RECORDS + MAX_COLLAPSED_RECORDS {
                break;
            }
            records.push(
                Fire::new(schedule.id, at, FireOutcome::Collapsed, now).because(folded.clone()),
            );
            cursor = spec.next_after(at, false);
        }
    }
    decide(
        schedule,
        now,
        previous_unfinished,
        records,
        candidate,
        next_run_at,
    )
}

/// Adds the overlap decision about `candidate` (the slot to start, if any) to `records`.
fn decide(
    schedule: &Schedule,
    now: DateTime<Utc>,
    previous_unfinished: bool,
    mut records: Vec<Fire>,
    candidate: Option<DateTime<Utc>>,
    next_run_at: Option<DateTime<Utc>>,
) -> Plan {
    let mut buffered = schedule.buffered;
    let mut dispatch = Vec::new();
    let released = if previous_unfinished {
        None
    } else {
        buffered.take()
    };
    dispatch.extend(released);
    if let Some(at) = candidate {
        let busy = previous_unfinished || released.is_some();
        let outcome = match schedule.overlap_policy {
            OverlapPolicy::Allow => None,
            OverlapPolicy::Skip if previous_unfinished => Some(FireOutcome::SkippedOverlap),
            OverlapPolicy::Skip => None,
            OverlapPolicy::BufferOne if busy && buffered.is_none() => {
                buffered = Some(at);
                Some(FireOutcome::Buffered)
            }
            OverlapPolicy::BufferOne if busy => Some(FireOutcome::SkippedOverlap),
            OverlapPolicy::BufferOne => None,
        };
        match outcome {
            Some(outcome) => records.push(Fire::new(schedule.id, at, outcome, now)),
            None => {
                records.push(Fire::new(schedule.id, at, FireOutcome::Pending, now));
                dispatch.push(at);
            }
        }
    }
    Plan {
        records,
        released,
        dispatch,
        next_run_at,
        due_at: if buffered.is_some() {
            Some(now)
        } else {
            next_run_at
        },
        buffered,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::domain::Env;
    use crate::schedule::{parse_timezone, ScheduleStatus, ScheduleType};

    fn utc(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn every_minute(next: &str, policy: OverlapPolicy) -> (Schedule, CronSpec) {
        let now = utc(next);
        let schedule = Schedule {
            id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            name: "s".into(),
            kind: ScheduleType::Cron,
            expression: "* * * * *".into(),
            timezone: "UTC".into(),
            target_workflow_id: Uuid::now_v7(),
            workflow_version: None,
            agent_id: Uuid::now_v7(),
            env: Env::Dev,
            input: json!({}),
            metadata: json!({}),
            status: ScheduleStatus::Active,
            overlap_policy: policy,
            catchup_window_seconds: 300,
            next_run_at: Some(now),
            due_at: Some(now),
            buffered: None,
            in_flight: None,
            claimed_at: None,
            last_run_at: None,
            last_run_id: None,
            owner_user_id: Uuid::now_v7(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let spec = CronSpec::parse("* * * * *", parse_timezone("UTC").unwrap()).unwrap();
        (schedule, spec)
    }

    fn outcomes(plan: &Plan) -> Vec<(String, FireOutcome)> {
        plan.records
            .iter()
            .map(|f| {
                (
                    crate::domain::ts::format(&f.nominal_time)[11..16].to_owned(),
                    f.outcome,
                )
            })
            .collect()
    }

    #[test]
    fn a_due_slot_is_started_and_the_next_one_follows() {
        let (schedule, spec) = every_minute("2027-01-01T10:00:00Z", OverlapPolicy::Skip);
        let plan = plan(&schedule, &spec, utc("2027-01-01T10:00:20Z"), false);
        assert_eq!(plan.dispatch, [utc("2027-01-01T10:00:00Z")]);
        assert_eq!(outcomes(&plan), [("10:00".into(), FireOutcome::Pending)]);
        assert_eq!(plan.next_run_at, Some(utc("2027-01-01T10:01:00Z")));
        assert_eq!(plan.due_at, plan.next_run_at);
    }

    #[test]
    fn after_an_outage_old_slots_are_missed_and_recent_ones_collapse_into_one_run() {
        let (schedule, spec) = every_minute("2027-01-01T10:00:00Z", OverlapPolicy::Skip);
        // Down from 10:00 to 10:07:30 with a 300 s window: 10:00–10:02 are missed,
        // 10:03–10:07 collapse into one fire of 10:07.
        let plan = plan(&schedule, &spec, utc("2027-01-01T10:07:30Z"), false);
        assert_eq!(plan.dispatch, [utc("2027-01-01T10:07:00Z")]);
        let outcomes = outcomes(&plan);
        let missed = outcomes
            .iter()
            .filter(|(_, o)| *o == FireOutcome::SkippedMissed)
            .count();
        let collapsed = outcomes
            .iter()
            .filter(|(_, o)| *o == FireOutcome::Collapsed)
            .count();
        assert_eq!((missed, collapsed), (3, 4));
        assert_eq!(plan.next_run_at, Some(utc("2027-01-01T10:08:00Z")));
    }

    #[test]
    fn skip_records_an_overlapping_fire_and_starts_nothing() {
        let (schedule, spec) = every_minute("2027-01-01T10:00:00Z", OverlapPolicy::Skip);
        let plan = plan(&schedule, &spec, utc("2027-01-01T10:00:05Z"), true);
        assert!(plan.dispatch.is_empty());
        assert_eq!(
            outcomes(&plan),
            [("10:00".into(), FireOutcome::SkippedOverlap)]
        );
    }

    #[test]
    fn allow_starts_every_fire() {
        let (schedule, spec) = every_minute("2027-01-01T10:00:00Z", OverlapPolicy::Allow);
        let plan = plan(&schedule, &spec, utc("2027-01-01T10:00:05Z"), true);
        assert_eq!(plan.dispatch.len(), 1);
    }

    #[test]
    fn buffer_one_keeps_one_fire_and_releases_it_when_the_run_ends() {
        let (mut schedule, spec) = every_minute("2027-01-01T10:00:00Z", OverlapPolicy::BufferOne);
        let first = plan(&schedule, &spec, utc("2027-01-01T10:00:05Z"), true);
        assert!(first.dispatch.is_empty());
        assert_eq!(first.buffered, Some(utc("2027-01-01T10:00:00Z")));
        assert_eq!(first.due_at, Some(utc("2027-01-01T10:00:05Z")));
        schedule.buffered = first.buffered;
        schedule.next_run_at = first.next_run_at;
        // Still running at the next slot: the second fire is skipped, the first kept.
        let second = plan(&schedule, &spec, utc("2027-01-01T10:01:05Z"), true);
        assert_eq!(
            outcomes(&second),
            [("10:01".into(), FireOutcome::SkippedOverlap)]
        );
        assert_eq!(second.buffered, Some(utc("2027-01-01T10:00:00Z")));
        schedule.next_run_at = second.next_run_at;
        // A look while it still runs and no slot is due changes nothing.
        let idle = plan(&schedule, &spec, utc("2027-01-01T10:01:30Z"), true);
        assert!(idle.is_idle(&schedule));
        // The run ended: the buffered fire starts.
        let released = plan(&schedule, &spec, utc("2027-01-01T10:01:40Z"), false);
        assert_eq!(released.dispatch, [utc("2027-01-01T10:00:00Z")]);
        assert_eq!(released.released, Some(utc("2027-01-01T10:00:00Z")));
        assert_eq!(released.buffered, None);
        assert_eq!(released.due_at, Some(utc("2027-01-01T10:02:00Z")));
    }

    #[test]
    fn an_outage_of_a_year_records_a_bounded_number_of_fires_and_still_catches_up() {
        let (schedule, spec) = every_minute("2026-01-01T00:00:00Z", OverlapPolicy::Skip);
        let plan = plan(&schedule, &spec, utc("2027-01-01T00:00:30Z"), false);
        assert_eq!(
            plan.records.len(),
            MAX_MISSED_RECORDS + MAX_COLLAPSED_RECORDS.min(4) + 1
        );
        assert_eq!(plan.dispatch, [utc("2027-01-01T00:00:00Z")]);
        assert_eq!(plan.next_run_at, Some(utc("2027-01-01T00:01:00Z")));
    }
}
