"""GGUF files: made with llama.cpp's own quantizer, converted from transformers checkpoints, and read back.

llama.cpp falls back to other tensor types where a row length is not a multiple of 256 (K-quants need
256-wide super-blocks), so the type asked for is not always the type stored: `stored_weights` reads the
types and sizes back from the file, and every GGUF record states them.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from demo.config import REPO_ROOT, on_space
from demo.errors import ArenaError, VariantUnavailable

# models.yaml type -> llama.cpp's LLAMA_FTYPE_* constant name (checked against the installed module)
FTYPES = {
    "F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16", "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S", "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS", "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L", "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K", "IQ3_M": "LLAMA_FTYPE_MOSTLY_IQ3_M", "IQ3_XXS": "LLAMA_FTYPE_MOSTLY_IQ3_XXS",
    "IQ2_XS": "LLAMA_FTYPE_MOSTLY_IQ2_XS", "IQ2_M": "LLAMA_FTYPE_MOSTLY_IQ2_M",
}
CONVERTER_ENV = "ARENA_GGUF_CONVERTER"  # path of llama.cpp's convert_hf_to_gguf.py (make install puts it in the venv)
CONVERTER_PATH = Path(sys.prefix) / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
GGUF_REQUIREMENTS = REPO_ROOT / "requirements-gguf.txt"
TOKEN_SAMPLE = 512  # token texts compared between a GGUF file and the base model's tokenizer


class GgufError(ArenaError):
    """A GGUF file could not be made or read; the message says what to do."""


@dataclass(frozen=True)
class StoredWeights:
    """What a GGUF file really stores, read from its tensor table."""

    file_type: str | None  # general.file_type as llama.cpp names it, e.g. "MOSTLY_Q4_K_M"
    tensor_types: dict[str, int]  # tensor type -> number of tensors of that type
    parameters: int  # elements in all tensors
    tensor_bytes: int  # bytes of all tensor data
    weights_bits_per_weight: float  # 8 * tensor_bytes / parameters: the effective figure

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def require_llama_cpp() -> None:
    if not llama_cpp_available():
        raise VariantUnavailable(f"not available: llama-cpp-python is not installed ({how_to_get_llama_cpp()})")


def how_to_get_llama_cpp() -> str:
    """How llama-cpp-python gets installed where this runs: a Space never runs the Makefile, only requirements.txt."""
    if not on_space():
        return "make install builds it"
    return (f"on a Space, add the line `{llama_cpp_requirement()}` to requirements.txt and the Space builds it "
            "in about 10 minutes, or a prebuilt wheel's URL for the Space's Python; see docs/spaces.md")


def llama_cpp_requirement() -> str:
    """The llama-cpp-python line of requirements-gguf.txt (the version make install builds)."""
    try:
        lines = GGUF_REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    return next((line.split("#")[0].strip() for line in lines if line.startswith("llama-cpp-python")),
                "llama-cpp-python")


def quantize_file(src: Path, dst: Path, gguf_type: str, threads: int | None = None) -> None:
    """Write dst as src quantized to gguf_type with llama.cpp's quantizer (src may itself be quantized:
    llama.cpp then dequantizes it to f32 first, so requantizing equals quantizing the dequantized weights)."""
    require_llama_cpp()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[gguf_type])
    params.nthread = threads or _threads()
    params.allow_requantize = True
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if code != 0:
        raise GgufError(f"llama.cpp could not quantize to {gguf_type} (return code {code})")


def reader(path: Path):
    """A parsed GGUF file (its metadata and tensor table; tensor data stays memory-mapped). Parsing a
    49k-token vocabulary takes seconds in Python: parse once per load and pass the reader around."""
    from gguf import GGUFReader

    return GGUFReader(str(path))


def stored_weights(path_or_reader) -> StoredWeights:
    """Tensor types, parameters and bytes as stored in a GGUF file."""
    reader = _reader(path_or_reader)
    types: Counter[str] = Counter()
    parameters = tensor_bytes = 0
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] += 1
        parameters += int(tensor.n_elements)
        tensor_bytes += int(tensor.n_bytes)
    return StoredWeights(_file_type(reader), dict(types.most_common()), parameters, tensor_bytes,
                         round(8 * tensor_bytes / parameters, 3) if parameters else 0.0)


def token_texts(path_or_reader, ids: list[int]) -> dict[int, str]:
    """The vocabulary entries of a GGUF file for the given ids (tokenizer.ggml.tokens)."""
    field = _reader(path_or_reader).fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise GgufError("the GGUF file has no tokenizer.ggml.tokens vocabulary")
    n = len(field.data)
    return {i: bytes(field.parts[field.data[i]]).decode("utf-8", errors="replace") for i in ids if i < n}


def vocabulary_size(path_or_reader) -> int:
    field = _reader(path_or_reader).fields.get("tokenizer.ggml.tokens")
    return 0 if field is None else len(field.data)


def check_vocabulary(path_or_reader, tokenizer, vocab_size: int) -> None:
    """Refuse a GGUF file whose vocabulary is not the base model's: every runtime gets the base
    tokenizer's ids, so a different vocabulary would silently turn them into other tokens."""
    parsed = _reader(path_or_reader)
    size = vocabulary_size(parsed)
    if size != vocab_size:
        raise VariantUnavailable(f"not available: the GGUF file's vocabulary has {size:,} tokens but the base "
                                 f"model's has {vocab_size:,}; it was made from another model or tokenizer")
    step = max(1, len(tokenizer) // TOKEN_SAMPLE)
    ids = sorted(set(range(0, min(64, len(tokenizer)))) | set(range(0, len(tokenizer), step)))
    theirs = token_texts(parsed, ids)
    ours = dict(zip(ids, tokenizer.convert_ids_to_tokens(ids)))
    differ = [i for i in ids if ours.get(i) is not None and theirs.get(i) != ours[i]]
    if differ:
        i = differ[0]
        raise VariantUnavailable(f"not available: the GGUF file's vocabulary differs from the base model's "
                                 f"tokenizer at {len(differ)} of {len(ids)} sampled tokens (token {i}: "
                                 f"{theirs.get(i)!r} in the file, {ours[i]!r} in the tokenizer)")


def _reader(path_or_reader):
    return reader(path_or_reader) if isinstance(path_or_reader, (str, Path)) else path_or_reader


def converter() -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py, where make install put it (or $ARENA_GGUF_CONVERTER)."""
    path = Path(os.environ.get(CONVERTER_ENV) or CONVERTER_PATH)
    return path if path.is_file() else None


def convert_checkpoint(folder: Path, out: Path, outtype: str = "f32") -> None:
    """Convert a transformers checkpoint folder to a GGUF file with llama.cpp's own converter."""
    script = converter()
    if script is None:
        raise GgufError("llama.cpp's convert_hf_to_gguf.py is not installed (make install puts it in "
                        f"{CONVERTER_PATH.parent}); it is needed to make GGUF files from a transformers checkpoint")
    done = subprocess.run([sys.executable, str(script), str(folder), "--outtype", outtype, "--outfile", str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise GgufError(f"converting the checkpoint to GGUF failed: {tail}")


def _file_type(reader) -> str | None:
    field = reader.fields.get("general.file_type")
    if field is None:
        return None
    value = int(field.parts[field.data[0]][0])
    try:
        import llama_cpp

        names = {getattr(llama_cpp, n): n.removeprefix("LLAMA_FTYPE_") for n in dir(llama_cpp)
                 if n.startswith("LLAMA_FTYPE_")}
        return names.get(value, str(value))
    except ImportError:
        return str(value)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def source_file(base) -> tuple[Path, str]:
    """The GGUF file to quantize a base model from, and a sentence saying what it is.

    For a bundled GGUF base, the shipped file itself (requantizing); for a transformers base (local
    folder or Hub), an F32 GGUF converted once with llama.cpp's converter and cached.
    """
    from demo.artifacts import sources

    source = base.source
    if source.kind == "bundled-gguf" and sources.bundled_file_usable(source):
        path = sources.bundled_gguf_path(source)
        return path, (f"requantized from the shipped {path.name} (llama.cpp dequantizes it to f32 first, so this "
                      "equals quantizing the dequantized baseline)")
    weights = sources.resolve(base)
    folder = Path(weights.location) if not weights.is_hub else _download(weights)
    from demo.artifacts import cache

    # A random-weights checkpoint is bfloat16 through and through: BF16 converts it exactly, at half F32's size.
    outtype = "bf16" if source.kind == "synthetic" else "f32"
    target = sources.quantized_dir(base, "gguf-convert", {"outtype": outtype}) / f"model-{outtype}.gguf"
    if not cache.check(target).ok:  # missing, or damaged since: converted (again)
        with cache.staged_file(target, f"the {outtype.upper()} GGUF conversion of {base.label}") as partial:
            convert_checkpoint(folder, partial, outtype)
    return target, (f"converted from the transformers checkpoint to {outtype.upper()} GGUF with llama.cpp's "
                    "converter, then quantized")


def make(base, gguf_type: str, out: Path, imatrix: bool = False) -> dict[str, Any]:
    """Write out (a .gguf file) for base at gguf_type, with an importance matrix where asked; returns what to
    record about it."""
    src, made_from = source_file(base)
    if not imatrix:
        quantize_file(src, out, gguf_type)
        return {"type": gguf_type, "made_from": made_from, "stored": stored_weights(out).as_dict()}
    from demo.artifacts import llama_tools

    matrix, f32, matrix_from = importance_matrix(base, src)
    llama_tools.quantize(f32, out, gguf_type, _threads(), matrix)
    return {"type": gguf_type, "made_from": f"{made_from}; with {matrix_from}", "imatrix": matrix_from,
            "stored": stored_weights(out).as_dict()}


def importance_matrix(base, src: Path) -> tuple[Path, Path, str]:
    """The base's importance matrix over the calibration text (llama.cpp's llama-imatrix on an F32 GGUF of it, in
    512-token chunks), made once and cached with that F32 file; (matrix, F32 file, what it is in words)."""
    from demo.artifacts import cache, llama_tools, sources
    from demo.config import REPO_ROOT

    text = REPO_ROOT / "assets" / "calibration.txt"
    folder = sources.quantized_dir(base, "gguf-imatrix", {"text": text.name, "ctx": llama_tools.DEFAULT_CTX})
    f32, matrix = folder / "model-f32.gguf", folder / "imatrix.gguf"
    if not cache.check(folder).ok or not matrix.is_file():
        cache.remove(folder)
        with cache.staged_folder(folder, f"the importance matrix of {base.label}") as staging:
            quantize_file(src, staging / f32.name, "F32")
            llama_tools.imatrix(staging / f32.name, text, staging / matrix.name, _threads())
    return matrix, f32, f"an importance matrix from llama-imatrix over assets/{text.name} ({llama_tools.DEFAULT_CTX}-token chunks)"


def _download(weights) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(weights.location, revision=weights.revision))
    except Exception as exc:  # offline or gated: say so in one line
        raise VariantUnavailable(f"not available: '{weights.location}' could not be downloaded to convert it "
                                 f"({str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__})") from None
