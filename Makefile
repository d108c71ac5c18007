# dsafs build and test plumbing. Works on a fresh Debian 12 machine as root with no stdin:
#   make test     install what is missing, then run the whole pytest suite
#   make demo     install, then show dsafs working
#   make install  only the install step (Debian packages + .venv)
#   make bench    install, then run bench/run.py (fio: raw vs DSA), bench/merge.py (merge),
#                 bench/minicopy.py (writes with a minicopy bitmap vs none; return time) and
#                 bench/hbmm.py (writes with HBMM on vs off; minimerge vs full merge after kill -9)
#                 and bench/split.py (how long a split holds the writes under fio)
#   make crash    install, then the power-cut simulation: N cut points (default 1000);
#                 SEED=S replays one scenario (CUT=C: one cut of it)
#   make soak     install, then the kill -9 soak with a real daemon for SECONDS (default 600)
#   make fuzz     install, then the control-socket fuzz against a real daemon with N messages
#                 (default 50000; make test runs 4000); SEED=S replays one run
#   make clean    remove .venv and caches
# Extra pytest arguments: make test PYTEST_ARGS='-x -k scb'

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Debian's python3 creates the venv: python3-dev and python3-venv (installed by
# contrib/install-deps.sh) give it the headers pyfuse3 builds against and ensurepip.
VENV_PYTHON ?= /usr/bin/python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.dsafs-installed
PYTEST_ARGS ?=

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all install system-deps test demo bench crash soak fuzz clean

all: test

install: system-deps $(STAMP)

# Cheap (dpkg-query only) unless a package is missing; runs on every install.
system-deps:
	@bash contrib/install-deps.sh

# Re-done only when the package metadata changes (or .venv is gone).
$(STAMP): setup.cfg pyproject.toml | system-deps
	@if ! $(PY) -c 'import sys' >/dev/null 2>&1; then \
	    echo "creating $(VENV) with $(VENV_PYTHON)"; \
	    rm -rf $(VENV); \
	    $(VENV_PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install --progress-bar off -e '.[test]'
	$(PY) -c 'import pyfuse3, trio, xxhash, dsafs; print("dsafs", dsafs.__version__, "installed; pyfuse3", pyfuse3.__version__)'
	@touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	@bash contrib/demo.sh

# A benchmark that misses a floor (exit 1) does not stop the ones after it: make bench fails at
# the end. Any other failure (2: usage, not root; 130: Ctrl-C or SIGTERM) stops it at once.
BENCHES := run merge minicopy hbmm split

bench: install
	@rc=0; for b in $(BENCHES); do \
	    echo "$(PY) bench/$$b.py"; \
	    $(PY) bench/$$b.py || { s=$$?; [ $$s -eq 1 ] || exit $$s; rc=1; }; \
	done; exit $$rc

N       ?= 1000
SECONDS ?= 600
SEED    ?=
CUT     ?=

crash: install
	$(PY) -m tests.crash.powercut --cuts $(N) $(if $(SEED),--seed $(SEED) -v) $(if $(CUT),--cut $(CUT))

soak: install
	$(PY) -m tests.crash.soak --seconds $(SECONDS) $(if $(SEED),--seed $(SEED))

# N given on the command line (or in the environment) wins; else fuzz's own default.
FUZZ_N := $(if $(filter command line environment,$(origin N)),$(N),50000)

fuzz: install
	DSAFS_FUZZ_N=$(FUZZ_N) DSAFS_FUZZ_SEED=$(SEED) $(PY) -m pytest tests/fuzz -q -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
