"""The ``declarative`` command line (also ``python -m declarative``)."""

from __future__ import annotations

import argparse
import json
import sys

from declarative.verify import TOLERANCE, check_zoo


def _verify(args: argparse.Namespace) -> int:
    import problems

    names = args.problems or list(problems.ZOO)
    for name in names:
        problems.get(name)  # unknown names fail before any work, listing the valid ones
    rows = []
    header = (f"{'problem':22s} {'cones':26s} {'sizes':18s} {'solution err':>12s} "
              f"{'Jacobian err':>12s} {'time/inst':>10s}  ok")
    print(header)
    print("-" * len(header))
    for name in names:
        r = check_zoo(name, seeds=range(args.seeds))
        rows.append(r)
        sizes = ",".join(f"{k}={v}" for k, v in r.sizes.items())
        print(f"{r.problem:22s} {'+'.join(r.cones):26s} {sizes:18s} {r.solution_error:12.1e} "
              f"{r.jacobian_error:12.1e} {r.seconds * 1e3:8.1f}ms  {'yes' if r.passed else 'NO'}",
              flush=True)
    failed = [r.problem for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} problems within {TOLERANCE:g} (float64, max "
          "abs, default settings) of the closed-form solution and Jacobian.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=2)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="declarative", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check zoo problems against their closed forms")
    v.add_argument("problems", nargs="*", help="zoo problems (default: all)")
    v.add_argument("--seeds", type=int, default=3, help="instances per problem (default 3)")
    v.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    v.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyError as e:
        print(f"declarative: {e.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
