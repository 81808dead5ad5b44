#!/usr/bin/env bash
# `make dev`: install the local stack, start the services (DynamoDB data persists in
# .local/dynamodb-data), build and run the dev server (spark-ops-dev) against them.
# The server provisions its own resources and prints its URLs.
#
#   PORT               the dev server's port (default 3000)
#   SPARK_OPS_PREFIX   prefix of the resources it provisions (default spark-ops-dev)
#   CORS_ALLOWED_ORIGINS  browser origins allowed by CORS (default http://localhost:5173, the
#                      local console's dev server; set it empty to allow none). Deployed
#                      stacks and the code default allow none.
#   DEV_SERVER_CMD     run this command instead of building and running spark-ops-dev
#                      (split on spaces), e.g. to run it under a debugger
#
# Ctrl-C (or SIGTERM) stops the server and the services this script started; services that
# were already running (say from `make services`) are left running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

record="$RUN_DIR/started-by-dev-$$"
server_pid=""
stop_on_exit "$record"

bash "$LOCAL_SCRIPTS_DIR/install.sh" uv localstack dynamodb
bash "$LOCAL_SCRIPTS_DIR/services.sh" start --record "$record"

if [[ -n "${DEV_SERVER_CMD:-}" ]]; then
  read -r -a server_cmd <<<"$DEV_SERVER_CMD"
else
  step cargo build -p spark-ops-dev-server
  server_cmd=("$(cargo_target_dir)/debug/spark-ops-dev")
fi

aws_env
export PORT="${PORT:-3000}"
export SPARK_OPS_PREFIX="${SPARK_OPS_PREFIX:-spark-ops-dev}"
export CORS_ALLOWED_ORIGINS="${CORS_ALLOWED_ORIGINS-http://localhost:5173}"
log "starting ${server_cmd[*]} (PORT=$PORT, SPARK_OPS_PREFIX=$SPARK_OPS_PREFIX); Ctrl-C stops it"
# In the background, so that this shell's traps run as soon as a signal arrives.
"${server_cmd[@]}" &
server_pid=$!
wait "$server_pid"
