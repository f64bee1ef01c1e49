"""The cache heals itself: manifests on real files, a truncated checkpoint rebuilt at load, a damaged GPTQ
checkpoint named with its rebuild command, disk full without half-written files, and `python -m demo cache`."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from demo import __main__ as cli
from demo.artifacts import cache, quantize, sources
from demo.errors import DamagedCheckpoint, DiskFull, NotQuantized
from tests.conftest import CLEAR_PROMPT, REPO

GPTQ = "smollm2/gptq-4bit"


@pytest.fixture()
def folder(tmp_path):
    """A small checkpoint-like folder with a nested file."""
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "weights.bin").write_bytes(os.urandom(3 * 2**20))
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def bundled_original(default_config):
    """The real materialized checkpoint in the shared test cache (made once per machine)."""
    return Path(sources.resolve(default_config.bases["smollm2"]).location)


@pytest.fixture()
def bundled_copy(bundled_original, empty_cache):
    """A private copy of the materialized checkpoint in a temporary cache, free to damage."""
    target = empty_cache / bundled_original.relative_to(bundled_original.parents[2])
    shutil.copytree(bundled_original, target)
    return target


def _truncate(path: Path, keep_bytes: int) -> None:
    with path.open("r+b") as f:
        f.truncate(keep_bytes)


def _gptq_like(config, *, sealed: bool = True) -> Path:
    """A folder where the smollm2 GPTQ checkpoint goes, with real (small) safetensors weights."""
    import torch
    from safetensors.torch import save_file

    variant = config.variants[GPTQ]
    folder = sources.quantized_dir(config.bases[variant.base], variant.method, variant.settings)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / sources.METADATA_FILE).write_text(json.dumps({"method": "gptq"}))
    if sealed:
        cache.seal(folder, rebuild_command=sources.quantize_command(GPTQ))
    return folder


# --- seal and verify on real files -----------------------------------------------------------------

def test_seal_then_verify_ok_and_manifest_written_last(folder):
    cache.seal(folder, rebuild_command="make it")
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "weights.bin", "sub/tokenizer.json"}
    assert manifest["files"]["weights.bin"]["size_bytes"] == 3 * 2**20
    newest_member_ns = max(p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != cache.MANIFEST)
    assert (folder / cache.MANIFEST).stat().st_mtime_ns >= newest_member_ns
    for full in (True, False):
        result = cache.verify(folder, full=full)
        assert result.ok and result.rebuild_command == "make it"


def test_missing_and_unsealed(folder, tmp_path):
    assert cache.verify(tmp_path / "nowhere").state == "missing"
    result = cache.verify(folder)
    assert result.state == "incomplete" and "no manifest" in result.problem


def test_truncated_file_is_damaged_with_sizes(folder):
    cache.seal(folder)
    _truncate(folder / "weights.bin", 1000)
    result = cache.verify(folder, full=False)
    assert result.state == "damaged" and result.file == "weights.bin"
    assert "size differs (1,000 bytes on disk, 3.0 MiB when written)" in result.problem


def test_deleted_file_is_damaged(folder):
    cache.seal(folder)
    (folder / "sub" / "tokenizer.json").unlink()
    result = cache.verify(folder, full=False)
    assert result.state == "damaged" and result.problem == "sub/tokenizer.json: file missing"


def test_rewritten_in_place_is_caught_at_load_by_its_mtime(folder):
    cache.seal(folder)
    manifest_ns = (folder / cache.MANIFEST).stat().st_mtime_ns
    (folder / "config.json").write_text('{"a": 2}')  # same size, other bytes
    os.utime(folder / "config.json", ns=(manifest_ns + 10**9, manifest_ns + 10**9))
    result = cache.verify(folder, full=False)
    assert result.state == "damaged" and "config.json: contents differ" in result.problem


def test_same_size_change_with_old_mtime_needs_full_verify(folder):
    """The load-time check trusts sizes when nothing is newer than the manifest; `cache verify` hashes."""
    cache.seal(folder)
    stat = (folder / "config.json").stat()
    (folder / "config.json").write_text('{"a": 3}')
    os.utime(folder / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.verify(folder, full=False).ok
    assert cache.verify(folder, full=True).state == "damaged"


def test_unreadable_manifest_is_damaged(folder):
    cache.seal(folder)
    (folder / cache.MANIFEST).write_text("{not json")
    result = cache.verify(folder)
    assert result.state == "damaged" and result.file == cache.MANIFEST


def test_single_file_sealed_beside_itself(tmp_path):
    gguf = tmp_path / "gguf-abc.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(5000))
    cache.seal(gguf, rebuild_command="python -m something")
    assert (tmp_path / "gguf-abc.gguf.manifest.json").is_file()
    assert cache.verify(gguf).ok
    _truncate(gguf, 100)
    assert cache.verify(gguf, full=False).state == "damaged"
    gguf.unlink()
    assert cache.verify(gguf).state == "missing"


# --- the materialized bundled checkpoint heals at load ---------------------------------------------

def test_truncated_materialized_checkpoint_is_rebuilt_and_answers(clear_prompt, bundled_copy, default_config, capfd):
    """Before: every variant failed with "SafetensorError: ... incomplete metadata, file not fully covered".
    The variant's runtime (its own process) finds the damage and logs the rebuild on the shared stderr."""
    from demo.running.runner import Arena

    weights = bundled_copy / "model.safetensors"
    _truncate(weights, weights.stat().st_size // 2)
    arena = Arena(default_config)
    record = arena.compare_records(CLEAR_PROMPT, ["smollm2/fp32"], arena.settings(max_new_tokens=8))[0]
    assert record["status"] == "done", record["error"]
    assert "Paris" in record["text"]
    logged = [line for line in capfd.readouterr().err.splitlines() if "rebuilt the cached checkpoint" in line]
    assert logged and "size differs" in logged[0]
    assert cache.verify(bundled_copy).ok
    assert [e.state for e in cache.entries()] == ["ok"]  # no staging folder left behind


def test_checkpoint_from_before_manifests_is_sealed_on_first_load(bundled_copy, default_config):
    (bundled_copy / cache.MANIFEST).unlink()
    assert cache.verify(bundled_copy).state == "incomplete"
    stamp = (bundled_copy / "model.safetensors").stat().st_mtime_ns
    assert sources.resolve(default_config.bases["smollm2"]).location == str(bundled_copy)
    assert (bundled_copy / "model.safetensors").stat().st_mtime_ns == stamp  # kept, not rebuilt
    assert cache.verify(bundled_copy).ok


def test_unsealed_truncated_checkpoint_is_judged_by_opening_it(bundled_copy):
    (bundled_copy / cache.MANIFEST).unlink()
    _truncate(bundled_copy / "model.safetensors", 10_000)
    result = cache.check(bundled_copy)
    assert result.state == "damaged" and result.file == "model.safetensors"
    assert "does not open" in result.problem
    assert not (bundled_copy / cache.MANIFEST).exists()


# --- a damaged GPTQ checkpoint names its rebuild ---------------------------------------------------

def test_damaged_gptq_checkpoint_names_the_rebuild_command(empty_cache, default_config):
    from demo.running.runner import Arena

    folder = _gptq_like(default_config)
    _truncate(folder / "model.safetensors", 100)
    arena = Arena(default_config)
    record = arena.compare_records("hi", [GPTQ], arena.settings(max_new_tokens=2))[0]
    assert record["status"] == "error"
    assert record["error"].startswith("not quantized: its checkpoint is damaged (model.safetensors: size differs")
    assert f"`python -m demo.quantize --variant {GPTQ}`" in record["error"] and "Quantize now" in record["error"]


def test_unsealed_gptq_checkpoint_is_sealed_if_sound_and_rejected_if_truncated(empty_cache, default_config):
    from demo.backends.transformers import weights_for

    variant = default_config.variants[GPTQ]
    base = default_config.bases[variant.base]
    folder = _gptq_like(default_config, sealed=False)
    assert weights_for(variant, base).location == str(folder)
    assert cache.verify(folder).ok and cache.verify(folder).rebuild_command == sources.quantize_command(GPTQ)
    (folder / cache.MANIFEST).unlink()
    _truncate(folder / "model.safetensors", 100)
    with pytest.raises(DamagedCheckpoint, match="does not open") as caught:
        weights_for(variant, base)
    assert isinstance(caught.value, NotQuantized)


def test_quantize_variant_rebuilds_a_damaged_checkpoint(empty_cache, default_config, monkeypatch):
    """quantize_variant makes a damaged checkpoint again (the GPTQ run itself is replaced by a small writer)."""
    folder = _gptq_like(default_config)
    _truncate(folder / "model.safetensors", 100)
    writes = []

    def small_checkpoint(base, method, settings, out, calibration):
        writes.append(out)
        shutil.copy(REPO / "models.yaml", out / "config.json")  # any file: the run is not what is tested
        return []

    monkeypatch.setattr(quantize, "_write_checkpoint", small_checkpoint)
    assert quantize.quantize_variant(default_config, GPTQ) == folder
    assert len(writes) == 1 and cache.verify(folder).ok
    assert quantize.quantize_variant(default_config, GPTQ) == folder and len(writes) == 1  # sound: kept


# --- disk full -------------------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_in_atomic_write_is_typed_and_leaves_the_old_file(empty_cache, monkeypatch):
    target = empty_cache / cache.QUANTIZED / "x.json"
    cache.atomic_write(target, b"old")
    monkeypatch.setattr(os, "write", _no_space)
    with pytest.raises(DiskFull) as caught:
        cache.atomic_write(target, b"new" * 1000)
    message = str(caught.value)
    assert message.startswith(f"not enough disk space in {empty_cache} to write x.json: ")
    assert message.endswith(" MiB free") and len(message.splitlines()) == 1
    assert [p.name for p in target.parent.iterdir()] == ["x.json"] and target.read_bytes() == b"old"


def test_disk_full_while_materializing_leaves_nothing(empty_cache, default_config, monkeypatch):
    def half_then_full(gguf, out):
        (out / "model.safetensors").write_bytes(b"partial")
        _no_space()

    monkeypatch.setattr(sources, "_write_checkpoint", half_then_full)
    with pytest.raises(DiskFull, match=rf"not enough disk space in {empty_cache} to write the dequantized "
                                       r"checkpoint of SmolLM2-135M-Instruct.Q4_1.gguf: \d+ MiB free"):
        sources.materialize_gguf(default_config.bases["smollm2"].source)
    assert cache.entries() == []
    assert [p for p in empty_cache.rglob("*") if p.is_file()] == []


def test_disk_full_while_quantizing_is_typed_and_leaves_nothing(tmp_path, default_config, monkeypatch):
    def half_then_full(base, method, settings, out, calibration):
        (out / "model.safetensors").write_bytes(b"partial")
        _no_space()

    monkeypatch.setattr(quantize, "_write_checkpoint", half_then_full)
    with pytest.raises(DiskFull, match="not enough disk space in .* to write the gptq checkpoint of "):
        quantize.quantize(default_config.bases["smollm2"], "gptq", {"bits": 4}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_staged_file_is_sealed_or_leaves_nothing(empty_cache):
    target = empty_cache / cache.QUANTIZED / "smollm2" / "gguf-0123.gguf"
    with cache.staged_file(target, "the GGUF file", rebuild_command="make gguf") as staging:
        staging.write_bytes(b"GGUF" + bytes(1000))
    assert cache.verify(target).ok and cache.verify(target).rebuild_command == "make gguf"
    with pytest.raises(DiskFull, match="to write the GGUF file: "):
        with cache.staged_file(target, "the GGUF file") as staging:
            staging.write_bytes(b"GGUF")
            _no_space()
    assert sorted(p.name for p in target.parent.iterdir()) == ["gguf-0123.gguf", "gguf-0123.gguf.manifest.json"]
    assert cache.verify(target).ok  # the sound copy is untouched


# What safetensors' Rust writer raises when the disk fills (read off a full tmpfs): its own type, the OS
# error only in the text.
SAFETENSORS_DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _library_disk_full(tensors, filename, metadata=None):
    from safetensors import SafetensorError

    Path(filename).write_bytes(b"partial")  # a writer that dies half-way
    raise SafetensorError(SAFETENSORS_DISK_FULL)


def test_disk_full_is_recognised_through_a_library_error(empty_cache, default_config, monkeypatch):
    """The library's writer fails with its own error type (no OSError to find): one clear line, nothing left."""
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _library_disk_full)
    with pytest.raises(DiskFull) as caught:
        sources.materialize_gguf(default_config.bases["smollm2"].source)
    message = str(caught.value)
    assert message.startswith(f"not enough disk space in {empty_cache} to write the dequantized checkpoint of ")
    assert message.endswith(" MiB free") and len(message.splitlines()) == 1
    assert cache.entries() == [] and [p for p in empty_cache.rglob("*") if p.is_file()] == []


def test_disk_full_is_recognised_when_wrapped():
    try:
        try:
            _no_space()
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    except RuntimeError as wrapped:
        assert cache.is_disk_full(wrapped)
    assert cache.is_disk_full(RuntimeError("IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"))
    assert cache.is_disk_full(RuntimeError(SAFETENSORS_DISK_FULL))
    assert not cache.is_disk_full(ValueError("Error while deserializing header: incomplete metadata"))


# --- python -m demo cache --------------------------------------------------------------------------

def run_cache(*args):
    return subprocess.run([sys.executable, "-m", "demo", "cache", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


def test_cli_list_verify_clear(empty_cache, default_config, capsys):
    folder = _gptq_like(default_config)
    gguf = empty_cache / cache.QUANTIZED / "smollm2" / "gguf-0123.gguf"
    gguf.write_bytes(b"GGUF" + bytes(2**20))
    cache.seal(gguf)
    leftover = empty_cache / cache.BUNDLED / "pkg-1" / ".stem.partial-x"
    leftover.mkdir(parents=True)

    out = run_cache("list", "--json")
    assert out.returncode == 0, out.stderr
    listed = {e["path"]: e for e in json.loads(out.stdout)["entries"]}
    relative = folder.relative_to(empty_cache).as_posix()
    assert {(e["kind"], e["state"]) for e in listed.values()} == {
        ("quantized checkpoint", "ok"), ("gguf", "ok"), ("leftover", "incomplete")}
    assert listed[relative]["rebuild_command"] == sources.quantize_command(GPTQ)
    assert listed["quantized/smollm2/gguf-0123.gguf"]["size_mib"] == 1.0

    assert cli.main(["cache", "verify"]) == 0  # a leftover is shown, but is nothing that loads
    _truncate(folder / "model.safetensors", 100)
    assert cli.main(["cache", "verify"]) == 1
    shown = capsys.readouterr().out
    assert "damaged" in shown and "model.safetensors: size differs" in shown
    assert f"`python -m demo.quantize --variant {GPTQ}` makes it again, or press Quantize now" in shown

    assert cli.main(["cache", "clear", "quantized/smollm2/gguf-0123.gguf"]) == 0
    assert "1.0 MiB freed" in capsys.readouterr().out
    assert not gguf.exists() and not gguf.with_name(gguf.name + cache.MANIFEST).exists()

    out = run_cache("clear", "/etc")
    assert out.returncode == 1 and "refusing to remove '/etc'" in out.stderr and "Traceback" not in out.stderr
    assert cli.main(["cache", "clear", "../.."]) == 1
    (empty_cache / "keep.txt").write_text("not ours")
    out = run_cache("clear", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["removed"] == "everything"
    assert [p.name for p in empty_cache.iterdir()] == ["keep.txt"]  # only bundled/ and quantized/ are ours
    assert "nothing cached" in run_cache("list").stdout
