#!/usr/bin/env bash
# `make clean-local`: stop the services these scripts started from this checkout, then delete
# .local/ (venvs, DynamoDB Local, logs, emulator data). Leaves cargo's target dir alone.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$LOCAL_SCRIPTS_DIR/services.sh" stop
rm -rf "$STATE_DIR"
log "removed ${STATE_DIR#"$REPO_ROOT"/}"
