//! Idempotent provisioning of the deployment's tables, queues and secret from the schema in
//! code. The dev server and the tests run it; in AWS, `template.yaml` declares the same.

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;
use rand::distributions::{Alphanumeric, DistString};

use super::schema::{IndexDef, TableDef, TABLES};
use crate::config::Config;
use crate::payload::PAYLOAD_RETENTION_DAYS;

/// Receives before a message moves to the dead-letter queue.
pub const RUN_QUEUE_MAX_RECEIVES: u32 = 5;
/// Visibility timeout of the run queue, in seconds (6× a 150 s worker).
pub const RUN_QUEUE_VISIBILITY_SECONDS: u32 = 900;

/// Receives of a trigger message before it moves to the trigger dead-letter queue.
pub const TRIGGER_QUEUE_MAX_RECEIVES: u32 = 5;
/// Visibility timeout of the trigger queue, in seconds: starting a run takes a few calls.
pub const TRIGGER_QUEUE_VISIBILITY_SECONDS: u32 = 60;
/// Receives of a scheduler or fire queue message before it moves to its dead-letter queue.
pub const SCHEDULER_QUEUE_MAX_RECEIVES: u32 = 5;
/// Visibility timeout of the scheduler and fire queues, in seconds (6× a 60 s scheduler).
pub const SCHEDULER_QUEUE_VISIBILITY_SECONDS: u32 = 360;
/// How often the tick rule ticks the scheduler.
pub const TICK_SCHEDULE: &str = "rate(1 minute)";

/// The run lifecycle state machine, in Amazon States Language. `template.yaml` deploys the
/// same file; `${RunQueueUrl}` is substituted in both places.
pub const RUN_LIFECYCLE_ASL: &str =
    include_str!("../../../infra/statemachine/run-lifecycle.asl.json");

/// The run lifecycle definition with the run queue's URL filled in.
pub fn run_lifecycle_definition(run_queue_url: &str) -> String {
    RUN_LIFECYCLE_ASL.replace("${RunQueueUrl}", run_queue_url)
}

/// What provisioning created or found, for the configuration of the processes using it.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// The run queue's URL.
    pub run_queue_url: String,
    /// The run lifecycle state machine's ARN.
    pub state_machine_arn: String,
    /// The trigger queue's ARN, which event-schedule rules deliver to.
    pub trigger_queue_arn: String,
    /// The scheduler queue's URL.
    pub scheduler_queue_url: String,
    /// The fire queue's URL.
    pub fire_queue_url: String,
}

impl Provisioned {
    /// Records the resources in `config`.
    pub fn configure(&self, config: &mut Config) {
        config.run_queue_url = Some(self.run_queue_url.clone());
        config.run_state_machine_arn = Some(self.state_machine_arn.clone());
        config.trigger_queue_arn = Some(self.trigger_queue_arn.clone());
        config.scheduler_queue_url = Some(self.scheduler_queue_url.clone());
        config.fire_queue_url = Some(self.fire_queue_url.clone());
    }
}

/// Provisions every resource of the deployment `config` names (idempotently) and points
/// `config` at the run queue and state machine: what the dev server and the tests do before
/// serving, where SAM does it for a deployed stack.
pub async fn provision(
    clients: &crate::clients::Clients,
    config: &mut Config,
) -> anyhow::Result<()> {
    Provisioner::of(clients)
        .ensure_all(config)
        .await?
        .configure(config);
    Ok(())
}

/// Clients needed to provision.
pub struct Provisioner<'a> {
    /// DynamoDB.
    pub ddb: &'a aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: &'a aws_sdk_sqs::Client,
    /// Secrets Manager.
    pub secrets: &'a aws_sdk_secretsmanager::Client,
    /// Step Functions.
    pub sfn: &'a aws_sdk_sfn::Client,
    /// S3.
    pub s3: &'a aws_sdk_s3::Client,
    /// EventBridge.
    pub events: &'a aws_sdk_eventbridge::Client,
}

impl<'a> Provisioner<'a> {
    /// The provisioner of `clients`.
    pub fn of(clients: &'a crate::clients::Clients) -> Self {
        Self {
            ddb: &clients.ddb,
            sqs: &clients.sqs,
            secrets: &clients.secrets,
            sfn: &clients.sfn,
            s3: &clients.s3,
            events: &clients.events,
        }
    }
}

impl Provisioner<'_> {
    /// Creates whatever is missing: tables with their indexes and TTL, the run queue and its
    /// DLQ, the JWT signing key, the manifest signing key, the run lifecycle state machine
    /// (whose definition is brought up to date), the payload bucket, the event bus and the
    /// trigger queue.
    pub async fn ensure_all(&self, config: &Config) -> anyhow::Result<Provisioned> {
        for table in TABLES {
            self.ensure_table(&config.table_name(table.suffix), table)
                .await?;
        }
        let run_queue_url = self.ensure_queues(config).await?;
        let state_machine_arn = self.ensure_state_machine(config, &run_queue_url).await?;
        self.ensure_secret(&config.jwt_secret_name(), "Spark-Ops JWT signing key")
            .await?;
        self.ensure_secret(
            &config.registry_secret_name(),
            "Spark-Ops manifest signing key seed",
        )
        .await?;
        self.ensure_payload_bucket(&config.payload_bucket).await?;
        self.ensure_event_bus(&config.event_bus_name).await?;
        let trigger_queue_arn = self.ensure_trigger_queue(config).await?;
        let scheduler_queue_url = self
            .ensure_scheduler_queue(&config.scheduler_queue_name())
            .await?;
        let fire_queue_url = self
            .ensure_scheduler_queue(&config.fire_queue_name())
            .await?;
        Ok(Provisioned {
            run_queue_url,
            state_machine_arn,
            trigger_queue_arn,
            scheduler_queue_url,
            fire_queue_url,
        })
    }

    /// Creates the run lifecycle state machine, or updates its definition if it exists.
    pub async fn ensure_state_machine(
        &self,
        config: &Config,
        run_queue_url: &str,
    ) -> anyhow::Result<String> {
        let name = config.state_machine_name();
        let definition = run_lifecycle_definition(run_queue_url);
        let mut next_token = None;
        loop {
            let page = self
                .sfn
                .list_state_machines()
                .set_next_token(next_token)
                .send()
                .await
                .context("Failed to list state machines")?;
            if let Some(found) = page.state_machines().iter().find(|m| m.name() == name) {
                let arn = found.state_machine_arn().to_owned();
                self.sfn
                    .update_state_machine()
                    .state_machine_arn(&arn)
                    .definition(definition)
                    .send()
                    .await
                    .with_context(|| format!("Failed to update state machine {name}"))?;
                return Ok(arn);
            }
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        // The local emulator does not assume the role; in AWS, template.yaml creates it.
        let role = format!("arn:aws:iam::000000000000:role/{name}");
        let created = self
            .sfn
            .create_state_machine()
            .name(&name)
            .definition(definition)
            .role_arn(role)
            .send()
            .await
            .with_context(|| format!("Failed to create state machine {name}"))?;
        Ok(created.state_machine_arn().to_owned())
    }

    /// Creates a table if it does not exist; adds to an existing one the indexes it lacks
    /// (a table created before an index was added to the schema).
    pub async fn ensure_table(&self, name: &str, table: &TableDef) -> anyhow::Result<()> {
        let described = self.ddb.describe_table().table_name(name).send().await;
        match described {
            Ok(described) => {
                let existing: Vec<&str> = described
                    .table()
                    .map(|t| {
                        t.global_secondary_indexes()
                            .iter()
                            .filter_map(|i| i.index_name())
                            .collect()
                    })
                    .unwrap_or_default();
                for index in table.indexes.iter().filter(|i| !existing.contains(&i.name)) {
                    self.add_index(name, index).await?;
                }
                return Ok(());
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("Failed to describe table {name}"))
            }
        }
        let mut attributes = vec![table.pk, table.sk];
        let mut indexes = Vec::new();
        for index in table.indexes {
            attributes.extend([index.pk, index.sk]);
            indexes.push(
                GlobalSecondaryIndex::builder()
                    .index_name(index.name)
                    .key_schema(key_element(index.pk, KeyType::Hash)?)
                    .key_schema(key_element(index.sk, KeyType::Range)?)
                    .projection(all_attributes())
                    .build()
                    .context("Failed to build an index")?,
            );
        }
        let definitions = attributes
            .into_iter()
            .map(string_attribute)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let created = self
            .ddb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key_element(table.pk, KeyType::Hash)?)
            .key_schema(key_element(table.sk, KeyType::Range)?)
            .set_attribute_definitions(Some(definitions))
            .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes))
            .send()
            .await;
        if let Err(err) = created {
            // Another process may have created it in the meantime.
            if !err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception())
            {
                return Err(err).with_context(|| format!("Failed to create table {name}"));
            }
        }
        self.ddb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(table.ttl_attribute)
                    .enabled(true)
                    .build()
                    .context("Failed to build the TTL specification")?,
            )
            .send()
            .await
            .map(|_| ())
            .or_else(|err| {
                // Enabling TTL twice is reported as a validation error; that is fine.
                let message = err
                    .as_service_error()
                    .and_then(|e| e.meta().message())
                    .unwrap_or("");
                if message.contains("already enabled") {
                    Ok(())
                } else {
                    Err(err).with_context(|| format!("Failed to enable TTL on {name}"))
                }
            })
    }

    /// Adds `index` to the existing table `name`; one that another process is adding
    /// meanwhile is fine.
    async fn add_index(&self, name: &str, index: &IndexDef) -> anyhow::Result<()> {
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(index.name)
            .key_schema(key_element(index.pk, KeyType::Hash)?)
            .key_schema(key_element(index.sk, KeyType::Range)?)
            .projection(all_attributes())
            .build()
            .context("Failed to build an index")?;
        let added = self
            .ddb
            .update_table()
            .table_name(name)
            .attribute_definitions(string_attribute(index.pk)?)
            .attribute_definitions(string_attribute(index.sk)?)
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(create).build(),
            )
            .send()
            .await;
        match added {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(err)
                .with_context(|| format!("Failed to add index {} to table {name}", index.name)),
        }
    }

    /// Creates the run queue and its dead-letter queue; returns the run queue's URL.
    pub async fn ensure_queues(&self, config: &Config) -> anyhow::Result<String> {
        let (url, _) = self
            .ensure_queue_with_dlq(
                &config.run_queue_name(),
                &config.run_dlq_name(),
                RUN_QUEUE_VISIBILITY_SECONDS,
                RUN_QUEUE_MAX_RECEIVES,
            )
            .await?;
        Ok(url)
    }

    /// Creates queue `name` with visibility timeout `visibility_seconds`, moving a message
    /// received `max_receives` times to its dead-letter queue `dlq_name` (created too, keeping
    /// messages 14 days); returns the queue's URL and ARN.
    pub async fn ensure_queue_with_dlq(
        &self,
        name: &str,
        dlq_name: &str,
        visibility_seconds: u32,
        max_receives: u32,
    ) -> anyhow::Result<(String, String)> {
        let dlq = self
            .sqs
            .create_queue()
            .queue_name(dlq_name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await
            .with_context(|| format!("Failed to create the dead-letter queue {dlq_name}"))?;
        let dlq_url = dlq.queue_url().context("CreateQueue returned no URL")?;
        let dlq_arn = self.queue_arn(dlq_url).await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receives.to_string(),
        });
        let queue = self
            .sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_seconds.to_string(),
            )
            .send()
            .await
            .with_context(|| format!("Failed to create the queue {name}"))?;
        let url = queue
            .queue_url()
            .map(str::to_owned)
            .context("CreateQueue returned no URL")?;
        let arn = self.queue_arn(&url).await?;
        Ok((url, arn))
    }

    async fn queue_arn(&self, url: &str) -> anyhow::Result<String> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .with_context(|| format!("Failed to read the ARN of {url}"))?;
        attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .with_context(|| format!("the queue {url} has no ARN"))
    }

    /// Creates the event bus if it does not exist.
    pub async fn ensure_event_bus(&self, name: &str) -> anyhow::Result<()> {
        match self.events.create_event_bus().name(name).send().await {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(err) => {
                Err(anyhow::Error::new(err).context(format!("Failed to create the bus {name}")))
            }
        }
    }

    /// Creates the trigger queue, which event-schedule rules deliver to, and its dead-letter
    /// queue; returns the trigger queue's ARN.
    pub async fn ensure_trigger_queue(&self, config: &Config) -> anyhow::Result<String> {
        let (_, arn) = self
            .ensure_queue_with_dlq(
                &config.trigger_queue_name(),
                &config.trigger_dlq_name(),
                TRIGGER_QUEUE_VISIBILITY_SECONDS,
                TRIGGER_QUEUE_MAX_RECEIVES,
            )
            .await?;
        Ok(arn)
    }

    /// Creates a scheduler queue `name` and its dead-letter queue `name-dlq`; returns the
    /// queue's URL.
    pub async fn ensure_scheduler_queue(&self, name: &str) -> anyhow::Result<String> {
        let (url, _) = self
            .ensure_queue_with_dlq(
                name,
                &format!("{name}-dlq"),
                SCHEDULER_QUEUE_VISIBILITY_SECONDS,
                SCHEDULER_QUEUE_MAX_RECEIVES,
            )
            .await?;
        Ok(url)
    }

    /// Creates (or updates) the EventBridge rule that sends a tick to the scheduler queue
    /// every minute, as the template's `SchedulerTickRule` does. Not part of
    /// [`ensure_all`](Self::ensure_all): only a process that runs the scheduler wants ticks
    /// (the dev server), not every test deployment.
    pub async fn ensure_tick_rule(
        &self,
        config: &Config,
        scheduler_queue_url: &str,
    ) -> anyhow::Result<()> {
        let name = config.tick_rule_name();
        self.events
            .put_rule()
            .name(&name)
            .schedule_expression(TICK_SCHEDULE)
            .state(aws_sdk_eventbridge::types::RuleState::Enabled)
            .description("Ticks the Spark-Ops scheduler")
            .send()
            .await
            .with_context(|| format!("Failed to create the rule {name}"))?;
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("scheduler-queue")
            .arn(self.queue_arn(scheduler_queue_url).await?)
            .build()
            .context("Failed to build the tick rule's target")?;
        let put = self
            .events
            .put_targets()
            .rule(&name)
            .targets(target)
            .send()
            .await
            .with_context(|| format!("Failed to point the rule {name} at the scheduler queue"))?;
        if put.failed_entry_count() > 0 {
            anyhow::bail!(
                "the rule {name} refused its target: {:?}",
                put.failed_entries()
            );
        }
        Ok(())
    }

    /// Creates the step payload bucket if it does not exist, and sets its lifecycle rule:
    /// `runs/` objects expire after [`PAYLOAD_RETENTION_DAYS`] days.
    pub async fn ensure_payload_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let mut create = self.s3.create_bucket().bucket(bucket);
        // us-east-1 takes no location constraint; every other region needs one.
        if let Some(region) = self.s3.config().region().map(|r| r.as_ref().to_owned()) {
            if region != "us-east-1" {
                create = create.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region.as_str()))
                        .build(),
                );
            }
        }
        if let Err(err) = create.send().await {
            let exists = err.as_service_error().is_some_and(|e| {
                e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
            });
            if !exists {
                return Err(err).with_context(|| format!("Failed to create bucket {bucket}"));
            }
        }
        let expire = LifecycleRule::builder()
            .id("expire-run-payloads")
            .filter(LifecycleRuleFilter::builder().prefix("runs/").build())
            .expiration(
                LifecycleExpiration::builder()
                    .days(PAYLOAD_RETENTION_DAYS)
                    .build(),
            )
            .status(ExpirationStatus::Enabled)
            .build()
            .context("Failed to build the payload lifecycle rule")?;
        self.s3
            .put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .rules(expire)
                    .build()
                    .context("Failed to build the payload lifecycle configuration")?,
            )
            .send()
            .await
            .with_context(|| format!("Failed to set the lifecycle of bucket {bucket}"))?;
        Ok(())
    }

    /// Creates a secret of 64 random characters if it does not exist.
    pub async fn ensure_secret(&self, name: &str, description: &str) -> anyhow::Result<()> {
        let described = self.secrets.describe_secret().secret_id(name).send().await;
        match described {
            Ok(_) => return Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("Failed to describe secret {name}"))
            }
        }
        let value = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 64);
        let created = self
            .secrets
            .create_secret()
            .name(name)
            .description(description)
            .secret_string(value)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(err).with_context(|| format!("Failed to create secret {name}")),
        }
    }
}

fn key_element(name: &str, kind: KeyType) -> anyhow::Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .context("Failed to build a key element")
}

fn string_attribute(name: &str) -> anyhow::Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .context("Failed to build an attribute definition")
}

/// Every index projects all attributes.
fn all_attributes() -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::All)
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::RUN_LIFECYCLE_ASL;
    use crate::engine::run::HEARTBEAT_EVERY;

    /// A task that waits for its token needs an explicit `TimeoutSeconds`: without one, AWS
    /// waits about three years, but LocalStack times the task out after 60 s, which would fail
    /// every step running longer than a minute in `make dev` only.
    #[test]
    fn every_waiting_task_has_an_explicit_timeout_and_heartbeats_fit_it() {
        let asl: Value = serde_json::from_str(RUN_LIFECYCLE_ASL).unwrap();
        let states = asl["States"].as_object().unwrap();
        let waiting: Vec<_> = states
            .iter()
            .filter(|(_, state)| {
                state["Resource"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(".waitForTaskToken"))
            })
            .collect();
        assert_eq!(waiting.len(), 4, "Execute and the three waits");
        for (name, state) in waiting {
            let timeout = state["TimeoutSeconds"].as_u64();
            assert!(timeout.is_some_and(|t| t >= 3600), "{name}: {timeout:?}");
            if let Some(heartbeat) = state["HeartbeatSeconds"].as_u64() {
                assert!(heartbeat > 2 * HEARTBEAT_EVERY.as_secs(), "{name}");
            }
        }
    }
}
