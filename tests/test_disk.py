"""What the page writes per request is bounded: Gradio's copies of the files it serves expire after
limits.files_kept_s with the folders Gradio made for them, the arena's scratch space keeps a few folders, and
scratch spaces left by ended processes are removed at start-up."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.config import Limits
from demo.reports import scratch
from demo.ui import disk
from tests.conftest import free_port, tiny_models_file

KEPT_S = 2


def test_empty_folders_older_than_the_limit_are_removed(tmp_path):
    old_empty, new_empty, full = (tmp_path / (letter * 64) for letter in "abc")
    gradios = tmp_path / "vibe_edit"
    for folder in (old_empty, new_empty, full, gradios):
        folder.mkdir()
    (full / "card.json").write_text("{}")
    past = time.time() - 100
    os.utime(old_empty, (past, past))
    os.utime(full, (past, past))
    os.utime(gradios, (past, past))  # a folder of Gradio's own, not one it made for a file: kept
    assert disk.remove_empty_folders(tmp_path, older_than_s=10) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b" * 64, "c" * 64, "vibe_edit"]


def test_scratch_spaces_of_ended_processes_are_removed(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"quantization-arena-{int(ended.stdout)}"
    mine, alive = tmp_path / f"quantization-arena-{os.getpid()}", tmp_path / f"quantization-arena-{os.getppid()}"
    other = tmp_path / "quantization-arena-notes"
    for folder in (gone, mine, alive, other):
        (folder / "comparison-x").mkdir(parents=True)
    assert disk.remove_abandoned_scratch(tmp_path) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, alive, other))


@pytest.fixture
def tiny_page(tmp_path, monkeypatch, default_config):
    """The app over a tiny random model, its Gradio cache in a folder of its own, files kept KEPT_S."""
    from demo import ui
    from demo.config import load_config
    from demo.running.runner import Arena

    tiny_models_file(tmp_path, default_config, "{id: tiny/fp32, base: tiny, method: fp32}",
                     extra=f"limits: {{files_kept_s: {KEPT_S}}}\n")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # read when the page is built
    monkeypatch.setenv("ARENA_VOTES_DB", str(tmp_path / "votes.sqlite3"))
    demo = ui.build_demo(Arena(load_config(tmp_path / "models.yaml")))
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **ui.launch_kwargs(demo))
    yield url, tmp_path / "gradio"
    demo.close()


def footprint(folder: Path) -> tuple[int, int]:
    """(files and folders, bytes) under `folder`."""
    entries = list(folder.rglob("*")) if folder.exists() else []
    return len(entries), sum(p.stat().st_size for p in entries if p.is_file())


def test_a_hundred_comparisons_leave_the_disk_as_they_found_it(tiny_page, monkeypatch):
    """Each comparison on the page ends with its card (JSON, CSV, Markdown) written to the scratch space and
    copied into Gradio's cache to be downloaded: 300 files for 100 comparisons, kept for KEPT_S."""
    from gradio_client import Client

    url, cache = tiny_page
    client = Client(url, verbose=False, download_files=False)  # nothing of its own written
    space = scratch.process_space().root
    # a scratch folder is needed until Gradio has copied its files (MIN_AGE_S leaves slow handlers a minute):
    # here one second, so that what stays is the KEEP newest
    monkeypatch.setattr(scratch.process_space(), "min_age_s", 1.0)
    before = footprint(cache), footprint(space)
    for i in range(100):
        inputs = (f"Question number {i}?", ["tiny/fp32"], 2, False, 0.7, 0.9, 0)
        client.predict(*inputs, api_name="/run_start")
        client.predict(*inputs, api_name="/run")
        outputs = client.predict(api_name="/run_summary")
        assert any(isinstance(o, list) and len(o) == 3 and "comparison.json" in str(o) for o in outputs), outputs
    during = footprint(cache)
    # a copy goes once it is KEPT_S old, and its emptied folder KEPT_S after that: two sweeps past each
    time.sleep(2 * KEPT_S + 4 * disk.sweep_every_s(Limits(files_kept_s=KEPT_S)) + 1)
    after = footprint(cache), footprint(space)
    assert during[0] > before[0][0]  # the copies were made
    # Gradio's cache: every copy gone after KEPT_S, with the folders made for them
    left = sorted(cache.rglob("*"))
    assert after[0][0] <= before[0][0] + 2, [(p.name, p.is_dir(), round(time.time() - p.stat().st_ctime, 1))
                                             for p in left[:12]]
    # the scratch space: the KEEP newest folders the last sweep kept and the one made after it, three small
    # files each
    folders = scratch.KEEP + 1
    assert after[1][0] <= before[1][0] + folders * 4 and after[1][1] <= before[1][1] + folders * 64 * 1024
