"""``declarative bench``: our layers and their peers side by side, in one process.

    declarative bench accuracy [--problems P ...] [--batch B] [--quick] [--json FILE]
    declarative bench speed    [--problems P ...] [--batches B ...] [--peers PEER ...]
                               [--row-budget S] [--quick] [--json FILE]
    declarative bench scaling  [--problems P ...] [--batches B ...] [--size-problems P ...]
                               [--sizes N ...] [--peers PEER ...] [--plot FILE] [--quick]

The peers (``declarative/tools/peers.py``): cvxpylayers with diffcp and SCS
("cvxpylayers"), cvxpylayers with ``solver="MOREAU"`` ("moreau"), proxsuite's QPLayer
``QPFunction`` on the zoo's quadratic programs ("proxsuite") and qpax, when installed
("qpax"). Every library gets the SAME ``cp.Problem`` (or, for the QP layers, its data
mapped to (Q, p, A, b, G, l, u)) and the same parameter values (float64 torch tensors,
batched along a leading axis), and all are timed through torch: forward = the call,
backward = ``loss.backward()`` for ``loss = Σ_i ⟨g_i, out_i⟩``, total = the two (median
over ``--repeats`` runs, after one untimed warm-up call per library and problem).

Error (the same quantity for every library): with a fixed random cotangent g per
instance and output, the gradient of ⟨g, out⟩ with respect to every parameter (one
VJP) against the closed form gᵀJ from the problem zoo (``declarative.problems``); max abs over
the batch and all parameter entries.

``accuracy``: per zoo problem (softmax and sparsemax at n = 100, the others
at their default sizes), our error and time at DEFAULT settings; cvxpylayers' error
and time at ITS defaults ("cvxpylayers 1.2 (SCS defaults)": its default diffcp
backend with ``solve_method="SCS"`` and SCS's own defaults, eps_abs = eps_rel = 1e-4,
``mode="lsqr"``); and the SCS tolerance cvxpylayers needs to match our error: eps =
eps_abs = eps_rel over 1e-4, 1e-5, ..., 1e-12 until its error <= max(our error, 1e-8),
with its time there, or "never" (then the time at its most accurate eps is shown,
marked "*").

``speed``: sparsemax n = 100, softmax n = 100, an OptNet QP (n = 50, 10
equalities, 50 inequalities), projection onto a polytope in 2-D (8 faces) and 20-D
(40 faces), at batch 1, 64 and 512, and projection onto the spectraplex (SDP, k = 10, 30,
50) at batch 1, 8 and 64. Per problem, on the first ``--search-batch`` instances: our error
sets cvxpylayers' target and its eps search (as in ``accuracy``); every other peer's error
is measured at its defaults and at its tightest tolerance (``Peer.tight``; reported, not
timed). Per row: forward, backward and total time of ours at defaults, of cvxpylayers at
the searched eps and of the other peers at their defaults, each beside its error; the
YARDSTICK, the fastest peer whose error is <= 1e-5 (else the fastest at any accuracy,
marked *); the ratio yardstick/ours and cvxpylayers/ours, and their geometric means over
the rows. ``--row-budget`` skips a library at a batch its time at the previous one
predicts to be too slow (recorded in the row). Every measurement also records its outputs'
max abs error against the closed-form solution (``solution_error``); a peer whose outputs
are off by more than 1e-5 gets a note (its answer is wrong, not only its gradient).

``scaling``: time per instance of ours and of each peer (at their defaults) as the batch
grows (1 ... 4096) and as sparsemax and softmax (n = 10 ... 10,000) and the spectraplex
projection (k = 10 ... 50) grow; ``--plot FILE`` draws the curves, log-log, one panel per
problem (``declarative/tools/plot.py``).

When a peer raises (a parameter it cannot take, a solver failure on some instance, ...),
returns a NaN, is not installed or cannot express the problem, the reason is recorded in
the row and the bench goes on. Nothing here changes global state (torch threads, warning
filters) beyond the call it makes.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import platform
import statistics
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import numpy as np

import declarative as dl
from declarative import problems
from declarative.promise import ACCURACY
from declarative.tools import format as fmt
from declarative.tools import peers
from declarative.tools.options import UsageError, key_values

# -- configuration ---------------------------------------------------------------------------

# "cvxpylayers 1.2 (SCS defaults)": its default backend (diffcp) told to use SCS (diffcp
# would pick ECOS for cones without PSD/exp-dual parts) and nothing else, so SCS runs at its
# own defaults (eps_abs = eps_rel = 1e-4, max_iters = 100000) and diffcp at mode="lsqr".
CVXPYLAYERS_DEFAULTS: dict[str, Any] = peers.PEERS["cvxpylayers"].defaults
# The yardstick of a speed row: the fastest peer whose gradient error is <= YARDSTICK_ERROR.
YARDSTICK_ERROR = 1e-5
# The tolerance search: eps_abs = eps_rel = eps, loosest first.
EPS_GRID = tuple(10.0 ** -k for k in range(4, 13))
# --quick searches every other power of ten.
QUICK_EPS_GRID = EPS_GRID[::2]
# The error cvxpylayers must reach: max(our error, ERROR_FLOOR), the accuracy we promise
# at default settings (below it, errors are solver noise not worth matching).
ERROR_FLOOR = ACCURACY

REPEATS = 3
QUICK_REPEATS = 1


@dataclass(frozen=True)
class Case:
    """One benchmarked problem: a zoo problem at given sizes."""

    key: str                       # the name on the command line
    problem: str                   # the zoo name
    sizes: dict[str, int] = field(default_factory=dict)
    sampler: Callable[..., list[np.ndarray]] | None = None   # None: the zoo's own
    batches: tuple[int, ...] | None = None   # speed's batches for it (None: SPEED_BATCHES)

    @property
    def label(self) -> str:
        return f"{self.key} {fmt.size_text(self.sizes)}".strip()


# -- a polytope sampler for high dimensions ---------------------------------------------------
# The zoo's polytope sampler certifies boundedness with a convex hull of the m face normals,
# whose size explodes with d (20-D, 30 faces: 180,000 facets, 5 s; 40 faces: out of reach),
# and random normals rarely surround the origin when m is close to d. Projection needs no
# bounded polytope, so in high dimension we draw G, h, y as the zoo does, without the hull
# test, and keep the zoo's other acceptance rules (non-empty active set, multipliers and
# inactive slacks >= MARGIN, sigma_min(G_active) >= MIN_SINGULAR) on the certified
# closed-form solution.
def _sample_polytope(rng: np.random.Generator, d: int, m: int) -> list[np.ndarray]:
    mod = problems.get("polytope_projection")
    if d <= 8:
        return mod.sample(rng, d=d, m=m)

    def unit(*shape: int) -> np.ndarray:
        v = rng.standard_normal((*shape, d))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    for _ in range(10_000):
        G, h, y = unit(m), rng.uniform(0.5, 1.5, m), rng.uniform(1.0, 3.0) * unit()
        try:
            (x,) = mod.solution(G, h, y)
        except (problems.DegenerateInstanceError, ValueError):
            continue
        slack = h - G @ x
        active = slack <= 1e-7
        if not active.any():
            continue
        GA = G[active]
        lam = 2.0 * np.linalg.solve(GA @ GA.T, GA @ y - h[active])
        if (lam.min() >= mod.MARGIN and np.all(slack[~active] >= mod.MARGIN)
                and np.linalg.svd(GA, compute_uv=False)[-1] >= mod.MIN_SINGULAR):
            return [G, h, y]
    raise RuntimeError(f"polytope_projection d={d}, m={m}: no acceptable instance")


SPEED_BATCHES = (1, 64, 512)
SDP_BATCHES = (1, 8, 64)     # the SDP rows: one instance of psd-50 is a 50 x 50 PSD cone
SPEED_CASES: dict[str, Case] = {c.key: c for c in (
    Case("sparsemax", "sparsemax", {"n": 100}),
    Case("softmax", "softmax", {"n": 100}),
    Case("qp", "qp", {"n": 50, "p": 10, "m": 50}),
    Case("polytope-2d", "polytope_projection", {"d": 2, "m": 8}, _sample_polytope),
    Case("polytope-20d", "polytope_projection", {"d": 20, "m": 40}, _sample_polytope),
    *(Case(f"psd-{k}", "psd_trace_projection", {"k": k}, batches=SDP_BATCHES)
      for k in (10, 30, 50)),
)}
SEARCH_BATCH = 64
class _QuickSpeed(TypedDict):
    problems: tuple[str, ...]
    batches: tuple[int, ...]
    search_batch: int


class _QuickAccuracy(TypedDict):
    problems: tuple[str, ...]
    batch: int


QUICK_SPEED: _QuickSpeed = {"problems": ("sparsemax", "polytope-2d"), "batches": (1, 8),
                            "search_batch": 8}

# accuracy: softmax and sparsemax at n = 100, the rest at their default sizes
ACCURACY_SIZES = {"softmax": {"n": 100}, "sparsemax": {"n": 100}}
ACCURACY_BATCH = 64
QUICK_ACCURACY: _QuickAccuracy = {"problems": ("sparsemax", "softmax"), "batch": 8}

SCALING_BATCHES = (1, 4, 16, 64, 256, 1024, 4096)
SCALING_PROBLEMS = ("sparsemax", "qp", "psd-10")
SCALING_SIZES = (10, 30, 100, 300, 1000, 3000, 10_000)
# size sweeps: zoo problem -> (its size, the sizes, the --quick sizes)
SIZE_SWEEPS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "sparsemax": ("n", SCALING_SIZES, (10, 100)),
    "softmax": ("n", SCALING_SIZES, (10, 100)),
    "psd_trace_projection": ("k", (10, 20, 30, 40, 50), (4, 10)),
    # (to 3,000: at n = 10,000 CVXPY's canonicalization alone peaks near 20 GB)
    "l2_ball_projection": ("n", (10, 30, 100, 300, 1000, 3000), (10, 100)),
}
class _QuickScaling(TypedDict):
    problems: tuple[str, ...]
    batches: tuple[int, ...]


QUICK_SCALING: _QuickScaling = {"problems": ("sparsemax",), "batches": (1, 4, 16)}


def _accuracy_cases() -> dict[str, Case]:
    return {name: Case(name, name, {**mod.SIZES, **ACCURACY_SIZES.get(name, {})})
            for name, mod in problems.ZOO.items()}


# -- instances and the closed-form reference --------------------------------------------------
@dataclass
class Batch:
    """Parameter values of a batch (each (B, *shape)), cotangents g (each (B, *out_shape)) and,
    when asked for, the closed-form gradient of ⟨g, out⟩ (each (B, *param_shape)) and the
    closed-form outputs (``solutions``, each (B, *out_shape))."""

    case: Case
    values: list[np.ndarray]
    g: list[np.ndarray]
    reference: list[np.ndarray] | None = None
    instances: list[list[np.ndarray]] = field(default_factory=list, repr=False)
    solutions: list[np.ndarray] | None = None

    @property
    def size(self) -> int:
        return int(self.values[0].shape[0])

    def head(self, b: int) -> Batch:
        ref = None if self.reference is None else [r[:b] for r in self.reference]
        sol = None if self.solutions is None else [x[:b] for x in self.solutions]
        return Batch(self.case, [v[:b] for v in self.values], [gi[:b] for gi in self.g], ref,
                     self.instances[:b], sol)

    def with_reference(self) -> Batch:
        """This batch with the closed-form gradient of ⟨g, out⟩ and outputs per instance."""
        mod = problems.get(self.case.problem)
        ref = [np.zeros_like(v) for v in self.values]
        sol = [np.zeros_like(gi) for gi in self.g]
        for b, params in enumerate(self.instances):
            J = mod.jacobian(*params)
            for i, gi in enumerate(self.g):
                for j in range(len(ref)):
                    ref[j][b] += np.tensordot(gi[b], J[i][j], axes=gi[b].ndim)
            for i, x in enumerate(mod.solution(*params)):
                sol[i][b] = np.asarray(x, dtype=float).reshape(sol[i][b].shape)
        return Batch(self.case, self.values, self.g, ref, self.instances, sol)


def _rng(seed: int, case: Case, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{case.label}/{salt}".encode())])


def make_batch(case: Case, size: int, seed: int = 0, reference: bool = True,
               variables: Sequence[Any] | None = None) -> Batch:
    """``size`` instances of ``case`` (distinct draws from the sampler), a random cotangent
    per instance and output, and (``reference``) the closed-form gradient."""
    mod = problems.get(case.problem)
    sample = case.sampler or mod.sample
    rng = _rng(seed, case, "params")
    pool = [sample(rng, **case.sizes) for _ in range(size)]
    values = [np.stack([np.asarray(p[j], dtype=float) for p in pool])
              for j in range(len(pool[0]))]
    if variables is None:
        variables = mod.build(**case.sizes)[2]
    grng = _rng(seed, case, "cotangent")
    g = [grng.standard_normal((size, *v.shape)) for v in variables]
    batch = Batch(case, values, g, None, pool)
    return batch.with_reference() if reference else batch


# -- timing one library ----------------------------------------------------------------------
@dataclass
class Measurement:
    """Median times (s) of forward, backward and their sum, and the worst gradient error and
    output (solution) error against the closed forms."""

    forward: float = math.nan
    backward: float = math.nan
    total: float = math.nan
    error: float | None = None     # None when there is no reference
    solution_error: float | None = None  # max abs over the outputs; None without reference
    failure: str | None = None     # why it did not run, if it did not
    warnings: list[str] = field(default_factory=list)
    repeats: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None

    def as_dict(self) -> dict[str, Any]:
        num = fmt.finite_or_none
        return {"forward": num(self.forward), "backward": num(self.backward),
                "total": num(self.total), "error": num(self.error),
                "solution_error": num(self.solution_error), "failure": self.failure,
                "warnings": self.warnings, "repeats": self.repeats}


_describe = peers.describe


def measure(call: Callable[..., Sequence[Any]], batch: Batch, repeats: int = REPEATS
            ) -> Measurement:
    """Time ``call(*tensors) -> outputs`` and its backward on ``batch``; error vs the reference."""
    return measure_all({"call": call}, batch, repeats)["call"]


def measure_all(calls: dict[str, Callable[..., Sequence[Any]]], batch: Batch,
                repeats: int = REPEATS) -> dict[str, Measurement]:
    """`measure` of each of ``calls`` (name -> layer), interleaved: ``repeats`` rounds, each
    timing every library once, in an order rotated by one place per round (none always
    first). A shared machine's load then weighs on every library's median alike: timed one
    library after another, a load that changed between them moved a row's ratio by ±30%
    (the same code measured twice). A library whose call raises is recorded as failed and
    not called again; the others go on."""
    import torch

    names = list(calls)
    g = [torch.as_tensor(gi, dtype=torch.float64) for gi in batch.g]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    errors: dict[str, list[float]] = {n: [] for n in names}
    sol_errors: dict[str, list[float]] = {n: [] for n in names}
    seen: dict[str, dict[str, None]] = {n: {} for n in names}  # warnings, once each, in order
    failure: dict[str, str | None] = dict.fromkeys(names)
    for r in range(max(1, repeats)):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if failure[name] is not None:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True)
                              for v in batch.values]
                    gc.collect()
                    t0 = time.perf_counter()
                    outs = calls[name](*params)
                    t1 = time.perf_counter()
                    loss = sum((o * gi).sum() for o, gi in zip(outs, g, strict=True))
                    loss.backward()
                    t2 = time.perf_counter()
                    if not all(bool(torch.isfinite(o).all()) for o in outs):
                        raise FloatingPointError("an output is not finite (NaN or inf)")
                    times[name].append((t1 - t0, t2 - t1))
                    if batch.reference is not None:
                        errors[name].append(_grad_error(params, batch.reference))
                    if batch.solutions is not None:
                        sol_errors[name].append(_solution_error(outs, batch.solutions))
                except Exception as e:  # noqa: BLE001 - recorded in the row; the bench goes on
                    failure[name] = _describe(e)
            for w in caught:
                if issubclass(w.category, DeprecationWarning):
                    continue  # library-internal noise (numpy's __array__ copy=... in diffcp)
                text = " ".join(str(w.message).split())[:200]
                seen[name][f"{w.category.__name__}: {text}"] = None
    out = {}
    for name in names:
        notes = list(seen[name])[:5]
        if failure[name] is not None:
            out[name] = Measurement(failure=failure[name], warnings=notes)
            continue
        fwd, bwd = (list(t) for t in zip(*times[name], strict=True))
        out[name] = Measurement(
            forward=statistics.median(fwd), backward=statistics.median(bwd),
            total=statistics.median([x + y for x, y in times[name]]),
            error=max(errors[name]) if errors[name] else None,
            solution_error=max(sol_errors[name]) if sol_errors[name] else None,
            warnings=notes, repeats=len(fwd))
    return out


def _solution_error(outs: Sequence[Any], reference: Sequence[np.ndarray]) -> float:
    """Max abs error of the outputs against the closed-form ones (inf where their number or a
    shape differs or a value is not finite)."""
    if len(outs) != len(reference):
        return math.inf
    return _max_abs_error([o.detach().numpy() for o in outs], reference)


def _grad_error(params: Sequence[Any], reference: Sequence[np.ndarray]) -> float:
    return _max_abs_error([np.zeros_like(ref) if p.grad is None else p.grad.detach().numpy()
                           for p, ref in zip(params, reference, strict=True)], reference)


def _max_abs_error(got: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """max over the pairs of max |got − ref|; inf where a shape differs or a value is not
    finite."""
    err = 0.0
    for g, ref in zip(got, reference, strict=True):
        if g.shape != ref.shape:
            return math.inf
        e = float(np.max(np.abs(g - ref))) if ref.size else 0.0
        if not math.isfinite(e):
            return math.inf
        err = max(err, e)
    return err


def _finite_gradient(m: Measurement) -> Measurement:
    """A peer's measurement, failed where its gradient is not finite."""
    if m.ok and m.error is not None and not math.isfinite(m.error):
        return Measurement(failure="gradient not finite (or of the wrong shape)",
                           warnings=m.warnings)
    return m


class Libraries:
    """Our layer and the peers' (``peer_names``, default cvxpylayers only) for one case, all
    built from the same ``cp.Problem``; construction failures are recorded (``ours_failure``,
    ``built[name].failure``) rather than raised. ``cvxpylayers_args`` are extra per-call
    solver_args for cvxpylayers (diffcp)."""

    def __init__(self, case: Case, build_cvxpylayers: bool = True,
                 cvxpylayers_args: dict[str, Any] | None = None,
                 peer_names: Sequence[str] | None = None) -> None:
        self.case = case
        self.cvxpylayers_args = {**CVXPYLAYERS_DEFAULTS, **(cvxpylayers_args or {})}
        self.problem, self.parameters, self.variables = problems.get(case.problem).build(
            **case.sizes)
        self.ours = None
        self.ours_failure = None
        self.ours_compile = math.nan
        t0 = time.perf_counter()
        try:
            self.ours = dl.compile(self.problem, self.parameters, self.variables,
                                   **problems.compile_options(problems.get(case.problem))
                                   ).torch()
            self.ours_compile = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            self.ours_failure = _describe(e)
        if peer_names is None:
            peer_names = ["cvxpylayers"] if build_cvxpylayers else []
        self.built: dict[str, peers.Built] = {
            p.name: p.build(case, self.problem, self.parameters, self.variables)
            for p in peers.get(peer_names)}
        c = self.built.get("cvxpylayers")
        self.cvxpylayers = c.call() if c is not None and c.ok else None
        self.cvxpylayers_failure = "not run" if c is None else c.failure
        self.cvxpylayers_compile = math.nan if c is None else c.compile_seconds

    def time_ours(self, batch: Batch, repeats: int) -> Measurement:
        return self.time_all(batch, repeats, {"ours": None})["ours"]

    def cvxpylayers_options(self, eps: float | None = None) -> dict[str, Any]:
        """cvxpylayers' per-call solver_args: the extra ones, and eps_abs = eps_rel = eps."""
        args = dict(self.cvxpylayers_args)
        if eps is not None:
            args.update(eps_abs=eps, eps_rel=eps)
        return args

    def time_cvxpylayers(self, batch: Batch, repeats: int,
                         eps: float | None = None) -> Measurement:
        return self.time_peer("cvxpylayers", batch, repeats, self.cvxpylayers_options(eps))

    def time_peer(self, name: str, batch: Batch, repeats: int,
                  options: dict[str, Any] | None = None) -> Measurement:
        """Peer ``name`` on ``batch`` with ``options`` (None: its defaults); a gradient that is
        not finite is a failure."""
        return self.time_all(batch, repeats, {name: options})[name]

    def time_all(self, batch: Batch, repeats: int, options: dict[str, dict[str, Any] | None],
                 only: Sequence[str] | None = None) -> dict[str, Measurement]:
        """`time_ours` (name "ours") and `time_peer` (every other name, with its options;
        None: its defaults) of the libraries named in ``options`` (or of those of them in
        ``only``), timed interleaved (`measure_all`)."""
        out: dict[str, Measurement] = {}
        calls: dict[str, Callable[..., Sequence[Any]]] = {}
        names = list(options) if only is None else [n for n in options if n in only]
        for name in names:
            opts = options[name]
            if name == "ours":
                if self.ours is None:
                    out[name] = Measurement(failure=self.ours_failure)
                else:
                    calls[name] = self.ours
                continue
            built = self.built.get(name)
            if built is None:
                out[name] = Measurement(failure="not run")
            elif not built.ok:
                out[name] = Measurement(failure=built.failure)
            else:
                calls[name] = built.call(opts)
        for name, m in measure_all(calls, batch, repeats).items():
            out[name] = m if name == "ours" else _finite_gradient(m)
        return {name: out[name] for name in names}

    def warm_up(self, batch: Batch) -> None:
        """One untimed call each on one instance: lazy imports, thread pools, caches."""
        one = batch.head(1)
        one.reference = None
        if self.ours is not None:
            self.time_ours(one, 1)
        for name, built in self.built.items():
            if built.ok:
                self.time_peer(name, one, 1,
                               self.cvxpylayers_options() if name == "cvxpylayers" else None)


# -- the yardstick ----------------------------------------------------------------------------
def yardstick(measured: dict[str, Measurement], accurate: float = YARDSTICK_ERROR
              ) -> tuple[str | None, bool]:
    """The peer ours is compared with: the fastest (least ``total``) whose gradient error is
    <= ``accurate``; if none is, the fastest at any accuracy. Failed measurements (and those
    without a finite time) are never chosen. Returns (its name or None, whether accurate)."""
    ran = {n: m for n, m in measured.items() if m.ok and math.isfinite(m.total)}
    good = {n: m for n, m in ran.items()
            if m.error is not None and math.isfinite(m.error) and m.error <= accurate}
    pool = good or ran
    if not pool:
        return None, False
    return min(pool, key=lambda n: pool[n].total), bool(good)


# -- the tolerance search -------------------------------------------------------------------
@dataclass
class Search:
    """cvxpylayers over the eps grid until its error <= target."""

    target: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    eps: float | None = None        # the first eps that reaches the target; None: never
    best_eps: float | None = None   # the most accurate eps tried (ties: the loosest)
    best_error: float | None = None
    stopped: str | None = None      # why the search ended early, if it did

    @property
    def matched(self) -> bool:
        return self.eps is not None

    @property
    def chosen(self) -> float | None:
        """The eps to time cvxpylayers at: the matching one, else the most accurate one."""
        return self.eps if self.eps is not None else self.best_eps

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "eps_needed": self.eps, "matched": self.matched,
                "best_eps": self.best_eps, "best_error": fmt.finite_or_none(self.best_error),
                "stopped": self.stopped, "steps": self.steps}


def search_eps(libs: Libraries, batch: Batch, target: float, grid: Sequence[float] = EPS_GRID,
               budget: float | None = None, progress: Callable[[str], None] | None = None
               ) -> Search:
    """Loosest eps in ``grid`` at which cvxpylayers' error <= target (one run per eps)."""
    s = Search(target=target)
    t_start = time.perf_counter()
    for eps in grid:
        if progress:
            progress(f"{batch.case.key}: cvxpylayers eps={eps:.0e}")
        m = libs.time_cvxpylayers(batch, 1, eps)
        s.steps.append({"eps": eps, **m.as_dict()})
        if m.ok and m.error is not None and math.isfinite(m.error):
            if s.best_error is None or m.error < s.best_error:
                s.best_eps, s.best_error = eps, m.error
            if m.error <= target:
                s.eps = eps
                break
        if budget is not None and time.perf_counter() - t_start > budget:
            s.stopped = f"time budget of {budget:g}s spent"
            break
    return s


# -- accuracy ---------------------------------------------------------------------------------
def run_accuracy(names: Sequence[str] | None = None, batch: int = ACCURACY_BATCH,
                 repeats: int = REPEATS, seed: int = 0, grid: Sequence[float] = EPS_GRID,
                 budget: float | None = None, progress: bool | None = None,
                 cvxpylayers_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The accuracy benchmark as a JSON-ready document."""
    from tqdm import tqdm

    cases = _accuracy_cases()
    names = list(names or cases)
    _check_names(names, cases)
    t_all = time.perf_counter()
    env = _environment()
    rows = []
    bar = tqdm(total=len(names), desc="bench accuracy", unit="problem", file=sys.stderr,
               disable=_disable(progress), leave=False, dynamic_ncols=True)
    for name in names:
        case = cases[name]
        bar.set_postfix_str(f"{name}: instances")
        rows.append(_accuracy_row(case, batch, repeats, seed, grid, budget,
                                  lambda s: bar.set_postfix_str(s), cvxpylayers_args))
        bar.update()
    bar.close()
    return {
        "command": "bench accuracy",
        "settings": {"batch": batch, "repeats": repeats, "seed": seed, "eps_grid": list(grid),
                     "error_floor": ERROR_FLOOR, "our_tolerance": ACCURACY,
                     "search_budget_s": budget, **_settings_common(cvxpylayers_args)},
        "environment": {**env, "load_after": _loadavg()},
        "rows": rows,
        "summary": _accuracy_summary(rows),
        "seconds": time.perf_counter() - t_all,
    }


def _accuracy_row(case: Case, batch: int, repeats: int, seed: int, grid: Sequence[float],
                  budget: float | None, progress: Callable[[str], None],
                  cvxpylayers_args: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"problem": case.key, "sizes": case.sizes, "batch": batch}
    try:
        libs = Libraries(case, cvxpylayers_args=cvxpylayers_args)
        b = make_batch(case, batch, seed, variables=libs.variables)
    except Exception as e:  # noqa: BLE001
        return {**row, "failure": _describe(e), "ours": Measurement(failure="not run").as_dict(),
                "cvxpylayers": Measurement(failure="not run").as_dict(), "search": None,
                "cvxpylayers_at_eps": None, "ratio": None, "ratio_defaults": None}
    libs.warm_up(b)
    progress(f"{case.key}: ours")
    ours = libs.time_ours(b, repeats)
    progress(f"{case.key}: cvxpylayers defaults")
    theirs = libs.time_cvxpylayers(b, repeats)
    target = max(ours.error if ours.ok and ours.error is not None else 0.0, ERROR_FLOOR)
    search = at_eps = None
    if libs.cvxpylayers is not None:
        search = search_eps(libs, b, target, grid, budget, progress)
        if search.chosen is not None:
            progress(f"{case.key}: cvxpylayers eps={search.chosen:.0e} (timing)")
            at_eps = libs.time_cvxpylayers(b, repeats, search.chosen)
    return {
        **row, "failure": None,
        "ours": ours.as_dict(),
        "cvxpylayers": theirs.as_dict(),
        "search": search.as_dict() if search else None,
        "cvxpylayers_at_eps": at_eps.as_dict() if at_eps else None,
        "ratio": _ratio(at_eps, ours) if at_eps else None,
        "ratio_defaults": _ratio(theirs, ours),
        "compile_seconds": {"ours": fmt.finite_or_none(libs.ours_compile),
                            "cvxpylayers": fmt.finite_or_none(libs.cvxpylayers_compile)},
    }


def _accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ours = [r["ours"]["error"] for r in rows if r["ours"]["failure"] is None]
    failed = [r["problem"] for r in rows if r["ours"]["failure"] is not None or r["failure"]]
    over = [r["problem"] for r in rows if r["ours"]["failure"] is None
            and (r["ours"]["error"] is None or r["ours"]["error"] > ACCURACY)]
    ratios = [r["ratio"] for r in rows if r.get("ratio")]
    return {
        "our_max_error": max((e for e in ours if e is not None), default=None),
        "ours_within_tolerance": not over and not failed,
        "ours_over_tolerance": over,
        "ours_failed": failed,
        "cvxpylayers_failed": [r["problem"] for r in rows if r["cvxpylayers"]["failure"]],
        "cvxpylayers_never_matched": [r["problem"] for r in rows
                                      if r.get("search") and not r["search"]["matched"]],
        "geomean_ratio": _geomean(ratios),
    }


# -- speed ------------------------------------------------------------------------------------
def run_speed(names: Sequence[str] | None = None, batches: Sequence[int] | None = None,
              repeats: int = REPEATS, seed: int = 0, search_batch: int = SEARCH_BATCH,
              grid: Sequence[float] = EPS_GRID, budget: float | None = None,
              progress: bool | None = None, cvxpylayers_args: dict[str, Any] | None = None,
              peer_names: Sequence[str] | None = None, row_budget: float | None = None
              ) -> dict[str, Any]:
    """The speed benchmark as a JSON-ready document.

    Per case: our gradient error on the first ``search_batch`` instances sets cvxpylayers'
    target and the eps search; every other peer's error is measured there at its defaults
    and at its tightest tolerance (``Peer.tight``). Per batch (``batches``, or each case's
    own): times of ours and of every peer (cvxpylayers at the searched eps, the others at
    their defaults), the yardstick (`yardstick`, on those errors) and the ratios.
    ``row_budget``: a library whose time at the previous batch, scaled to this one, would
    exceed this many seconds (over the repeats) is skipped, and the skip recorded."""
    from tqdm import tqdm

    names = list(names or SPEED_CASES)
    _check_names(names, SPEED_CASES)
    peer_list = _peer_names(peer_names)
    fixed = sorted(set(batches)) if batches is not None else None
    plan = {n: fixed or sorted(set(SPEED_CASES[n].batches or SPEED_BATCHES)) for n in names}
    t_all = time.perf_counter()
    env = _environment()
    rows: list[dict[str, Any]] = []
    searches: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=sum(1 + len(v) for v in plan.values()), desc="bench speed", unit="step",
               file=sys.stderr, disable=_disable(progress), leave=False, dynamic_ncols=True)
    for name in names:
        case, case_batches = SPEED_CASES[name], plan[name]
        bar.set_postfix_str(f"{name}: instances")
        try:
            libs = Libraries(case, cvxpylayers_args=cvxpylayers_args, peer_names=peer_list)
            size = max(max(case_batches), search_batch)
            pool = make_batch(case, size, seed, reference=False, variables=libs.variables)
            # the closed form only for the instances the search uses (the first ones)
            ref = pool.head(search_batch).with_reference()
        except Exception as e:  # noqa: BLE001
            why = _describe(e)
            searches[name] = {"failure": why}
            for B in case_batches:
                rows.append(_speed_row(case, B, None, Measurement(failure=why),
                                       {p: Measurement(failure=why) for p in peer_list}))
            bar.update(1 + len(case_batches))
            continue
        libs.warm_up(pool)
        # our error at defaults on the search batch sets the target, then the eps search
        bar.set_postfix_str(f"{name}: our error")
        ours_ref = libs.time_ours(ref, 1)
        target = max(ours_ref.error if ours_ref.ok and ours_ref.error is not None else 0.0,
                     ERROR_FLOOR)
        search = None
        if libs.cvxpylayers is not None:
            search = search_eps(libs, ref, target, grid, budget,
                                lambda s: bar.set_postfix_str(s))
        accuracy = _peer_accuracy(libs, ref, search, lambda s: bar.set_postfix_str(s))
        searches[name] = {"problem": case.key, "sizes": case.sizes, "batch": search_batch,
                          "our_error": fmt.finite_or_none(ours_ref.error),
                          "our_solution_error": fmt.finite_or_none(ours_ref.solution_error),
                          "our_failure": ours_ref.failure,
                          **(search.as_dict() if search else
                             {"failure": libs.cvxpylayers_failure}),
                          "peers": accuracy}
        bar.update()
        last: dict[str, tuple[int, float]] = {}   # library -> (batch, total) last timed
        for B in case_batches:
            bar.set_postfix_str(f"{name}: batch {B}")
            b = pool.head(B)
            options = {"ours": None, **{
                p: libs.cvxpylayers_options(search.chosen if search else None)
                if p == "cvxpylayers" else None for p in peer_list}}
            got = _within_budget(list(options), B, last, row_budget, repeats,
                                 functools.partial(libs.time_all, b, repeats, options))
            ours = got["ours"]
            measured = {}
            for p in peer_list:
                m = got[p]
                if m.ok:   # its gradient error: measured on the search batch, as timed here
                    m = replace(m, error=accuracy[p]["error"])
                measured[p] = m
            rows.append(_speed_row(case, B, search, ours, measured))
            bar.update()
    bar.close()
    ratios = [r["yardstick_ratio"] for r in rows]
    return {
        "command": "bench speed",
        "settings": {"batches": fixed, "batches_per_problem": plan, "repeats": repeats,
                     "seed": seed, "search_batch": search_batch, "eps_grid": list(grid),
                     "error_floor": ERROR_FLOOR, "search_budget_s": budget,
                     "row_budget_s": row_budget, "yardstick_error": YARDSTICK_ERROR,
                     "peers": {p: peers.PEERS[p].label for p in peer_list},
                     "peer_defaults": {p: peers.PEERS[p].defaults for p in peer_list},
                     **_settings_common(cvxpylayers_args)},
        "environment": {**env, "load_after": _loadavg()},
        "searches": searches,
        "rows": rows,
        "summary": {"geomean_ratio": {k: _geomean([r["ratio"][k] for r in rows if r["ratio"]])
                                      for k in ("forward", "backward", "total")},
                    "rows_compared": sum(1 for r in rows if r["ratio"]),
                    "yardstick_geomean_ratio": _geomean(ratios),
                    "yardstick_rows": sum(1 for v in ratios if v is not None),
                    "yardstick_inaccurate_rows": [
                        f"{r['problem']} batch {r['batch']}" for r in rows
                        if r["yardstick"] and not r["yardstick_accurate"]],
                    "cvxpylayers_failed": [f"{r['problem']} batch {r['batch']}" for r in rows
                                           if r["cvxpylayers"]["failure"]],
                    "peers_failed": {p: [f"{r['problem']} batch {r['batch']}" for r in rows
                                         if r["peers"][p]["failure"]] for p in peer_list},
                    "ours_failed": [f"{r['problem']} batch {r['batch']}" for r in rows
                                    if r["ours"]["failure"]]},
        "seconds": time.perf_counter() - t_all,
    }


def _peer_names(names: Sequence[str] | None) -> list[str]:
    """The peers to run (default: all), checked; an unknown one is a UsageError."""
    try:
        return [p.name for p in peers.get(names)]
    except ValueError as e:
        raise UsageError(str(e)) from None


def _peer_accuracy(libs: Libraries, ref: Batch, search: Search | None,
                   progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Each peer's gradient error on ``ref`` as the speed rows time it (cvxpylayers: at the
    searched eps, from the search; the others: at their defaults), and at its tightest
    tolerance (``tight``: its options, error, failure and whether it reaches
    YARDSTICK_ERROR; None where it has no tolerance options)."""
    out: dict[str, dict[str, Any]] = {}
    for name in libs.built:
        peer = peers.PEERS[name]
        if name == "cvxpylayers":
            step = None
            if search is not None and search.chosen is not None:
                step = next(st for st in search.steps if st["eps"] == search.chosen)
            out[name] = {"options": libs.cvxpylayers_options(search.chosen if search else None),
                         "error": step["error"] if step else None,
                         "solution_error": step.get("solution_error") if step else None,
                         "failure": None if step else (libs.cvxpylayers_failure
                                                       or "no eps gave a finite error"),
                         "tight": None}
            continue
        progress(f"{libs.case.key}: {name} error")
        m = libs.time_peer(name, ref, 1)
        entry: dict[str, Any] = {"options": dict(peer.defaults),
                                 "error": fmt.finite_or_none(m.error),
                                 "solution_error": fmt.finite_or_none(m.solution_error),
                                 "failure": m.failure,
                                 "tight": None}
        if peer.tight is not None and libs.built[name].ok:
            progress(f"{libs.case.key}: {name} error, tight")
            t = libs.time_peer(name, ref, 1, peer.tight)
            entry["tight"] = {"options": peer.tight, "error": fmt.finite_or_none(t.error),
                              "failure": t.failure, "warnings": t.warnings,
                              "reaches": bool(t.ok and t.error is not None
                                              and t.error <= YARDSTICK_ERROR)}
        out[name] = entry
    return out


def _within_budget(who: Sequence[str], B: int, last: dict[str, tuple[int, float]],
                   row_budget: float | None, repeats: int,
                   run: Callable[[list[str]], dict[str, Measurement]]
                   ) -> dict[str, Measurement]:
    """``run(names)`` (name -> Measurement) for the libraries of ``who`` whose last time
    scaled to batch ``B`` (linearly) times the repeats is within ``row_budget``; the others get
    a Measurement whose failure says so. A time measured becomes that library's last."""
    out: dict[str, Measurement] = {}
    for w in who:
        if row_budget is not None and w in last:
            B0, t0 = last[w]
            predicted = t0 * B / B0 * max(1, repeats)
            if predicted > row_budget:
                out[w] = Measurement(failure=f"skipped: about {predicted:.0f}s predicted from "
                                     f"batch {B0}, over the row budget of {row_budget:g}s")
    go = [w for w in who if w not in out]
    if go:
        out.update(run(go))
    for w in go:
        if out[w].ok:
            last[w] = (B, out[w].total)
    return {w: out[w] for w in who}


def _speed_row(case: Case, B: int, search: Search | None, ours: Measurement,
               measured: dict[str, Measurement]) -> dict[str, Any]:
    theirs = measured.get("cvxpylayers", Measurement(failure="not run"))
    ratio = None
    if ours.ok and theirs.ok:
        ratio = {k: fmt.finite_or_none(getattr(theirs, k) / getattr(ours, k))
                 if getattr(ours, k) > 0
                 else None for k in ("forward", "backward", "total")}
    stick, accurate = yardstick(measured)
    return {"problem": case.key, "sizes": case.sizes, "batch": B,
            "eps": search.chosen if search else None,
            "eps_matched": search.matched if search else None,
            "ours": ours.as_dict(), "cvxpylayers": theirs.as_dict(), "ratio": ratio,
            "peers": {p: m.as_dict() for p, m in measured.items()},
            "yardstick": stick, "yardstick_accurate": accurate,
            "yardstick_ratio": _ratio(measured[stick], ours) if stick else None}


# -- scaling ----------------------------------------------------------------------------------
def run_scaling(names: Sequence[str] | None = None, batches: Sequence[int] = SCALING_BATCHES,
                sizes: Sequence[int] | None = None, size_batch: int = 1,
                repeats: int = REPEATS, seed: int = 0, progress: bool | None = None,
                cvxpylayers_args: dict[str, Any] | None = None,
                peer_names: Sequence[str] | None = None, size_problems: Sequence[str] | None = None,
                row_budget: float | None = None, quick: bool = False) -> dict[str, Any]:
    """Time per instance of ours and of each peer (at their defaults) as the batch grows
    (speed cases ``names``) and as each of ``size_problems`` grows (its SIZE_SWEEPS sizes, or
    ``sizes``; at batch ``size_batch``). ``row_budget`` as in `run_speed`; along a size sweep
    the time is scaled by the size ratio cubed."""
    from tqdm import tqdm

    names = list(names or (QUICK_SCALING["problems"] if quick else SCALING_PROBLEMS))
    _check_names(names, SPEED_CASES)
    size_problems = list(size_problems or SIZE_SWEEPS)
    _check_names(size_problems, SIZE_SWEEPS)
    peer_list = _peer_names(peer_names)
    batches = sorted(set(batches))
    sweeps = {p: sorted(set(sizes or (SIZE_SWEEPS[p][2] if quick else SIZE_SWEEPS[p][1])))
              for p in size_problems}
    t_all = time.perf_counter()
    env = _environment()
    bar = tqdm(total=len(names) * len(batches) + sum(map(len, sweeps.values())),
               desc="bench scaling", unit="step", file=sys.stderr, disable=_disable(progress),
               leave=False, dynamic_ncols=True)
    by_batch: list[dict[str, Any]] = []
    by_size: list[dict[str, Any]] = []

    def run(case: Case, Bs: Sequence[int], out: list[dict[str, Any]],
            last: dict[str, tuple[int, float]], scale: float = 1.0) -> None:
        """Time ``case`` at batches ``Bs``; ``last`` and ``scale`` feed the row budget."""
        try:
            libs = Libraries(case, cvxpylayers_args=cvxpylayers_args, peer_names=peer_list)
            pool = make_batch(case, max(Bs), seed, reference=False, variables=libs.variables)
        except Exception as e:  # noqa: BLE001
            for B in Bs:
                why = Measurement(failure=_describe(e))
                out.append(_scaling_row(case, B, why, {p: why for p in peer_list}))
                bar.update()
            return
        libs.warm_up(pool)
        for B in Bs:
            bar.set_postfix_str(f"{case.label}: batch {B}")
            b = pool.head(B)
            scaled = {w: (B0, t * scale) for w, (B0, t) in last.items()}
            options = {"ours": None, **{
                p: libs.cvxpylayers_options() if p == "cvxpylayers" else None
                for p in peer_list}}
            got = _within_budget(list(options), B, scaled, row_budget, repeats,
                                 functools.partial(libs.time_all, b, repeats, options))
            ours = got.pop("ours")
            measured = got
            last.update(scaled)
            out.append(_scaling_row(case, B, ours, measured, libs.ours_compile))
            bar.update()

    for name in names:
        run(SPEED_CASES[name], batches, by_batch, {})
    for problem, sweep in sweeps.items():
        key = SIZE_SWEEPS[problem][0]
        last: dict[str, tuple[int, float]] = {}
        previous = None
        for n in sweep:
            scale = 1.0 if previous is None else (n / previous) ** 3
            run(Case(problem, problem, {key: n}), [size_batch], by_size, last, scale)
            previous = n
    bar.close()
    return {
        "command": "bench scaling",
        "settings": {"problems": names, "batches": batches, "size_sweeps": sweeps,
                     "size_batch": size_batch, "repeats": repeats, "seed": seed,
                     "row_budget_s": row_budget,
                     "peers": {p: peers.PEERS[p].label for p in peer_list},
                     **_settings_common(cvxpylayers_args)},
        "environment": {**env, "load_after": _loadavg()},
        "by_batch": by_batch,
        "by_size": by_size,
        "seconds": time.perf_counter() - t_all,
    }


def _scaling_row(case: Case, B: int, ours: Measurement, measured: dict[str, Measurement],
                 compile_seconds: float | None = None) -> dict[str, Any]:
    def per_instance(m: Measurement) -> float | None:
        return fmt.finite_or_none(m.total / B) if m.ok else None

    row = {"problem": case.key, "sizes": case.sizes, "batch": B, "ours": ours.as_dict(),
           "ours_compile_seconds": fmt.finite_or_none(compile_seconds),
           "ours_per_instance": per_instance(ours),
           "peers": {p: m.as_dict() for p, m in measured.items()},
           "per_instance": {"ours": per_instance(ours),
                            **{p: per_instance(m) for p, m in measured.items()}},
           "peak_rss_mb": _peak_rss_mb()}
    if "cvxpylayers" in measured:
        row["cvxpylayers"] = measured["cvxpylayers"].as_dict()
        row["ratio"] = _ratio(measured["cvxpylayers"], ours)
    return row


# -- helpers ----------------------------------------------------------------------------------
def _ratio(theirs: Measurement, ours: Measurement) -> float | None:
    if not (theirs.ok and ours.ok) or not ours.total > 0:
        return None
    return fmt.finite_or_none(theirs.total / ours.total)


def _geomean(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vs) / len(vs)) if vs else None


def _disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None lets tqdm decide (off when stderr is not a terminal)."""
    return None if progress is None else not progress


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (MB; it only grows), where known."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


_version = peers.version


def _environment() -> dict[str, Any]:
    """The machine and versions; and malloc's thresholds, set here as our first solve would
    (`declarative.allocator`), so that every library of the run is timed under the same."""
    import torch

    from declarative import allocator

    allocator.hold_freed_memory()
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "versions": {d: _version(d) for d in ("declarative", "cvxpylayers", "diffcp", "scs",
                                               "moreau", "proxsuite", "qpax", "cvxpy",
                                               "torch", "numpy", "scipy")},
        "load_before": _loadavg(),
        "allocator": allocator.state(),
    }


def _settings_common(cvxpylayers_args: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ours": "defaults",
            "cvxpylayers_args": {**CVXPYLAYERS_DEFAULTS, **(cvxpylayers_args or {})},
            "dtype": "float64", "timing": "median of repeats after one warm-up call; "
            "forward = module call, backward = loss.backward()"}


def _check_names(names: Sequence[str], valid: dict[str, Any]) -> None:
    bad = [n for n in names if n not in valid]
    if bad:
        raise UsageError(f"unknown problem{'s' if len(bad) > 1 else ''} "
                              f"{', '.join(map(repr, bad))}; valid: {', '.join(valid)}")


# -- tables -----------------------------------------------------------------------------------
def _err_of(m: dict[str, Any]) -> str:
    """A measurement's error cell: "failed", "nan" (a non-finite gradient) or the value."""
    if m["failure"]:
        return "failed"
    return "nan" if m["error"] is None else fmt.sci(m["error"])


def format_accuracy(doc: dict[str, Any]) -> str:
    header = ["problem", "sizes", "batch", "our err", "our time", "cvxpylayers err", "time",
              "eps needed", "time @eps", "ratio"]
    rows, notes = [], []
    for r in doc["rows"]:
        o, c, s, a = r["ours"], r["cvxpylayers"], r.get("search"), r.get("cvxpylayers_at_eps")
        if r.get("failure"):
            notes.append(f"{r['problem']}: {r['failure']}")
        if o["failure"]:
            notes.append(f"{r['problem']}: ours failed: {o['failure']}")
        if c["failure"]:
            notes.append(f"{r['problem']}: cvxpylayers failed at its defaults: {c['failure']}")
        eps, mark = "-", ""
        if s is not None:
            if s["matched"]:
                eps = f"{s['eps_needed']:.0e}"
            else:
                eps, mark = "never", "*"
                best = (f"its best was {fmt.sci(s['best_error'])} at eps {s['best_eps']:.0e}"
                        if s["best_eps"] is not None else "no eps gave a finite error")
                notes.append(f"{r['problem']}: cvxpylayers never reached "
                             f"{s['target']:.1e}; {best}"
                             + (f" ({s['stopped']})" if s["stopped"] else ""))
            for st in s["steps"]:
                if st["failure"]:
                    notes.append(f"{r['problem']}: cvxpylayers at eps {st['eps']:.0e} failed: "
                                 f"{st['failure']}")
        rows.append([r["problem"], fmt.size_text(r["sizes"]), str(r["batch"]), _err_of(o),
                     fmt.duration(o["total"]), _err_of(c), fmt.duration(c["total"]), eps,
                     fmt.duration(a["total"]) + mark if a else "-",
                     fmt.ratio(r["ratio"]) + mark if r["ratio"] else "-"])
    out = [fmt.table(header, rows, [False, False] + [True] * 8)]
    sm = doc["summary"]
    out.append("")
    out.append("err: max abs error of the gradient of <g, outputs> (g fixed, random) against the "
               "closed form g^T J, over the batch; time: forward + backward (median of "
               f"{doc['settings']['repeats']}); ours at defaults, cvxpylayers at "
               f"{_cvxpylayers_label(doc)} defaults; eps needed: eps_abs = eps_rel at which "
               "cvxpylayers' error <= max(our err, 1e-8); ratio: cvxpylayers time @eps / ours.")
    if any(n.endswith("*") for r in rows for n in r[-2:]):
        out.append("*: cvxpylayers never reached our error; time and ratio at its most accurate "
                   "eps.")
    out = out[:1] + [fmt.wrap(x) for x in out[1:]]
    out.extend(fmt.wrap(f"note: {n}") for n in notes)
    verdict = ("all within" if sm["ours_within_tolerance"] else "NOT all within")
    out.append(f"ours: {verdict} {ACCURACY:g} at default settings (max error "
               f"{fmt.sci(sm['our_max_error'])}); geometric mean ratio "
               f"{fmt.ratio(sm['geomean_ratio'])} "
               f"({doc['seconds']:.1f}s).")
    return "\n".join(out)


TIMES = ("forward", "backward", "total")


def _solution_notes(name: str, search: dict[str, Any], threshold: float) -> list[str]:
    """A note for each peer of problem ``name`` whose outputs (as timed) are more than
    ``threshold`` from the closed form: a wrong answer, not only a wrong gradient."""
    out = []
    for p, a in search.get("peers", {}).items():
        se = a.get("solution_error")
        if se is not None and se > threshold:
            out.append(f"{name}: {p}'s outputs are {fmt.sci(se)} from the closed form as "
                       "timed (max abs): its forward answer is off, not only its gradient")
    return out


def format_speed(doc: dict[str, Any]) -> str:
    names = list(doc["settings"]["peers"])
    header = ["problem", "batch", "ours fwd", "bwd", "total"]
    for p in names:
        header += [f"{p} total", "err"]
    header += ["yardstick", "ratio", "cvxpylayers ratio"]
    rows, notes = [], []
    for r in doc["rows"]:
        o = r["ours"]
        cells = [f"{r['problem']} {fmt.size_text(r['sizes'])}", str(r["batch"]),
                 *(fmt.duration(o[k]) for k in TIMES)]
        for p in names:
            m = r["peers"][p]
            quiet = m["failure"] and _quiet_failure(m["failure"])
            cells += [fmt.duration(m["total"]), "-" if quiet else _err_of(m)]
        stick = r["yardstick"]
        cells += ["-" if stick is None else stick + ("" if r["yardstick_accurate"] else "*"),
                  fmt.ratio(r["yardstick_ratio"]),
                  fmt.ratio((r["ratio"] or {}).get("total"))]
        rows.append(cells)
        for who, m in (("ours", o), *((p, r["peers"][p]) for p in names)):
            if m["failure"] and not _quiet_failure(m["failure"]):
                notes.append(f"{r['problem']} batch {r['batch']}: {who} failed: "
                             f"{m['failure']}")
    out = [fmt.table(header, rows), ""]
    for name, s in doc["searches"].items():
        if "failure" in s:
            notes.append(f"{name}: {s['failure']}")
        else:
            got = (f"eps {s['eps_needed']:.0e} reaches it" if s["matched"] else
                   f"never reached (best {fmt.sci(s['best_error'])} at eps "
                   f"{'-' if s['best_eps'] is None else format(s['best_eps'], '.0e')}; "
                   "timed there)")
            out.append(f"search {name} (batch {s['batch']}): our error "
                       f"{fmt.sci(s['our_error'])} (outputs "
                       f"{fmt.sci(s.get('our_solution_error'))}), cvxpylayers target "
                       f"{s['target']:.1e}: {got}")
        for p, a in s.get("peers", {}).items():
            t = a.get("tight")
            if t is None:
                continue
            opts = ", ".join(f"{k}={v}" for k, v in t["options"].items())
            verdict = ("failed: " + t["failure"] if t["failure"] else
                       f"error {fmt.sci(t['error'])}, "
                       + ("under" if t["reaches"] else "NOT under")
                       + f" {doc['settings']['yardstick_error']:g}")
            notes.append(f"{name}: {p} at its tightest tolerance ({opts}): {verdict} "
                         f"(at its defaults: {_err_of(a)})")
        notes += _solution_notes(name, s, doc["settings"]["yardstick_error"])
    skipped = [p for p in names if all(r["peers"][p]["failure"] == "not installed"
                                       for r in doc["rows"])]
    if skipped:
        notes.append(f"not installed, not run: {', '.join(skipped)}")
    sm, st = doc["summary"], doc["settings"]
    gm = sm["geomean_ratio"]
    out.append("peers: " + "; ".join(st["peers"].values()) + ".")
    out.append(f"times: median of {st['repeats']} (float64 torch, forward = module call, "
               "backward = loss.backward()); ours at defaults, cvxpylayers at the eps that "
               "matches our error, the other peers at their defaults; err: the peer's max abs "
               "gradient error against the closed form on the search batch, at the setting "
               f"timed. yardstick: the fastest peer with err <= {st['yardstick_error']:g}, "
               "else (marked *) the fastest at any accuracy; ratio = yardstick / ours, "
               "cvxpylayers ratio = cvxpylayers / ours (total times).")
    out.append(f"geometric mean ratio yardstick / ours over {sm['yardstick_rows']} rows: "
               f"{fmt.ratio(sm['yardstick_geomean_ratio'])}; cvxpylayers / ours over "
               f"{sm['rows_compared']} rows: forward {fmt.ratio(gm['forward'])}, backward "
               f"{fmt.ratio(gm['backward'])}, total {fmt.ratio(gm['total'])} "
               f"({doc['seconds']:.1f}s; load average {doc['environment']['load_before']} -> "
               f"{doc['environment']['load_after']} on {doc['environment']['cpu_count']} CPUs; "
               f"malloc: {doc['environment'].get('allocator', 'not recorded')}).")
    out = out[:1] + [fmt.wrap(x) for x in out[1:]]
    out.extend(fmt.wrap(f"note: {n}") for n in dict.fromkeys(notes))
    return "\n".join(out)


def format_scaling(doc: dict[str, Any]) -> str:
    names = list(doc["settings"]["peers"])

    def block(rows: list[dict[str, Any]]) -> str:
        header = ["problem", "batch", "ours compile", "fwd", "bwd", "total", "per instance",
                  "peak RSS", *(f"{p} /inst" for p in names)]
        body = []
        for r in rows:
            o = r["ours"]
            cells = [f"{r['problem']} {fmt.size_text(r['sizes'])}", str(r["batch"]),
                     fmt.duration(r["ours_compile_seconds"]), fmt.duration(o["forward"]),
                     fmt.duration(o["backward"]), fmt.duration(o["total"]),
                     fmt.duration(r["ours_per_instance"]),
                     "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb'] / 1024:.1f}GB",
                     *(fmt.duration(r["per_instance"][p]) for p in names)]
            body.append(cells)
        notes = [f"note: {r['problem']} {fmt.size_text(r['sizes'])} batch {r['batch']}: "
                 f"{who} failed: {m['failure']}"
                 for r in rows for who, m in (("ours", r["ours"]), *r["peers"].items())
                 if m["failure"] and not _quiet_failure(m["failure"])]
        return "\n".join([fmt.table(header, body), *map(fmt.wrap, notes)])

    sweeps = ", ".join(f"{p} {SIZE_SWEEPS[p][0]} = {','.join(map(str, v))}"
                       for p, v in doc["settings"]["size_sweeps"].items())
    out = ["time per instance as the batch grows:", block(doc["by_batch"]), "",
           f"time per instance as the problem grows ({sweeps}; batch "
           f"{doc['settings']['size_batch']}):", block(doc["by_size"]), "",
           fmt.wrap(f"median of {doc['settings']['repeats']}; ours and the peers at their "
                    "defaults (" + "; ".join(doc["settings"]["peers"].values()) + "); "
                    "/inst: total (forward + backward) time / batch; compile: dl.compile, once "
                    "per problem; peak RSS: the process's peak resident memory so far (it only "
                    f"grows) ({doc['seconds']:.1f}s).")]
    return "\n".join(out)


def _quiet_failure(why: str) -> bool:
    """A peer that is not installed or cannot express the problem: no note per row."""
    return why in ("not installed", "not run") or why.startswith("does not apply")


def _cvxpylayers_label(doc: dict[str, Any]) -> str:
    v = _version("cvxpylayers")
    args = doc.get("settings", {}).get("cvxpylayers_args", CVXPYLAYERS_DEFAULTS)
    extra = {k: v for k, v in args.items() if k != "solve_method"}
    how = "SCS" + "".join(f", {k}={v}" for k, v in extra.items())
    return f"cvxpylayers {v or '(not installed)'} (diffcp, {how})"


# -- command line -----------------------------------------------------------------------------
def _progress_flag(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def _cmd_accuracy(args: argparse.Namespace) -> int:
    q = args.quick
    batch = _pick(args.batch, QUICK_ACCURACY["batch"] if q else ACCURACY_BATCH)
    names = args.problems or (list(QUICK_ACCURACY["problems"]) if q else None)
    repeats = _pick(args.repeats, QUICK_REPEATS if q else REPEATS)
    doc = _usage(run_accuracy, names=names, batch=batch, repeats=repeats, seed=args.seed,
                 grid=QUICK_EPS_GRID if args.quick else EPS_GRID, budget=args.search_budget,
                 progress=_progress_flag(args), cvxpylayers_args=_key_values(args))
    doc["settings"]["quick"] = args.quick
    print(format_accuracy(doc))
    if args.json:
        fmt.write_json(doc, args.json)
    return 0 if doc["summary"]["ours_within_tolerance"] else 1


def _cmd_speed(args: argparse.Namespace) -> int:
    q = args.quick
    names = args.problems or (list(QUICK_SPEED["problems"]) if q else None)
    batches = _pick(_flat(args.batches), QUICK_SPEED["batches"] if q else None)
    search_batch = _pick(args.search_batch, QUICK_SPEED["search_batch"] if q else SEARCH_BATCH)
    repeats = _pick(args.repeats, QUICK_REPEATS if q else REPEATS)
    doc = _usage(run_speed, names=names, batches=batches, repeats=repeats, seed=args.seed,
                 search_batch=search_batch, grid=QUICK_EPS_GRID if q else EPS_GRID,
                 budget=args.search_budget, progress=_progress_flag(args),
                 cvxpylayers_args=_key_values(args), peer_names=args.peers,
                 row_budget=args.row_budget)
    doc["settings"]["quick"] = q
    print(format_speed(doc))
    if args.json:
        fmt.write_json(doc, args.json)
    return 1 if doc["summary"]["ours_failed"] else 0


def _cmd_scaling(args: argparse.Namespace) -> int:
    q = args.quick
    doc = _usage(run_scaling, names=args.problems,
                 batches=_pick(_flat(args.batches),
                               QUICK_SCALING["batches"] if q else SCALING_BATCHES),
                 sizes=_flat(args.sizes), size_batch=args.size_batch,
                 repeats=_pick(args.repeats, QUICK_REPEATS if q else REPEATS), seed=args.seed,
                 progress=_progress_flag(args), cvxpylayers_args=_key_values(args),
                 peer_names=args.peers, size_problems=args.size_problems,
                 row_budget=args.row_budget, quick=q)
    doc["settings"]["quick"] = q
    print(format_scaling(doc))
    if args.json:
        fmt.write_json(doc, args.json)
    if args.plot:
        from declarative.tools.plot import plot_scaling

        print(f"figure: {plot_scaling(doc, args.plot)}")
    return 0


def _key_values(args: argparse.Namespace) -> dict[str, Any]:
    return key_values(args.cvxpylayers_arg, "--cvxpylayers-arg")


def _pick(given: Any, default: Any) -> Any:
    """The option as given (even 0, which `_usage` then rejects), else the default."""
    return default if given is None else given


def _usage(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Run ``fn``; a bad option becomes the CLI's UsageError (exit status 2)."""
    for key in ("batch", "search_batch", "size_batch", "repeats"):
        if kwargs.get(key) is not None and kwargs[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1.")
    for key in ("batches", "sizes"):
        if kwargs.get(key) is not None and (not kwargs[key] or min(kwargs[key]) < 1):
            raise UsageError(f"--{key} must be positive.")
    if kwargs.get("row_budget") is not None and not kwargs["row_budget"] > 0:
        raise UsageError("--row-budget must be a positive number of seconds.")
    return fn(**kwargs)


def _positive_ints(text: str) -> list[int]:
    """``"1,64"`` or ``"64"`` → a list of ints (``--batches 1 64`` and ``--batches 1,64``)."""
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None


def _flat(lists: Sequence[Sequence[int]] | None) -> list[int] | None:
    return None if lists is None else [v for vs in lists for v in vs]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``bench`` (with ``accuracy``, ``speed`` and ``scaling``) on the CLI; returns
    its modes, for modes defined elsewhere (``memory``: tools/bench_memory.py)."""
    p = subparsers.add_parser(
        "bench", help="compare with the peers: accuracy, speed, scaling",
        description="Run our layers and the peers (cvxpylayers with diffcp, cvxpylayers with "
        "Moreau, proxsuite's QPLayer, qpax when installed) side by side on zoo problems, in "
        "one process, and print ratios peer/ours. Times are wall clock: run on a quiet "
        "machine.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="MODE")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--quick", action="store_true",
                        help="a reduced set (fewer problems, small batches, 1 repeat), for CI")
        sp.add_argument("--json", metavar="FILE", help="also write the results as JSON")
        sp.add_argument("--repeats", type=int, default=None,
                        help=f"timed runs per measurement, median reported (default {REPEATS}; "
                        f"--quick: {QUICK_REPEATS})")
        sp.add_argument("--seed", type=int, default=0, help="instance seed (default 0)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--cvxpylayers-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra solver_args entry for cvxpylayers on every call, e.g. "
                        "mode=dense (diffcp's dense derivative instead of lsqr) or "
                        "max_iters=200000 (repeatable; default: none, i.e. solve_method=SCS "
                        "and SCS's and diffcp's defaults)")

    def peer_options(sp: argparse.ArgumentParser, default: str = "all") -> None:
        sp.add_argument("--peers", nargs="+", metavar="PEER", default=None,
                        help=f"peers to time, of {', '.join(peers.PEERS)} (default: {default}; "
                        "one not installed is recorded and skipped)")
        sp.add_argument("--row-budget", type=float, default=None, metavar="SECONDS",
                        help="skip a library at a batch where its time at the previous batch, "
                        "scaled to this one, would exceed this (default: no limit)")

    a = sub.add_parser(
        "accuracy", help="gradient error vs the closed form, and the eps cvxpylayers needs",
        description="Per zoo problem: our gradient error against the closed form and our time "
        "at default settings; cvxpylayers' error and time at its defaults; the SCS eps "
        "cvxpylayers needs to match our error (1e-4 ... 1e-12) and its time there. Exit "
        f"status 1 when our error exceeds {ACCURACY:g}.")
    a.add_argument("--problems", nargs="+", metavar="P",
                   help="zoo problems (default: all; --quick: sparsemax softmax)")
    a.add_argument("--batch", type=int, default=None,
                   help=f"instances per problem (default {ACCURACY_BATCH}; --quick: "
                   f"{QUICK_ACCURACY['batch']})")
    a.add_argument("--search-budget", type=float, default=None, metavar="SECONDS",
                   help="stop the eps search of a problem after this long (default: no limit)")
    common(a)
    a.set_defaults(func=_cmd_accuracy)

    s = sub.add_parser(
        "speed", help="forward/backward times of ours and every peer, ratio to the yardstick",
        description="Forward, backward and total times of ours (defaults) and of each peer "
        "(cvxpylayers at the SCS eps that matches our gradient error, searched in the same "
        "run; the others at their defaults), each beside its gradient error, per problem and "
        "batch size. The yardstick of a row is the fastest peer whose error is <= "
        f"{YARDSTICK_ERROR:g}, else the fastest at any accuracy; printed: the ratio "
        "yardstick/ours and cvxpylayers/ours per row and their geometric means, and whether "
        "each peer's tightest tolerance gets it under the threshold. Problems: "
        f"{', '.join(c.label for c in SPEED_CASES.values())} (batches "
        f"{','.join(map(str, SPEED_BATCHES))}; the SDP rows psd-*: "
        f"{','.join(map(str, SDP_BATCHES))}).")
    s.add_argument("--problems", nargs="+", metavar="P", help=f"of {', '.join(SPEED_CASES)} "
                   f"(default: all; --quick: {' '.join(QUICK_SPEED['problems'])})")
    s.add_argument("--batches", type=_positive_ints, nargs="+", default=None, metavar="B",
                   help="batch sizes for every problem (default "
                   f"{','.join(map(str, SPEED_BATCHES))}, the SDP rows "
                   f"{','.join(map(str, SDP_BATCHES))}; --quick: "
                   f"{','.join(map(str, QUICK_SPEED['batches']))})")
    s.add_argument("--search-batch", type=int, default=None,
                   help=f"batch of the eps search (default {SEARCH_BATCH}; --quick: "
                   f"{QUICK_SPEED['search_batch']})")
    s.add_argument("--search-budget", type=float, default=None, metavar="SECONDS",
                   help="stop the eps search of a problem after this long (default: no limit)")
    peer_options(s)
    common(s)
    s.set_defaults(func=_cmd_speed)

    c = sub.add_parser(
        "scaling", help="time per instance of ours and the peers vs batch and problem size",
        description="Time per instance of ours and of each peer (at their defaults) as the "
        f"batch grows (default {','.join(map(str, SCALING_BATCHES))}, on "
        f"{', '.join(SCALING_PROBLEMS)}) and as problems grow ("
        + "; ".join(f"{p}: {k} = {','.join(map(str, v))}" for p, (k, v, _) in SIZE_SWEEPS.items())
        + "). --plot draws the batch curves, log-log, one panel per problem.")
    c.add_argument("--problems", nargs="+", metavar="P",
                   help=f"for the batch sweep, of {', '.join(SPEED_CASES)} (default "
                   f"{' '.join(SCALING_PROBLEMS)}; --quick: "
                   f"{' '.join(QUICK_SCALING['problems'])})")
    c.add_argument("--batches", type=_positive_ints, nargs="+", default=None, metavar="B",
                   help=f"batch sizes (default {','.join(map(str, SCALING_BATCHES))}; "
                   f"--quick: {','.join(map(str, QUICK_SCALING['batches']))})")
    c.add_argument("--size-problems", nargs="+", metavar="P", default=None,
                   help=f"zoo problems for the size sweep, of {', '.join(SIZE_SWEEPS)} "
                   "(default: all)")
    c.add_argument("--sizes", type=_positive_ints, nargs="+", default=None, metavar="N",
                   help="the sizes of every size sweep (default: each problem's own)")
    c.add_argument("--size-batch", type=int, default=1,
                   help="batch of the size sweep (default 1)")
    c.add_argument("--plot", metavar="FILE",
                   help="also draw time per instance against batch size (PNG; needs matplotlib)")
    peer_options(c)
    common(c)
    c.set_defaults(func=_cmd_scaling)
    return sub


def main(argv: Sequence[str] | None = None) -> int:
    """``declarative bench ...`` without the rest of the CLI: ``main(["speed", "--quick"])``."""
    parser = argparse.ArgumentParser(prog="declarative")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"declarative: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
