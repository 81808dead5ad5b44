//! The DynamoDB schema, defined once: provisioning creates it and a test checks that
//! `template.yaml` declares the same tables, keys and indexes.
//!
//! Every table has a string partition key `pk` and sort key `sk`; items expire through the
//! `ttl` attribute (epoch seconds). The tenant (project id) is part of every project-scoped key.
//!
//! ## `{prefix}-auth`: identities and sessions
//!
//! | pk | sk | item |
//! |---|---|---|
//! | `USER#<user_id>` | `USER` | user (argon2id hash, profile, `deleted_at`, `session_epoch`) |
//! | `EMAIL#<email>` | `EMAIL` | email → user id; makes emails unique |
//! | `REFRESH#<sha256>` | `REFRESH` | refresh token digest, family, session epoch, status, successor digest (`ttl`) |
//! | `FAMILY#<family_id>` | `FAMILY` | refresh-token family, `revoked_at` (`ttl`) |
//! | `LOGIN#<email>` | `THROTTLE` | password attempts of one account in a window (`ttl`) |
//! | `LOGINADDR#<address>` | `THROTTLE` | login attempts from one source address in a window (`ttl`) |
//! | `REGISTERADDR#<address>` | `THROTTLE` | registrations from one source address in a window (`ttl`) |
//!
//! ## `{prefix}-projects`: projects, memberships and API keys
//!
//! | pk | sk | gsi1pk | gsi1sk | item |
//! |---|---|---|---|---|
//! | `PROJECT#<project_id>` | `PROJECT` | `TEARDOWN`, once deleted until torn down | `<deleted_at>#<project_id>` | project |
//! | `SLUG#<creator>#<slug>` | `SLUG` | | | slug → project id; makes slugs unique per creator |
//! | `PROJECT#<project_id>` | `MEMBER#<user_id>` | `USER#<user_id>` | `PROJECT#<project_id>` | membership |
//! | `APIKEY#<key_id>` | `APIKEY` | `PROJECT#<project_id>#APIKEYS` | `APIKEY#<key_id>` | API key (digest only) |
//! | `PROJECT#<project_id>` | `INVITE#<email>` | `INVITE#<email>` | `PROJECT#<project_id>` | pending invitation (`ttl`) |

//!
//! ## `{prefix}-registry`: agents, tools, workflows and their versions
//!
//! Records are addressed by their own id; every index key starts with the project id, so
//! lists are per-project `Query`s on an index.
//!
//! | pk | sk | gsi1pk / gsi1sk | gsi2pk / gsi2sk | gsi3pk / gsi3sk | item |
//! |---|---|---|---|---|---|
//! | `AGENT#<id>` | `AGENT` | `PROJECT#<p>#AGENTS` / `AGENT#<id>` | `PROJECT#<p>#AGENTS#ENV#<env>` / `AGENT#<id>` | `PROJECT#<p>#AGENTS#HEALTH` / `<degraded_at>#<id>` | agent |
//! | `AGENT#<id>` | `CAP#<capability>` | `PROJECT#<p>#AGENTS#CAP#<capability>` / `AGENT#<id>` | | | capability marker |
//! | `AGENT#<id>` | `BEAT#<at>` | | | | heartbeat (`ttl`) |
//! | `TOOL#<id>` | `TOOL` | `PROJECT#<p>#TOOLS` / `TOOL#<id>` | `PROJECT#<p>#TOOLS#ENV#<env>` / `TOOL#<id>` | | tool |
//! | `TOOL#<id>` | `BREAKER` | | | | circuit breaker shared by workers (`ttl`; see `tool_runtime`) |
//! | `TOOL#<id>` | `RATE#<yyyymmddhhmm>` | | | | calls admitted in that UTC minute (`ttl`) |
//! | `WORKFLOW#<id>` | `WORKFLOW` | `PROJECT#<p>#WORKFLOWS` / `WORKFLOW#<id>` | | | workflow |
//! | `WORKFLOW#<id>` | `VERSION#<n, 10 digits>` | | | | immutable workflow version |
//! | `SCHEDULE#<id>` | `SCHEDULE` | `PROJECT#<p>#SCHEDULES` / `SCHEDULE#<id>` | | | schedule |
//! | `SCHEDULE#<id>` | `FIRE#<nominal_time>` | | | | one fire of the schedule and its outcome (`ttl`) |
//!
//! The sparse index gsi4 is the schedulers' **due index**: an active cron schedule carries
//! `gsi4pk` `DUE#<shard>` (the schedule id modulo
//! [`DUE_SHARDS`](crate::store::schedules::DUE_SHARDS)) and `gsi4sk` `<due_at>#<id>`, where
//! `due_at` is its `next_run_at`, or the time a fire was buffered while one waits
//! ([`crate::schedule`]). A paused schedule carries neither, so each tick is one `Query` per
//! shard for `gsi4sk <= now`, never a scan.
//!
//! ## `{prefix}-runs`: runs, their steps and logs, idempotency keys
//!
//! A run's items share its partition; the index keys of gsi1 to gsi5 start with the project id and sort
//! by `<created_at>#<run_id>`, so each list filter is a `Query` on one index, newest first.
//!
//! | pk | sk | index keys | item |
//! |---|---|---|---|
//! | `RUN#<id>` | `RUN` | gsi1 `PROJECT#<p>#RUNS`, gsi2 `…#STATUS#<status>`, gsi3 `…#WORKFLOW#<id>`, gsi4 `…#AGENT#<id>`, gsi5 `…#TRIGGER#<trigger>`, gsi6 `ACTIVE#<shard>` / `<updated_at>#<id>` while in motion, gsi7 `…#SCHEDULE#<id>` for a schedule's runs | run |
//! | `RUN#<id>` | `STEP#<idx, 4 digits>` | | step record; `idx` is the step's place in the definition's execution order |
//! | `RUN#<id>` | `STEP#<idx>#<iteration, 5 digits>` | | one loop iteration |
//! | `RUN#<id>` | `LOG#<uuidv7>` | | one log line |
//! | `IDEMPOTENCY#<project_id>#<sha256 of key>` | `IDEMPOTENCY` | | `Idempotency-Key` → run id and request digest (`ttl`) |
//!
//! The sparse index gsi6 lists the runs **in motion**, for the sweeper
//! ([`crate::engine::sweeper`]): `ACTIVE#<shard>` (the run id modulo
//! [`ACTIVE_SHARDS`](crate::store::runs::ACTIVE_SHARDS)) sorted by `<updated_at>#<run_id>`.
//! The writes that move a run set these keys (every move but to `succeeded` or `cancelled`);
//! parking the lifecycle's task token on a waiting run removes them, as does the sweeper when
//! it finds a failed run's lifecycle over. So the index holds only runs that should be moving
//! on by themselves, oldest change first, never the runs that ended or wait on a person.

/// A global secondary index with string keys and all attributes projected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexDef {
    /// Index name.
    pub name: &'static str,
    /// Partition key attribute.
    pub pk: &'static str,
    /// Sort key attribute.
    pub sk: &'static str,
}

/// A table: `pk`/`sk` string keys, its indexes and its TTL attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableDef {
    /// Suffix after the deployment prefix, e.g. `auth` → `{prefix}-auth`.
    pub suffix: &'static str,
    /// Partition key attribute.
    pub pk: &'static str,
    /// Sort key attribute.
    pub sk: &'static str,
    /// Global secondary indexes.
    pub indexes: &'static [IndexDef],
    /// Attribute holding the expiry in epoch seconds.
    pub ttl_attribute: &'static str,
}

/// The index over `gsi1pk`/`gsi1sk`.
pub const GSI1: IndexDef = IndexDef {
    name: "gsi1",
    pk: "gsi1pk",
    sk: "gsi1sk",
};

/// The index over `gsi2pk`/`gsi2sk`.
pub const GSI2: IndexDef = IndexDef {
    name: "gsi2",
    pk: "gsi2pk",
    sk: "gsi2sk",
};

/// The index over `gsi3pk`/`gsi3sk`.
pub const GSI3: IndexDef = IndexDef {
    name: "gsi3",
    pk: "gsi3pk",
    sk: "gsi3sk",
};

/// The index over `gsi4pk`/`gsi4sk`.
pub const GSI4: IndexDef = IndexDef {
    name: "gsi4",
    pk: "gsi4pk",
    sk: "gsi4sk",
};

/// The index over `gsi5pk`/`gsi5sk`.
pub const GSI5: IndexDef = IndexDef {
    name: "gsi5",
    pk: "gsi5pk",
    sk: "gsi5sk",
};

/// The index over `gsi6pk`/`gsi6sk`: sparse, only runs in motion carry its keys.
pub const GSI6: IndexDef = IndexDef {
    name: "gsi6",
    pk: "gsi6pk",
    sk: "gsi6sk",
};

/// The index over `gsi7pk`/`gsi7sk`: sparse, only runs started by a schedule carry its keys.
pub const GSI7: IndexDef = IndexDef {
    name: "gsi7",
    pk: "gsi7pk",
    sk: "gsi7sk",
};

/// Identities and sessions.
pub const AUTH: TableDef = TableDef {
    suffix: "auth",
    pk: "pk",
    sk: "sk",
    indexes: &[],
    ttl_attribute: "ttl",
};

/// Projects, memberships and API keys.
pub const PROJECTS: TableDef = TableDef {
    suffix: "projects",
    pk: "pk",
    sk: "sk",
    indexes: &[GSI1],
    ttl_attribute: "ttl",
};

/// Agents, tools, workflows and workflow versions.
pub const REGISTRY: TableDef = TableDef {
    suffix: "registry",
    pk: "pk",
    sk: "sk",
    indexes: &[GSI1, GSI2, GSI3, GSI4],
    ttl_attribute: "ttl",
};

/// Runs, run steps, run logs and idempotency keys.
pub const RUNS: TableDef = TableDef {
    suffix: "runs",
    pk: "pk",
    sk: "sk",
    indexes: &[GSI1, GSI2, GSI3, GSI4, GSI5, GSI6, GSI7],
    ttl_attribute: "ttl",
};

/// Every table of the deployment.
pub const TABLES: &[TableDef] = &[AUTH, PROJECTS, REGISTRY, RUNS];
