//! The step outputs a slice's templates and expressions see (`steps.<id>.output`): read from
//! the step records when the slice starts, stored payloads fetched back from S3 within the
//! slice's in-memory cap, and each loop's `outputs` assembled from its iterations' records
//! (a loop's own record keeps only `{"iterations": n}`).

use std::collections::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};

use super::run::{Engine, Slice};
use crate::run::{StepRecord, StepStatus};

/// Stored payloads fetched at once when a slice starts.
const PARALLEL_LOADS: usize = 8;

impl Engine {
    /// Fetches back the stored responses of the succeeded records in `records` (the only
    /// ones a later step reads) and returns the bytes they take. If they need more than the
    /// slice's cap (`PAYLOAD_SLICE_CAP_BYTES`), none is fetched: the slice's next step to run
    /// fails instead ([`Engine::over_cap`]).
    pub(super) async fn load_outputs(
        &self,
        records: &mut BTreeMap<String, StepRecord>,
    ) -> anyhow::Result<u64> {
        let wanted: Vec<_> = records
            .iter()
            .filter(|(_, r)| r.status == StepStatus::Succeeded && r.response.is_none())
            .filter_map(|(sk, r)| r.response_ref.clone().map(|stored| (sk.clone(), stored)))
            .collect();
        let needed = wanted.iter().map(|(_, stored)| stored.size).sum();
        if needed > self.state.config.payload_slice_cap {
            return Ok(needed);
        }
        let payloads = &self.state.payloads;
        let loaded: Vec<(String, Value)> = futures_util::stream::iter(wanted)
            .map(|(sk, stored)| async move {
                Ok::<_, anyhow::Error>((sk, payloads.load(&stored).await?))
            })
            .buffer_unordered(PARALLEL_LOADS)
            .try_collect()
            .await?;
        for (sk, value) in loaded {
            if let Some(record) = records.get_mut(&sk) {
                record.response = Some(value);
            }
        }
        Ok(needed)
    }

    /// Why no step may run in this slice: the stored outputs it holds (or would need) pass
    /// the cap.
    pub(super) fn over_cap(&self, slice: &Slice<'_>) -> Option<String> {
        let cap = self.state.config.payload_slice_cap;
        (slice.held > cap).then(|| {
            format!(
                "earlier steps' outputs kept in S3 take {} bytes, more than the {cap} bytes \
                 (PAYLOAD_SLICE_CAP_BYTES) a run may hold in memory for its templates",
                slice.held
            )
        })
    }
}

/// What `steps.<id>` shows for a step that ended `status` with `output`.
pub(super) fn output_view(output: Value, status: StepStatus) -> Value {
    json!({"output": output, "status": status})
}

/// A loop's output: its iteration count and every iteration's output, in order.
pub(super) fn loop_output(iterations: u32, outputs: Vec<Value>) -> Value {
    json!({"iterations": iterations, "outputs": outputs})
}

/// `steps.<id>` of every top-level record that succeeded or was skipped, from `records`
/// keyed (and so ordered) by sort key.
pub(super) fn step_outputs(records: &BTreeMap<String, StepRecord>) -> Map<String, Value> {
    let mut outputs = Map::new();
    for (sk, record) in records.iter().filter(|(_, r)| r.iteration.is_none()) {
        if !matches!(record.status, StepStatus::Succeeded | StepStatus::Skipped) {
            continue;
        }
        let response = record.response.clone().unwrap_or(Value::Null);
        let count = response.get("iterations").and_then(Value::as_u64);
        let output = match count {
            Some(count) if record.kind == "loop" && response.get("outputs").is_none() => {
                let iterations: Vec<Value> = records
                    .range::<String, _>((
                        std::ops::Bound::Excluded(sk.clone()),
                        std::ops::Bound::Unbounded,
                    ))
                    .map(|(_, r)| r)
                    .take_while(|r| r.idx == record.idx && r.iteration.is_some())
                    .filter(|r| r.iteration.is_some_and(|i| u64::from(i) < count))
                    .map(|r| r.response.clone().unwrap_or(Value::Null))
                    .collect();
                loop_output(u32::try_from(count).unwrap_or(u32::MAX), iterations)
            }
            _ => response,
        };
        outputs.insert(record.step_id.clone(), output_view(output, record.status));
    }
    outputs
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn record(idx: u32, iteration: Option<u32>, kind: &str, response: Value) -> StepRecord {
        let id = if idx == 0 { "each" } else { "after" };
        StepRecord {
            status: StepStatus::Succeeded,
            response: Some(response),
            ..StepRecord::claim(
                Uuid::nil(),
                idx,
                iteration,
                id,
                kind,
                Utc::now(),
                Utc::now(),
                0,
            )
        }
    }

    #[test]
    fn a_loop_shows_its_iterations_outputs_assembled_from_their_records() {
        let records: BTreeMap<String, StepRecord> = [
            record(0, None, "loop", json!({"iterations": 2})),
            record(0, Some(1), "tool", json!("b")),
            record(0, Some(0), "tool", json!("a")),
            record(1, None, "tool", json!({"iterations": 7})),
        ]
        .into_iter()
        .map(|r| (r.sk(), r))
        .collect();
        let outputs = step_outputs(&records);
        assert_eq!(
            outputs["each"]["output"],
            json!({"iterations": 2, "outputs": ["a", "b"]})
        );
        assert_eq!(outputs["after"]["output"], json!({"iterations": 7}));
    }
}
