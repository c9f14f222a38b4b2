# The README's two commands are `make run` and `make test`; both install what they need first.
SHELL := /bin/bash
# uv from PATH, else a private copy in .venv-bootstrap (scripts/bootstrap-uv.py): never the system
# Python's pip, which Debian 12 / Ubuntu 24.04 refuse (PEP 668, externally-managed-environment).
BOOTSTRAP := .venv-bootstrap
UV := $(shell command -v uv 2>/dev/null || echo $(BOOTSTRAP)/bin/uv)
PYTEST_ARGS ?=

.PHONY: install tools browser-deps run test test-sqlite test-postgres test-fast lint format docs clean

$(BOOTSTRAP)/bin/uv:
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "make: python3 3.11 or newer is needed (found $$(python3 --version 2>&1))" >&2; exit 1; }
	python3 scripts/bootstrap-uv.py $(BOOTSTRAP)

.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

install: .venv/.installed

# promtool / amtool for the alert-rule tests (tests/unit/ops/test_alert_rules.py): from PATH, else the
# Debian packages unpacked into .venv-tools/ (scripts/ensure-promtool.sh; no root, nothing system-wide)
tools:
	@scripts/ensure-promtool.sh || echo "make tools: promtool unavailable; the alert-rule tests will say so" >&2

# The browser tests' parts (tests/support/oidc.py, tests/support/browser.py): Debian's chromium and
# chromium-driver and Node.js (scripts/ensure-infra.sh browser installs them where apt-get can), and the
# OIDC provider and axe-core from npm at the versions devtools/oidc-provider/package-lock.json names.
NODE_DEPS := devtools/oidc-provider/node_modules/.package-lock.json
$(NODE_DEPS): devtools/oidc-provider/package.json devtools/oidc-provider/package-lock.json
	@scripts/ensure-infra.sh browser
	cd devtools/oidc-provider && npm ci --no-audit --no-fund
	@touch $@

browser-deps: $(NODE_DEPS)
	@scripts/ensure-infra.sh browser

run: install
	@scripts/ensure-infra.sh run
	.venv/bin/sipctl run

# Every test on SQLite (the embedded default), then everything that runs a service store again with
# each store on PostgreSQL (tests/support/dbmode.py), with three of the six fault tests.
# Each test has its own vhost, databases, ports and processes, so the tests run on TEST_WORKERS
# processes (pytest-xdist with work stealing: the longest tests are handed out first, tests/conftest.py,
# and a worker that runs out takes half of the other's pending tests).
# Tests marked `exclusive` stop what the others use (the machine's RabbitMQ): they run alone, after.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist worksteal
test: test-sqlite test-postgres

test-sqlite: install tools
	@scripts/ensure-infra.sh test
	@$(MAKE) --no-print-directory browser-deps
	.venv/bin/python -m pytest $(XDIST) -m "not exclusive" $(PYTEST_ARGS)
	.venv/bin/python -m pytest -m exclusive $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: none collected (none left)

FAULT := tests/fault/test_no_loss_no_duplicates.py
PG_FAULT_TESTS := '$(FAULT)::test_kill_9_mid_stream[planning]' '$(FAULT)::test_two_planning_replicas_share_the_queues' \
	'$(FAULT)::test_every_message_delivered_twice'
test-postgres: install
	@scripts/ensure-infra.sh test
	SIP_TEST_DATABASE=postgres .venv/bin/python -m pytest $(XDIST) -m "not exclusive" tests/integration tests/e2e $(PG_FAULT_TESTS) $(PYTEST_ARGS)

# The quick loop: no broker, no PostgreSQL, no processes; property tests at a tenth of their examples
# (tests/support/examples.py; make test runs them in full).
test-fast: install tools
	SIP_TEST_PROFILE=fast .venv/bin/python -m pytest $(XDIST) -m "not e2e and not browser and not broker and not postgres and not fault and not slow" $(PYTEST_ARGS)

# Style, formatting, the import contracts and the types ([tool.ruff], [tool.importlinter] and [tool.mypy]
# in pyproject.toml); all from the dev dependencies `make install` puts in .venv, no network.
lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf var .pytest_cache .ruff_cache $(BOOTSTRAP)

docs: install
	.venv/bin/python -m devtools.gendocs
