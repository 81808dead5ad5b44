#!/usr/bin/env bash
# `make test` (and CI): install the local stack, run the linters (lint.sh), start the services
# unless they already run (a fresh DynamoDB Local is in memory), check that they listen on
# loopback only, then `cargo test --workspace` against them (the property tests among them,
# PROPTEST_CASES each, 64 unless set), then a bounded schemathesis run against the dev server
# (schemathesis.sh, on the dev server binary the tests built). Tests isolate their data with unique prefixes, so reused services are fine.
# Stops at the first failure, and in any case stops the services this script started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

record="$RUN_DIR/started-by-test-$$"
stop_on_exit "$record"

started_at="$(now)"
bash "$LOCAL_SCRIPTS_DIR/install.sh"
bash "$LOCAL_SCRIPTS_DIR/lint.sh"
DYNAMODB_IN_MEMORY=1 bash "$LOCAL_SCRIPTS_DIR/services.sh" start --record "$record"
# The services hold every local secret: they must not be reachable from the network.
bash "$LOCAL_SCRIPTS_DIR/services.sh" check

aws_env
mapfile -t ci_flags < <(cargo_ci_flags)
step cargo test --workspace "${ci_flags[@]}"
# The dev server binary the e2e tests just used: `cargo build -p spark-ops-dev-server` alone
# would unify features differently and rebuild its dependencies for minutes.
DEV_SERVER_BIN="$(cargo_target_dir)/debug/spark-ops-dev" step bash "$LOCAL_SCRIPTS_DIR/schemathesis.sh"
log "all checks passed in $(elapsed_since "$started_at")"
