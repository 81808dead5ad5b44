#!/usr/bin/env bash
# `make fuzz`: the property tests of the library (workflow definitions, templates, CEL,
# manifests, JSON storability) with PROPTEST_CASES cases each (default 20000, where
# `make test` runs 64). They need no services.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
started_at="$(now)"
mapfile -t ci_flags < <(cargo_ci_flags)
step cargo test -p spark-ops --lib "${ci_flags[@]}" properties
log "$PROPTEST_CASES cases per property passed in $(elapsed_since "$started_at")"
