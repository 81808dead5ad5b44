//! The `loop` step: runs its inner step once per item of `over` (or while `while` holds; both
//! are evaluated off the async executor, like decisions), each iteration claimed and recorded
//! on its own, and fails with the first failed iteration. The loop's record keeps only `{"iterations": n}`; later steps see the iterations' outputs as
//! `steps.<loop>.output.outputs`, assembled in memory ([`crate::engine::outputs`]).

use serde_json::{json, Value};

use super::StepResult;
use crate::engine::outputs::{loop_output, output_view};
use crate::engine::run::{Engine, Outcome, Slice, StepFlow};
use crate::run::{elapsed_ms, step_sk, StepRecord, StepStatus, Usage};
use crate::store::runs::StepEnd;
use crate::workflow::{Iteration, LoopConfig, LoopStep, Step, StepKind};

impl Engine {
    /// Runs a loop's iterations, each with its own record.
    pub(in crate::engine) async fn run_loop(
        &self,
        slice: &mut Slice<'_>,
        idx: u32,
        step: &Step,
        config: &LoopConfig,
        record: StepRecord,
    ) -> anyhow::Result<StepFlow> {
        let step_id = step.id.as_str();
        let items = match &config.iteration {
            Iteration::Over(expression) => match expression
                .evaluate_list_blocking(&slice.scope(None, None))
                .await
            {
                Ok(items) if items.len() > config.max_iterations as usize => {
                    let error = format!(
                        "`over` gave {} items, more than max_iterations ({})",
                        items.len(),
                        config.max_iterations
                    );
                    return self
                        .conclude(slice, step_id, record, StepResult::failed(None, error))
                        .await;
                }
                Ok(items) => Some(items),
                Err(error) => {
                    let error = format!("`over` could not be evaluated: {error}");
                    return self
                        .conclude(slice, step_id, record, StepResult::failed(None, error))
                        .await;
                }
            },
            Iteration::While(_) => None,
        };
        let kind = loop_kind(&config.step);
        let mut outputs = Vec::new();
        let mut round: u32 = 0;
        loop {
            let item = match (&items, &config.iteration) {
                (Some(items), _) => match items.get(round as usize) {
                    Some(item) => item.clone(),
                    None => break,
                },
                (None, Iteration::While(condition)) => {
                    match condition
                        .evaluate_bool_blocking(&slice.scope(None, Some(u64::from(round))))
                        .await
                    {
                        Ok(false) => break,
                        Ok(true) if round >= config.max_iterations => {
                            let error = format!(
                                "`while` still held after max_iterations ({})",
                                config.max_iterations
                            );
                            return self
                                .conclude(slice, step_id, record, StepResult::failed(None, error))
                                .await;
                        }
                        Ok(true) => json!(round),
                        Err(error) => {
                            let error = format!("`while` could not be evaluated: {error}");
                            return self
                                .conclude(slice, step_id, record, StepResult::failed(None, error))
                                .await;
                        }
                    }
                }
                (None, Iteration::Over(_)) => break,
            };
            let sk = step_sk(idx, Some(round));
            let done = slice
                .records
                .get(&sk)
                .filter(|r| r.status == StepStatus::Succeeded)
                .cloned();
            let output = match done {
                Some(done) => done.response.unwrap_or(Value::Null),
                None => {
                    if !slice.may_start_step() {
                        return Ok(StepFlow::Stop(Outcome::Continue));
                    }
                    if let Some(error) = self.over_cap(slice) {
                        return self
                            .conclude(slice, step_id, record, StepResult::failed(None, error))
                            .await;
                    }
                    let iteration =
                        self.new_record(slice, idx, Some(round), step_id, kind.type_name());
                    let iteration = match self.acquire(slice, iteration, &kind).await? {
                        Ok(iteration) => iteration,
                        Err(StepFlow::Next) => {
                            // Another attempt finished it meanwhile.
                            match slice.records.get(&sk) {
                                Some(r) if r.status == StepStatus::Succeeded => {
                                    outputs.push(r.response.clone().unwrap_or(Value::Null));
                                    round += 1;
                                    continue;
                                }
                                _ => return Ok(StepFlow::Stop(Outcome::Busy)),
                            }
                        }
                        Err(flow) => return Ok(flow),
                    };
                    let result = self
                        .with_heartbeat(
                            slice.heartbeat,
                            &iteration,
                            self.execute_kind(slice, step_id, &kind, Some(&item), &iteration),
                        )
                        .await;
                    let status = result.status;
                    let response = result.response.clone();
                    match self.conclude(slice, step_id, iteration, result).await? {
                        StepFlow::Next if status == StepStatus::Succeeded => {
                            response.unwrap_or(Value::Null)
                        }
                        StepFlow::Next => return Ok(StepFlow::Stop(Outcome::Busy)),
                        stop => {
                            if status == StepStatus::Failed {
                                // The loop fails with its iteration.
                                let error = format!("iteration {round} failed");
                                let _ = self
                                    .state
                                    .store
                                    .finish_step(
                                        &record,
                                        &StepEnd {
                                            status: StepStatus::Failed,
                                            at: self.now(),
                                            duration_ms: elapsed_ms(record.started_at, self.now()),
                                            error_message: Some(error),
                                            request: None,
                                            response: None,
                                            usage: Usage::default(),
                                        },
                                    )
                                    .await?;
                            }
                            return Ok(stop);
                        }
                    }
                }
            };
            outputs.push(output);
            round += 1;
        }
        let request = match &items {
            Some(items) => json!({"over": items}),
            None => json!({"while": true}),
        };
        // The record keeps the count; the outputs stay in the iterations' records.
        let flow = self
            .conclude(
                slice,
                step_id,
                record,
                StepResult::succeeded(request, json!({"iterations": round})),
            )
            .await?;
        if let StepFlow::Next = flow {
            slice.outputs.insert(
                step_id.to_owned(),
                output_view(loop_output(round, outputs), StepStatus::Succeeded),
            );
        }
        Ok(flow)
    }
}

fn loop_kind(step: &LoopStep) -> StepKind {
    match step {
        LoopStep::Prompt(c) => StepKind::Prompt(c.clone()),
        LoopStep::Tool(c) => StepKind::Tool(c.clone()),
        LoopStep::Webhook(c) => StepKind::Webhook(c.clone()),
        LoopStep::Human(c) => StepKind::Human(c.clone()),
    }
}
