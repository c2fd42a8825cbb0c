"""``edgeva bench VERB``: every benchmark, one folder per verb under ``bench/``
(``edgeva.bench.<verb>``: ``cli.py`` its flags and verdict, ``run.py`` its measurement).

Heavy imports (numpy, matplotlib, pynng, onnxruntime) happen when a benchmark runs, not when the
CLI builds its parser.
"""

from __future__ import annotations

import argparse
import importlib

#: the verbs, in the order ``edgeva bench --help`` lists them
VERBS = ['hop', 'deploy', 'detector', 'fleet', 'soak', 'chaos', 'paper']


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and each verb's sub-command."""
    p = subparsers.add_parser("bench", help="benchmarks: " + ", ".join(VERBS),
                              description="Each benchmark prints its figures, writes --json (and most a "
                              "--plot), and exits 0 when its pass rule holds (README, Benchmarks).")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for verb in VERBS:
        importlib.import_module(f"edgeva.bench.{verb}.cli").add_parser(sub)
