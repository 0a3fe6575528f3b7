"""The command line: ``declarative verify`` (table, --json, --plot, exit statuses), the
``python -m declarative`` entry point, the console script and the ``bench`` subcommand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from declarative import problems
from declarative.tools import cli
from tests.conftest import zoo_layer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def test_verify_sparsemax_json(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert cli.main(["verify", "sparsemax", "--seeds", "2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    layer, _, _ = zoo_layer("sparsemax")
    cones = layer.template.dims.kinds()
    assert "sparsemax" in table and "+".join(cones) in table and "n=8" in table
    assert "Jac vs FD" in table and "Jac vs diffcp" in table
    assert "1 of 1 problems within 1e-08" in table

    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["tolerance"] == 1e-8 and doc["seeds"] == 2
    (row,) = doc["problems"]
    assert row["problem"] == "sparsemax" and row["passed"] is True
    assert row["cones"] == list(cones) and row["sizes"] == {"n": 8}
    assert row["statuses"] == ["solved", "solved"]
    assert row["solution_error"] <= 1e-8 and row["jacobian_error"] <= 1e-8
    assert row["fd_error"] <= 1e-6 and row["diffcp_error"] <= 1e-6
    assert row["diffcp_solution_error"] <= 1e-6 and row["fd_ok"] and row["diffcp_ok"]
    assert len(row["instances_detail"]) == 2
    assert {c["reference"] for c in row["instances_detail"][0]["checks"]} == {
        "closed_form", "finite_differences", "diffcp"}


def test_verify_plot_writes_pngs(tmp_path, capsys):
    plots = tmp_path / "plots"
    code = cli.main(["verify", "softmax", "polytope_projection", "--seeds", "1", "--no-fd",
                     "--no-diffcp", "--plot", str(plots)])
    assert code == 0
    for name in ("softmax", "polytope_projection"):
        data = (plots / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert "wrote 2 plots" in capsys.readouterr().out


def test_inaccurate_settings_fail_with_exit_1(capsys):
    code = cli.main(["verify", "sparsemax", "--seeds", "1", "--no-diffcp",
                     "--solver-arg", "refine=false", "--solver-arg", "eps_abs=1e-3",
                     "--solver-arg", "eps_rel=1e-3"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED: sparsemax" in out and " NO" in out


def test_unknown_problem_exits_2_listing_valid_names(capsys):
    assert cli.main(["verify", "sparsemax", "no_such_problem"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran
    assert "no_such_problem" in captured.err
    for name in problems.ZOO:
        assert name in captured.err


def test_bad_options_exit_2(capsys):
    assert cli.main(["verify", "sparsemax", "--solver-arg", "nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert cli.main(["verify", "sparsemax", "--solver-arg", "eps_abs"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["verify", "sparsemax", "--seeds", "0"]) == 2
    assert cli.main(["verify", "sparsemax", "--json", "/no/such/dir/f.json"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "declarative", "verify", "qp", "--seeds", "1", "--no-diffcp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "qp" in proc.stdout and "1 of 1 problems" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_console_script_is_the_tools_cli():
    """The installed ``declarative`` command runs declarative.tools.cli:main."""
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "declarative"]
    assert ep.value == "declarative.tools.cli:main"
    assert ep.load() is cli.main


def test_bench_is_a_subcommand(capsys):
    assert cli.main(["bench", "speed", "--problems", "nope", "--no-progress"]) == 2
    assert "unknown problem 'nope'" in capsys.readouterr().err
