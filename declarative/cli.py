"""The ``declarative`` command line (also ``python -m declarative``).

    declarative verify [PROBLEM ...] [--seeds N] [--json FILE] [--plot DIR]
                       [--no-fd] [--no-diffcp] [--tol TOL] [--solver-arg KEY=VALUE ...]

``verify`` checks zoo problems (all by default) at default settings: the solution and
full Jacobian against the closed form (max abs error; the exit status is 1 when one
exceeds the tolerance, 1e-8), and, for information, the Jacobian against central finite
differences and against diffcp (relative error, threshold 1e-6 each). Exit status 2
means a usage error (an unknown problem, a bad option).

A ``bench`` subcommand is added when the module ``declarative.bench`` exists; it
registers itself through ``add_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from declarative.verify import (
    DIFFCP_TOLERANCE,
    FD_STEP,
    FD_TOLERANCE,
    TOLERANCE,
    ZooResult,
    check_zoo,
)

USAGE_ERROR = 2


class UsageError(Exception):
    """A mistake on the command line: printed, exit status 2."""


# -- verify ----------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_values(pairs: list[str], option: str) -> dict[str, Any]:
    """``["eps_abs=1e-9", "refine=false"]`` → ``{"eps_abs": 1e-09, "refine": False}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}.")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _solver_args(pairs: list[str]) -> dict[str, Any]:
    from declarative.errors import ProblemError
    from declarative.layer import Layer

    args = key_values(pairs, "--solver-arg")
    try:
        Layer.check_options(args, "nan")
    except ProblemError as e:
        raise UsageError(str(e)) from None
    return args


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1e}" if math.isfinite(v) else str(v)


def _failed(name: str, error: BaseException, t0: float) -> ZooResult:
    import problems

    mod = problems.get(name)
    inf = float("inf")
    return ZooResult(problem=name, cones=tuple(mod.CONES), sizes=dict(mod.SIZES),
                     instances=0, solution_error=inf, jacobian_error=inf, seconds=0.0,
                     statuses=[], total_seconds=time.perf_counter() - t0,
                     error=f"{type(error).__name__}: {error}")


class _Table:
    """The verify table, printed row by row (column widths fixed up front)."""

    def __init__(self, names: list[str], fd: bool, diffcp: bool) -> None:
        import problems

        mods = [problems.get(n) for n in names]
        self.cols = [
            ("problem", max(7, *(len(n) for n in names)), "<"),
            ("cones", max(5, *(len("+".join(m.CONES)) for m in mods)), "<"),
            ("sizes", max(5, *(len(self._sizes(m.SIZES)) for m in mods)), "<"),
            ("solution", 10, ">"),
            ("Jacobian", 10, ">"),
        ]
        if fd:
            self.cols.append(("Jac vs FD", 9, ">"))
        if diffcp:
            self.cols.append(("Jac vs diffcp", 13, ">"))
        self.cols += [("ours/inst", 9, ">"), ("total", 6, ">"), ("ok", 3, "<")]
        self.fd, self.diffcp = fd, diffcp

    @staticmethod
    def _sizes(sizes: dict[str, int]) -> str:
        return ",".join(f"{k}={v}" for k, v in sizes.items())

    def _line(self, values: list[str]) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, (_, w, a) in zip(values, self.cols, strict=True)
                         ).rstrip()

    def header(self) -> str:
        head = self._line([c for c, _, _ in self.cols])
        # a second line above: what the error columns compare, centred over their span
        starts = np.cumsum([0] + [w + 2 for _, w, _ in self.cols])
        top = [" "] * len(head)

        def over(first: int, last: int, text: str) -> None:
            lo, hi = starts[first], starts[last] + self.cols[last][1]
            text = f" {text} ".center(hi - lo, "-")
            top[lo:hi] = text

        over(3, 4, "vs closed form")
        return "".join(top).rstrip() + f"\n{head}\n" + "-" * len(head)

    def row(self, r: ZooResult) -> str:
        vals = [r.problem, "+".join(r.cones), self._sizes(r.sizes), _fmt(r.solution_error),
                _fmt(r.jacobian_error)]
        if self.fd:
            vals.append(_fmt(r.fd_error) + ("" if r.fd_ok in (None, True) else "!"))
        if self.diffcp:
            vals.append(_fmt(r.diffcp_error) + ("" if r.diffcp_ok in (None, True) else "!"))
        vals += [f"{r.seconds * 1e3:.1f}ms", f"{r.total_seconds:.2f}s",
                 "yes" if r.passed else ("ERR" if r.error else "NO")]
        line = self._line(vals)
        if r.error:
            line += f"\n    error: {r.error}"
        return line


def _plot(r: ZooResult, directory: str) -> str | None:
    from declarative.verify import CLOSED_FORM, plot_jacobians

    if not r.reports or CLOSED_FORM not in r.reports[0].jacobians:
        return None
    rep = r.reports[0]
    path = os.path.join(directory, f"{r.problem}.png")
    sizes = ",".join(f"{k}={v}" for k, v in r.sizes.items())
    return plot_jacobians(rep, path, title=f"{rep.name or r.problem}, {sizes}: Jacobian "
                          "d(outputs)/d(parameters), closed form vs ours")


def _verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import problems

    names = args.problems or list(problems.ZOO)
    unknown = [n for n in names if n not in problems.ZOO]
    if unknown:
        raise UsageError(f"unknown zoo problem{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; valid names: {', '.join(problems.ZOO)}")
    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1.")
    solver_args = _solver_args(args.solver_arg)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UsageError(f"--json {args.json}: no such directory.")
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'declarative[plot]'.")
        try:
            os.makedirs(args.plot, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--plot {args.plot}: {e.strerror or e}.") from None
    fd, diffcp = not args.no_fd, not args.no_diffcp
    if diffcp and importlib.util.find_spec("diffcp") is None:
        print("declarative: diffcp is not installed (pip install 'declarative[reference]'); "
              "skipping the diffcp column.", file=sys.stderr)
        diffcp = False

    table = _Table(names, fd, diffcp)
    print(table.header(), flush=True)
    results: list[ZooResult] = []
    plots: list[str] = []
    t_all = time.perf_counter()
    bar = tqdm(names, desc="verify", unit="problem", file=sys.stderr, disable=None,
               leave=False, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            r = check_zoo(name, seeds=range(args.seeds), solver_args=solver_args or None,
                          finite_differences=fd, diffcp=diffcp, tolerance=args.tol)
        except Exception as e:  # noqa: BLE001 - one broken problem must not hide the others
            r = _failed(name, e, t0)
        results.append(r)
        bar.write(table.row(r), file=sys.stdout)
        sys.stdout.flush()
        if args.plot:
            try:
                path = _plot(r, args.plot)
            except Exception as e:  # noqa: BLE001 - a plot failing must not lose the table
                bar.write(f"    plot failed: {type(e).__name__}: {e}", file=sys.stdout)
                path = None
            if path:
                plots.append(path)
    bar.close()
    elapsed = time.perf_counter() - t_all

    failed = [r.problem for r in results if not r.passed]
    settings = "default settings" if not solver_args else f"solver_args {solver_args}"
    print(f"\n{len(results) - len(failed)} of {len(results)} problems within {args.tol:g} "
          f"(max abs error, float64, {settings}) of the closed-form solution and Jacobian "
          f"({args.seeds} instance{'s' if args.seeds > 1 else ''} each, {elapsed:.1f}s).")
    if fd:
        n_ok = sum(bool(r.fd_ok) for r in results)
        print(f"Jac vs FD (informational): {n_ok} of {len(results)} within {FD_TOLERANCE:g} "
              f"(max abs / max(1, |J|)), central differences, step {FD_STEP:g}*max(1, |theta|).")
    if diffcp:
        compared = [r for r in results if r.diffcp_ok is not None]  # diffcp has no power cones
        n_ok = sum(bool(r.diffcp_ok) for r in compared)
        print(f"Jac vs diffcp (informational): {n_ok} of {len(compared)} within "
              f"{DIFFCP_TOLERANCE:g} (max abs / max(1, |J|)), diffcp on the same cone program, "
              "dense mode.")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if args.json:
        doc = {
            "command": "verify",
            "passed": not failed,
            "tolerance": args.tol,
            "fd_tolerance": FD_TOLERANCE if fd else None,
            "fd_step": FD_STEP if fd else None,
            "diffcp_tolerance": DIFFCP_TOLERANCE if diffcp else None,
            "seeds": args.seeds,
            "solver_args": solver_args,
            "seconds": elapsed,
            "problems": [{**r.as_dict(), "instances_detail": [rep.as_dict() for rep in r.reports]}
                         for r in results],
        }
        try:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=2, allow_nan=False)
                f.write("\n")
        except OSError as e:
            raise UsageError(f"--json {args.json}: {e.strerror or e}.") from None
    if plots:
        print(f"wrote {len(plots)} plot{'s' if len(plots) > 1 else ''} to {args.plot}")
    return 1 if failed else 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "verify", help="check zoo problems against their closed forms",
        description="Check zoo problems (all by default): solution and full Jacobian against "
        f"the closed form (max abs error, exit status 1 above --tol, default {TOLERANCE:g}); "
        f"Jacobian against central finite differences (step {FD_STEP:g}*max(1, |theta|)) and "
        f"diffcp, informational (relative error, thresholds {FD_TOLERANCE:g} and "
        f"{DIFFCP_TOLERANCE:g}; a trailing '!' marks one above).")
    v.add_argument("problems", nargs="*", metavar="PROBLEM", help="zoo problems (default: all)")
    v.add_argument("--seeds", type=int, default=3, help="instances per problem (default 3)")
    v.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    v.add_argument("--plot", metavar="DIR", help="write DIR/<problem>.png: closed-form "
                   "Jacobian, ours, and their difference (needs matplotlib)")
    v.add_argument("--no-fd", action="store_true", help="skip finite differences")
    v.add_argument("--no-diffcp", action="store_true", help="skip diffcp")
    v.add_argument("--tol", type=float, default=TOLERANCE,
                   help=f"max abs error allowed against the closed form (default {TOLERANCE:g})")
    v.add_argument("--solver-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a solver setting for every solve, e.g. eps_abs=1e-4 or refine=false "
                   "(repeatable; default: none, i.e. the library's defaults)")
    v.set_defaults(func=_verify)


# -- bench (a colleague's module, optional) ---------------------------------------------------
def _add_bench(sub: argparse._SubParsersAction) -> None:
    """Let ``declarative.bench`` register ``bench`` (``add_parser(subparsers)``) if the
    module exists. If it exists but fails to import or register, ``bench`` reports why
    with exit status 2, and ``verify`` keeps working."""
    try:
        bench = importlib.import_module("declarative.bench")
        bench.add_parser(sub)
        return
    except ModuleNotFoundError as e:
        if e.name == "declarative.bench":
            return  # not written yet: no bench command
        reason = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a broken optional module must not break verify
        reason = f"{type(e).__name__}: {e}"
    if "bench" in sub.choices:
        return
    b = sub.add_parser("bench", help=f"(unavailable: {reason})", add_help=False)

    def unavailable(args: argparse.Namespace) -> int:
        raise UsageError(f"the bench command is unavailable: {reason}")

    b.set_defaults(func=unavailable, _any_arguments=True)


def build_parser() -> argparse.ArgumentParser:
    from declarative import __version__

    parser = argparse.ArgumentParser(
        prog="declarative",
        description="Differentiable convex optimization layers: verification tools.")
    parser.add_argument("--version", action="version", version=f"declarative {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_verify(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # exits with status 2
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"declarative: error: {e}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
