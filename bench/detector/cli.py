"""``edgeva bench detector``: frames/s and ms per frame of each detector model and backend, and
its recall/precision of people against labelled vtest frames.

Its flags and its verdict (the exit status); the measurement is in ``run.py`` beside this file,
imported when the benchmark runs."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``detector`` to ``edgeva bench``'s sub-commands."""
    t = sub.add_parser("detector", help="ms per frame of each detector model (bundled, SSDLite when "
                       "built, --onnx-model) per provider, HOG and MLServer, 1 and 2 threads; "
                       "recall/precision of people on labelled vtest frames")
    t.add_argument("--quick", action="store_true", help="fewer frames (~1-2 min)")
    t.add_argument("--json", metavar="FILE", help="write the results as JSON")
    t.add_argument("--plot", metavar="FILE.png", help="write a PNG chart")
    t.add_argument("--onnx-model", action="append", default=[], metavar="PATH",
                   help="also time this ONNX detector model (repeatable), e.g. an int8 build")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeva.bench.detector.run import run_detector_bench

    cases = run_detector_bench(quick=args.quick, json_path=args.json, plot_path=args.plot,
                               onnx_models=args.onnx_model)
    return 0 if cases else 1
