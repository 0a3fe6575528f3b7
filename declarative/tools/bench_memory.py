"""``declarative bench memory``: peak memory of forward + backward, ours against the peers.

    declarative bench memory [--problems P ...] [--batches B ...] [--libraries L ...]
                             [--chunk K] [--timeout SECONDS] [--quick] [--json FILE]

Each measurement (one problem, one batch size, one library) runs in a FRESH Python process,
since a process's peak resident memory only grows. That process imports everything, builds
the layer, draws the batch (``bench.make_batch``: parameters and cotangents as float64 torch
tensors) and makes one warm-up call on one instance (forward and backward: lazy imports,
thread pools, caches); its peak RSS then (``resource.getrusage``'s ``ru_maxrss``) is the
baseline. It then runs forward + backward on the batch, ``loss = Σ_i ⟨g_i, out_i⟩``,
``loss.backward()``, and reports its peak RSS after the forward and after the backward. The
table shows the peak minus the baseline (what the batch costs) and the peak itself (the
process's total).

Libraries: ``ours`` (defaults), ``ours-low`` (the low-memory mode, ``Tuning.chunk_size`` =
``--chunk``) and the peers of ``declarative.tools.peers`` (cvxpylayers with diffcp and with
Moreau, proxsuite's QPLayer, qpax), each at its own defaults; a peer that is not installed or
cannot express a problem is recorded as such and not run. A process that fails (an exception,
a timeout, killed for memory) is recorded with the reason and the bench goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from declarative.tools import format as fmt
from declarative.tools import peers
from declarative.tools.bench import (
    SPEED_CASES,
    _environment,
    _peak_rss_mb,
    make_batch,
)
from declarative.tools.options import UsageError

PROBLEMS = ("sparsemax", "softmax", "qp")
BATCHES = (512, 4096)
OURS = "ours"
OURS_LOW = "ours-low"
# The low-memory mode's chunk: instances refined, and factored by each derivative, at a time.
CHUNK = 128
# Seconds one measurement may take (its process is killed after).
TIMEOUT = 1800.0
QUICK_PROBLEMS = ("sparsemax",)
QUICK_BATCHES = (16, 64)


def libraries() -> list[str]:
    """Every library the bench knows: ours in both modes, then the peers."""
    return [OURS, OURS_LOW, *peers.PEERS]


# -- one measurement, in its own process --------------------------------------------------------
def measure_here(problem: str, batch: int, library: str, chunk: int = CHUNK,
                 seed: int = 0) -> dict[str, Any]:
    """Forward + backward of ``library`` on ``batch`` instances of ``problem`` in THIS process:
    peak RSS (MB) after the warm-up (the baseline), after the forward and after the backward,
    and the wall time of the two. Meaningful only in a fresh process (`measure`)."""
    import torch

    import declarative as dl
    from declarative import problems

    case = SPEED_CASES[problem]
    mod = problems.get(case.problem)
    prob, params, variables = mod.build(**case.sizes)
    if library in (OURS, OURS_LOW):
        layer = dl.compile(prob, params, variables, **problems.compile_options(mod))
        if library == OURS_LOW:
            layer.tuning = dataclasses.replace(layer.tuning, chunk_size=chunk)
        fn = layer.torch()
    else:
        (peer,) = peers.get([library])
        built = peer.build(case, prob, params, variables)
        if not built.ok:
            return {"failure": built.failure}
        fn = built.call(None)
    data = make_batch(case, batch, seed, reference=False, variables=variables)
    values = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in data.values]
    g = [torch.as_tensor(gi, dtype=torch.float64) for gi in data.g]

    def run(vs: Sequence[torch.Tensor], gs: Sequence[torch.Tensor]) -> None:
        outs = fn(*vs)
        loss = sum((o * gi).sum() for o, gi in zip(outs, gs, strict=True))
        loss.backward()

    one = [torch.tensor(v[:1], dtype=torch.float64, requires_grad=True) for v in data.values]
    run(one, [gi[:1] for gi in g])
    del one
    gc.collect()
    baseline = _peak_rss_mb()
    t0 = time.perf_counter()
    outs = fn(*values)
    forward = _peak_rss_mb()
    loss = sum((o * gi).sum() for o, gi in zip(outs, g, strict=True))
    loss.backward()
    seconds = time.perf_counter() - t0
    return {"baseline_mb": baseline, "forward_peak_mb": forward, "peak_mb": _peak_rss_mb(),
            "seconds": seconds, "failure": None}


def measure(problem: str, batch: int, library: str, chunk: int = CHUNK, seed: int = 0,
            timeout: float = TIMEOUT) -> dict[str, Any]:
    """`measure_here` in a fresh Python process; a failure of that process is recorded, and
    a peer that is not installed or cannot express the problem is not run."""
    spec = {"problem": problem, "batch": batch, "library": library, "chunk": chunk,
            "seed": seed}
    row: dict[str, Any] = {**spec, "baseline_mb": None, "forward_peak_mb": None,
                           "peak_mb": None, "seconds": None, "failure": None}
    if library not in (OURS, OURS_LOW):
        (peer,) = peers.get([library])
        if not peer.available():
            return {**row, "failure": "not installed"}
        if not peer.applies(SPEED_CASES[problem]):
            return {**row, "failure": f"does not apply to {SPEED_CASES[problem].problem}"}
    cmd = [sys.executable, "-m", "declarative.tools.bench_memory", "--child", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "failure": f"timed out after {timeout:g}s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return {**row, **json.loads(lines[-1])}
    if done.returncode < 0:
        why = f"killed by signal {-done.returncode}"
        if done.returncode == -9:
            why += " (out of memory?)"
    else:
        last = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        why = last[-1] if last else f"exit status {done.returncode}"
    return {**row, "failure": why}


# -- the bench --------------------------------------------------------------------------------
def run_memory(names: Sequence[str] | None = None, batches: Sequence[int] = BATCHES,
               libs: Sequence[str] | None = None, chunk: int = CHUNK, seed: int = 0,
               timeout: float = TIMEOUT, progress: bool = False) -> dict[str, Any]:
    """Every (problem, batch, library) measured in its own process (`measure`)."""
    names = list(names or PROBLEMS)
    libs = list(libs or libraries())
    bad = [n for n in names if n not in SPEED_CASES]
    if bad:
        raise UsageError(f"unknown problem(s) {', '.join(bad)}; valid: {', '.join(SPEED_CASES)}.")
    bad = [n for n in libs if n not in libraries()]
    if bad:
        raise UsageError(f"unknown librar(y/ies) {', '.join(bad)}; valid: "
                         f"{', '.join(libraries())}.")
    if chunk < 1 or not batches or min(batches) < 1 or timeout <= 0:
        raise UsageError("--chunk, --batches and --timeout must be positive.")
    env = _environment()
    t_all = time.perf_counter()
    rows = []
    for name in names:
        for B in sorted(set(batches)):
            for lib in libs:
                if progress:
                    print(f"bench memory: {name} batch {B}: {lib}", file=sys.stderr)
                rows.append(measure(name, B, lib, chunk, seed, timeout))
    return {"command": "bench memory",
            "settings": {"problems": names, "batches": sorted(set(batches)), "libraries": libs,
                         "chunk": chunk, "seed": seed, "timeout": timeout,
                         "labels": {p.name: p.label for p in peers.get()},
                         "measure": "peak RSS (ru_maxrss) of a fresh process per row, minus "
                         "its peak after imports, layer construction and a one-instance "
                         "warm-up"},
            "environment": env, "rows": rows, "seconds": time.perf_counter() - t_all}


def format_memory(doc: dict[str, Any]) -> str:
    """The table: per problem and batch, each library's memory for forward + backward."""
    header = ["problem", "batch", "library", "fwd+bwd", "of which fwd", "process peak",
              "vs ours", "time"]
    rows, notes = [], []
    ours: dict[tuple[str, int], float] = {}
    for r in doc["rows"]:
        if r["library"] == OURS and r["failure"] is None:
            ours[(r["problem"], r["batch"])] = r["peak_mb"] - r["baseline_mb"]

    def mb(v: float | None) -> str:
        return "-" if v is None else (f"{v / 1024:.2f}GB" if v >= 1024 else f"{v:.0f}MB")

    for r in doc["rows"]:
        case = SPEED_CASES[r["problem"]]
        cells = [case.label, str(r["batch"]), r["library"]]
        if r["failure"] is not None:
            rows.append([*cells, "-", "-", "-", "-", "-"])
            notes.append(f"note: {case.label} batch {r['batch']}: {r['library']}: "
                         f"{r['failure']}")
            continue
        used = r["peak_mb"] - r["baseline_mb"]
        base = ours.get((r["problem"], r["batch"]))
        rows.append([*cells, mb(used), mb(r["forward_peak_mb"] - r["baseline_mb"]),
                     mb(r["peak_mb"]), fmt.ratio(used / base) if base else "-",
                     fmt.duration(r["seconds"])])
    s = doc["settings"]
    labels = "; ".join(s["labels"][lib] for lib in s["libraries"] if lib in s["labels"])
    legend = (f"fwd+bwd: peak RSS after forward + backward minus the peak after imports, layer "
              f"construction and a one-instance warm-up (a fresh process per row); of which "
              f"fwd: the same after the forward alone; vs ours: fwd+bwd over ours at defaults; "
              f"{OURS_LOW}: Tuning(chunk_size={s['chunk']})."
              + (f" Peers at their defaults: {labels}." if labels else "")
              + f" ({doc['seconds']:.0f}s)")
    return "\n".join([fmt.table(header, rows, right=[False, True, False, True, True, True,
                                                      True, True]),
                      *notes, fmt.wrap(legend)])


# -- command line -----------------------------------------------------------------------------
def _cmd_memory(args: argparse.Namespace) -> int:
    q = args.quick
    doc = run_memory(names=args.problems or (QUICK_PROBLEMS if q else None),
                     batches=args.batches or (QUICK_BATCHES if q else BATCHES),
                     libs=args.libraries, chunk=args.chunk, seed=args.seed,
                     timeout=args.timeout, progress=not args.no_progress)
    doc["settings"]["quick"] = q
    print(format_memory(doc))
    if args.json:
        fmt.write_json(doc, args.json)
    return 1 if any(r["failure"] for r in doc["rows"] if r["library"] in (OURS, OURS_LOW)) \
        else 0


def add_parser(bench_modes: argparse._SubParsersAction) -> None:
    """Register ``memory`` among ``declarative bench``'s modes (``bench.add_parser``'s)."""
    m = bench_modes.add_parser(
        "memory", help="peak memory of forward + backward, ours against the peers",
        description="Peak resident memory of forward + backward per problem, batch size and "
        "library (ours at defaults, ours in the low-memory mode, each peer), each in a fresh "
        "process, minus that process's peak after imports, layer construction and a "
        "one-instance warm-up. Exit status 1 when one of ours fails.")
    m.add_argument("--problems", nargs="+", metavar="P",
                   help=f"of {', '.join(SPEED_CASES)} (default {' '.join(PROBLEMS)}; --quick: "
                   f"{' '.join(QUICK_PROBLEMS)})")
    m.add_argument("--batches", type=int, nargs="+", default=None, metavar="B",
                   help=f"batch sizes (default {' '.join(map(str, BATCHES))}; --quick: "
                   f"{' '.join(map(str, QUICK_BATCHES))})")
    m.add_argument("--libraries", nargs="+", metavar="L",
                   help=f"of {', '.join(libraries())} (default: all)")
    m.add_argument("--chunk", type=int, default=CHUNK,
                   help=f"the low-memory mode's Tuning.chunk_size (default {CHUNK})")
    m.add_argument("--timeout", type=float, default=TIMEOUT, metavar="SECONDS",
                   help=f"per measurement (default {TIMEOUT:g})")
    m.add_argument("--quick", action="store_true", help="a reduced set, for CI")
    m.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    m.add_argument("--seed", type=int, default=0, help="instance seed (default 0)")
    m.add_argument("--no-progress", action="store_true", help="no progress lines")
    m.set_defaults(func=_cmd_memory)


def _child(argv: Sequence[str]) -> int:
    """The measuring process: ``--child SPEC`` (JSON) → one JSON line on stdout."""
    spec = json.loads(argv[1])
    print(json.dumps(measure_here(**spec)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[1:]))
    sys.exit("usage: declarative bench memory ... (this module's own entry is for its child "
             "processes)")
