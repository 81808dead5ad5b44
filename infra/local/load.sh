#!/usr/bin/env bash
# `make load`: the load bench (tests/benches/load.rs) against the local services, which are
# started unless they already run (and then stopped again). Arguments go to the bench:
# --clients N (200), --seconds S (30), --url URL (a running server instead of one in process).
# LOAD_PROFILE=dev builds it unoptimised, reusing a debug build (default: cargo's bench
# profile, optimised).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

record="$RUN_DIR/started-by-load-$$"
stop_on_exit "$record"

bash "$LOCAL_SCRIPTS_DIR/install.sh" uv localstack dynamodb
DYNAMODB_IN_MEMORY=1 bash "$LOCAL_SCRIPTS_DIR/services.sh" start --record "$record"
aws_env
mapfile -t ci_flags < <(cargo_ci_flags)
step cargo bench --profile "${LOAD_PROFILE:-bench}" -p spark-ops-tests --bench load "${ci_flags[@]}" -- "$@"
