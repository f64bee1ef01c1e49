"""Which GPU NVML reads: this process's, not the host's first. NVML numbers every GPU of the host and ignores
CUDA_VISIBLE_DEVICES; and its state is per process: a forked worker initialises its own."""

import pytest

from demo.measuring import nvml


@pytest.mark.parametrize("listed, expected", [
    (None, ("index", 0)),  # nothing hidden: device 0 is the host's first
    ("3", ("index", 3)),  # a multi-GPU host that gave this process its fourth GPU
    ("2,0", ("index", 2)),  # CUDA's device 0 is the first listed
    ("GPU-6b2cbd3a-1c5e-4a4f-9d3e-0f1e2d3c4b5a", ("uuid", "GPU-6b2cbd3a-1c5e-4a4f-9d3e-0f1e2d3c4b5a")),
    ("MIG-0d1c2b3a-4e5f-6a7b-8c9d-0e1f2a3b4c5d", ("uuid", "MIG-0d1c2b3a-4e5f-6a7b-8c9d-0e1f2a3b4c5d")),
    ("", None), ("-1", None),  # every GPU hidden (the emulated ZeroGPU's serving process)
])
def test_the_gpu_read_is_the_one_cuda_device_0_is(listed, expected):
    environ = {} if listed is None else {nvml.VISIBLE_ENV: listed}
    assert nvml.visible_device(environ) == expected


def test_a_forked_process_initialises_nvml_again(monkeypatch):
    """NVML's state is not reset by fork: the answer kept for one process id is not another's."""
    calls = []
    monkeypatch.setattr(nvml, "_library", {})
    monkeypatch.setattr(nvml, "_initialised", lambda: calls.append("init") or None)
    monkeypatch.setattr(nvml.os, "getpid", lambda: 100)
    assert nvml.library() is None and nvml.library() is None and calls == ["init"]  # once per process
    monkeypatch.setattr(nvml.os, "getpid", lambda: 101)  # the same memory, in a forked child
    nvml.library()
    assert calls == ["init", "init"] and list(nvml._library) == [101]
