"""The TCP proxy lives in ``control.bench_proxy`` (``bench chaos`` cuts the agents' link with it)."""

from edgeva.control.bench_proxy import TcpProxy

__all__ = ["TcpProxy"]
