"""``declarative bench memory``: a fresh process per row, the JSON's fields, the table, the
errors."""

from __future__ import annotations

import json

import pytest

from declarative.tools import bench_memory, cli


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "memory.json"
    code = cli.main(["bench", "memory", "--problems", "qp", "--batches", "64",
                     "--libraries", "ours", "ours-low", "--chunk", "8", "--no-progress",
                     "--json", str(path)])
    assert code == 0
    return json.loads(path.read_text())


def test_every_row_is_measured_in_its_own_process(doc):
    assert doc["command"] == "bench memory"
    assert [(r["batch"], r["library"]) for r in doc["rows"]] == [(64, "ours"), (64, "ours-low")]
    for r in doc["rows"]:
        assert r["failure"] is None
        assert 0 < r["baseline_mb"] <= r["forward_peak_mb"] <= r["peak_mb"]
    # the baseline is the fresh process's own, after imports and construction: the same
    # order of size in every row (a shared process would carry the earlier rows' peaks)
    base = [r["baseline_mb"] for r in doc["rows"]]
    assert max(base) < 2 * min(base)


def test_the_table_shows_every_row(doc):
    text = bench_memory.format_memory(doc)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["problem", "batch", "library"]
    assert sum("ours-low" in ln for ln in lines) >= 1
    assert "chunk_size=8" in text


def test_a_failing_process_is_recorded():
    # an unknown problem reaches the child only through this function: the child's exception
    # becomes the row's failure, and the bench goes on
    row = bench_memory.measure("no-such-problem", 2, "ours", timeout=600)
    assert row["peak_mb"] is None and "KeyError" in row["failure"]


@pytest.mark.parametrize("argv, what", [
    (["--problems", "nope"], "unknown problem"),
    (["--libraries", "nope"], "unknown librar"),
    (["--chunk", "0"], "must be positive"),
])
def test_bad_options_are_usage_errors(argv, what, capsys):
    assert cli.main(["bench", "memory", *argv, "--no-progress"]) == 2
    assert what in capsys.readouterr().err
