"""The TCP proxy lives in ``control.bench_proxy`` (``bench chaos`` cuts the agents' link with it)."""

from edgeva.bench.proxy import TcpProxy

__all__ = ["TcpProxy"]
