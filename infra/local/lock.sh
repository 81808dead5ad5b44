#!/usr/bin/env bash
# Regenerate the Python lock files from the pins in versions.env (run after changing a pin):
#   localstack-requirements.lock    LocalStack and its dependencies as of its release date
#   tools-requirements.txt          cfn-lint, cargo-lambda, ziglang and their dependencies
#   schemathesis-requirements.txt   schemathesis and its dependencies
# All carry hashes, so install.sh installs exactly what was locked.
#
#   infra/local/lock.sh [localstack] [tools] [schemathesis]    (default: all three)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$LOCAL_SCRIPTS_DIR/install.sh" uv
mkdir -p "$TMP_DIR"
cd "$REPO_ROOT"

compile() {
  local input="$1" output="$2"
  shift 2
  "$UV_BIN" pip compile --quiet --generate-hashes --python-version "$PYTHON_VERSION" \
    --custom-compile-command "infra/local/lock.sh" "$@" "$input" -o "$output"
  log "wrote ${output#"$REPO_ROOT"/}"
}

locks=("$@")
((${#locks[@]})) || locks=(localstack tools schemathesis)

for lock in "${locks[@]}"; do
  case "$lock" in
    localstack)
      printf 'localstack-core[runtime]==%s\n' "$LOCALSTACK_VERSION" >"$TMP_DIR/localstack.in"
      compile "$TMP_DIR/localstack.in" "$LOCALSTACK_LOCK" --exclude-newer "$LOCALSTACK_EXCLUDE_NEWER"
      ;;
    tools)
      printf '%s\n' "cfn-lint==$CFN_LINT_VERSION" "cargo-lambda==$CARGO_LAMBDA_VERSION" \
        "ziglang==$ZIGLANG_VERSION" >"$TMP_DIR/tools.in"
      compile "$TMP_DIR/tools.in" "$TOOLS_LOCK"
      ;;
    schemathesis)
      printf 'schemathesis==%s\n' "$SCHEMATHESIS_VERSION" >"$TMP_DIR/schemathesis.in"
      compile "$TMP_DIR/schemathesis.in" "$SCHEMATHESIS_LOCK"
      ;;
    *) die "unknown lock '$lock' (expected localstack, tools or schemathesis)" ;;
  esac
done
