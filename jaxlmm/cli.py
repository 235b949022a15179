"""Command line: ``jaxlmm fit``, ``jaxlmm demo``. A thin layer: parse flags, call the library, print."""

from __future__ import annotations

import argparse
import json
import sys

from .validate import InputError


def _fit(args) -> int:
    import pandas as pd

    from .formula import fit_formula
    from .report import summary, to_dict

    try:
        data = pd.read_csv(args.data)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read data file {args.data!r}: {err}") from None
    try:
        result = fit_formula(args.formula, data, method="ML" if args.ml else "REML")
    except InputError as err:
        raise InputError(f"{args.data}: {err}") from None
    if args.json:
        print(json.dumps(to_dict(result), indent=2))
    else:
        print(summary(result, args.formula))
    return 0


def _demo(args) -> int:
    from .demo import render

    print(render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Linear mixed models in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit one lme4-style model to a CSV table")
    fit.add_argument("--data", required=True, help="CSV file with a header row")
    fit.add_argument("--formula", required=True, help='e.g. "y ~ x + (1|g)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    fit.set_defaults(run=_fit)
    demo = sub.add_parser("demo", help="the seed example: per-variant and full-model PVE tables")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"jaxlmm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
