"""Typed domain errors: raised deep, translated at the edge (gr.Error in the UI, exit 1 in CLIs)."""


class ArenaError(Exception):
    """Base class for every error the arena reports to a user."""


class ConfigError(ArenaError):
    """models.yaml is unreadable or invalid; names the file, the variant and the field."""

    def __init__(self, path, message: str, *, variant: str | None = None, field: str | None = None):
        self.path, self.variant, self.field = str(path), variant, field
        where = [self.path]
        if variant:
            where.append(f"variant '{variant}'")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}")


class InvalidRequest(ArenaError):
    """A comparison request (prompt, variants, settings) is out of the allowed range."""


class VariantUnavailable(ArenaError):
    """A variant cannot run here: backend missing, weights unreachable, GPU needed, and so on."""


class RuntimeCrashed(ArenaError):
    """The process running a variant's runtime died (a signal, abort, the kernel's OOM killer) or hung past its
    deadline and was ended: that variant's failure alone (the serving process and every other variant go on).
    Like vLLM's EngineDeadError: the caller reports it and the next request gets a fresh runtime."""


class RuntimeEndedOnStop(ArenaError):
    """A Stop that the runtime could not honour in time (llama.cpp reading a long prompt checks for it only once
    the prompt is read): its process was ended so the device is free; the run counts as stopped, not failed, and
    the variant loads afresh next time."""


class MemoryBudgetExceeded(ArenaError):
    """A variant does not fit in the configured memory budget even with every other variant evicted."""


class Busy(ArenaError):
    """Too many requests are already running or waiting, in all or from this client; try again later."""


class NotQuantized(VariantUnavailable):
    """A quantized variant whose checkpoint has not been made yet; the message names the command."""


class CacheError(ArenaError):
    """A derived file in the cache is damaged, cannot be written, or a cache command was refused."""


class DiskFull(CacheError):
    """The disk filled up while writing a derived file; nothing half-written was left behind."""


class DamagedCheckpoint(NotQuantized, CacheError):
    """A quantized checkpoint on disk differs from what was written; the message names the rebuild."""


class EndpointError(VariantUnavailable):
    """A remote variant's endpoint is down, refused, answered with an error, stalled or broke its stream;
    the message is one line for its column and never carries the endpoint's key."""


class VoteRefused(InvalidRequest):
    """A vote for a battle this server never issued, issued to another session, or already voted on."""


class RateLimited(Busy):
    """A session asked for more battles or votes per minute than models.yaml's `blind:` block allows."""


class VoteStoreError(ArenaError):
    """The votes database or its journal cannot be opened, read or written. Opening and reading (the operator's, at
    start-up or in the CLI) name the file; a failed write, which a visitor reads, names no path: the log does."""


class GpuTimeTooLong(InvalidRequest):
    """On ZeroGPU: a request would ask for more GPU time than the cap; refused before anything runs."""


class ZeroGpuError(ArenaError):
    """On ZeroGPU: the profile does not fit the GPU slice, the worker failed, or the serving process was asked
    to run model code (it runs none after start-up there)."""
