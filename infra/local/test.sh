#!/usr/bin/env bash
# `make test` (and CI): install the local stack, run the linters (lint.sh), start the services
# unless they already run (a fresh DynamoDB Local is in memory), check that they listen on
# loopback only, then `cargo test --workspace` against them (the property tests among them,
# PROPTEST_CASES each, 64 unless set), then a bounded schemathesis run against the dev server
# (schemathesis.sh). Tests isolate their data with unique prefixes, so reused services are fine.
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
step bash "$LOCAL_SCRIPTS_DIR/schemathesis.sh"
log "all checks passed in $(elapsed_since "$started_at")"
