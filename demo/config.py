"""models.yaml as validated dataclasses: base models, their variants, limits and generation defaults."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from demo.errors import ConfigError
from demo.measuring.kv_cache import HQQ_NBITS, KV_CACHE_TYPES, QUANTIZED_CACHE_BACKENDS
from demo.measuring.shapes import SHAPES

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_FILE = REPO_ROOT / "models.yaml"
GPU_MODELS_FILE = REPO_ROOT / "models.gpu.yaml"
MODELS_ENV = "ARENA_MODELS"
BUDGET_ENV = "ARENA_MEMORY_BUDGET_MIB"
ZEROGPU_ENV = "SPACES_ZERO_GPU"  # set by Hugging Face on a ZeroGPU Space
SPACE_ENV = "SPACE_ID"  # set by Hugging Face in every Space's environment (owner/name)

DTYPES = ("float32", "float16", "bfloat16")
SOURCE_KINDS = ("bundled-gguf", "hub", "local", "synthetic")  # synthetic: a named shape, random weights
DEVICES = ("auto", "cuda", "cpu")
# Engines a remote variant may name: each speaks OpenAI's /v1/completions, with its own extras (docs/remote.md,
# "When the model outgrows one machine"). llamacpp is llama.cpp's llama-server; llamacpp-python is
# llama-cpp-python's server (python -m llama_cpp.server); openai is any other compatible endpoint.
ENGINES = ("vllm", "sglang", "tgi", "llamacpp", "llamacpp-python", "openai")
# transformers' attention implementations a variant may ask for (flash attention needs a GPU and the
# flash-attn package; the loader refuses it elsewhere, in the variant's column).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
# Where each runtime runs unless a variant says (`process:`). Every local runtime gets a process of its own: native
# code (llama.cpp, whose AMX backend faults on some Intel Xeons; bitsandbytes, GPTQ/AWQ kernels, torchao, oneDNN)
# can fault, abort, hang or run out of memory, and must not take the server down. A remote engine already runs
# elsewhere. In ZeroGPU mode transformers variants stay in the serving process (ZEROGPU_PROCESS_DEFAULTS): they
# must be placed on the GPU there at start-up, and each request's model work already runs in a forked worker.
PROCESS_DEFAULTS = {"llama.cpp": "own", "transformers": "own", "remote": "shared"}
ZEROGPU_PROCESS_DEFAULTS = {**PROCESS_DEFAULTS, "transformers": "shared"}
PROCESSES = ("own", "shared")
# torchao schemes (demo.backends.torchao_quant) and the bits each stores per quantized weight.
TORCHAO_SCHEMES = {"int8_weight_only": 8, "int4_weight_only": 4, "int8_dynamic": 8, "float8_weight_only": 8}


@dataclass(frozen=True)
class Method:
    """A quantization method: its bit width and the settings models.yaml may give it."""

    name: str
    bits: int | None  # None: taken from the variant's settings (e.g. GPTQ bits)
    allowed: dict[str, Any]  # setting name -> tuple of allowed values, or a type
    required: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    runtime: str = "transformers"  # the demo.backends module that runs it (demo.backends.RUNTIMES)
    checkpoint_kinds: tuple[str, ...] = ()  # pre-made checkpoints it accepts (hub, local); () for none
    file_settings: tuple[str, ...] | None = None  # settings that define a made file; None: all of them


# llama.cpp quantization types a gguf variant may name, with their nominal bits per weight (the
# effective figure, read back from the file, is recorded with every result: see demo.artifacts.gguf).
GGUF_TYPES: dict[str, int] = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8, "Q6_K": 6, "Q5_K_M": 5, "Q5_K_S": 5, "Q5_1": 5, "Q5_0": 5,
    "Q4_K_M": 4, "Q4_K_S": 4, "Q4_1": 4, "Q4_0": 4, "IQ4_XS": 4, "IQ4_NL": 4, "Q3_K_L": 3, "Q3_K_M": 3,
    "Q3_K_S": 3, "Q2_K": 2, "IQ3_M": 3, "IQ3_XXS": 3, "IQ2_XS": 2, "IQ2_M": 2,
}
# Types llama.cpp's quantizer makes only with an importance matrix (settings.imatrix: true).
GGUF_IMATRIX_ONLY = ("IQ3_XXS", "IQ2_XS", "IQ2_M")


# A quantized KV cache's arguments (transformers' QuantizedCache): allowed values or types, per backend. fp8 quantizes
# per tensor and takes none of the group-wise ones.
CACHE_CONFIG: dict[str, Any] = {"backend": QUANTIZED_CACHE_BACKENDS, "nbits": HQQ_NBITS, "axis_key": (0, 1),
                                "axis_value": (0, 1), "q_group_size": (32, 64, 128), "residual_length": int}

# Methods whose weights are a quantized checkpoint of their own: made once by `python -m demo.quantize` with the
# calibration text (or named by the variant's `checkpoint:`), loaded by transformers.
CHECKPOINT_METHODS = ("gptq", "awq", "autoround", "compressed-tensors")
# compressed-tensors schemes (llm-compressor's names) and the bits each stores per quantized weight.
COMPRESSED_TENSORS_SCHEMES = {"W4A16": 4, "W8A8": 8}

# Settings use transformers' own BitsAndBytesConfig argument names, so nothing is translated.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # cache_config: transformers' quantized KV cache (generate's cache_implementation="quantized"), its
        # QuantizedCache arguments by their own names; see CACHE_CONFIG.
        Method("fp32", 32, {"cache_config": dict}),
        Method("fp16", 16, {"cache_config": dict}),
        Method("bf16", 16, {"cache_config": dict}),
        Method(
            "bnb-int8",
            8,
            {"llm_int8_threshold": float, "llm_int8_skip_modules": list, "llm_int8_has_fp16_weight": bool},
        ),
        Method(
            "bnb-4bit",
            4,
            {
                "bnb_4bit_quant_type": ("nf4", "fp4"),
                "bnb_4bit_use_double_quant": bool,
                "bnb_4bit_compute_dtype": DTYPES,
                "bnb_4bit_quant_storage": ("uint8", *DTYPES),
            },
            required=("bnb_4bit_quant_type",),
        ),
        # GPTQ through transformers' GPTQConfig (optimum + gptqmodel). The checkpoint is either named by
        # the variant (pre-quantized, e.g. AutoGPTQ format) or made once by `python -m demo.quantize`.
        Method(
            "gptq",
            None,
            {"bits": (2, 3, 4, 8), "group_size": int, "desc_act": bool, "sym": bool, "damp_percent": float},
            required=("bits",),
            defaults={"group_size": 128, "desc_act": False, "sym": True},
            checkpoint_kinds=("hub", "local"),
        ),
        # GGUF through llama.cpp (llama-cpp-python): a file made by `python -m demo.quantize` with
        # llama.cpp's own quantizer, or a pre-made one (a local file, or a Hub repo and file name).
        Method(
            "gguf",
            None,
            {"type": tuple(GGUF_TYPES), "n_ctx": int, "n_gpu_layers": int, "use_mmap": bool,
             "cache_type_k": tuple(KV_CACHE_TYPES), "cache_type_v": tuple(KV_CACHE_TYPES), "imatrix": bool},
            required=("type",),
            defaults={"n_ctx": 2048, "use_mmap": True},
            runtime="llama.cpp",
            checkpoint_kinds=("hub", "local"),
            file_settings=("type", "imatrix"),
        ),
        # A model served by an engine elsewhere (vLLM, SGLang, TGI, llama.cpp's server): the variant gives
        # its `endpoint:` and declares its `quantization:`; nothing is loaded here but the base's tokenizer.
        Method("remote", None, {}, runtime="remote"),
        # torchao, quantized at load time (nothing is saved: its CPU int4 tensors cannot be). group_size and
        # the qparams algorithm ("hqq": HQQ-style scales and zero points) belong to int4_weight_only only.
        Method(
            "torchao",
            None,
            {"scheme": tuple(TORCHAO_SCHEMES), "group_size": (32, 64, 128, 256),
             "int4_choose_qparams_algorithm": ("tinygemm", "hqq")},
            required=("scheme",),
        ),
        # HQQ through the hqq library, quantized at load time (calibration-free, seconds; nothing is saved):
        # hqq's own setting names. axis 1 groups along each row's inputs, as the library's README advises.
        Method(
            "hqq",
            None,
            {"nbits": (1, 2, 3, 4, 8), "group_size": (32, 64, 128), "axis": (0, 1)},
            required=("nbits",),
            defaults={"group_size": 64, "axis": 1},
        ),
        # AutoRound through Intel's auto-round library: a checkpoint made by `python -m demo.quantize` with the
        # calibration text, in auto-round's own format, loaded by transformers as its users load it. iters 200 is
        # the library's default; 50 its light recipe.
        Method(
            "autoround",
            None,
            {"bits": (2, 3, 4, 8), "group_size": (32, 64, 128), "sym": bool, "iters": int, "seqlen": int},
            defaults={"bits": 4, "group_size": 64, "sym": True, "iters": 200, "seqlen": 128},
            checkpoint_kinds=("hub", "local"),
        ),
        # compressed-tensors (vLLM's format) made by llm-compressor in an environment of its own (`make
        # llm-compressor`), data-free; loaded by transformers as its users load it. group_size: W4A16's only.
        Method(
            "compressed-tensors",
            None,
            {"scheme": tuple(COMPRESSED_TENSORS_SCHEMES), "group_size": (32, 64, 128)},
            required=("scheme",),
            checkpoint_kinds=("hub", "local"),
        ),
        # AWQ through gptqmodel: a checkpoint made by `python -m demo.quantize` with the calibration text,
        # or a pre-made one; transformers loads it through gptqmodel's kernels (a CPU one included).
        Method(
            "awq",
            4,
            {"bits": (4,), "group_size": int, "zero_point": bool},
            defaults={"bits": 4, "group_size": 128, "zero_point": True},
            checkpoint_kinds=("hub", "local"),
        ),
    )
}


@dataclass(frozen=True)
class Endpoint:
    """Where a remote variant is served, and how long the arena waits for it (seconds)."""

    url: str  # the API root, e.g. http://gpu-node:8000/v1
    model: str  # the model name the engine serves it under
    engine: str  # one of ENGINES
    api_key_env: str | None = None  # the environment variable holding the key, never the key itself
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 60.0  # request sent -> first byte of the answer (prompt processing)
    total_timeout_s: float = 300.0  # request sent -> answer complete
    public_url: bool = False  # whether the URL may appear on the page, the API and the card (an internal address
    # such as http://gpu-node-a:8000/v1 stays in the models file and the server's log unless this says so)

    def where(self) -> str:
        """The endpoint as the public may read it: the engine and the URL, or the engine and the model name."""
        return f"{self.engine} at {self.url}" if self.public_url else f"{self.engine} serving {self.model}"


# What a remote variant declares about itself (shown on the card, never checked against the engine).
DECLARED_QUANTIZATION = {"scheme": str, "bits": int, "served_by": str, "note": str}


@dataclass(frozen=True)
class Source:
    """Where a base model's weights come from."""

    kind: str  # one of SOURCE_KINDS
    repo: str | None = None  # hub: repository id
    revision: str | None = None  # hub: branch, tag or commit
    path: Path | None = None  # local: folder with a transformers checkpoint (gguf variants: a .gguf file)
    package: str | None = None  # bundled-gguf: Python package that ships the file
    file: str | None = None  # bundled-gguf: file name inside that package; hub gguf checkpoint: file in the repo
    fallback_repo: str | None = None  # bundled-gguf: Hub repo used where the package is not installed
    shape: str | None = None  # synthetic: a demo.measuring.shapes.SHAPES name, filled with random weights
    seed: int = 0  # synthetic: the random initialisation's seed


@dataclass(frozen=True)
class BaseModel:
    id: str
    label: str
    source: Source
    note: str = ""
    trust_remote_code: bool = False
    baseline: str | None = None  # variant id used as this base's reference

    @property
    def random_weights(self) -> bool:
        """A named shape with random weights: speed and memory only, no fidelity or perplexity."""
        return self.source.kind == "synthetic"


@dataclass(frozen=True)
class Variant:
    id: str
    base: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    device: str = "auto"  # auto | cuda | cpu
    dtype: str | None = None  # dtype of the modules that stay unquantized
    checkpoint: Source | None = None  # a pre-quantized checkpoint (gptq); None: made by demo.quantize
    endpoint: Endpoint | None = None  # remote variants only
    declared: dict[str, Any] | None = None  # remote variants: the models file's `quantization:` block
    attn_implementation: str | None = None  # one of ATTN_IMPLEMENTATIONS; None: transformers' default
    # Which process runs the runtime: "own" (a worker process of its own, so a native crash ends that worker, not
    # the server) or "shared" (the serving process); None: the runtime's default (PROCESS_DEFAULTS).
    process: str | None = None

    @property
    def bits(self) -> int | None:
        if self.method == "gguf":
            return GGUF_TYPES[self.settings["type"]]
        if self.method == "remote":
            return (self.declared or {}).get("bits")
        if self.method == "torchao":
            return TORCHAO_SCHEMES[self.settings["scheme"]]
        if self.method == "hqq":
            return self.settings["nbits"]
        if self.method == "compressed-tensors":
            return COMPRESSED_TENSORS_SCHEMES[self.settings["scheme"]]
        return METHODS[self.method].bits or self.settings.get("bits")

    @property
    def runtime(self) -> str:
        return METHODS[self.method].runtime

    def own_process(self, defaults: dict[str, str] = PROCESS_DEFAULTS) -> bool:
        """Whether this variant's runtime runs in a worker process of its own (demo.running.runtime_process)."""
        return (self.process or defaults[self.runtime]) == "own"

    @property
    def file_settings(self) -> dict[str, Any]:
        """The settings that define the file demo.quantize makes for this variant (never made twice)."""
        names = METHODS[self.method].file_settings
        return dict(self.settings) if names is None else {k: self.settings[k] for k in names if k in self.settings}


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int = 512
    max_variants: int = 6
    max_prompt_chars: int = 20000
    max_pending: int = 16  # requests running or waiting for the device at once; more get a "busy, try again"
    max_pending_per_client: int = 4  # of those, the most from one client (session, or address behind a proxy)
    # A runtime in a process of its own that says nothing for this long while it loads, generates or scores (no
    # token, no answer) is taken as hung: its process is ended and the variant's column says so.
    runtime_stall_s: float = 300.0
    # the same for a load in a process of its own (the process starts, then loads: a Hub download included)
    runtime_load_s: float = 1800.0
    # A variant whose runtime crashed this many times in a row is refused (until the app restarts) instead of
    # being loaded again for the next request.
    max_runtime_crashes: int = 3
    # A file the page offers (a comparison's card, an evaluation's charts, the blind results) is served for this
    # long, then removed from Gradio's cache: what a public arena keeps on disk is what this much time writes.
    files_kept_s: float = 3600.0


@dataclass(frozen=True)
class GenerationDefaults:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9


@dataclass(frozen=True)
class BlindSettings:
    """The blind test (models.yaml `blind:`): where votes are kept, how long answers are, flood limits."""

    votes_db: Path | None = None  # None: $ARENA_VOTES_DB, else votes.sqlite3 in the cache folder (demo.blind.votes)
    max_new_tokens: int = 96
    battles_per_minute: int = 6  # per session
    votes_per_minute: int = 12  # per session; refused votes (forged, replayed) count too
    temperature: float = 0.7  # both answers are sampled with these and a per-battle secret seed
    top_p: float = 0.9
    variants: tuple[str, ...] = ()  # variants that may face their base's baseline; () for all of them


# Networks a Space's own proxies connect from (a Space sees an internal 10.x peer, with the visitor's address in
# X-Forwarded-For): private and shared address space only, which no visitor on the internet can connect from.
SPACE_TRUSTED_PROXIES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
SPACE_PROXY_HOPS = 3  # the most proxies of the Space's own network the address is taken through
TRUSTED_PROXIES_ENV = "ARENA_TRUSTED_PROXIES"  # overrides proxies.trusted: "10.0.0.0/8,127.0.0.1", or "none"
PROXY_HOPS_ENV = "ARENA_PROXY_HOPS"  # overrides proxies.hops


@dataclass(frozen=True)
class ProxySettings:
    """Which proxies in front of the app are trusted to say who the client is (models.yaml `proxies:`; see
    demo.ui.clients). A request's address is its connection's peer, unless that peer is in `trusted`: then the
    entries those proxies appended to X-Forwarded-For are taken from the right, through at most `hops` of them."""

    trusted: tuple[str, ...] = ()  # networks or addresses ("10.0.0.0/8", "127.0.0.1"); () trusts none
    hops: int = 1

    @classmethod
    def default(cls) -> "ProxySettings":
        """None trusted when the app is reached directly; a Space's own network on a Space."""
        return cls(SPACE_TRUSTED_PROXIES, SPACE_PROXY_HOPS) if on_space() else cls()


@dataclass(frozen=True)
class ArenaConfig:
    path: Path
    bases: dict[str, BaseModel]
    variants: dict[str, Variant]  # in file order
    limits: Limits
    generation: GenerationDefaults
    memory_budget_mib: float
    examples: tuple[str, ...] = ()
    blind: BlindSettings = field(default_factory=BlindSettings)
    quantize_now_on_space: bool = False  # whether a Space offers Quantize now (off a Space it always does)
    proxies: ProxySettings = field(default_factory=ProxySettings)

    def quantize_now_offered(self) -> bool:
        """Quantize now holds the only device for minutes (AWQ on a CPU: 20+), so a Space, which may be public
        (its environment does not say), offers it only where the models file turns it on."""
        return self.quantize_now_on_space or not on_space()

    def base_of(self, variant_id: str) -> BaseModel:
        return self.bases[self.variants[variant_id].base]


def on_space() -> bool:
    """Whether this process runs on a Hugging Face Space."""
    return bool(os.environ.get(SPACE_ENV))


def models_path(explicit: str | os.PathLike | None = None) -> Path:
    """The models file: an explicit path, else $ARENA_MODELS, else the GPU profile on a Hugging Face Space
    with an NVIDIA GPU or on ZeroGPU, else the repo's offline models.yaml."""
    if explicit or os.environ.get(MODELS_ENV):
        return Path(explicit or os.environ[MODELS_ENV])
    if on_space() and (on_zerogpu() or _has_nvidia_gpu()):
        return GPU_MODELS_FILE
    return DEFAULT_MODELS_FILE


def on_zerogpu() -> bool:
    """Whether this is a ZeroGPU Space: Hugging Face sets SPACES_ZERO_GPU there (read the way the `spaces`
    package reads it). The serving process sees no GPU there (the worker gets one per call), so NVML cannot
    tell, and the GPU profile would silently give way to the CPU one."""
    return os.environ.get(ZEROGPU_ENV, "").lower() in ("1", "t", "true")


def _has_nvidia_gpu() -> bool:
    from demo.measuring.system import gpu_figures  # NVML only: no torch import before the config is validated

    return gpu_figures() is not None


def load_config(path: str | os.PathLike | None = None) -> ArenaConfig:
    """Read and validate a models file; any problem raises ConfigError naming file, variant, field."""
    path = models_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read file ({exc.strerror or exc.__class__.__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "cannot read file (not UTF-8 text)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(path, f"YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    return _parse(path, data)


def _parse(path: Path, data: Any) -> ArenaConfig:
    _expect(isinstance(data, dict), path, "top level must be a mapping with 'bases' and 'variants'")
    _only(path, data, {"bases", "variants", "limits", "generation", "memory_budget_mib", "examples", "blind",
                       "quantize_now_on_space", "proxies"}, None)
    bases = _parse_bases(path, _required(path, data, "bases", dict))
    variants = _parse_variants(path, _required(path, data, "variants", list), bases)
    for base in bases.values():
        if base.baseline is not None and base.baseline not in variants:
            raise ConfigError(path, f"baseline '{base.baseline}' is not a variant id", field=f"bases.{base.id}.baseline")
    limits = _dataclass_from(path, Limits, data.get("limits") or {}, "limits")
    _expect("max_pending_per_client" not in (data.get("limits") or {}) or
            limits.max_pending_per_client <= limits.max_pending, path,
            f"must be at most limits.max_pending ({limits.max_pending})", field="limits.max_pending_per_client")
    _expect(limits.runtime_stall_s > 0 and limits.runtime_load_s > 0 and limits.max_runtime_crashes >= 1, path,
            "runtime_stall_s and runtime_load_s must be positive, max_runtime_crashes at least 1", field="limits")
    generation = _dataclass_from(path, GenerationDefaults, data.get("generation") or {}, "generation")
    _expect(1 <= generation.max_new_tokens <= limits.max_new_tokens, path,
            f"must be between 1 and limits.max_new_tokens ({limits.max_new_tokens})", field="generation.max_new_tokens")
    examples = data.get("examples") or []
    _expect(isinstance(examples, list) and all(isinstance(e, str) for e in examples), path,
            "must be a list of strings", field="examples")
    blind = _parse_blind(path, data.get("blind") or {}, variants, limits)
    quantize_on_space = _typed(path, data.get("quantize_now_on_space", False), bool, "quantize_now_on_space")
    return ArenaConfig(path, bases, variants, limits, generation, _budget(path, data), tuple(examples), blind,
                       quantize_now_on_space=quantize_on_space, proxies=_parse_proxies(path, data.get("proxies")))


def _parse_proxies(path: Path, raw: Any) -> ProxySettings:
    """models.yaml's `proxies:` (absent: ProxySettings.default()), then $ARENA_TRUSTED_PROXIES and
    $ARENA_PROXY_HOPS over it: a Space's operator can correct it in the Space's settings."""
    settings = ProxySettings.default()
    if raw is not None:
        _expect(isinstance(raw, dict), path, "must be a mapping with 'trusted' and 'hops'", field="proxies")
        _only(path, raw, {"trusted", "hops"}, None, "proxies")
        trusted = raw.get("trusted", list(settings.trusted))
        _expect(isinstance(trusted, list) and all(isinstance(t, str) for t in trusted), path,
                "must be a list of addresses or networks (\"10.0.0.0/8\")", field="proxies.trusted")
        hops = _typed(path, raw.get("hops", settings.hops), int, "proxies.hops")
        settings = ProxySettings(tuple(trusted), hops)
    if os.environ.get(TRUSTED_PROXIES_ENV):
        listed = os.environ[TRUSTED_PROXIES_ENV].strip()
        trusted = () if listed.lower() == "none" else tuple(t.strip() for t in listed.split(",") if t.strip())
        settings = ProxySettings(trusted, settings.hops)
        path = Path(f"${TRUSTED_PROXIES_ENV}")
    if os.environ.get(PROXY_HOPS_ENV):
        hops = os.environ[PROXY_HOPS_ENV].strip()
        _expect(hops.isdigit(), Path(f"${PROXY_HOPS_ENV}"), f"must be a whole number, got {hops!r}")
        settings = ProxySettings(settings.trusted, int(hops))
    for network in settings.trusted:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(path, f"{network!r} is not an address or network", field="proxies.trusted") from None
    _expect(1 <= settings.hops <= 16, path, f"must be between 1 and 16, got {settings.hops}", field="proxies.hops")
    return settings


def _parse_blind(path: Path, raw: Any, variants: dict[str, Variant], limits: Limits) -> BlindSettings:
    _expect(isinstance(raw, dict), path, "must be a mapping", field="blind")
    _only(path, raw, {"votes_db", "max_new_tokens", "battles_per_minute", "votes_per_minute", "temperature", "top_p",
                      "variants"}, None, "blind")
    numbers = {k: raw[k] for k in ("max_new_tokens", "battles_per_minute", "votes_per_minute", "temperature", "top_p")
               if k in raw}
    blind = _dataclass_from(path, BlindSettings, numbers, "blind")
    _expect(blind.max_new_tokens <= limits.max_new_tokens, path,
            f"must be at most limits.max_new_tokens ({limits.max_new_tokens})", field="blind.max_new_tokens")
    _expect(blind.temperature <= 2.0, path, "must be in (0, 2]", field="blind.temperature")
    _expect(blind.top_p <= 1.0, path, "must be in (0, 1]", field="blind.top_p")
    db = raw.get("votes_db")
    _expect(db is None or (isinstance(db, str) and db.strip()), path, "must be a file path", field="blind.votes_db")
    chosen = raw.get("variants") or []
    _expect(isinstance(chosen, list) and all(isinstance(v, str) for v in chosen), path,
            "must be a list of variant ids", field="blind.variants")
    unknown = [v for v in chosen if v not in variants]
    _expect(not unknown, path, f"unknown variant id(s): {', '.join(unknown)}", field="blind.variants")
    votes_db = (path.parent / db).resolve() if db else None  # relative to the models file, as local sources are
    return replace(blind, votes_db=votes_db, variants=tuple(chosen))


# A budget of `auto` (or none given) on an NVIDIA GPU: this fraction of the device's memory less this margin, so
# that the CUDA context, activations, the KV cache and a load's transient copies fit beside the cached weights.
AUTO_BUDGET_FRACTION = 0.75
AUTO_BUDGET_MARGIN_MIB = 1024.0
CPU_DEFAULT_BUDGET_MIB = 4096.0  # without a GPU, a budget of `auto` or none given


def auto_budget_mib(device_total_mib: float | None) -> float:
    """The weights budget for a device of this much memory (MiB); None: no GPU, the CPU default."""
    if device_total_mib is None:
        return CPU_DEFAULT_BUDGET_MIB
    return max(device_total_mib * AUTO_BUDGET_FRACTION - AUTO_BUDGET_MARGIN_MIB, device_total_mib * 0.25)


def _gpu_total_mib() -> float | None:
    from demo.measuring.system import gpu_figures  # NVML only: no torch import before the config is validated

    figures = gpu_figures()
    return None if figures is None else figures.total_mib


def _budget(path: Path, data: dict) -> float:
    raw, where = os.environ.get(BUDGET_ENV), f"${BUDGET_ENV}"
    if raw is None:
        raw, where = data.get("memory_budget_mib", "auto"), "memory_budget_mib"
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return auto_budget_mib(_gpu_total_mib())
    try:
        budget = float(raw)
    except (TypeError, ValueError):
        budget = -1.0
    _expect(budget > 0, path, f"must be a positive number of MiB or auto, got {raw!r}", field=where)
    return budget


def _parse_bases(path: Path, raw: dict) -> dict[str, BaseModel]:
    bases = {}
    for base_id, entry in raw.items():
        field_ = f"bases.{base_id}"
        _expect(isinstance(entry, dict), path, "must be a mapping", field=field_)
        _only(path, entry, {"label", "source", "note", "trust_remote_code", "baseline"}, None, field_)
        src = _required(path, entry, "source", dict, field_)
        bases[str(base_id)] = BaseModel(
            id=str(base_id),
            label=str(entry.get("label", base_id)),
            source=_parse_source(path, src, f"{field_}.source"),
            note=str(entry.get("note", "")),
            trust_remote_code=_typed(path, entry.get("trust_remote_code", False), bool, f"{field_}.trust_remote_code"),
            baseline=entry.get("baseline"),
        )
    _expect(bool(bases), path, "must name at least one base model", field="bases")
    return bases


def _parse_source(path: Path, src: dict, field_: str, variant: str | None = None) -> Source:
    kind = src.get("kind")
    _expect(kind in SOURCE_KINDS, path, f"unknown source kind {kind!r} (allowed: {', '.join(SOURCE_KINDS)})",
            variant=variant, field=f"{field_}.kind")
    needs = {"hub": ("repo",), "local": ("path",), "bundled-gguf": ("package", "file"), "synthetic": ("shape",)}[kind]
    _only(path, src, {"kind", "repo", "revision", "path", "package", "file", "fallback_repo", "shape", "seed"},
          variant, field_)
    for key in needs:
        _expect(isinstance(src.get(key), str) and src[key].strip(), path, "is required", variant=variant,
                field=f"{field_}.{key}")
    if kind == "synthetic" or "shape" in src or "seed" in src:
        return _synthetic_source(path, src, field_, variant)
    local = (path.parent / src["path"]).resolve() if kind == "local" else None
    return Source(kind, src.get("repo"), src.get("revision"), local, src.get("package"), src.get("file"),
                  src.get("fallback_repo"))


def _synthetic_source(path: Path, src: dict, field_: str, variant: str | None) -> Source:
    """A named shape with a seeded random initialisation (a base's source only)."""
    _expect(src.get("kind") == "synthetic" and variant is None, path,
            "shape and seed belong to a base's source of kind synthetic", variant=variant, field=field_)
    _only(path, src, {"kind", "shape", "seed"}, None, field_)
    _expect(src["shape"] in SHAPES, path, f"unknown shape {src['shape']!r} (known: {', '.join(SHAPES)})",
            field=f"{field_}.shape")
    seed = src.get("seed", 0)
    _expect(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, path,
            f"must be a whole number, 0 or more, got {seed!r}", field=f"{field_}.seed")
    return Source("synthetic", shape=src["shape"], seed=seed)


def _check_synthetic_variant(path: Path, vid: str, method: str, entry: dict) -> None:
    """A random-weights base's variants are made from its own materialised weights: nothing pre-made, nothing
    served elsewhere."""
    _expect(method != "remote", path, "a base with random weights (source kind synthetic) has no remote variants: "
            "an engine elsewhere does not hold its weights", variant=vid, field="method")
    _expect("checkpoint" not in entry, path, "a base with random weights (source kind synthetic) takes no "
            "pre-made checkpoint: every variant is made from its materialised weights", variant=vid,
            field="checkpoint")


def _parse_variants(path: Path, raw: list, bases: dict[str, BaseModel]) -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    for index, entry in enumerate(raw):
        _expect(isinstance(entry, dict), path, "each variant must be a mapping", field=f"variants[{index}]")
        vid = entry.get("id")
        _expect(isinstance(vid, str) and vid.strip(), path, "is required", field=f"variants[{index}].id")
        _expect(vid not in variants, path, "duplicate variant id", variant=vid, field="id")
        _only(path, entry, {"id", "base", "method", "settings", "label", "device", "dtype", "checkpoint", "endpoint",
                            "quantization", "attn_implementation", "process"}, vid)
        base = _required(path, entry, "base", str, variant=vid)
        _expect(base in bases, path, f"unknown base '{base}' (bases: {', '.join(bases)})", variant=vid, field="base")
        method = _required(path, entry, "method", str, variant=vid)
        _expect(method in METHODS, path, f"unknown method '{method}' (allowed: {', '.join(METHODS)})",
                variant=vid, field="method")
        if bases[base].random_weights:
            _check_synthetic_variant(path, vid, method, entry)
        settings = entry.get("settings") or {}
        _expect(isinstance(settings, dict), path, "must be a mapping", variant=vid, field="settings")
        device = entry.get("device", "auto")
        _expect(device in DEVICES, path, f"must be one of {', '.join(DEVICES)}, got {device!r}", variant=vid, field="device")
        dtype = entry.get("dtype")
        _expect(dtype is None or dtype in DTYPES, path, f"must be one of {', '.join(DTYPES)}, got {dtype!r}",
                variant=vid, field="dtype")
        checkpoint = entry.get("checkpoint")
        if checkpoint is not None:
            kinds = METHODS[method].checkpoint_kinds
            _expect(bool(kinds), path, f"method '{method}' takes no pre-quantized checkpoint (gptq and gguf do)",
                    variant=vid, field="checkpoint")
            _expect(isinstance(checkpoint, dict), path, "must be a mapping", variant=vid, field="checkpoint")
            checkpoint = _parse_source(path, checkpoint, "checkpoint", vid)
            _expect(checkpoint.kind in kinds, path, f"must be a {' or '.join(kinds)} checkpoint", variant=vid,
                    field="checkpoint.kind")
            if method == "gguf" and checkpoint.kind == "hub":
                _expect(bool(checkpoint.file), path, "is required: the .gguf file's name in the repo", variant=vid,
                        field="checkpoint.file")
        endpoint, declared = _parse_remote(path, vid, method, entry)
        attn = entry.get("attn_implementation")
        _expect(attn is None or attn in ATTN_IMPLEMENTATIONS, path,
                f"must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {attn!r}", variant=vid,
                field="attn_implementation")
        _expect(attn is None or METHODS[method].runtime == "transformers", path,
                f"applies to transformers variants only, not to method '{method}'", variant=vid,
                field="attn_implementation")
        process = entry.get("process")
        _expect(process is None or process in PROCESSES, path, f"must be one of {', '.join(PROCESSES)}, got {process!r}",
                variant=vid, field="process")
        _expect(process != "own" or METHODS[method].runtime != "remote", path,
                "a remote variant already runs in its engine's process", variant=vid, field="process")
        settings = _check_settings(path, vid, METHODS[method], settings)
        if method == "torchao":
            _check_torchao(path, vid, settings)
        if method == "compressed-tensors":
            _expect(settings["scheme"] == "W4A16" or "group_size" not in settings, path,
                    "applies to scheme W4A16 only (W8A8 is per channel)", variant=vid, field="settings.group_size")
            if settings["scheme"] == "W4A16":
                settings = {"group_size": 64, **settings}
        if "cache_config" in settings:
            _check_cache_config(path, vid, settings["cache_config"])
        if method == "gguf" and settings["type"] in GGUF_IMATRIX_ONLY:
            _expect(bool(settings.get("imatrix")), path, f"type {settings['type']} needs an importance matrix: add "
                    "imatrix: true", variant=vid, field="settings.imatrix")
        variants[vid] = Variant(vid, base, method, settings, str(entry.get("label", "")), device, dtype, checkpoint,
                                endpoint=endpoint, declared=declared, attn_implementation=attn, process=process)
    _expect(bool(variants), path, "must list at least one variant", field="variants")
    return variants


def _parse_remote(path: Path, vid: str, method: str, entry: dict) -> tuple[Endpoint | None, dict | None]:
    """The `endpoint:` and `quantization:` blocks: required / allowed for method remote only."""
    if method != "remote":
        for key in ("endpoint", "quantization"):
            _expect(key not in entry, path, "only remote variants take this block", variant=vid, field=key)
        return None, None
    raw = _required(path, entry, "endpoint", dict, variant=vid)
    _only(path, raw, {"url", "model", "engine", "api_key_env", "timeouts", "public_url"}, vid, "endpoint")
    url = _required(path, raw, "url", str, "endpoint", vid)
    _check_url(path, vid, url)
    model = _required(path, raw, "model", str, "endpoint", vid)
    _expect(bool(model.strip()), path, "must not be empty", variant=vid, field="endpoint.model")
    engine = _required(path, raw, "engine", str, "endpoint", vid)
    _expect(engine in ENGINES, path, f"unknown engine {engine!r} (allowed: {', '.join(ENGINES)})", variant=vid,
            field="endpoint.engine")
    key_env = raw.get("api_key_env")
    _expect(key_env is None or (isinstance(key_env, str) and key_env.isidentifier()), path,
            "must be the name of an environment variable (the key itself never goes in this file)", variant=vid,
            field="endpoint.api_key_env")
    timeouts = raw.get("timeouts") or {}
    _expect(isinstance(timeouts, dict), path, "must be a mapping", variant=vid, field="endpoint.timeouts")
    _only(path, timeouts, {"connect", "first_token", "total"}, vid, "endpoint.timeouts")
    seconds = {}
    for key, value in timeouts.items():
        seconds[f"{key}_timeout_s"] = _typed(path, value, float, f"endpoint.timeouts.{key}", vid)
        _expect(seconds[f"{key}_timeout_s"] > 0, path, f"must be a positive number of seconds, got {value!r}",
                variant=vid, field=f"endpoint.timeouts.{key}")
    public_url = raw.get("public_url", False)
    _expect(isinstance(public_url, bool), path, f"must be true or false, got {public_url!r}", variant=vid,
            field="endpoint.public_url")
    declared = entry.get("quantization") or {}
    _expect(isinstance(declared, dict), path, "must be a mapping", variant=vid, field="quantization")
    _only(path, declared, set(DECLARED_QUANTIZATION), vid, "quantization")
    for key, value in declared.items():
        _typed(path, value, DECLARED_QUANTIZATION[key], f"quantization.{key}", vid)
    return Endpoint(url.rstrip("/"), model, engine, key_env, **seconds, public_url=public_url), dict(declared)


def _check_url(path: Path, vid: str, url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(path, f"not a URL ({exc})", variant=vid, field="endpoint.url") from None
    _expect(parts.scheme in ("http", "https") and bool(parts.hostname), path,
            "must be an http:// or https:// URL with a host, e.g. http://gpu-node:8000/v1", variant=vid,
            field="endpoint.url")
    # A key written into the URL would travel into logs and records: keys come only from api_key_env.
    _expect(parts.username is None and parts.password is None and not parts.query, path,
            "must not carry credentials or a query; name the key's environment variable in endpoint.api_key_env",
            variant=vid, field="endpoint.url")


def _check_settings(path: Path, vid: str, method: Method, settings: dict) -> dict:
    for key in method.required:
        _expect(key in settings, path, f"is required for method '{method.name}'", variant=vid, field=f"settings.{key}")
    for key, value in settings.items():
        allowed = method.allowed.get(key)
        where = f"settings.{key}"
        if allowed is None:
            names = ", ".join(method.allowed) or "none"
            raise ConfigError(path, f"unknown setting for method '{method.name}' (allowed: {names})", variant=vid, field=where)
        if isinstance(allowed, tuple):
            _expect(value in allowed, path, f"must be one of {', '.join(map(str, allowed))}, got {value!r}",
                    variant=vid, field=where)
        else:
            _typed(path, value, allowed, where, vid)
    return {**method.defaults, **settings}


def _check_cache_config(path: Path, vid: str, cache_config: dict) -> None:
    """A quantized KV cache: a backend this machine runs, and only the arguments that backend takes."""
    where = "settings.cache_config"
    _expect("backend" in cache_config, path, f"needs a backend ({', '.join(QUANTIZED_CACHE_BACKENDS)})",
            variant=vid, field=where)
    for key, value in cache_config.items():
        allowed = CACHE_CONFIG.get(key)
        _expect(allowed is not None, path, f"unknown argument '{key}' (allowed: {', '.join(CACHE_CONFIG)})",
                variant=vid, field=where)
        if isinstance(allowed, tuple):
            _expect(value in allowed, path, f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}",
                    variant=vid, field=where)
        else:
            _typed(path, value, allowed, f"{where}.{key}", vid)
            _expect(value > 0, path, f"{key} must be positive, got {value!r}", variant=vid, field=where)
    if cache_config["backend"] == "fp8":
        extra = sorted(set(cache_config) - {"backend"})
        _expect(not extra, path, f"the fp8 backend quantizes per tensor and takes no {', '.join(extra)}",
                variant=vid, field=where)


def _check_torchao(path: Path, vid: str, settings: dict) -> None:
    """int4 needs an explicit group size; the int4-only settings are refused on the int8 schemes."""
    if settings["scheme"] == "int4_weight_only":
        _expect("group_size" in settings, path, "is required for scheme int4_weight_only (32, 64, 128 or 256; it "
                "must divide every layer's input width)", variant=vid, field="settings.group_size")
        return
    for key in ("group_size", "int4_choose_qparams_algorithm"):
        _expect(key not in settings, path, f"applies to scheme int4_weight_only only, not {settings['scheme']}",
                variant=vid, field=f"settings.{key}")


def _dataclass_from(path: Path, cls, raw: Any, name: str):
    _expect(isinstance(raw, dict), path, "must be a mapping", field=name)
    fields = cls.__dataclass_fields__
    _only(path, raw, set(fields), None, name)
    values = {}
    for key, value in raw.items():
        kind = type(getattr(cls(), key))
        values[key] = _typed(path, value, kind, f"{name}.{key}")
        _expect(values[key] > 0, path, f"must be positive, got {value!r}", field=f"{name}.{key}")
    return cls(**values)


def _typed(path: Path, value: Any, kind: type, field_: str, variant: str | None = None):
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    _expect(ok, path, f"must be {kind.__name__}, got {value!r}", variant=variant, field=field_)
    return value


def _required(path: Path, entry: dict, key: str, kind: type, prefix: str | None = None, variant: str | None = None):
    field_ = f"{prefix}.{key}" if prefix else key
    _expect(key in entry, path, "is required", variant=variant, field=field_)
    _expect(isinstance(entry[key], kind), path, f"must be a {kind.__name__}", variant=variant, field=field_)
    return entry[key]


def _only(path: Path, entry: dict, allowed: set, variant: str | None, prefix: str | None = None) -> None:
    for key in entry:
        field_ = f"{prefix}.{key}" if prefix else str(key)
        _expect(key in allowed, path, f"unknown field (allowed: {', '.join(sorted(allowed))})", variant=variant,
                field=field_)


def _expect(ok: bool, path: Path, message: str, *, variant: str | None = None, field: str | None = None) -> None:
    if not ok:
        raise ConfigError(path, message, variant=variant, field=field)
