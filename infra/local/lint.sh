#!/usr/bin/env bash
# `make lint`: rustfmt, clippy (warnings are errors) and cfn-lint on template.yaml.
# Needs no running services. Stops at the first failure.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

bash "$LOCAL_SCRIPTS_DIR/install.sh" uv tools
mapfile -t ci_flags < <(cargo_ci_flags)

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets "${ci_flags[@]}" -- -D warnings
step "$TOOLS_VENV/bin/cfn-lint" template.yaml
