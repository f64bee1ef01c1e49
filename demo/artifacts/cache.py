"""The integrity of derived files in the cache: what was written, checked at load and on demand, freed on request.

Derived files (the materialized bundled checkpoint, quantized checkpoints, GGUF files) are written to a
staging path beside their place and renamed into it, so a half-written one never sits where a loader
looks. `seal` records the size and sha256 of every file in a manifest written last: a folder gets
`<folder>/.manifest.json`, a single file `<file>.manifest.json` beside it. `staged_folder` and
`staged_file` do the staging, renaming and sealing for a writer; `check` is the load-time test (sizes,
hashes only when a file changed after sealing); `verify` can also hash everything.

`cache_dir()` is on the persistent folder (demo.artifacts.persistent) where one is mounted, so checkpoints
quantized on a Space survive its restarts; `local_dir()` is always this machine's own disk.

Layout under `cache_dir()`:
    bundled/<package>-<version>/<gguf stem>/        a bundled GGUF dequantized to safetensors
    bundled/synthetic/<shape>-seed<n>-<digest>/      a named shape's seeded random weights (speed and memory only)
    quantized/<base>/<method>-<digest>/             a checkpoint made by demo.quantize
    quantized/<base>/gguf-<digest>.gguf             a GGUF file (sealed as a single file)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from demo.artifacts.persistent import persistent_dir
from demo.errors import CacheError, DiskFull

CACHE_ENV = "ARENA_CACHE_DIR"
PERSISTENT_CACHE = "cache"  # the cache's folder inside the persistent folder
BUNDLED, QUANTIZED = "bundled", "quantized"  # the two top-level folders; nothing else is ever removed
SYNTHETIC = "synthetic"  # under bundled/: random-weights checkpoints of named shapes (demo.artifacts.synthetic)
MANIFEST = ".manifest.json"  # inside a sealed folder; beside a sealed file as <file>.manifest.json
MANIFEST_FORMAT = 1
MIB = 2**20
_HASH_CHUNK_BYTES = 4 * MIB
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Libraries that wrap OS errors in their own types (safetensors: "IoError(Os { code: 28, ... })") keep the text.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


@dataclass(frozen=True)
class CacheCheck:
    """The state of one cached path: ok, missing, incomplete (no manifest), or damaged (which file, why)."""

    path: Path
    state: str  # "ok" | "missing" | "incomplete" | "damaged"
    problem: str | None = None  # for a person: "model.safetensors: 1.0 MiB on disk, 513.1 MiB when written"
    file: str | None = None  # the member that differs, relative to the folder (or the file's own name)
    rebuild_command: str | None = None  # as recorded by seal()

    @property
    def ok(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class CacheEntry:
    """One derived thing in the cache, as `python -m demo cache list` shows it."""

    path: str  # relative to cache_dir()
    kind: str  # "bundled" | "random weights" | "quantized checkpoint" | "gguf" | "leftover" (an interrupted write)
    size_mib: float
    state: str  # as CacheCheck.state
    problem: str | None
    rebuild_command: str | None


def cache_dir() -> Path:
    """Where derived files live: $ARENA_CACHE_DIR, else cache/ in the persistent folder where one is mounted (a
    Space's /data), else ~/.cache/quantization-arena."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    persistent = persistent_dir()
    return persistent / PERSISTENT_CACHE if persistent is not None else local_dir()


def local_dir() -> Path:
    """The arena's folder on this machine's own disk, never the persistent folder: $ARENA_CACHE_DIR, else
    ~/.cache/quantization-arena (the votes database lives here, where SQLite's locks work)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "quantization-arena")


def manifest_path(path: Path) -> Path:
    return path / MANIFEST if path.is_dir() else path.with_name(path.name + MANIFEST)


# --- sealing and checking -------------------------------------------------------------------------

def seal(path: Path, *, rebuild_command: str | None = None, extra: dict | None = None) -> None:
    """Record the size and sha256 of every file of `path` (a folder, or one file) in its manifest, written last."""
    if not path.exists():
        raise CacheError(f"cannot seal '{path}': it does not exist")
    files = {name: {"size_bytes": member.stat().st_size, "sha256": _sha256(member)}
             for name, member in _members(path)}
    manifest = {"format": MANIFEST_FORMAT, "sealed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rebuild_command": rebuild_command, "extra": extra or {}, "files": files}
    atomic_write(manifest_path(path), json.dumps(manifest, indent=2).encode())


def verify(path: Path, *, full: bool = True) -> CacheCheck:
    """Compare `path` with its manifest: sizes always; hashes always when `full`, else only where needed.

    Without `full` (at load time) a file is hashed only when its mtime is newer than the manifest's.
    Truncation, an interrupted copy and a short write (what has been seen) all change a size, and a
    rewrite in place moves the mtime; a silent bit flip that does neither is left to
    `python -m demo cache verify`. Hashing the 513 MiB bundled checkpoint costs about a second per
    load on two cores, and every variant loads from it, so it is not paid on every load.
    """
    if not path.exists():
        return CacheCheck(path, "missing", "not on disk")
    manifest_file = manifest_path(path)
    if not manifest_file.is_file():
        return CacheCheck(path, "incomplete", "no manifest: interrupted, or written before manifests existed")
    manifest = _read_manifest(manifest_file)
    if manifest is None:
        return CacheCheck(path, "damaged", "its manifest is unreadable", manifest_file.name)
    command = manifest.get("rebuild_command")
    sealed_ns = manifest_file.stat().st_mtime_ns
    changed = []
    for name, record in manifest["files"].items():
        member = path / name if path.is_dir() else path
        if not member.is_file():
            return CacheCheck(path, "damaged", f"{name}: file missing", name, command)
        stat = member.stat()
        if stat.st_size != record["size_bytes"]:
            return CacheCheck(path, "damaged", f"{name}: size differs ({_human(stat.st_size)} on disk, "
                              f"{_human(record['size_bytes'])} when written)", name, command)
        if full or stat.st_mtime_ns > sealed_ns:
            changed.append((name, member, record))
    for name, member, record in changed:
        if _sha256(member) != record["sha256"]:
            return CacheCheck(path, "damaged", f"{name}: contents differ (sha256 is not the one written)",
                              name, command)
    if changed and not full:
        with contextlib.suppress(OSError):  # a read-only cache is still checked, just again next time
            os.utime(manifest_file)  # contents re-confirmed now: later loads compare sizes only
    return CacheCheck(path, "ok", rebuild_command=command)


def check(path: Path, *, full: bool = False, rebuild_command: str | None = None) -> CacheCheck:
    """The check a loader makes: `verify`, and an unsealed checkpoint from before manifests is sealed if it opens.

    Such a checkpoint has no record to compare with; what can be checked is that config.json parses
    and each safetensors file opens (the test that failed with "incomplete metadata" on a truncated
    file). A single file without a manifest (a GGUF) stays incomplete: they always had one.
    """
    result = verify(path, full=full)
    if result.state != "incomplete" or not path.is_dir():
        return result
    problem = _unopenable(path)
    if problem:
        return CacheCheck(path, "damaged", problem, problem.split(":")[0], rebuild_command)
    seal(path, rebuild_command=rebuild_command, extra={"sealed": "on first check, written before manifests"})
    return CacheCheck(path, "ok", rebuild_command=rebuild_command)


def _unopenable(folder: Path) -> str | None:
    """Why a checkpoint folder would not load, judged from its files alone; None if it would open."""
    from safetensors import safe_open

    if not (folder / "config.json").is_file():
        return "config.json: file missing"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "model.safetensors: file missing"
    for member in sorted(folder.glob("*.json")):
        try:
            json.loads(member.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f"{member.name}: not valid JSON"
    for member in weights:
        try:
            with safe_open(str(member), framework="pt"):
                pass
        except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) kinds
            return f"{member.name}: does not open ({str(exc).splitlines()[0][:120]})"
    return None


def _members(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.name, path)]
    manifest = path / MANIFEST
    return [(member.relative_to(path).as_posix(), member) for member in sorted(path.rglob("*"))
            if member.is_file() and member != manifest]


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if all(isinstance(r["size_bytes"], int) and isinstance(r["sha256"], str) for r in files.values()):
            return manifest
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        pass
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- writing --------------------------------------------------------------------------------------

def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a staging file in the same folder, renamed over `path` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_as_error(path.parent, path.name):
        fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            try:
                os.fchmod(fd, 0o644)  # as open() would make it; mkstemp's 0600 would hide it from other users
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(staging, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise


@contextlib.contextmanager
def staged_folder(target: Path, what: str, *, rebuild_command: str | None = None,
                  extra: dict | None = None) -> Iterator[Path]:
    """A fresh folder beside `target` for the caller to fill; sealed and renamed into place, or removed on failure.

    Renaming is atomic, so `target` is either absent or complete with its manifest. If another
    process put a sound `target` in place first, its copy is kept and this one dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_as_error(target.parent, what):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            yield staging
            seal(staging, rebuild_command=rebuild_command, extra=extra)
            try:
                staging.rename(target)
            except OSError:
                if not verify(target, full=False).ok:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_file(target: Path, what: str, *, rebuild_command: str | None = None,
                extra: dict | None = None) -> Iterator[Path]:
    """A staging path beside `target` for the caller to write (a GGUF file); renamed into place, then sealed.

    A crash between the rename and the manifest leaves a file without one: `check` calls it incomplete,
    and a loader makes it again.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_as_error(target.parent, what):
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(fd)
        staging = Path(name)
        try:
            yield staging
            with contextlib.suppress(FileNotFoundError):
                manifest_path(target).unlink()  # an older manifest must not vouch for the new file
            os.replace(staging, target)
            seal(target, rebuild_command=rebuild_command, extra=extra)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()


@contextlib.contextmanager
def disk_full_as_error(folder: Path, what: str) -> Iterator[None]:
    """Turn running out of space (ENOSPC, EDQUOT), however a library wraps it, into DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = _shown_folder(folder)
        raise DiskFull(f"not enough disk space in {where} to write {what}: {free_mib(where):.0f} MiB free") from exc


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error, or one it was raised from, is the disk (or quota) being full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_mib(folder: Path) -> float:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free / MIB


def _shown_folder(folder: Path) -> Path:
    """The cache folder for anything inside it (what a user can act on), else the folder itself."""
    root = cache_dir()
    return root if folder.resolve().is_relative_to(root.resolve()) else folder


# --- listing and freeing --------------------------------------------------------------------------

def entries(*, full: bool = False) -> list[CacheEntry]:
    """Everything derived in the cache, each with its state (sizes compared; hashes too when `full`)."""
    root = cache_dir()
    found = []
    for path in _entry_paths(root):
        if path.name.startswith("."):
            found.append(CacheEntry(_relative(path), "leftover", _size_mib(path), "incomplete",
                                    "an interrupted write (or one under way); nothing loads it", None))
            continue
        result = check(path, full=True) if full else verify(path, full=False)
        found.append(CacheEntry(_relative(path), _kind(path), _size_mib(path), result.state, result.problem,
                                result.rebuild_command))
    return found


def clear(path: str | Path | None = None) -> float:
    """Remove one entry (a path inside the cache folder) or, with no path, every entry; returns MiB freed."""
    root = cache_dir()
    if path is None:
        targets = [p for p in (root / BUNDLED, root / QUANTIZED) if p.exists()]
    else:
        targets = [_inside_cache(Path(path), root)]
    freed_mib = sum(_size_mib(target) for target in targets)
    for target in targets:
        remove(target)
    return freed_mib


def remove(path: Path) -> None:
    """Delete a cached folder or file together with its manifest."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            manifest_path(path).unlink()


def _inside_cache(path: Path, root: Path) -> Path:
    """`path` (relative to the cache folder, or else to here) if it lies in bundled/ or quantized/; refuses the rest."""
    candidate = root / path  # an absolute `path` stays itself
    if not candidate.exists() and not manifest_path(candidate).exists():
        candidate = path.absolute()
    resolved, base = candidate.resolve(), root.resolve()  # a link out of the cache is judged by where it points
    if not any(resolved.is_relative_to(base / folder) for folder in (BUNDLED, QUANTIZED)):
        raise CacheError(f"refusing to remove '{path}': it is not an entry of the cache folder {root}")
    if not candidate.exists() and not manifest_path(candidate).exists():
        raise CacheError(f"nothing cached at '{path}' (see `python -m demo cache list`)")
    return candidate


def _entry_paths(root: Path) -> list[Path]:
    paths = sorted(root.glob(f"{BUNDLED}/*/*")) + sorted(root.glob(f"{QUANTIZED}/*/*"))
    kept = []
    for path in paths:
        if path.name.endswith(MANIFEST) and not path.name.startswith("."):
            owner = path.with_name(path.name[:-len(MANIFEST)])
            if not owner.exists():
                kept.append(owner)  # a file whose manifest outlived it: listed as missing
            continue
        kept.append(path)
    return kept


def _kind(path: Path) -> str:
    parts = path.relative_to(cache_dir()).parts
    if parts[0] == BUNDLED:
        return "random weights" if parts[1] == SYNTHETIC else "bundled"
    return "gguf" if path.suffix == ".gguf" else "quantized checkpoint"


def _relative(path: Path) -> str:
    return path.relative_to(cache_dir()).as_posix()


def _size_mib(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MIB
    files = [p for p in (path, manifest_path(path)) if p.is_file()]
    return sum(p.stat().st_size for p in files) / MIB


def _human(size_bytes: int) -> str:
    return f"{size_bytes / MIB:.1f} MiB" if size_bytes >= MIB else f"{size_bytes:,} bytes"
