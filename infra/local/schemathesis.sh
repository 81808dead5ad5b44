#!/usr/bin/env bash
# Schema-driven API tests: start the dev server on its own port and prefix, give it a world
# to test in (two users, a project with a tool, an agent, a released workflow, a run, an API
# key, a credential and a member, and a spare project to delete), then let schemathesis
# generate requests from the served OpenAPI document and check every response: no 5xx, a
# documented status code, a documented content type, a body that matches its schema.
#
#   infra/local/schemathesis.sh            the bounded run of `make test`
#   SCHEMATHESIS_MAX_EXAMPLES=100 SCHEMATHESIS_MAX_TIME=1200 infra/local/schemathesis.sh
#                                          a longer one (`make schemathesis`)
#
#   SCHEMATHESIS_MAX_EXAMPLES  cases per operation and phase (default 10)
#   SCHEMATHESIS_MAX_TIME      seconds for the whole run (default 180)
#   SCHEMATHESIS_SEED          a seed, to repeat a run
#   DEV_SERVER_BIN             the dev server binary (default: built with cargo)
#
# The run worker is off: runs the fuzzer starts stay queued, and no generated tool or
# webhook URL is ever called. Requests carry the configured credentials only: schemathesis
# generates none of its own (a random `X-API-Key` next to a valid token is a plain 401). Services already running are reused; the ones this script
# starts are stopped at exit. The report goes to .local/schemathesis/.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-10}"
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-180}"
REPORT_DIR="$STATE_DIR/schemathesis"
record="$RUN_DIR/started-by-schemathesis-$$"
server_pid=""
stop_on_exit "$record"

started_at="$(now)"
bash "$LOCAL_SCRIPTS_DIR/install.sh" uv localstack dynamodb schemathesis
DYNAMODB_IN_MEMORY=1 bash "$LOCAL_SCRIPTS_DIR/services.sh" start --record "$record"

if [[ -n "${DEV_SERVER_BIN:-}" ]]; then
  server_bin="$DEV_SERVER_BIN"
else
  mapfile -t ci_flags < <(cargo_ci_flags)
  step cargo build -p spark-ops-dev-server "${ci_flags[@]}"
  server_bin="$(cargo_target_dir)/debug/spark-ops-dev"
fi

port="$("$LOCAL_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
prefix="sch$(date +%s)$$"
mkdir -p "$LOG_DIR" "$REPORT_DIR"
server_log="$LOG_DIR/schemathesis-dev-server.log"
aws_env
log "starting the dev server on port $port (prefix $prefix, log ${server_log#"$REPO_ROOT"/})"
PORT="$port" SPARK_OPS_PREFIX="$prefix" RUN_WORKER_ENABLED=false RUST_LOG=warn \
  ACCESS_TOKEN_TTL_SECONDS=7200 CORS_ALLOWED_ORIGINS="" \
  "$server_bin" >"$server_log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"

# The world the generated requests act in; prints `export NAME=value` lines.
world="$("$SCHEMATHESIS_VENV/bin/python" - "$base" <<'PY'
import json, sys, time, urllib.error, urllib.request, uuid

base = sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def call(method, path, body=None, token=None, expect=(200, 201, 202)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(req, timeout=30) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read()
    if status not in expect:
        sys.exit(f"{method} {path}: {status} {text[:500]!r}")
    return json.loads(text) if text else None

deadline = time.time() + 120
while True:
    try:
        with opener.open(base + "/health", timeout=3) as resp:
            if resp.status == 200:
                break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("the dev server did not become healthy within 120 s")
    time.sleep(0.5)

unique = uuid.uuid4().hex[:12]
password = "violet-tundra-cascade-42"

def user(name):
    email = f"{name}-{unique}@example.com"
    call("POST", "/api/v1/auth/register", {"email": email, "password": password, "name": name})
    login = call("POST", "/api/v1/auth/login", {"email": email, "password": password})
    return email, login["access_token"]

owner_email, token = user("owner")
spare_email, spare_token = user("spare")
me = call("GET", "/api/v1/auth/me", token=spare_token)
project = call("POST", "/api/v1/projects", {"name": "Fuzzed", "slug": f"fuzzed-{unique}"}, token)["id"]
doomed = call("POST", "/api/v1/projects", {"name": "Doomed", "slug": f"doomed-{unique}"}, token)["id"]
call("POST", f"/api/v1/projects/{project}/members", {"email": spare_email, "role": "developer"}, token)
call("POST", f"/api/v1/projects/{project}/members", {"email": f"invitee-{unique}@example.com", "role": "viewer"}, token)
key = call("POST", f"/api/v1/projects/{project}/api-keys", {"name": "Fuzz key", "role": "developer"}, token)
tool = call("POST", "/api/v1/tools", {
    "project_id": project, "name": "Lookup", "kind": "http", "auth_type": "none", "env": "dev",
    "config": {"url": "https://api.example.com/lookup", "method": "POST"},
}, token)["id"]
agent = call("POST", "/api/v1/agents", {
    "project_id": project, "name": "Fuzz agent", "runtime": "python", "model": "gpt-4o-mini",
    "env": "dev",
}, token)["id"]
workflow = call("POST", "/api/v1/workflows", {
    "project_id": project, "name": "Check", "definition": {"steps": [
        {"id": "check", "type": "decision", "config": {"condition": "input.n > 0", "then": []}},
    ]},
}, token)["id"]
call("POST", f"/api/v1/workflows/{workflow}/versions", {}, token)
call("PATCH", f"/api/v1/workflows/{workflow}/versions/1", {"status": "released"}, token)
run = call("POST", "/api/v1/runs", {
    "workflow_id": workflow, "agent_id": agent, "env": "dev", "input": {"n": 1},
}, token)["id"]
credential = call("POST", "/api/v1/credentials", {
    "project_id": project, "name": "Hook token", "origin": "https://hooks.example.com",
    "value": "s3cret-value",
}, token)["id"]

for name, value in {
    "SPARK_TOKEN": token, "SPARK_SPARE_TOKEN": spare_token, "SPARK_PROJECT_ID": project,
    "SPARK_DOOMED_PROJECT_ID": doomed, "SPARK_MEMBER_ID": me["id"],
    "SPARK_INVITEE": f"invitee-{unique}@example.com", "SPARK_KEY_ID": key["id"],
    "SPARK_TOOL_ID": tool, "SPARK_AGENT_ID": agent, "SPARK_WORKFLOW_ID": workflow,
    "SPARK_RUN_ID": run, "SPARK_CREDENTIAL_ID": credential,
}.items():
    print(f"export {name}={value}")
PY
)" || { show_log_tail "$server_log"; die "could not set up the world to test in"; }
eval "$world"

args=(
  run "$base/api/v1/openapi.json"
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
  --max-examples "$MAX_EXAMPLES"
  --max-time "$MAX_TIME"
  --workers 1
  --request-timeout 30
  --generation-database none
  --generation-with-security-parameters false
  --report junit --report-dir "$REPORT_DIR"
  --no-color
)
[[ -z "${SCHEMATHESIS_SEED:-}" ]] || args+=(--seed "$SCHEMATHESIS_SEED")
log "schemathesis: $MAX_EXAMPLES examples per operation, at most ${MAX_TIME}s"
# One worker: Python 3.11's parser is not thread-safe under hypothesis's lambda descriptions
# ("AST constructor recursion depth mismatch"). From the report directory, where hypothesis
# keeps its own files.
set +e
(cd "$REPORT_DIR" && NO_PROXY="127.0.0.1,localhost" "$SCHEMATHESIS_VENV/bin/schemathesis" \
  --config-file "$LOCAL_SCRIPTS_DIR/schemathesis.toml" "${args[@]}")
rc=$?
set -e
if ((rc != 0)); then
  show_log_tail "$server_log"
  die "schemathesis found failures (exit $rc); report in ${REPORT_DIR#"$REPO_ROOT"/}"
fi
log "schemathesis passed in $(elapsed_since "$started_at")"
