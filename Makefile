# Two commands do everything from a clean clone: `make demo` and `make test`.
# Both create .venv on first use (torch pinned first, so the resolver never pulls a CUDA build).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUILD  := $(CURDIR)/.build
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

# Offline, quiet, and nothing left outside the repo's .build/.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TORCHAO_FORCE_SKIP_LOADING_SO_FILES := 1
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
RUNENV := TMPDIR=$(BUILD)/tmp XDG_CACHE_HOME=$(BUILD)/cache TORCHINDUCTOR_CACHE_DIR=$(BUILD)/inductor MPLCONFIGDIR=$(BUILD)/mpl

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	# compat: the checkout goes on sys.path via a .pth, so a user's ./data folder (a namespace package)
	# cannot shadow the `data` package as it does with the default import-hook editable install
	$(PY) -m pip install -q -e ".[dev,ray]" --config-settings editable_mode=compat
	mkdir -p $(BUILD)/tmp $(BUILD)/cache $(BUILD)/inductor $(BUILD)/mpl
	touch $(STAMP)

demo: $(STAMP)
	$(RUNENV) $(PY) -m mandc.demo --out $(CURDIR)/out/demo

test: $(STAMP)
	$(RUNENV) $(PY) -m pytest -q tests

bench: $(STAMP)
	@echo "see benchmarks/README.md"

clean:
	rm -rf $(BUILD) out
