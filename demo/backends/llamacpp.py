"""The llama.cpp runtime: GGUF variants through llama-cpp-python, in this process, on the device thread.

Prompts are the base model's own token ids (never llama.cpp's tokenizer or chat renderer), so a GGUF
variant gets exactly what the transformers variants get, and the baseline's answer can be teacher-forced
through it. llama.cpp uses as many threads as torch and never runs beside a torch job (demo.running.device).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demo.artifacts import cache, gguf, sources
from demo.backends import kernels
from demo.backends.base import LoadedVariant, OnToken
from demo.backends.common import cuda_available, first_line
from demo.config import BaseModel, Variant
from demo.errors import DamagedCheckpoint, NotQuantized, VariantUnavailable
from demo.measuring import kv_cache
from demo.settings import GenerationSettings

log = logging.getLogger(__name__)
GGUF_FILE = "model.gguf"  # inside a folder made by demo.quantize
MIN_CONTEXT = 512  # demo.evaluate scores windows of 512 tokens


def settings_n_ctx(variant: Variant) -> int:
    return int(variant.settings["n_ctx"])


class LlamaCppVariant(LoadedVariant):
    runtime = "llama.cpp"

    def __init__(self, variant: Variant, llm: Any, tokenizer: Any, device: str, stop_token_ids: frozenset[int],
                 facts: dict[str, Any]):
        import llama_cpp

        super().__init__(variant, tokenizer, device, int(llama_cpp.llama_model_size(llm.model)), stop_token_ids,
                         llm.n_ctx())
        if not hasattr(llm, "_logits_all") or not hasattr(llm, "scores"):  # see logits(): pinned internals
            raise VariantUnavailable("not available: this llama-cpp-python version lacks the internals the arena "
                                     "scores with; install the version in requirements-gguf.txt")
        self.llm, self._facts = llm, facts

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop: threading.Event,
                 on_token: OnToken) -> None:
        for count, token in enumerate(self._tokens(prompt_ids, settings), start=1):
            on_token(token, time.perf_counter())
            if token in self.stop_token_ids or count >= settings.max_new_tokens or stop.is_set():
                return

    def logits(self, ids: list[int], prompt_tokens: int | None = None, first_row: int = 0) -> torch.Tensor:
        # llama.cpp writes every token's keys and values to its cache (quantized or not) before attending, the
        # prompt's included: one pass over every id is what generation computes, wherever its prompt ends
        # llama-cpp-python keeps every position's logits only when _logits_all is set, and then into
        # self.scores, sized at construction; generating with it set would make every prompt pay for
        # logits it never uses, so scoring switches it on for one pass over a buffer of the right size.
        # The ids before first_row are read without it (their rows of the buffer are never written, so never
        # resident), the rest with it.
        llm = self.llm
        saved = llm._logits_all, llm.scores
        llm.reset()
        llm._logits_all, llm.scores = False, np.empty((len(ids), llm.n_vocab()), dtype=np.single)
        try:
            if first_row:
                llm.eval(ids[:first_row])
            llm._logits_all = True
            llm.eval(ids[first_row:])
            return torch.from_numpy(llm.scores[first_row:len(ids)].copy())
        finally:
            llm._logits_all, llm.scores = saved
            llm.reset()

    def read_and_ask(self, context_ids: list[int], scored: int, questions: list[list[int]],
                     max_new_tokens: int) -> dict[str, Any]:
        """The context read once (its scored rows' logits kept), then each question answered after it: llama.cpp's
        own prefix reuse keeps the context's cells and reads only the question (and drops the last answer's)."""
        llm = self.llm
        first = len(context_ids) - scored
        saved = llm._logits_all, llm.scores
        llm.reset()
        started = time.perf_counter()
        llm._logits_all, llm.scores = False, np.empty((len(context_ids), llm.n_vocab()), dtype=np.single)
        try:
            llm.eval(context_ids[:first - 1])
            llm._logits_all = True
            llm.eval(context_ids[first - 1:])
            logits = torch.from_numpy(llm.scores[first - 1:len(context_ids) - 1].copy())
        finally:
            llm._logits_all, llm.scores = saved
        read_s = time.perf_counter() - started
        answers = []
        for question in questions:
            stamps: list[float] = []
            tokens: list[int] = []
            asked = time.perf_counter()
            generator = llm.generate(context_ids + question, top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                                     temp=0.0, top_p=1.0, reset=True)  # reset: with the context's prefix kept
            for token in generator:
                stamps.append(time.perf_counter())
                tokens.append(int(token))
                if (token in self.stop_token_ids and not self.random_weights) or len(tokens) >= max_new_tokens:
                    break
            generator.close()
            answers.append({"tokens": tokens, "ttft_s": stamps[0] - asked if stamps else None, "stamps": stamps})
        return {"read_s": read_s, "scored_logits": logits, "answers": answers}

    def bare_token_times(self, prompt_ids: list[int], settings: GenerationSettings) -> list[float]:
        times: list[float] = []
        for token in self._tokens(prompt_ids, settings):
            times.append(time.perf_counter())
            if token in self.stop_token_ids or len(times) >= settings.max_new_tokens:
                break
        return times

    def free(self) -> None:
        if self.llm is not None:
            self.llm.close()
        self.llm = None

    def details(self) -> dict[str, Any]:
        return {"runtime": self.runtime, **self._facts}

    def memory_kind(self) -> str | None:
        # llama.cpp allocates GPU memory itself, out of torch's sight: on a GPU the run's growth is
        # sampled from NVML, device-wide, and labelled so.
        return "nvml-device" if self.device == "cuda" else None

    def _tokens(self, prompt_ids: list[int], settings: GenerationSettings):
        """llama.cpp's own generator from a cleared context: no KV-cache prefix reuse between runs, so
        every run pays its full prompt, as the transformers variants do."""
        llm = self.llm
        llm.reset()
        if settings.do_sample:
            llm.set_seed(settings.seed)
            sampling = {"temp": settings.temperature, "top_p": settings.top_p}
        else:
            sampling = {"temp": 0.0, "top_p": 1.0}  # temp 0: llama.cpp's greedy sampler
        # top-k, min-p, typical-p and the repeat penalty off, as in the transformers variants
        return llm.generate(prompt_ids, top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True, **sampling)


def gguf_file(variant: Variant, base: BaseModel) -> tuple[Path, str]:
    """The GGUF file a variant loads and where it came from."""
    checkpoint = variant.checkpoint
    if checkpoint is not None and checkpoint.kind == "local":
        if not checkpoint.path.is_file():
            raise VariantUnavailable(f"not available: GGUF file '{checkpoint.path.name}' not found")
        return checkpoint.path, "pre-made file"
    if checkpoint is not None:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(checkpoint.repo, checkpoint.file, revision=checkpoint.revision)
        except Exception as exc:  # offline, gated, missing file: the column says why
            raise VariantUnavailable(f"not available: '{checkpoint.file}' from {checkpoint.repo} could not be "
                                     f"reached ({first_line(exc)})") from None
        return Path(path), f"pre-made file from {checkpoint.repo}"
    folder = sources.quantized_dir(base, variant.method, variant.file_settings)
    command = sources.quantize_command(variant.id)
    found = cache.check(folder, rebuild_command=command)
    if found.state == "damaged":
        raise DamagedCheckpoint(f"not quantized: its GGUF file is damaged ({found.problem}); make it again with "
                                f"`{command}` (seconds for a small model){sources.PRESS_QUANTIZE_NOW}")
    if not found.ok or not (folder / GGUF_FILE).is_file():
        raise NotQuantized(f"not quantized yet: run `{command}` (seconds for a small model)"
                           f"{sources.PRESS_QUANTIZE_NOW}")
    return folder / GGUF_FILE, _origin(folder)


def load(variant: Variant, base: BaseModel) -> LlamaCppVariant:
    """Load a GGUF variant, check its vocabulary against the base tokenizer, and warm it up."""
    gguf.require_llama_cpp()
    import llama_cpp
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    path, origin = gguf_file(variant, base)
    weights = sources.resolve(base)  # the base model's tokenizer, chat template and stop tokens
    common = {"revision": weights.revision, "trust_remote_code": base.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(weights.location, **common)
        model_config = AutoConfig.from_pretrained(weights.location, **common)
    except OSError as exc:
        raise VariantUnavailable(f"not available: the tokenizer of '{base.label}' could not be reached "
                                 f"({first_line(exc)})") from None
    try:
        generation = GenerationConfig.from_pretrained(weights.location, **common)
    except OSError:  # a checkpoint without generation_config.json: the model config's defaults
        generation = GenerationConfig.from_model_config(model_config)
    parsed = gguf.reader(path)
    gguf.check_vocabulary(parsed, tokenizer, model_config.vocab_size)
    if settings_n_ctx(variant) < MIN_CONTEXT:
        raise VariantUnavailable(f"not available: n_ctx {settings_n_ctx(variant)} is below {MIN_CONTEXT} tokens, "
                                 "the window evaluation scores")
    gpu_layers, device = _offload(variant)
    threads = torch.get_num_threads()
    settings = variant.settings
    type_k, type_v = settings.get("cache_type_k", "f16"), settings.get("cache_type_v", "f16")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=settings["n_ctx"], n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=gpu_layers, use_mmap=settings["use_mmap"],
                          logits_all=False, verbose=False, type_k=_ggml_type(llama_cpp, type_k),
                          type_v=_ggml_type(llama_cpp, type_v), flash_attn=type_v not in kv_cache.UNQUANTIZED)
    kv = kv_cache.kv_cache(kv_cache.KvShape.from_gguf(llm.metadata), type_k, type_v)
    stored = gguf.stored_weights(parsed)
    table = next((int(t.n_bytes) for t in parsed.tensors if t.name == "token_embd.weight"), 0)
    tied = not any(t.name == "output.weight" for t in parsed.tensors)  # no output head: the table serves as one
    del parsed  # its memory map of the file: llama.cpp has its own
    facts = {"gguf_type": settings.get("type"), "made_from": origin, "file_type": stored.file_type,
             "weights_bits_per_weight": stored.weights_bits_per_weight, "tensor_types": stored.tensor_types,
             "kernel": kernels.llama_cpp_kernel(stored.tensor_types, device), "embedding_table_bytes": table, "tied_embeddings": tied, "threads": threads, "n_ctx": llm.n_ctx(), "gpu_layers": gpu_layers, "memory_mapped": settings["use_mmap"],
             "llama_cpp_python": _version(), "kv_cache": {**kv.as_dict(), "label": kv.label,
                                                          "bytes": round(kv.bytes_per_token * llm.n_ctx())}}
    if device == "cpu" and cuda_available():
        facts["note"] = ("runs on the CPU: GPU offload is opt-in (settings.n_gpu_layers), see docs/runtimes.md (On a GPU)"
                         if llama_cpp.llama_supports_gpu_offload() else
                         "runs on the CPU: this llama-cpp-python build has no GPU offload")
    loaded = LlamaCppVariant(variant, llm, tokenizer, device, _stop_ids(generation, tokenizer, llm), facts)
    if base.random_weights:
        loaded.random_weights = True
        ban_stop_tokens(loaded)
    loaded.generate(tokenizer("Hello")["input_ids"], GenerationSettings(max_new_tokens=2), threading.Event(),
                    lambda token_id, at_s: None)  # warm-up: faults mmap'd weights in, as for transformers
    return loaded


def ban_stop_tokens(loaded: LlamaCppVariant) -> None:
    """Every sampler llama-cpp-python builds for this model (one per generate()) starts with llama.cpp's own
    logit-bias sampler setting the variant's stop tokens to -inf, so a generation runs to max_new_tokens.

    llama-cpp-python's logit_bias argument (create_completion only) is a Python callback over the whole
    vocabulary on every token; the native sampler costs nothing measurable. Its chain can only be appended to,
    so the samplers it built are moved behind the bias. The stop tokens are read when each sampler is built."""
    import llama_cpp
    from llama_cpp._internals import LlamaSampler

    llm = loaded.llm
    build = llm._init_sampler

    def init_sampler(*args, **kwargs):
        built = build(*args, **kwargs)
        if built.custom_samplers:  # Python callbacks are indexed by position: leave such a chain as it is
            raise VariantUnavailable("not available: a Python logits processor cannot follow the stop-token ban")
        chain = LlamaSampler()
        chain.add_logit_bias(llm.n_vocab(), {int(token): float("-inf") for token in loaded.stop_token_ids})
        while llama_cpp.llama_sampler_chain_n(built.sampler):
            llama_cpp.llama_sampler_chain_add(chain.sampler, llama_cpp.llama_sampler_chain_remove(built.sampler, 0))
        built.close()
        return chain

    llm._init_sampler = init_sampler


def _offload(variant: Variant) -> tuple[int, str]:
    """GPU layers and device. Offloading is opt-in (settings.n_gpu_layers): measured on an H100 with torch
    2.11 (cu130) and llama-cpp-python 0.3.36 built with CUDA, llama.cpp alone offloads and runs, but
    once torch has initialized CUDA in the same process, loading an offloaded GGUF crashes the process
    (segfault / "free(): invalid pointer"), whichever CUDA libraries it is pointed at. The arena's other
    variants use torch's CUDA, so by default GGUF variants run on the CPU and their record says why."""
    import llama_cpp

    layers = variant.settings.get("n_gpu_layers", -1 if variant.device == "cuda" else 0)
    can_offload = bool(llama_cpp.llama_supports_gpu_offload()) and cuda_available()
    if (variant.device == "cuda" or layers) and not can_offload:
        raise VariantUnavailable("not available: this variant asks for a GPU, and this llama-cpp-python build has "
                                 "no GPU offload (or no NVIDIA GPU was found)")
    if variant.device == "cpu" or not layers:
        return 0, "cpu"
    return layers, "cuda"


def _stop_ids(generation, tokenizer, llm) -> frozenset[int]:
    """The base model's own end-of-answer tokens (what transformers stops on), plus llama.cpp's EOS."""
    eos = generation.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    if not ids and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.add(int(llm.token_eos()))
    return frozenset(int(i) for i in ids)


def _origin(folder: Path) -> str:
    import json

    try:
        return json.loads((folder / sources.METADATA_FILE).read_text())["made_from"]
    except (OSError, ValueError, KeyError):
        return "made by demo.quantize"


def _ggml_type(llama_cpp, name: str) -> int:
    """llama.cpp's number for a cache type ("q8_0" -> GGML_TYPE_Q8_0)."""
    return getattr(llama_cpp, f"GGML_TYPE_{name.upper()}")


def _version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None
