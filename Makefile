# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv sysdeps vendor-js demo test lint clean

venv: $(STAMP)

# torch first, pinned: the local CPU wheel. An unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quicgw demo

# Debian packages the tests need: iproute2/procps for netem's namespaces (netem's own script) and
# Chromium for the dashboard's browser tests. Installed only when
# missing and we are root (CI is); otherwise say what to install and go on, and the browser
# tests fail under CI=true (they skip only on a developer machine without it).
sysdeps:
	@bash netem/ensure-system-deps.sh || echo "sysdeps: netem's system tools are missing (see above)" >&2
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "sysdeps: installing Debian's chromium (browser tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; \
	  else \
	    echo "sysdeps: /usr/bin/chromium is missing; install it (apt-get install chromium) to run the browser tests" >&2; \
	  fi; \
	fi

# Re-vendor the dashboard's charting library from npm (committed; only to change its version).
vendor-js:
	bash quicgw/dashboard/vendor_uplot.sh

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
