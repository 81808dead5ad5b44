#!/usr/bin/env bash
# Start, stop or inspect the local AWS services, both listening on loopback only (they hold
# every local secret and table; `services.sh check` verifies it):
#   LocalStack      (host mode, no Docker)  on 127.0.0.1:$LOCALSTACK_PORT (default 4566)
#   DynamoDB Local  (Java)                  on 127.0.0.1:$DYNAMODB_PORT (default 8000)
#
#   services.sh start [--record FILE] [localstack] [dynamodb]
#       Start the named services (default both) and wait until they answer. A service already
#       answering on its port is reused, not restarted. With --record, each service this call
#       starts is appended to FILE as "name port" as soon as it is launched, so the caller can
#       later stop exactly those with `stop --record FILE`. If a start fails or is interrupted,
#       the services this call started are stopped again.
#       DYNAMODB_IN_MEMORY=1 runs DynamoDB Local in memory; otherwise its data persists in
#       $DYNAMODB_DATA_DIR (default .local/dynamodb-data).
#   services.sh stop [--record FILE | localstack | dynamodb ...]
#       Stop the services recorded in FILE, or the named ones on the configured ports, or with
#       no argument every service these scripts started from this checkout, on any port.
#       A whole process group is stopped: SIGTERM, then SIGKILL after STOP_TIMEOUT (20s).
#   services.sh status
#   services.sh check [localstack] [dynamodb]
#       Check that each named service (default both) listens on loopback only, from the kernel's
#       socket tables (/proc/net/tcp, /proc/net/tcp6). A service these scripts started that
#       listens on another address fails the check; one started some other way is only warned
#       about, since restarting it is its owner's call. test.sh runs this after starting.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOCALSTACK_SERVICES="sqs,stepfunctions,events,secretsmanager,sts,iam,s3"
LOCALSTACK_START_TIMEOUT="${LOCALSTACK_START_TIMEOUT:-180}"
DYNAMODB_START_TIMEOUT="${DYNAMODB_START_TIMEOUT:-90}"

usage() { sed -n '2,/^source/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

port_of() {
  case "$1" in
    localstack) printf '%s\n' "$LOCALSTACK_PORT" ;;
    dynamodb) printf '%s\n' "$DYNAMODB_PORT" ;;
    *) die "unknown service '$1' (expected localstack or dynamodb)" ;;
  esac
}
url_of() {
  case "$1" in
    localstack) printf 'http://127.0.0.1:%s/_localstack/health\n' "$2" ;;
    dynamodb) printf 'http://127.0.0.1:%s/\n' "$2" ;;
  esac
}
title_of() { [[ "$1" == localstack ]] && echo LocalStack || echo "DynamoDB Local"; }
pidfile_of() { printf '%s/%s-%s.pid\n' "$RUN_DIR" "$1" "$2"; }
logfile_of() { printf '%s/%s-%s.log\n' "$LOG_DIR" "$1" "$2"; }

# our_pid NAME PORT: the pid of NAME on PORT started by these scripts, if it is still running.
# A pid file whose process is gone (or is now some other program) is removed.
our_pid() {
  local pidfile pid signature
  pidfile="$(pidfile_of "$1" "$2")"
  [[ -s "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$1" == localstack ]] && signature="localstack.runtime.main" || signature="DynamoDBLocal.jar"
  if [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid" && [[ "$(pid_cmdline "$pid")" == *"$signature"* ]]; then
    printf '%s\n' "$pid"
    return 0
  fi
  rm -f "$pidfile"
  return 1
}

launch_localstack() {
  local port="$1" pidfile="$2" logfile="$3" root="$STATE_DIR/localstack/$1"
  [[ -x "$LOCALSTACK_VENV/bin/python" ]] || die "LocalStack is not installed; run: make install"
  mkdir -p "$root"
  (
    # LocalStack's own AWS clients must not follow endpoints meant for our code.
    unset "${!AWS_@}"
    export GATEWAY_LISTEN="127.0.0.1:$port" LOCALSTACK_HOST="127.0.0.1:$port"
    # Its default gateway server (twisted) ignores the host in GATEWAY_LISTEN and listens on
    # 0.0.0.0; hypercorn binds the address given.
    export GATEWAY_SERVER=hypercorn
    export SQS_ENDPOINT_STRATEGY=path SERVICES="$LOCALSTACK_SERVICES" EAGER_SERVICE_LOADING=1
    # Keep its files under .local/localstack/<port>, so side-by-side instances stay apart. This
    # machine has a /.dockerenv, and LocalStack would otherwise take it for its container and
    # use (and clear at start-up) /tmp/localstack.
    export OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$root" LOCALSTACK_VOLUME_DIR="$root/volume"
    # Offline machine: no analytics, no certificate download.
    export DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1
    cd "$root"
    start_detached "$pidfile" "$logfile" "$LOCALSTACK_VENV/bin/python" -m localstack.runtime.main
  )
}

launch_dynamodb() {
  local port="$1" pidfile="$2" logfile="$3" jar lib args
  require_cmd java
  jar="$(dynamodb_local_jar)" || die "DynamoDB Local is not installed; run: make install"
  lib="$(dirname "$jar")/DynamoDBLocal_lib"
  # No -cors: without it, it sends no CORS headers, so no web page can read it (its -help
  # says the default allow-list is "*"; that is only with a bare -cors).
  args=(-port "$port" -sharedDb -disableTelemetry)
  if [[ "${DYNAMODB_IN_MEMORY:-0}" == 1 ]]; then
    args+=(-inMemory)
  else
    mkdir -p "$DYNAMODB_DATA_DIR"
    args+=(-dbPath "$DYNAMODB_DATA_DIR")
  fi
  (
    cd "$STATE_DIR"
    # DynamoDB Local's own main listens on every interface and has no option to choose; this
    # single-file launcher binds it to 127.0.0.1 (see the file).
    start_detached "$pidfile" "$logfile" \
      java "-Djava.library.path=$lib" -cp "$jar:$lib/*" \
      "$LOCAL_SCRIPTS_DIR/LoopbackDynamoDBLocal.java" "${args[@]}"
  )
}

started_now=()
to_wait=()
record_file=""
start_ok=""
t0=""

# launch_one NAME: launch NAME unless it already runs, and queue it for await_one.
launch_one() {
  local name="$1" port url pidfile logfile rc=0 title
  port="$(port_of "$name")"
  url="$(url_of "$name" "$port")"
  title="$(title_of "$name")"
  pidfile="$(pidfile_of "$name" "$port")"
  logfile="$(logfile_of "$name" "$port")"

  if our_pid "$name" "$port" >/dev/null; then
    # Started earlier by these scripts (maybe still starting up): reuse it.
    to_wait+=("$name reused")
    return
  fi
  probe "$name" "$url" || rc=$?
  case "$rc" in
    0) log "reusing $title already answering on port $port (not started by these scripts)"; return ;;
    1) die "port $port answers, but not as $title; pick another port with $(tr '[:lower:]' '[:upper:]' <<<"$name")_PORT" ;;
  esac

  mkdir -p "$RUN_DIR" "$LOG_DIR"
  "launch_$name" "$port" "$pidfile" "$logfile"
  started_now+=("$name $port")
  [[ -z "$record_file" ]] || printf '%s %s\n' "$name" "$port" >>"$record_file"
  to_wait+=("$name launched")
}

# await_one NAME HOW: wait until NAME answers; HOW is "reused" or "launched".
await_one() {
  local name="$1" how="$2" port url logfile pid timeout title
  port="$(port_of "$name")"
  url="$(url_of "$name" "$port")"
  title="$(title_of "$name")"
  logfile="$(logfile_of "$name" "$port")"
  pid="$(<"$(pidfile_of "$name" "$port")")"
  [[ "$name" == localstack ]] && timeout="$LOCALSTACK_START_TIMEOUT" || timeout="$DYNAMODB_START_TIMEOUT"
  if ! wait_for_url "$name" "$url" "$timeout" "$pid"; then
    show_log_tail "$logfile"
    die "$title (pid $pid) is not answering on port $port (log: ${logfile#"$REPO_ROOT"/})"
  fi
  if [[ "$how" == reused ]]; then
    log "reusing $title on port $port (pid $pid, already running)"
  else
    log "started $title on port $port, ready in $(elapsed_since "$t0") (pid $pid, log ${logfile#"$REPO_ROOT"/})"
  fi
}

# stop_one NAME PORT [already]: with "already", a service that is not running is reported as
# already stopped (it was ours, and something stopped it first).
stop_one() {
  local name="$1" port="$2" pid title
  title="$(title_of "$name")"
  if pid="$(our_pid "$name" "$port")"; then
    stop_group "$title" "$pid"
    rm -f "$(pidfile_of "$name" "$port")"
    log "stopped $title on port $port (pid $pid)"
  elif [[ "${3:-}" == already ]]; then
    log "$title on port $port is already stopped"
  else
    log "$title on port $port was not started by these scripts; nothing to stop"
  fi
}

stop_started_unless_ok() {
  local entry
  [[ -z "$start_ok" ]] || return 0
  for entry in "${started_now[@]}"; do
    stop_one "${entry% *}" "${entry#* }"
  done
}

cmd_start() {
  local names=() name entry i
  while (($#)); do
    case "$1" in
      --record) record_file="${2:?--record needs a file}"; shift 2 ;;
      localstack | dynamodb) names+=("$1"); shift ;;
      *) usage ;;
    esac
  done
  ((${#names[@]})) || names=(localstack dynamodb)
  [[ -z "$record_file" ]] || { mkdir -p "$(dirname "$record_file")"; touch "$record_file"; }

  # On failure or interruption, stop what this call started; leave everything else alone.
  trap stop_started_unless_ok EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # Launch all first, then wait: they start up in parallel. Waiting in reverse order checks
  # the quick DynamoDB Local before the slow LocalStack, so both reported times are true.
  t0="$(now)"
  for name in "${names[@]}"; do
    launch_one "$name"
  done
  for ((i = ${#to_wait[@]} - 1; i >= 0; i--)); do
    entry="${to_wait[i]}"
    await_one "${entry% *}" "${entry#* }"
  done
  start_ok=1
}

cmd_stop() {
  local pidfile base name port
  if (($# == 0)); then
    for pidfile in "$RUN_DIR"/*.pid; do
      [[ -e "$pidfile" ]] || continue
      base="$(basename "$pidfile" .pid)"
      stop_one "${base%-*}" "${base##*-}"
    done
    return
  fi
  if [[ "$1" == --record ]]; then
    local file="${2:?--record needs a file}"
    [[ -f "$file" ]] || return 0
    while read -r name port; do
      [[ -z "$name" ]] || stop_one "$name" "$port" already
    done <"$file"
    rm -f "$file"
    return
  fi
  for name in "$@"; do
    stop_one "$name" "$(port_of "$name")"
  done
}

cmd_status() {
  local name port pid rc title
  for name in localstack dynamodb; do
    port="$(port_of "$name")"
    title="$(title_of "$name")"
    if pid="$(our_pid "$name" "$port")"; then
      echo "$title: running on port $port (pid $pid, log ${LOG_DIR#"$REPO_ROOT"/}/$name-$port.log)"
    else
      rc=0
      probe "$name" "$(url_of "$name" "$port")" || rc=$?
      case "$rc" in
        0) echo "$title: answering on port $port (not started by these scripts)" ;;
        1) echo "$title: not running; port $port is taken by something else" ;;
        *) echo "$title: not running (port $port)" ;;
      esac
    fi
  done
}

# The addresses (hex, as the kernel prints them) listening on TCP port $1.
listen_addresses() {
  local port_hex
  port_hex="$(printf '%04X' "$1")"
  awk -v port="$port_hex" 'FNR > 1 && $4 == "0A" { split($2, local, ":"); if (local[2] == port) print local[1] }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Is the hex address $1 (from /proc/net/tcp or tcp6) a loopback address?
is_loopback() {
  case "$1" in
    ??????7F) return 0 ;;                         # 127.0.0.0/8 (IPv4 bytes are reversed)
    00000000000000000000000001000000) return 0 ;; # ::1
    0000000000000000FFFF0000??????7F) return 0 ;; # ::ffff:127.0.0.0/104
    *) return 1 ;;
  esac
}

# A hex address as people read it.
readable_address() {
  case "$1" in
    00000000) echo "0.0.0.0 (every IPv4 interface)" ;;
    00000000000000000000000000000000) echo ":: (every interface)" ;;
    ????????) printf '%d.%d.%d.%d\n' "0x${1:6:2}" "0x${1:4:2}" "0x${1:2:2}" "0x${1:0:2}" ;;
    *) echo "IPv6 $1" ;;
  esac
}

cmd_check() {
  local names=("$@") name port title address addresses exposed failed=""
  ((${#names[@]})) || names=(localstack dynamodb)
  [[ -r /proc/net/tcp ]] || die "cannot read /proc/net/tcp to check the listening addresses"
  for name in "${names[@]}"; do
    port="$(port_of "$name")"
    title="$(title_of "$name")"
    mapfile -t addresses < <(listen_addresses "$port")
    if ((${#addresses[@]} == 0)); then
      log "$title: nothing listens on port $port"
      continue
    fi
    exposed=()
    for address in "${addresses[@]}"; do
      is_loopback "$address" || exposed+=("$(readable_address "$address")")
    done
    if ((${#exposed[@]} == 0)); then
      log "$title: port $port listens on loopback only"
    elif our_pid "$name" "$port" >/dev/null; then
      log "error: $title (started by these scripts) listens on port $port at ${exposed[*]}: anyone on the network can reach it"
      failed=1
    else
      log "warning: $title on port $port, not started by these scripts, listens at ${exposed[*]}: anyone on the network can reach it; restart it with these scripts"
    fi
  done
  [[ -z "$failed" ]]
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status ;;
  check) shift; cmd_check "$@" ;;
  *) usage ;;
esac
