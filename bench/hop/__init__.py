"""``edgeva bench hop``: one hop between two processes, per transport and payload.

The defaults its flags (cli.py) and its measurement (run.py) share, here so that the parser
needs neither numpy nor the transports."""

#: the payload kinds, in table order: ``--payloads``' choices and default
PAYLOADS: tuple[str, ...] = ("frame", "meta")
#: runs per case (``--rounds``), the median reported
ROUNDS = 3
