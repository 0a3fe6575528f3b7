"""glibc's malloc thresholds (allocator.py): set once, only where wanted, and with the effect
claimed: a freed block of a few MB is reused without touching new pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from declarative import allocator


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fresh(monkeypatch):
    """allocator's once-per-process state reset, and a recording libc in place of glibc."""
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator, "_held", False)
    rec = _Recorder()
    monkeypatch.setattr(allocator, "_libc", lambda: rec)
    for name in (allocator.OPT_OUT, "GLIBC_TUNABLES", *allocator.USER_TUNED):
        monkeypatch.delenv(name, raising=False)
    return rec


def test_thresholds_are_glibcs_dynamic_ceilings_set_once(fresh):
    assert allocator.MMAP_THRESHOLD == 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX, 64-bit
    assert allocator.TRIM_THRESHOLD == 2 * allocator.MMAP_THRESHOLD
    assert allocator.state().startswith("untouched")
    assert allocator.hold_freed_memory() is True
    assert fresh.calls == [(-3, 32 * 2**20), (-1, 64 * 2**20)]
    assert "32 MiB" in allocator.state() and "64 MiB" in allocator.state()
    assert allocator.hold_freed_memory() is False  # once per process
    assert len(fresh.calls) == 2


@pytest.mark.parametrize("env", [
    {"DECLARATIVE_MALLOPT": "0"}, {"DECLARATIVE_MALLOPT": "off"},
    {"MALLOC_TRIM_THRESHOLD_": "1000000"}, {"MALLOC_ARENA_MAX": "2"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
])
def test_a_user_who_tuned_malloc_or_opted_out_is_left_alone(fresh, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert not allocator.wanted()
    assert allocator.hold_freed_memory() is False
    assert fresh.calls == []
    assert allocator.state() == "untouched"


def test_other_settings_do_not_opt_out(fresh, monkeypatch):
    monkeypatch.setenv("DECLARATIVE_MALLOPT", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    assert allocator.wanted()
    assert allocator.hold_freed_memory() is True


def test_where_malloc_is_not_glibcs_nothing_is_set(fresh, monkeypatch):
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert allocator.hold_freed_memory() is False
    assert allocator.state() == "untouched"


_PROBE = textwrap.dedent("""
    import json, resource, sys
    import cvxpy as cp, numpy as np
    import declarative as dl
    from declarative import allocator
    x, y = cp.Variable(3), cp.Parameter(3)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0]), [y], [x])
    layer.forward([np.array([1.0, -2.0, 3.0])])  # a layer's first solve holds the memory

    def temporaries():  # a call's: four blocks of 8 MiB, then freed
        a = [np.ones(2**23 // 8) for _ in range(4)]
        del a

    temporaries()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        temporaries()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"faults": faults, "state": allocator.state()}))
""")


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in (allocator.OPT_OUT, "GLIBC_TUNABLES", *allocator.USER_TUNED)}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env={**clean, **env}, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._libc() is None, reason="malloc is not glibc's")
def test_a_layer_solve_keeps_freed_blocks_for_reuse():
    """Four 8 MiB arrays allocated and freed, ten times over: after a layer's first solve no
    new page is touched; opted out, glibc's default thresholds (mapping blocks from the
    largest mapped block freed so far up, and trimming the freed top of the heap beyond
    twice that) fault the blocks in every round (~2,000 faults a round here). With 1 MiB
    blocks the control depended on the process's history: in 1 run of 4 the layer's first
    solve had freed a larger mapped block, and the control touched no page either."""
    held = _probe()
    assert "32 MiB" in held["state"]
    assert held["faults"] <= 40, held
    control = _probe(DECLARATIVE_MALLOPT="0")
    assert control["state"] == "untouched"
    assert control["faults"] >= 10 * 256, control
