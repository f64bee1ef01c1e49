"""Energy from the machine's counters: a fake RAPL tree laid out like /sys/class/powercap (the real one is never
read here), and "not exposed" where there is none."""

import pytest

from demo.measuring import energy


def _zone(root, name: str, label: str, energy_uj: int, range_uj: int = 262_143_328_850):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{label}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return zone


def test_rapl_package_zones_are_summed_and_a_wrapped_counter_stays_right(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    core = _zone(tmp_path, "intel-rapl:0:0", "core", 500_000)  # inside package 0: never counted again
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 999_000_000, range_uj=1_000_000_000)
    _zone(tmp_path, "intel-rapl:2", "psys", 0)  # the whole platform, overlapping the packages: not counted
    with energy.track_energy("cpu", tmp_path) as tracker:
        (p0 / "energy_uj").write_text("3500000\n")  # +2.5 J
        (core / "energy_uj").write_text("2500000\n")
        (p1 / "energy_uj").write_text("500000\n")  # wrapped at 1,000 J: 1 J to the top, 0.5 J after it
    result = tracker.result
    assert result.energy_joules == pytest.approx(2.5 + 1.0 + 0.5)
    assert result.source.startswith("RAPL package-0 + package-1")
    assert energy.joules_per_token(result, 8) == pytest.approx(0.5)


def test_no_powercap_tree_says_not_exposed(tmp_path):
    for root in (tmp_path, tmp_path / "absent"):
        with energy.track_energy("cpu", root) as tracker:
            pass
        assert tracker.result == energy.Energy(None, "not exposed by this machine")
        assert energy.joules_per_token(tracker.result, 8) is None


def test_zones_without_a_package_say_not_exposed(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "psys", 10)
    assert energy.rapl_counter(tmp_path) == energy.NOT_EXPOSED


def test_no_tokens_no_figure_and_a_remote_engine_is_not_read(tmp_path):
    assert energy.joules_per_token(energy.Energy(3.0, "RAPL package-0"), 0) is None
    assert energy.joules_per_token(energy.Energy(3.0, "RAPL package-0"), 6) == pytest.approx(0.5)
    assert "not measured on remote" in energy.counter_for("remote", tmp_path)


def test_a_zone_gone_mid_run_gives_no_figure_and_says_why(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000)
    with energy.track_energy("cpu", tmp_path) as tracker:
        (zone / "energy_uj").unlink()
    assert tracker.result.energy_joules is None and "unreadable at the end of the run" in tracker.result.source


@pytest.mark.gpu
def test_nvml_energy_over_a_busy_second_is_positive():
    import time

    import torch

    with energy.track_energy("cuda") as tracker:
        x, started = torch.ones(4096, 4096, device="cuda"), time.perf_counter()
        while time.perf_counter() - started < 1.0:  # the counter moves in steps of milliseconds
            x = (x @ x).clamp_(-1, 1)
            torch.cuda.synchronize()
    result = tracker.result
    if result.energy_joules is None:  # a GPU without the counter (before Volta) says so
        assert "not exposed" in result.source
    else:
        assert result.energy_joules > 0 and result.source.startswith("NVML")
