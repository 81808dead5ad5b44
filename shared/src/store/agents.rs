//! Agents, their capability markers and their heartbeats, in the registry table (keys in
//! [`super::schema`]). An LLM API key lives in Secrets Manager, never here.
//!
//! Besides the record, an agent item carries what its indexes need: `degraded_at` and
//! `unhealthy_at` (see [`crate::agent_health`]) and `gsi3sk = <degraded_at>#<id>`, rewritten by
//! every write that moves them (create, heartbeat, a change of the interval). Each capability
//! has a marker item under the agent, indexed by project and capability, written in the same
//! transaction as the record. Heartbeats are history items that expire after a day.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::{IndexDef, GSI1, GSI2, GSI3};
use super::{cursor, item, key, n, s, Item, Page, Store, StoreResult};
use crate::agent_health::{HealthStatus, HealthWindow};
use crate::domain::{ts, Env};

/// How long a heartbeat stays in the history.
pub const HEARTBEAT_RETENTION: Duration = Duration::days(1);

/// JSON object, as stored in free-form fields.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// An agent's OpenAI-compatible endpoint; its API key is in Secrets Manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmEndpoint {
    /// Base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Whether an API key is stored for it.
    pub has_api_key: bool,
}

/// A registered agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agent {
    /// Agent id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Name.
    pub name: String,
    /// Runtime identifier, e.g. `python` or `node`.
    pub runtime: String,
    /// Model name.
    pub model: String,
    /// Tools it may call, all in the same project.
    pub tools: Vec<Uuid>,
    /// Environment.
    pub env: Env,
    /// Parallel tasks it accepts.
    pub concurrency: u32,
    /// Autoscaling settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale_config: Option<JsonObject>,
    /// Short description of its prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_summary: Option<String>,
    /// Free-form metadata.
    pub metadata: JsonObject,
    /// What it can do; unique, in the order given.
    pub capabilities: Vec<String>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Sampling temperature as decimal text (e.g. `0.7`), so it round-trips exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<String>,
    /// Completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Seconds between expected heartbeats.
    pub heartbeat_interval_seconds: u32,
    /// OpenAI-compatible endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmEndpoint>,
    /// Release (semantic version) of the agent's definition.
    pub release: String,
    /// Owning team or person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What changed in this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
    /// Whether the agent is deprecated.
    pub deprecated: bool,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Time of the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Status reported by the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<String>,
    /// Metrics of the last heartbeat that reported any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_metrics: Option<JsonObject>,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change of the definition (heartbeats do not count).
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version, bumped by every change of the definition.
    pub version: u64,
}

impl Agent {
    /// When its health changes if no heartbeat arrives: counted from the last heartbeat, or
    /// from creation if it never reported.
    pub fn health_window(&self) -> HealthWindow {
        HealthWindow::after(
            self.last_heartbeat.unwrap_or(self.created_at),
            self.heartbeat_interval_seconds,
        )
    }

    /// Its health at `now`.
    pub fn health_at(&self, now: DateTime<Utc>) -> HealthStatus {
        self.health_window().status_at(now)
    }
}

/// One heartbeat in an agent's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent.
    pub agent_id: Uuid,
    /// When it was received.
    #[serde(with = "ts")]
    pub at: DateTime<Utc>,
    /// Reported status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Reported metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<JsonObject>,
}

/// Which agents of a project a list returns; one filter at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentFilter {
    /// Every agent, oldest first.
    All,
    /// Agents of one environment, oldest first.
    Env(Env),
    /// Agents with a capability, oldest first.
    Capability(String),
    /// Agents in a health state, the ones changing state soonest first.
    Health(HealthStatus),
}

/// The marker that indexes one capability of an agent.
#[derive(Serialize, Deserialize)]
struct CapabilityMarker {
    agent_id: Uuid,
    project_id: Uuid,
    capability: String,
}

/// Partition key of an agent and its markers and heartbeats.
pub fn agent_pk(id: Uuid) -> String {
    format!("AGENT#{id}")
}

const AGENT_SK: &str = "AGENT";

fn agents_gsi(project_id: Uuid) -> String {
    format!("{}#AGENTS", super::projects::project_pk(project_id))
}

fn env_gsi(project_id: Uuid, env: Env) -> String {
    format!("{}#ENV#{env}", agents_gsi(project_id))
}

fn capability_gsi(project_id: Uuid, capability: &str) -> String {
    format!("{}#CAP#{capability}", agents_gsi(project_id))
}

fn health_gsi(project_id: Uuid) -> String {
    format!("{}#HEALTH", agents_gsi(project_id))
}

fn health_sk(window: &HealthWindow, id: Uuid) -> String {
    format!("{}#{id}", ts::format(&window.degraded_at))
}

/// The upper bound of the `gsi3sk`s whose `degraded_at` is at or before `now`: `~` sorts
/// after every character of an id, so `<now>#<id>` < `<now>#~` < `<later>#…`.
fn health_bound(now: DateTime<Utc>) -> String {
    format!("{}#~", ts::format(&now))
}

fn capability_sk(capability: &str) -> String {
    format!("CAP#{capability}")
}

fn heartbeat_sk(at: DateTime<Utc>) -> String {
    format!("BEAT#{}", ts::format(&at))
}

impl Store {
    fn agent_item(&self, agent: &Agent) -> anyhow::Result<Item> {
        let window = agent.health_window();
        let mut record = item(
            agent,
            &[
                ("pk", agent_pk(agent.id)),
                ("sk", AGENT_SK.to_owned()),
                (GSI1.pk, agents_gsi(agent.project_id)),
                (GSI1.sk, agent_pk(agent.id)),
                (GSI2.pk, env_gsi(agent.project_id, agent.env)),
                (GSI2.sk, agent_pk(agent.id)),
                (GSI3.pk, health_gsi(agent.project_id)),
                (GSI3.sk, health_sk(&window, agent.id)),
            ],
        )?;
        record.insert("degraded_at".into(), s(ts::format(&window.degraded_at)));
        record.insert("unhealthy_at".into(), s(ts::format(&window.unhealthy_at)));
        Ok(record)
    }

    fn unconditional_put(&self, record: Item) -> anyhow::Result<Put> {
        Put::builder()
            .table_name(&self.registry_table)
            .set_item(Some(record))
            .build()
            .context("Failed to build a registry put")
    }

    fn marker_put(&self, agent: &Agent, capability: &str) -> anyhow::Result<TransactWriteItem> {
        let marker = item(
            &CapabilityMarker {
                agent_id: agent.id,
                project_id: agent.project_id,
                capability: capability.to_owned(),
            },
            &[
                ("pk", agent_pk(agent.id)),
                ("sk", capability_sk(capability)),
                (GSI1.pk, capability_gsi(agent.project_id, capability)),
                (GSI1.sk, agent_pk(agent.id)),
            ],
        )?;
        Ok(TransactWriteItem::builder()
            .put(self.unconditional_put(marker)?)
            .build())
    }

    fn marker_delete(&self, agent_id: Uuid, capability: &str) -> anyhow::Result<TransactWriteItem> {
        Ok(TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.registry_table)
                    .set_key(Some(key(agent_pk(agent_id), capability_sk(capability))))
                    .build()
                    .context("Failed to build a capability marker deletion")?,
            )
            .build())
    }

    /// Stores a new agent with its capability markers, in one transaction.
    pub async fn create_agent(&self, agent: &Agent) -> StoreResult<()> {
        let put = Put::builder()
            .table_name(&self.registry_table)
            .set_item(Some(self.agent_item(agent)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .context("Failed to build the agent put")?;
        let mut writes = vec![TransactWriteItem::builder().put(put).build()];
        for capability in &agent.capabilities {
            writes.push(self.marker_put(agent, capability)?);
        }
        self.transact(writes, "create an agent").await
    }

    /// The agent with `id`.
    pub async fn get_agent(&self, id: Uuid) -> StoreResult<Option<Agent>> {
        self.get_record(
            &self.registry_table,
            key(agent_pk(id), AGENT_SK),
            "an agent",
        )
        .await
    }

    /// The agents among `ids` that exist, in the order of `ids`.
    pub async fn get_agents(&self, ids: &[Uuid]) -> StoreResult<Vec<Agent>> {
        let keys = ids.iter().map(|id| key(agent_pk(*id), AGENT_SK)).collect();
        let mut found: HashMap<Uuid, Agent> = self
            .batch_get::<Agent>(&self.registry_table, keys, "agents")
            .await?
            .into_iter()
            .map(|agent| (agent.id, agent))
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// Replaces `current` with `updated` and adds or removes capability markers to match, in
    /// one transaction. Item 0 fails if the agent changed since `current` was read: another
    /// change (a new version), a heartbeat, or its deletion.
    pub async fn replace_agent(&self, updated: &Agent, current: &Agent) -> StoreResult<()> {
        let mut put = Put::builder()
            .table_name(&self.registry_table)
            .set_item(Some(self.agent_item(updated)?))
            .expression_attribute_values(":expected", n(current.version));
        put = match current.last_heartbeat {
            Some(seen) => put
                .condition_expression("version = :expected AND last_heartbeat = :seen")
                .expression_attribute_values(":seen", s(ts::format(&seen))),
            None => put.condition_expression(
                "version = :expected AND attribute_not_exists(last_heartbeat)",
            ),
        };
        let put = put
            .build()
            .context("Failed to build the agent replacement")?;
        let mut writes = vec![TransactWriteItem::builder().put(put).build()];
        for capability in &updated.capabilities {
            if !current.capabilities.contains(capability) {
                writes.push(self.marker_put(updated, capability)?);
            }
        }
        for capability in &current.capabilities {
            if !updated.capabilities.contains(capability) {
                writes.push(self.marker_delete(current.id, capability)?);
            }
        }
        self.transact(writes, "update an agent").await
    }

    /// Deletes an agent and its capability markers in one transaction; item 0 fails if the
    /// agent is gone or changed since it was read. Its heartbeats expire on their own.
    pub async fn delete_agent(&self, agent: &Agent) -> StoreResult<()> {
        let delete = Delete::builder()
            .table_name(&self.registry_table)
            .set_key(Some(key(agent_pk(agent.id), AGENT_SK)))
            .condition_expression("version = :expected")
            .expression_attribute_values(":expected", n(agent.version))
            .build()
            .context("Failed to build the agent deletion")?;
        let mut writes = vec![TransactWriteItem::builder().delete(delete).build()];
        for capability in &agent.capabilities {
            writes.push(self.marker_delete(agent.id, capability)?);
        }
        self.transact(writes, "delete an agent").await
    }

    /// Records a heartbeat of `agent`: moves its last heartbeat, status, metrics and health
    /// window, and appends the beat to its history, in one transaction. Item 0 fails if the
    /// agent is gone or its interval changed since it was read. Two beats within the same
    /// millisecond share one history entry, the later one winning.
    pub async fn record_heartbeat(&self, agent: &Agent, beat: &Heartbeat) -> StoreResult<()> {
        let window = HealthWindow::after(beat.at, agent.heartbeat_interval_seconds);
        let mut set = vec![
            "last_heartbeat = :at",
            "degraded_at = :degraded",
            "unhealthy_at = :unhealthy",
            "#gsi3sk = :health",
        ];
        let mut update = Update::builder()
            .table_name(&self.registry_table)
            .set_key(Some(key(agent_pk(agent.id), AGENT_SK)))
            .condition_expression("attribute_exists(pk) AND heartbeat_interval_seconds = :interval")
            .expression_attribute_names("#gsi3sk", GSI3.sk)
            .expression_attribute_values(":at", s(ts::format(&beat.at)))
            .expression_attribute_values(":degraded", s(ts::format(&window.degraded_at)))
            .expression_attribute_values(":unhealthy", s(ts::format(&window.unhealthy_at)))
            .expression_attribute_values(":health", s(health_sk(&window, agent.id)))
            .expression_attribute_values(":interval", n(agent.heartbeat_interval_seconds));
        if let Some(metrics) = &beat.metrics {
            set.push("latest_metrics = :metrics");
            update = update.expression_attribute_values(
                ":metrics",
                serde_dynamo::to_attribute_value(metrics)
                    .context("Failed to serialise heartbeat metrics")?,
            );
        }
        let mut expression = format!("SET {}", set.join(", "));
        match &beat.status {
            Some(status) => {
                expression.push_str(", last_status = :status");
                update = update.expression_attribute_values(":status", s(status));
            }
            None => expression.push_str(" REMOVE last_status"),
        }
        let update = update
            .update_expression(expression)
            .build()
            .context("Failed to build the heartbeat update")?;
        let mut history = item(
            beat,
            &[("pk", agent_pk(agent.id)), ("sk", heartbeat_sk(beat.at))],
        )?;
        history.insert("ttl".into(), n((beat.at + HEARTBEAT_RETENTION).timestamp()));
        self.transact(
            vec![
                TransactWriteItem::builder().update(update).build(),
                TransactWriteItem::builder()
                    .put(self.unconditional_put(history)?)
                    .build(),
            ],
            "record a heartbeat",
        )
        .await
    }

    /// The agent's most recent heartbeats, newest first.
    pub async fn recent_heartbeats(&self, id: Uuid, limit: i32) -> StoreResult<Vec<Heartbeat>> {
        let query = self
            .ddb
            .query()
            .table_name(&self.registry_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :beat)")
            .expression_attribute_values(":pk", s(agent_pk(id)))
            .expression_attribute_values(":beat", s("BEAT#"))
            .scan_index_forward(false)
            .consistent_read(true)
            .limit(limit);
        Ok(self.query_page(query, "heartbeats").await?.items)
    }

    /// One page of a project's agents matching `filter`, judging health at `now`. With a
    /// health filter other than `healthy`, a page may hold fewer than `limit` agents and still
    /// have a next page.
    pub async fn list_agents(
        &self,
        project_id: Uuid,
        filter: &AgentFilter,
        now: DateTime<Utc>,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Agent>> {
        let query = |index: &IndexDef, partition: String| {
            self.index_query(&self.registry_table, index, partition)
                .limit(limit)
                .set_exclusive_start_key(start.clone())
        };
        let query = match filter {
            AgentFilter::All => query(&GSI1, agents_gsi(project_id)),
            AgentFilter::Env(env) => query(&GSI2, env_gsi(project_id, *env)),
            AgentFilter::Capability(capability) => {
                let markers: Page<CapabilityMarker> = self
                    .query_page(
                        query(&GSI1, capability_gsi(project_id, capability)),
                        "agents by capability",
                    )
                    .await?;
                let ids: Vec<Uuid> = markers.items.iter().map(|m| m.agent_id).collect();
                return Ok(Page {
                    items: self.get_agents(&ids).await?,
                    next: markers.next,
                });
            }
            AgentFilter::Health(status) => {
                // The sort-key condition below replaces the partition-only one.
                let query = query(&GSI3, health_gsi(project_id))
                    .expression_attribute_names("#sk", GSI3.sk)
                    .expression_attribute_values(":bound", s(health_bound(now)));
                match status {
                    HealthStatus::Healthy => {
                        query.key_condition_expression("#pk = :pk AND #sk > :bound")
                    }
                    HealthStatus::Degraded => query
                        .key_condition_expression("#pk = :pk AND #sk < :bound")
                        .filter_expression("unhealthy_at > :now")
                        .expression_attribute_values(":now", s(ts::format(&now))),
                    HealthStatus::Unhealthy => query
                        .key_condition_expression("#pk = :pk AND #sk < :bound")
                        .filter_expression("unhealthy_at <= :now")
                        .expression_attribute_values(":now", s(ts::format(&now))),
                }
            }
        };
        self.query_page(query, "agents").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_bound_splits_sort_keys_exactly_at_now() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let id = Uuid::now_v7();
        let sk_at = |at: DateTime<Utc>| {
            health_sk(
                &HealthWindow {
                    degraded_at: at,
                    unhealthy_at: at,
                },
                id,
            )
        };
        let bound = health_bound(now);
        assert!(sk_at(now) < bound, "degraded at exactly now is not healthy");
        assert!(sk_at(now - Duration::milliseconds(1)) < bound);
        assert!(sk_at(now + Duration::milliseconds(1)) > bound);
    }
}
