//! Typed configuration, read once per cold start from the environment.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::outbound::{EgressPolicy, DEPLOYMENT_ENDPOINT_VARS};

/// Default of [`Config::payload_slice_cap`]: 16 MiB.
pub const DEFAULT_PAYLOAD_SLICE_CAP: u64 = 16 * 1024 * 1024;

/// Settings shared by every function and the dev server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Names every AWS resource: tables `{prefix}-auth`, queues `{prefix}-runs`, …
    pub prefix: String,
    /// Origins allowed by CORS (`CORS_ALLOWED_ORIGINS`, comma-separated); empty, the default,
    /// allows none. `make dev` names the local console's origin.
    pub cors_allowed_origins: Vec<String>,
    /// `iss` claim of issued access tokens.
    pub jwt_issuer: String,
    /// `aud` claim of issued access tokens.
    pub jwt_audience: String,
    /// Lifetime of an access token.
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token.
    pub refresh_token_ttl: Duration,
    /// Failed logins for one email tolerated within `login_window` before `429`.
    pub login_max_failures: u32,
    /// Length of the failed-login window.
    pub login_window: Duration,
    /// Login attempts from one source address that may be unresolved or failed within
    /// `login_window` before `429`; successful logins give their attempt back.
    pub login_max_failures_per_address: u32,
    /// Registrations accepted from one source address within `register_window` before `429`.
    pub register_max_per_address: u32,
    /// Length of the registration window.
    pub register_window: Duration,
    /// Extra Ed25519 public keys (base64) whose manifest signatures imports accept, besides
    /// this deployment's own key.
    pub registry_trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// ARN of the run lifecycle state machine (`RUN_STATE_MACHINE_ARN`); local provisioning
    /// fills it in.
    pub run_state_machine_arn: Option<String>,
    /// URL of the run queue (`RUN_QUEUE_URL`); looked up by name when unset.
    pub run_queue_url: Option<String>,
    /// Chat-completions base URL for agents without their own (`LLM_BASE_URL`); its key, if
    /// any, is the secret `{prefix}/llm-api-key`.
    pub llm_base_url: Option<String>,
    /// How long a message the run worker failed stays invisible before its next delivery
    /// (`RUN_WORKER_RETRY_DELAY_SECONDS`, default 30).
    pub run_retry_delay: Duration,
    /// How long a claimed step is presumed alive without news from its worker
    /// (`RUN_STEP_LEASE_SECONDS`, default 300); a live worker renews it while the step runs.
    pub step_lease: Duration,
    /// How long a run must have stayed unchanged before the sweeper looks at it
    /// (`SWEEPER_QUIET_SECONDS`, default 120).
    pub sweeper_quiet: Duration,
    /// The AWS region runs are recorded in (`AWS_REGION`, default `us-east-1`).
    pub region: String,
    /// What outbound calls may reach besides the public internet (`EGRESS_ALLOW`, a
    /// comma-separated `host:port` list, empty by default) and what they never may (every
    /// `AWS_ENDPOINT_URL*` and `AWS_LAMBDA_RUNTIME_API`); see [`crate::outbound`].
    pub egress: EgressPolicy,
    /// How long a run worker invocation lasts when nothing tells the worker its own deadline:
    /// the dev server's polling loop and engines driven without one
    /// (`RUN_WORKER_INVOCATION_SECONDS`, default 150, the template's worker `Timeout`).
    pub run_worker_invocation: Duration,
    /// The S3 bucket keeping step payloads too large for their records (`PAYLOAD_BUCKET`,
    /// default `{prefix}-payloads` lowercased, `_` and `.` as `-`); see [`crate::payload`].
    pub payload_bucket: String,
    /// Bytes of stored step outputs one slice may hold in memory for templates
    /// (`PAYLOAD_SLICE_CAP_BYTES`, default 16 MiB); a step that would need more fails.
    pub payload_slice_cap: u64,
    /// The EventBridge bus Spark-Ops publishes its own events and tenants' to
    /// (`EVENT_BUS_NAME`, default `{prefix}-bus`); see [`crate::events`].
    pub event_bus_name: String,
    /// ARN of the queue event-schedule rules deliver matched events to
    /// (`TRIGGER_QUEUE_ARN`); local provisioning fills it in.
    pub trigger_queue_arn: Option<String>,
    /// Most event-schedule rules on the bus (`EVENT_RULES_MAX`, default 250): EventBridge
    /// allows 300 rules per bus unless the quota is raised.
    pub event_rules_max: u32,
    /// URL of the scheduler queue, where the tick rule sends its ticks
    /// (`SCHEDULER_QUEUE_URL`); looked up by name when unset.
    pub scheduler_queue_url: Option<String>,
    /// URL of the fire queue, where ticks send the fires to start (`FIRE_QUEUE_URL`); looked
    /// up by name when unset.
    pub fire_queue_url: Option<String>,
}

impl Config {
    /// Reads the configuration from the process environment, naming what is missing or invalid.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut config = Self::from_lookup(|key| std::env::var(key).ok())?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        config.egress.deny_also(EgressPolicy::deployment_endpoints(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ));
        Ok(config)
    }

    /// Reads the configuration through `lookup`, so tests can supply values without touching
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let prefix = lookup("SPARK_OPS_PREFIX")
            .context("SPARK_OPS_PREFIX is not set: it names the tables, queues and secrets")?;
        if prefix.is_empty()
            || prefix.len() > 200
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("SPARK_OPS_PREFIX must be 1-200 characters of [A-Za-z0-9._-], got {prefix:?}");
        }
        let cors_allowed_origins = lookup("CORS_ALLOWED_ORIGINS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let seconds = |key: &str, default: u64| -> anyhow::Result<Duration> {
            match lookup(key) {
                None => Ok(Duration::from_secs(default)),
                Some(raw) => raw
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .with_context(|| {
                        format!("{key} must be a whole number of seconds, got {raw:?}")
                    }),
            }
        };
        let limit = |key: &str, default: u32| -> anyhow::Result<u32> {
            match lookup(key) {
                None => Ok(default),
                Some(raw) => raw.parse().ok().filter(|n| *n >= 1).with_context(|| {
                    format!("{key} must be a whole number of at least 1, got {raw:?}")
                }),
            }
        };
        let registry_trusted_keys = lookup("REGISTRY_TRUSTED_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                crate::manifest::parse_public_key(k).with_context(|| {
                    format!("REGISTRY_TRUSTED_KEYS holds {k:?}, which is not a base64 Ed25519 public key")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let optional = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let allow = EgressPolicy::parse_allow(&lookup("EGRESS_ALLOW").unwrap_or_default())
            .map_err(|why| anyhow::anyhow!("EGRESS_ALLOW must list host:port entries: {why}"))?;
        let deployment: Vec<(&str, String)> = DEPLOYMENT_ENDPOINT_VARS
            .iter()
            .filter_map(|name| lookup(name).map(|value| (*name, value)))
            .collect();
        let egress = EgressPolicy::new(
            allow,
            EgressPolicy::deployment_endpoints(deployment.iter().map(|(k, v)| (*k, v.as_str()))),
        );
        let payload_bucket = optional("PAYLOAD_BUCKET").unwrap_or_else(|| {
            format!("{prefix}-payloads")
                .to_lowercase()
                .replace(['_', '.'], "-")
        });
        let payload_slice_cap = match lookup("PAYLOAD_SLICE_CAP_BYTES") {
            None => DEFAULT_PAYLOAD_SLICE_CAP,
            Some(raw) => raw.parse().ok().filter(|n| *n >= 1).with_context(|| {
                format!("PAYLOAD_SLICE_CAP_BYTES must be a whole number of bytes, got {raw:?}")
            })?,
        };
        Ok(Self {
            event_bus_name: optional("EVENT_BUS_NAME").unwrap_or_else(|| format!("{prefix}-bus")),
            trigger_queue_arn: optional("TRIGGER_QUEUE_ARN"),
            event_rules_max: limit("EVENT_RULES_MAX", 250)?,
            payload_bucket,
            payload_slice_cap,
            scheduler_queue_url: optional("SCHEDULER_QUEUE_URL"),
            fire_queue_url: optional("FIRE_QUEUE_URL"),
            egress,
            run_state_machine_arn: optional("RUN_STATE_MACHINE_ARN"),
            run_queue_url: optional("RUN_QUEUE_URL"),
            llm_base_url: optional("LLM_BASE_URL"),
            run_retry_delay: seconds("RUN_WORKER_RETRY_DELAY_SECONDS", 30)?,
            step_lease: seconds("RUN_STEP_LEASE_SECONDS", 300)?,
            sweeper_quiet: seconds("SWEEPER_QUIET_SECONDS", 120)?,
            run_worker_invocation: seconds("RUN_WORKER_INVOCATION_SECONDS", 150)?,
            region: optional("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
            registry_trusted_keys,
            jwt_issuer: lookup("JWT_ISSUER").unwrap_or_else(|| "spark-ops".to_owned()),
            jwt_audience: lookup("JWT_AUDIENCE").unwrap_or_else(|| "spark-ops-api".to_owned()),
            access_token_ttl: seconds("ACCESS_TOKEN_TTL_SECONDS", 15 * 60)?,
            refresh_token_ttl: seconds("REFRESH_TOKEN_TTL_SECONDS", 7 * 24 * 3600)?,
            login_max_failures: limit("LOGIN_MAX_FAILURES", 5)?,
            login_window: seconds("LOGIN_WINDOW_SECONDS", 15 * 60)?,
            login_max_failures_per_address: limit("LOGIN_MAX_FAILURES_PER_ADDRESS", 50)?,
            register_max_per_address: limit("REGISTER_MAX_PER_ADDRESS", 20)?,
            register_window: seconds("REGISTER_WINDOW_SECONDS", 3600)?,
            cors_allowed_origins,
            prefix,
        })
    }

    /// Secrets Manager name of the JWT signing key.
    pub fn jwt_secret_name(&self) -> String {
        format!("{}/jwt-signing-key", self.prefix)
    }

    /// Secrets Manager name of the secret the manifest signing key derives from.
    pub fn registry_secret_name(&self) -> String {
        format!("{}/registry-signing-key", self.prefix)
    }

    /// Name of the SQS queue that drives run workers.
    pub fn run_queue_name(&self) -> String {
        format!("{}-runs", self.prefix)
    }

    /// Name of the run queue's dead-letter queue.
    pub fn run_dlq_name(&self) -> String {
        format!("{}-runs-dlq", self.prefix)
    }

    /// Name of the queue event-schedule rules deliver matched events to.
    pub fn trigger_queue_name(&self) -> String {
        format!("{}-triggers", self.prefix)
    }

    /// Name of the trigger queue's dead-letter queue.
    pub fn trigger_dlq_name(&self) -> String {
        format!("{}-triggers-dlq", self.prefix)
    }

    /// Name of the SQS queue the tick rule sends ticks to.
    pub fn scheduler_queue_name(&self) -> String {
        format!("{}-scheduler", self.prefix)
    }

    /// Name of the SQS queue carrying the fires to start.
    pub fn fire_queue_name(&self) -> String {
        format!("{}-fires", self.prefix)
    }

    /// Name of the EventBridge rule that ticks the scheduler every minute.
    pub fn tick_rule_name(&self) -> String {
        format!("{}-scheduler-tick", self.prefix)
    }

    /// Name of the run lifecycle state machine.
    pub fn state_machine_name(&self) -> String {
        format!("{}-run-lifecycle", self.prefix)
    }

    /// Secrets Manager name of the default LLM endpoint's API key.
    pub fn llm_secret_name(&self) -> String {
        format!("{}/llm-api-key", self.prefix)
    }

    /// Full name of the table described by `suffix` in the schema.
    pub fn table_name(&self, suffix: &str) -> String {
        format!("{}-{}", self.prefix, suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn a_missing_prefix_is_named_in_the_error() {
        let err = Config::from_lookup(lookup(&[])).unwrap_err();
        assert!(err.to_string().contains("SPARK_OPS_PREFIX"));
    }

    #[test]
    fn resource_names_derive_from_the_prefix() {
        let config = Config::from_lookup(lookup(&[("SPARK_OPS_PREFIX", "demo")])).unwrap();
        assert_eq!(config.table_name("auth"), "demo-auth");
        assert_eq!(config.run_queue_name(), "demo-runs");
        assert_eq!(config.jwt_secret_name(), "demo/jwt-signing-key");
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.payload_bucket, "demo-payloads");
        assert_eq!(config.event_bus_name, "demo-bus");
        assert_eq!(config.trigger_queue_name(), "demo-triggers");
        assert_eq!(config.event_rules_max, 250);
        let odd = Config::from_lookup(lookup(&[("SPARK_OPS_PREFIX", "My_Demo.1")])).unwrap();
        assert_eq!(odd.payload_bucket, "my-demo-1-payloads");
    }

    #[test]
    fn egress_allows_only_what_is_listed_and_never_the_deployments_endpoints() {
        let config = Config::from_lookup(lookup(&[
            ("SPARK_OPS_PREFIX", "demo"),
            ("EGRESS_ALLOW", "127.0.0.1:9000, localhost:4566"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        ]))
        .unwrap();
        assert_eq!(config.egress.allow.len(), 2);
        assert_eq!(config.egress.deny.len(), 1);
        let empty = Config::from_lookup(lookup(&[("SPARK_OPS_PREFIX", "demo")])).unwrap();
        assert!(empty.egress.allow.is_empty());
        let err = Config::from_lookup(lookup(&[
            ("SPARK_OPS_PREFIX", "demo"),
            ("EGRESS_ALLOW", "127.0.0.1"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("EGRESS_ALLOW"));
    }

    #[test]
    fn cors_allows_no_origin_unless_one_is_configured() {
        let config = Config::from_lookup(lookup(&[("SPARK_OPS_PREFIX", "demo")])).unwrap();
        assert!(config.cors_allowed_origins.is_empty());
        let config = Config::from_lookup(lookup(&[
            ("SPARK_OPS_PREFIX", "demo"),
            (
                "CORS_ALLOWED_ORIGINS",
                " https://a.example, ,https://b.example",
            ),
        ]))
        .unwrap();
        assert_eq!(
            config.cors_allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn a_malformed_number_is_rejected_with_its_variable() {
        let err = Config::from_lookup(lookup(&[
            ("SPARK_OPS_PREFIX", "demo"),
            ("LOGIN_WINDOW_SECONDS", "soon"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("LOGIN_WINDOW_SECONDS"));
        let err = Config::from_lookup(lookup(&[
            ("SPARK_OPS_PREFIX", "demo"),
            ("REGISTER_MAX_PER_ADDRESS", "many"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("REGISTER_MAX_PER_ADDRESS"));
        let err = Config::from_lookup(lookup(&[
            ("SPARK_OPS_PREFIX", "demo"),
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", "0"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("LOGIN_MAX_FAILURES_PER_ADDRESS"));
    }
}
