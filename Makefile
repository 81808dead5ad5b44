# Entry points for local development and CI. Each target runs a script in infra/local/,
# which keeps its state in .local/ (see infra/local/lib.sh). Ports: LOCALSTACK_PORT (4566),
# DYNAMODB_PORT (8000); set them to run a second stack side by side.

SCRIPTS := infra/local

.PHONY: help dev test test-long-loop build lint services stop status install lock clean-local redrive
.PHONY: fuzz schemathesis load bench-scheduler

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{ printf "  make %-12s %s\n", $$1, $$2 }'

dev: ## Run the dev server against local services (Ctrl-C stops what it started)
	@bash $(SCRIPTS)/dev.sh

test: ## Lint, then run every test against local services (what CI runs)
	@bash $(SCRIPTS)/test.sh

build: ## Build the Lambda artifacts (release, x86_64) with cargo-lambda
	@bash $(SCRIPTS)/build.sh

test-long-loop: ## The 1000-iteration loop test, with its figures (needs `make services`)
	@bash -c 'source $(SCRIPTS)/lib.sh && aws_env && cargo test -p spark-ops-tests --test api a_loop_of_1000_iterations -- --ignored --nocapture'

lint: ## rustfmt check, clippy -D warnings, cfn-lint template.yaml
	@bash $(SCRIPTS)/lint.sh

services: ## Start LocalStack and DynamoDB Local and leave them running
	@bash $(SCRIPTS)/install.sh uv localstack dynamodb
	@bash $(SCRIPTS)/services.sh start

stop: ## Stop the services started from this checkout
	@bash $(SCRIPTS)/services.sh stop

status: ## Show whether the services are running
	@bash $(SCRIPTS)/services.sh status

install: ## Install the pinned local tools into .local/
	@bash $(SCRIPTS)/install.sh

lock: ## Regenerate the Python lock files from infra/local/versions.env
	@bash $(SCRIPTS)/lock.sh

clean-local: ## Stop the services and delete .local/
	@bash $(SCRIPTS)/clean-local.sh

redrive: ## Move the run dead-letter queue's messages back to the run queue (SPARK_OPS_PREFIX, default spark-ops-dev)
	@bash -c 'source $(SCRIPTS)/lib.sh && aws_env && cargo build -q -p spark-ops-dev-server && SPARK_OPS_PREFIX="$${SPARK_OPS_PREFIX:-spark-ops-dev}" "$$(cargo_target_dir)/debug/spark-ops-dev" redrive'

# Proof under hostile input: longer runs of what `make test` runs bounded, and the load bench.
fuzz: ## Run the property tests with 20000 cases each (PROPTEST_CASES to change)
	@bash $(SCRIPTS)/fuzz.sh

schemathesis: ## Schema-driven API tests against a dev server, longer than in `make test`
	@SCHEMATHESIS_MAX_EXAMPLES=$${SCHEMATHESIS_MAX_EXAMPLES:-100} SCHEMATHESIS_MAX_TIME=$${SCHEMATHESIS_MAX_TIME:-1500} \
		bash $(SCRIPTS)/schemathesis.sh

bench-scheduler: ## Scheduler bench: one tick with 10,000 due schedules (BENCH_SCHEDULES to change)
	@bash -c 'source $(SCRIPTS)/lib.sh && aws_env && cargo bench -p spark-ops-tests --bench scheduler'

load: ## Load bench: 200 clients for 30 s on a mixed workload (LOAD_ARGS="--url … --seconds …")
	@bash $(SCRIPTS)/load.sh $(LOAD_ARGS)
