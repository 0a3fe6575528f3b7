"""The ``declarative`` command line (also ``python -m declarative``).

    declarative verify [PROBLEM ...] [--seeds N] [--json FILE] [--plot DIR]
                       [--no-fd] [--no-diffcp] [--tol TOL] [--solver-arg KEY=VALUE ...]

``verify`` checks zoo problems (all by default) at default settings: the solution and
full Jacobian against the closed form (max abs error; the exit status is 1 when one
exceeds the tolerance, 1e-8), and, for information, the Jacobian against central finite
differences and against diffcp (relative error, threshold 1e-6 each). Exit status 2
means a usage error (an unknown problem, a bad option).

    declarative bench accuracy|speed|scaling|memory ...

``bench`` (declarative/tools/bench.py; ``memory``: declarative/tools/bench_memory.py)
compares our layers with cvxpylayers and the other peers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any

from declarative import problems
from declarative.errors import ProblemError
from declarative.layer import Layer
from declarative.tools import bench, bench_memory, zoo_runner
from declarative.tools.format import write_json
from declarative.tools.options import USAGE_ERROR, UsageError, key_values
from declarative.verification.report import (
    DIFFCP_TOLERANCE,
    FD_STEP,
    FD_TOLERANCE,
    TOLERANCE,
)


# -- verify ----------------------------------------------------------------------------------
def _solver_args(pairs: list[str]) -> dict[str, Any]:
    """``--solver-arg`` options, checked as the layer checks per-call settings."""
    args = key_values(pairs, "--solver-arg")
    try:
        Layer.check_options(args, "nan")
    except ProblemError as e:
        raise UsageError(str(e)) from None
    return args


def _verify(args: argparse.Namespace) -> int:
    names, solver_args, fd, diffcp = _verify_options(args)
    table = zoo_runner.ZooTable(names, fd, diffcp)
    print(table.header(), flush=True)
    t_all = time.perf_counter()
    results, plots = _run_zoo(names, args, table, solver_args, fd, diffcp)
    elapsed = time.perf_counter() - t_all
    print()
    for line in zoo_runner.summary(results, args.tol, args.seeds, fd, diffcp, solver_args,
                                   elapsed):
        print(line)
    if args.json:
        doc = zoo_runner.document(results, args.tol, args.seeds, fd, diffcp, solver_args,
                                  elapsed)
        try:
            write_json(doc, args.json)
        except OSError as e:
            raise UsageError(f"--json {args.json}: {e.strerror or e}.") from None
    if plots:
        print(f"wrote {len(plots)} plot{'s' if len(plots) > 1 else ''} to {args.plot}")
    return 0 if all(r.passed for r in results) else 1


def _verify_options(args: argparse.Namespace) -> tuple[list[str], dict[str, Any], bool, bool]:
    """The problems, solver settings and references to run; a bad option is a UsageError."""
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
    return names, solver_args, fd, diffcp


def _run_zoo(names: list[str], args: argparse.Namespace, table: zoo_runner.ZooTable,
             solver_args: dict[str, Any], fd: bool, diffcp: bool
             ) -> tuple[list[zoo_runner.ZooResult], list[str]]:
    """Each problem through the zoo runner, its row printed as soon as it is done."""
    from tqdm import tqdm

    results: list[zoo_runner.ZooResult] = []
    plots: list[str] = []
    bar = tqdm(names, desc="verify", unit="problem", file=sys.stderr, disable=None,
               leave=False, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            r = zoo_runner.check_zoo(name, seeds=range(args.seeds),
                                     solver_args=solver_args or None, finite_differences=fd,
                                     diffcp=diffcp, tolerance=args.tol)
        except Exception as e:  # noqa: BLE001 - one broken problem must not hide the others
            r = zoo_runner.failed(name, e, t0)
        results.append(r)
        bar.write(table.row(r), file=sys.stdout)
        sys.stdout.flush()
        if args.plot:
            try:
                path = zoo_runner.plot(r, args.plot)
            except Exception as e:  # noqa: BLE001 - a plot failing must not lose the table
                bar.write(f"    plot failed: {type(e).__name__}: {e}", file=sys.stdout)
                path = None
            if path:
                plots.append(path)
    bar.close()
    return results, plots


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


def build_parser() -> argparse.ArgumentParser:
    from declarative import __version__

    parser = argparse.ArgumentParser(
        prog="declarative",
        description="Differentiable convex optimization layers: verification tools.")
    parser.add_argument("--version", action="version", version=f"declarative {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_verify(sub)
    bench_memory.add_parser(bench.add_parser(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"declarative: error: {e}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
