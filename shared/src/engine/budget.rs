//! Deadlines: how long a worker invocation, a slice and a step may run.
//!
//! 1. A worker invocation has a [`Deadline`]: on Lambda, the invocation's own deadline minus
//!    [`SAFETY_MARGIN`] (time left to record results and answer the batch); on the dev server's
//!    polling loop, the configured invocation length (`RUN_WORKER_INVOCATION_SECONDS`, the
//!    template's worker `Timeout`).
//! 2. A slice starts steps until [`SLICE`] has passed or the deadline leaves less than
//!    [`MIN_STEP`]: a step that cannot fit is not started, and the slice ends with `continue`
//!    so the next slice runs it.
//! 3. A started step runs under a [`Budget`]: what is left of the deadline, at most
//!    [`MAX_STEP`]. Every outbound call of the step (tool, webhook, each model turn and tool
//!    call of a prompt) shares it: attempt timeouts and retries are clamped to it
//!    ([`crate::outbound::send`]).
//! 4. A step that cannot go on without waiting past its budget (a tool over its rate limit)
//!    gives its attempt back before sending anything ([`Engine::give_back`]): the slice ends
//!    with `continue`, and the next one takes the step over, even one not safe to repeat.
//!
//! [`SLICE`]: super::run::SLICE

use std::time::{Duration, Instant};

pub use crate::outbound::send::Budget;

use super::run::{Engine, Outcome, Slice, StepFlow, SLICE};
use super::steps::StepResult;
use crate::run::{LogLine, StepRecord};

/// Time kept back from a Lambda invocation's deadline to record results and answer the batch.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(10);

/// The longest budget of one step, however long the invocation has left.
pub const MAX_STEP: Duration = Duration::from_secs(120);

/// The least time a step is started with; with less left, the next slice runs it.
pub const MIN_STEP: Duration = Duration::from_secs(2);

/// When a worker invocation must have finished its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// `length` from now.
    pub fn after(length: Duration) -> Self {
        Self(Instant::now() + length)
    }

    /// A Lambda invocation's deadline (milliseconds since the Unix epoch, as the runtime's
    /// context gives it), less [`SAFETY_MARGIN`].
    pub fn of_lambda(deadline_epoch_ms: u64) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let left = Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
        Self::after(left.saturating_sub(SAFETY_MARGIN))
    }

    /// The instant itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// What is left of it (zero once it passed).
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The budget of a step started now: what is left, at most [`MAX_STEP`].
    pub fn step_budget(self) -> Budget {
        Budget::new(self.remaining().min(MAX_STEP))
    }
}

impl Slice<'_> {
    /// Whether the slice may start another step: [`SLICE`] has not passed since it began and
    /// the deadline leaves at least [`MIN_STEP`].
    pub(super) fn may_start_step(&self) -> bool {
        self.started.elapsed() < SLICE && self.deadline.remaining() >= MIN_STEP
    }
}

impl Engine {
    /// Gives a step's attempt back unsent ([`StepResult::yielded`]): its record is marked
    /// yielded with the lease ended, and the slice ends with `continue`; the next slice takes
    /// the step over.
    pub(super) async fn give_back(
        &self,
        slice: &mut Slice<'_>,
        record: StepRecord,
        result: StepResult,
    ) -> anyhow::Result<StepFlow> {
        let at = self.now();
        if !self.state.store.yield_step(&record, at).await? {
            return Ok(StepFlow::Stop(Outcome::Busy));
        }
        let lines: Vec<LogLine> = result
            .logs
            .into_iter()
            .map(|(level, message)| LogLine {
                at,
                level,
                step_id: Some(record.step_id.clone()),
                message,
            })
            .collect();
        self.state.store.note(slice.run.id, &lines).await;
        let yielded = StepRecord {
            yielded: true,
            lease_until: Some(at),
            ..record
        };
        slice.records.insert(yielded.sk(), yielded);
        Ok(StepFlow::Stop(Outcome::Continue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_budget_is_what_is_left_at_most_the_step_maximum() {
        let long = Deadline::after(Duration::from_secs(600)).step_budget();
        assert_eq!(long.total(), MAX_STEP);
        let short = Deadline::after(Duration::from_secs(5)).step_budget();
        assert!(short.total() <= Duration::from_secs(5));
        assert!(short.total() > Duration::from_secs(4));
        let past = Deadline::after(Duration::ZERO).step_budget();
        assert_eq!(past.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_lambda_deadline_keeps_the_safety_margin() {
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let deadline = Deadline::of_lambda(now_ms + 60_000);
        let left = deadline.remaining();
        assert!(
            left <= Duration::from_secs(50) && left > Duration::from_secs(48),
            "{left:?}"
        );
        assert_eq!(Deadline::of_lambda(now_ms).remaining(), Duration::ZERO);
    }
}
