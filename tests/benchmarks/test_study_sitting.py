"""benchmarks/study_records.run_sitting: a study sitting with a deadline starts only the runs that
end before it, runs a fork after its source, and leaves the rest for the next sitting."""

from __future__ import annotations

import datetime
import importlib.util
import sys
import threading

import numpy as np
import pytest

from tests.conftest import REPO


def _benchmark_script(name: str):
    """benchmarks/NAME.py as a module (the scripts import their siblings from that folder)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def study_records():
    return _benchmark_script("study_records")


class FakeClock:
    """Time that passes only when a run does its work (no wall clock in the test)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_a_deadline_starts_only_runs_that_end_before_it(study_records):
    clock = FakeClock()
    cost = {"long": 100.0, "mid": 60.0, "short": 30.0, "unknown": None}
    done = []

    def work(item):
        clock.spend(cost[item])
        done.append(item)

    left = study_records.run_sitting(list(cost), work, jobs=1, expected=cost.get, until=95.0,
                                     priority=lambda item: -(cost[item] or 0), clock=clock)
    # longest that fits first (mid, 60 s), then short ends at 90 <= 95; long never fits, unknown
    # has no estimate to trust under a deadline
    assert done == ["mid", "short"]
    assert sorted(left) == ["long", "unknown"]


def test_without_a_deadline_every_run_is_started(study_records):
    done = []
    left = study_records.run_sitting(["a", "b", "c"], done.append, jobs=2, expected=lambda item: None,
                                     priority=lambda item: item)
    assert sorted(done) == ["a", "b", "c"] and left == []


def test_a_fork_waits_for_its_source_and_takes_the_forked_cost(study_records):
    """With two workers the fork must not start beside its source (it would train from step 0):
    the second worker takes another run, and the fork starts when the source has ended."""
    clock = FakeClock()
    source_done = threading.Event()
    order = []

    def work(item):
        order.append(("start", item, source_done.is_set()))
        if item == "source":
            clock.spend(50)
            source_done.set()
        else:
            clock.spend(10)

    def expected(item):
        if item == "fork":
            return 20.0 if source_done.is_set() else 50.0  # forked: the steps after the burn-in
        return {"source": 50.0, "other": 10.0}[item]

    left = study_records.run_sitting(["fork", "source", "other"], work, jobs=2, expected=expected,
                                     waits_for=lambda item: "source" if item == "fork" else None,
                                     priority=lambda item: 0, until=1000.0, clock=clock)
    assert left == []
    fork_start = next(entry for entry in order if entry[1] == "fork")
    assert fork_start[2] is True  # started only after the source ended


def test_a_fork_whose_source_cannot_run_is_left_not_waited_on_forever(study_records):
    clock = FakeClock()
    left = study_records.run_sitting(["fork", "source"], lambda item: clock.spend(1), jobs=2,
                                     expected=lambda item: 500.0 if item == "source" else 5.0,
                                     waits_for=lambda item: "source" if item == "fork" else None,
                                     priority=lambda item: 0, until=100.0, clock=clock)
    assert sorted(left) == ["fork", "source"]


def test_until_reads_clock_times_and_refuses_a_past_one(study_records):
    now = datetime.datetime(2026, 12, 7, 18, 30)
    assert study_records.parse_until(None) is None
    assert study_records.parse_until("21:05", now) == datetime.datetime(2026, 12, 7, 21, 5).timestamp()
    assert study_records.parse_until("2026-12-08T01:00", now) == datetime.datetime(2026, 12, 8, 1, 0).timestamp()
    with pytest.raises(SystemExit, match="already past"):
        study_records.parse_until("18:00", now)
    with pytest.raises(SystemExit, match="HH:MM"):
        study_records.parse_until("soon", now)


def _record(method, wall, **timing):
    return {"method": method, "status": "done", "timing": {"wall_s": wall, **timing}}


def test_expected_run_time_comes_from_whole_runs_of_the_same_kind():
    ssl_study = _benchmark_script("ssl_study")
    records = [
        _record("co2s", 6000.0, start_step=0),
        _record("co2s-detached", 3600.0, start_step=1800, fork_step=1800),
        _record("co2s-detached", 3000.0, fork_step=1800),  # before start_step was recorded: from its fork
        _record("unimatch-cnn", 1000.0, start_step=2300),  # resumed: part of a run
        _record("supervised-cnn", 1500.0),  # before start_step was recorded: a whole run
    ]
    expected = ssl_study.expected_seconds
    assert expected(records, "co2s-detached", True, "co2s") == pytest.approx(1.1 * 3600)
    assert expected(records[2:], "co2s-detached", True, "co2s") == pytest.approx(1.1 * 3000)
    # not forked (its source's burn-in is gone): it costs what its source costs
    assert expected(records, "co2s-detached", False, "co2s") == pytest.approx(1.1 * 6000)
    assert expected(records, "supervised-cnn", False, None) == pytest.approx(1.1 * 1500)
    # only a resumed run recorded: the longest whole run of any method, not the partial time
    assert expected(records, "unimatch-cnn", False, None) == pytest.approx(1.1 * 6000)
    assert expected([], "co2s", False, None) is None


def test_two_student_runs_select_by_the_pinned_prediction_not_the_package_default(tmp_path):
    """A default set later from the study's evidence must not change how its remaining runs pick
    best.ckpt; a prediction the user asked for (--set eval.prediction=...) still wins."""
    study = _benchmark_script("ssl_study")
    names = study.Names("clip", "cnn")

    def base(prediction=None):
        return {"name": "x", "model": {"students": [{"name": "clip"}, {"name": "cnn"}]},
                "data": {"splits": {}}, "train": {"semi": {}}, "eval": {"prediction": prediction}}

    split = tmp_path / "1-8_seed0"
    assert study.run_config(base(), names, "co2s", split, 0)["eval"]["prediction"] == study.SELECTED_BY
    assert study.run_config(base(), names, "co2s-detached", split, 0)["eval"]["prediction"] == study.SELECTED_BY
    assert study.run_config(base(), names, "supervised-cnn", split, 0)["eval"]["prediction"] is None
    assert study.run_config(base("mean"), names, "co2s", split, 0)["eval"]["prediction"] == "mean"


def test_wall_time_table_marks_forks_and_resumed_sittings():
    """A run's time is only part of a run after a fork or a resume; the report must say which."""
    study = _benchmark_script("ssl_study")
    names = study.Names("clip", "cnn")
    records = [{**_record("co2s", 3600.0, start_step=0), "fraction": "1/8", "seed": 0},
               {**_record("co2s-detached", 1200.0, start_step=1800, fork_step=1800), "fraction": "1/8", "seed": 0},
               {**_record("unimatch-cnn", 600.0, start_step=2300), "fraction": "1/16", "seed": 1}]
    table = "\n".join(study.wall_times(records, names, ["1/16", "1/8"]))
    assert "| co2s | - | seed 0: 60 |" in table
    assert "| co2s-detached | - | seed 0: 20 (f 1800) |" in table
    assert "| unimatch-cnn | seed 1: 10 (r 2300) | - |" in table
    assert "1.50 h over 3 runs" in table


def test_moving_mean_skips_steps_a_run_did_not_log():
    study = _benchmark_script("ssl_study")
    nan = float("nan")
    smooth = study.moving_mean(np.array([1.0, nan, 3.0, nan, nan, nan, nan]), 3)
    assert smooth[:3].tolist() == [1.0, 2.0, 3.0]  # the window's present values only
    assert smooth[3] == 3.0 and all(v != v for v in smooth[5:])  # no value in reach: NaN
