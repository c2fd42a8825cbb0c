"""Which arrays a message must carry across a link: those a module beyond it can use.

A split app whose far side only reads detections need not send the 1.3 MB frame across
devices. From the modules' ports (``schemas.ports``) and the graph, ``used_arrays`` computes,
for each module, the names of its input that it or anything after it can use:

- what it consumes (every name of every alternative: ``reid`` may cut crops from the frame,
  or use the detector's crops);
- what it passes on (``passes``) that something after it uses;
- with ``forwards="message"`` (it returns its input), everything something after it uses.

What the module makes itself (``produces``, ``arrays``) is not needed from its input. A module
whose type declares no ports (``None``) may read anything: all arrays (``None``), and so does
whatever feeds it only through it. The agent sends on a link to a peer only the arrays named
by ``crossing_arrays`` for that edge (fields always cross: they are small); names are a flat
namespace, so a field name in the result (``detections``) just matches no array.

So a type must name in ``consumes`` every array it reads, also one it reads only when present:
in an alternative with what it needs (``"detections | detections + frame"``: the wiring check
is the same, and the frame crosses to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from edgeva.schemas.ports import Ports, active_ports

if TYPE_CHECKING:
    from edgeva.schemas.graph import ValidatedGraph

#: The arrays a module's input must carry: a set of names, or None for all of them.
Needed = frozenset[str] | None


def union(needs: Iterable[Needed]) -> Needed:
    """Every name any of ``needs`` asks for; None (all) when one of them is None."""
    out: set[str] = set()
    for n in needs:
        if n is None:
            return None
        out |= n
    return frozenset(out)


def _needs(p: Ports | None, below: Needed) -> Needed:
    """What one module's input must carry, given what the modules it feeds need (``below``)."""
    if p is None:
        return None  # unknown type: it may read any array
    if p.forwards == "message" and below is None:
        return None  # its input goes on whole to something that may read anything
    own = {n for alt in p.consumes for n in alt}
    if below is None:
        own.update(p.passes)
    else:
        own.update(n for n in p.passes if n in below)
        if p.forwards == "message":
            own |= below
    return frozenset(own)


def used_arrays(ports: Mapping[str, Ports | None], downstream: Mapping[str, Sequence[str]],
                order: Sequence[str]) -> dict[str, Needed]:
    """Module name -> the arrays its input must carry for it and every module after it.

    ``ports``: name -> the module's active ports (``schemas.ports.active_ports``), None when
    undeclared; ``downstream``: name -> the modules it feeds; ``order``: every module after its
    upstreams (``ValidatedGraph.order``). Walks the graph once, from the sinks up."""
    used: dict[str, Needed] = {}
    for name in reversed(order):
        used[name] = _needs(ports[name], union(used[d] for d in downstream[name]))
    return used


def crossing_arrays(used: Mapping[str, Needed], downstream: Mapping[str, Sequence[str]],
                    devices: Mapping[str, str], module: str, peer: str) -> Needed:
    """The arrays ``module``'s messages must carry to device ``peer``: what its outputs placed
    there use (``used``: from ``used_arrays``)."""
    return union(used[d] for d in downstream[module] if devices[d] == peer)


def link_arrays(graph: ValidatedGraph) -> dict[tuple[str, str], Needed]:
    """(module, peer device) -> the arrays its messages must carry there, for every edge of
    ``graph`` that crosses devices."""
    used = used_arrays({n: active_ports(c) for n, c in graph.configs.items()}, graph.downstream, graph.order)
    return {(m, graph.devices[d]): crossing_arrays(used, graph.downstream, graph.devices, m, graph.devices[d])
            for m in graph.order for d in graph.downstream[m] if graph.devices[d] != graph.devices[m]}
