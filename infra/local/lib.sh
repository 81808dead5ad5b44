# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Shared helpers for the local-stack scripts. Source it; don't run it.
#
# Everything the scripts install or create lives in <repo>/.local/ (git-ignored):
#   uv-venv/  localstack-venv/  tools-venv/  schemathesis-venv/  dynamodb-local/
#                                                              installed by install.sh
#   log/      run/                                             logs and pid files
#   localstack/<port>/  dynamodb-data/                         emulator data
#
# Ports come from LOCALSTACK_PORT (default 4566) and DYNAMODB_PORT (default 8000), so two
# checkouts, or a dev stack and a test stack, can run side by side.

set -euo pipefail

LOCAL_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_SCRIPTS_DIR/../.." && pwd)"

# shellcheck source=versions.env
source "$LOCAL_SCRIPTS_DIR/versions.env"

STATE_DIR="$REPO_ROOT/.local"
LOG_DIR="$STATE_DIR/log"
RUN_DIR="$STATE_DIR/run"
TMP_DIR="$STATE_DIR/tmp"
UV_VENV="$STATE_DIR/uv-venv"
UV_BIN="$UV_VENV/bin/uv"
LOCALSTACK_VENV="$STATE_DIR/localstack-venv"
TOOLS_VENV="$STATE_DIR/tools-venv"
DYNAMODB_LOCAL_DIR="$STATE_DIR/dynamodb-local"
LOCALSTACK_LOCK="$LOCAL_SCRIPTS_DIR/localstack-requirements.lock"
TOOLS_LOCK="$LOCAL_SCRIPTS_DIR/tools-requirements.txt"
SCHEMATHESIS_VENV="$STATE_DIR/schemathesis-venv"
SCHEMATHESIS_LOCK="$LOCAL_SCRIPTS_DIR/schemathesis-requirements.txt"

LOCALSTACK_PORT="${LOCALSTACK_PORT:-4566}"
DYNAMODB_PORT="${DYNAMODB_PORT:-8000}"
# Persistent DynamoDB data for `make dev`; override to run two persistent stacks from one checkout.
DYNAMODB_DATA_DIR="${DYNAMODB_DATA_DIR:-$STATE_DIR/dynamodb-data}"
# The interpreter every venv is built on, and the one the readiness probes use.
LOCAL_PYTHON="${LOCAL_PYTHON:-python$PYTHON_VERSION}"

# uv must never fetch a Python build. Hard links from its cache make a fresh .local cheap; uv
# copies instead (with a warning) when the cache is on another filesystem.
export UV_PYTHON_DOWNLOADS=never
export UV_LINK_MODE="${UV_LINK_MODE:-hardlink}"

for _port_var in LOCALSTACK_PORT DYNAMODB_PORT; do
  if [[ ! "${!_port_var}" =~ ^[0-9]+$ ]]; then
    printf '%s must be a port number, got %q\n' "$_port_var" "${!_port_var}" >&2
    exit 2
  fi
done
unset _port_var

LOG_TAG="$(basename "$0" .sh)"

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds since the epoch, with fractions, for timing messages.
now() { date +%s.%N; }
elapsed_since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1fs", e - s }'; }

# The cargo target dir as cargo will resolve it from the repo root.
cargo_target_dir() {
  local dir="${CARGO_TARGET_DIR:-target}"
  [[ "$dir" = /* ]] || dir="$REPO_ROOT/$dir"
  printf '%s\n' "$dir"
}

require_cmd() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not on PATH"
  done
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Point the AWS SDKs (and anything else in this shell) at the local services.
aws_env() {
  unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN
  export AWS_REGION=us-east-1
  export AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=test
  export AWS_SECRET_ACCESS_KEY=test
  export AWS_EC2_METADATA_DISABLED=true
  export AWS_ENDPOINT_URL="http://127.0.0.1:$LOCALSTACK_PORT"
  export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$DYNAMODB_PORT"
  export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
  export no_proxy="$NO_PROXY"
}

# probe KIND URL: is the service of KIND answering at URL?
#   exit 0: it is; 1: something answers, but not that service; 2: nothing answers.
# KIND is `localstack` (GET /_localstack/health) or `dynamodb` (a ListTables call).
# Python, not curl, because python3.11 is the one HTTP client every machine here has.
probe() {
  if [[ -z "${probe_python:-}" ]]; then
    # The interpreter itself, not a pyenv shim: this runs every half second.
    probe_python="$("$LOCAL_PYTHON" -c 'import sys; print(sys.executable)')" ||
      die "$LOCAL_PYTHON is required but does not run"
  fi
  "$probe_python" -I -S - "$@" 2>/dev/null <<'PY'
import sys, urllib.request, urllib.error
kind, url = sys.argv[1], sys.argv[2]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
if kind == "dynamodb":
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={
        "X-Amz-Target": "DynamoDB_20120810.ListTables",
        "Content-Type": "application/x-amz-json-1.0",
        "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/"
                         "aws4_request, SignedHeaders=host, Signature=x",
    })
    expect = b"TableNames"
else:
    req = urllib.request.Request(url)
    expect = b'"services"'
try:
    with opener.open(req, timeout=3) as resp:
        body = resp.read()
except urllib.error.HTTPError:
    sys.exit(1)
except Exception:
    sys.exit(2)
sys.exit(0 if expect in body else 1)
PY
}

# wait_for_url KIND URL TIMEOUT_SECONDS [PID]: poll until `probe KIND URL` succeeds.
# Gives up early if PID is given and that process has exited.
wait_for_url() {
  local kind="$1" url="$2" timeout="$3" pid="${4:-}"
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if probe "$kind" "$url"; then
      return 0
    fi
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      log "$kind (pid $pid) exited before it became ready"
      return 1
    fi
    sleep 0.5
  done
  log "$kind did not answer at $url within ${timeout}s"
  return 1
}

# Is PID a live (non-zombie) process?
pid_alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# The live processes in process group PGID, one pid a line.
group_members() {
  local pgid="$1" stat_file stat state pgrp
  for stat_file in /proc/[0-9]*/stat; do
    stat="$(cat "$stat_file" 2>/dev/null)" || continue
    stat="${stat##*) }"
    read -r state _ pgrp _ <<<"$stat"
    if [[ "$pgrp" == "$pgid" && "$state" != Z ]]; then
      stat_file="${stat_file#/proc/}"
      printf '%s\n' "${stat_file%/stat}"
    fi
  done
}

# The command line of PID, space-separated.
pid_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# start_detached PIDFILE LOGFILE CMD...: run CMD in a new session (so it is its own process
# group, and a Ctrl-C at the terminal does not reach it), with its pid written to PIDFILE.
start_detached() {
  local pidfile="$1" logfile="$2"
  shift 2
  rm -f "$pidfile"
  # shellcheck disable=SC2016  # $$ and $1 belong to the inner shell
  setsid -f bash -c 'echo "$$" >"$1.tmp" && mv "$1.tmp" "$1" && shift && exec "$@"' \
    bash "$pidfile" "$@" </dev/null >"$logfile" 2>&1
  local waited=0
  until [[ -s "$pidfile" ]]; do
    ((waited++ < 100)) || die "no pid file $pidfile after 10s"
    sleep 0.1
  done
}

# stop_group NAME PID: stop the process group led by PID, politely, then by force.
stop_group() {
  local name="$1" pgid="$2" deadline
  kill -TERM -- "-$pgid" 2>/dev/null || true
  deadline=$((SECONDS + ${STOP_TIMEOUT:-20}))
  while [[ -n "$(group_members "$pgid")" ]]; do
    if ((SECONDS >= deadline)); then
      log "$name (process group $pgid) ignored SIGTERM; sending SIGKILL"
      kill -KILL -- "-$pgid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
}

# Show the end of a log file, for start-up failures.
show_log_tail() {
  local file="$1"
  [[ -f "$file" ]] || return 0
  log "last lines of $file:"
  tail -n "${2:-40}" "$file" | sed 's/^/    /' >&2
}

# The DynamoDB Local jar inside the unpacked npm package (its folder name carries a date).
dynamodb_local_jar() {
  local jars=("$DYNAMODB_LOCAL_DIR"/lib/dynamodb_local_*/DynamoDBLocal.jar)
  [[ -f "${jars[0]}" ]] || return 1
  ((${#jars[@]} == 1)) || die "several DynamoDB Local jars under $DYNAMODB_LOCAL_DIR/lib"
  printf '%s\n' "${jars[0]}"
}

# Run a command, announcing it first.
step() {
  log "==> $*"
  "$@"
}

# Extra cargo flags for CI: there, Cargo.lock must already be up to date.
cargo_ci_flags() {
  if [[ -n "${CI:-}" && "${CI:-}" != false ]]; then
    printf '%s\n' --locked
  fi
}

# stop_on_exit RECORD: when the script exits (also on Ctrl-C or SIGTERM), stop the dev server
# whose pid is in `server_pid`, if one runs (SIGTERM, then SIGKILL after 10 s), then the
# services recorded in RECORD by `services.sh start --record`. The exit status is kept, or
# made 1 if stopping the services fails.
stop_on_exit() {
  stop_record="$1"
  trap stop_started EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

stop_started() {
  local rc=$? waited=0
  trap - EXIT INT TERM
  if [[ -n "${server_pid:-}" ]] && pid_alive "$server_pid"; then
    log "stopping the dev server (pid $server_pid)"
    kill -TERM "$server_pid" 2>/dev/null || true
    while pid_alive "$server_pid" && ((waited++ < 100)); do sleep 0.1; done
    pid_alive "$server_pid" && kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null || true
  fi
  bash "$LOCAL_SCRIPTS_DIR/services.sh" stop --record "$stop_record" || rc=1
  exit "$rc"
}
