"""Modules run in this process, without the agent: what CASE A and VideoPipe are made of.

``build(dep)`` sets up every module of a deployment with the same classes and args the agent
would use; ``topo(dep)`` orders them; ``run_graph`` pushes one message through the graph the way
a hand-made script would (each module in turn, every output to every downstream module).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from edgeva.modules.base import Module, ModuleContext
from edgeva.modules.registry import module_class
from edgeva.schemas.message import Message


def build_module(name: str, spec: dict) -> Module:
    cls = module_class(spec["type"])
    cfg = cls.config_class.model_validate({**spec.get("args", {}), "type": spec["type"]})
    mod = cls(cfg, ModuleContext(name=name, log=logging.getLogger(f"edgeva.bench.{name}")))
    mod.setup()
    return mod


def topo(dep: dict) -> list[str]:
    """Module names, each after every module that feeds it."""
    mods = dep["modules"]
    indeg = {n: 0 for n in mods}
    for m in mods.values():
        for o in m.get("outputs", []):
            indeg[o] += 1
    order, ready = [], [n for n, d in indeg.items() if d == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for o in mods[n].get("outputs", []):
            indeg[o] -= 1
            if indeg[o] == 0:
                ready.append(o)
    return order


def produce(source: Module) -> Message | None:
    """One frame from a source outside a ring: what the runner's slot writer does, with fresh
    arrays per frame (a frame may wait in a queue)."""
    arrays: dict[str, np.ndarray] = {}

    def alloc(name: str, shape: tuple, dtype: object) -> np.ndarray:
        arrays[name] = a = np.empty(shape, dtype)
        return a

    msg = source.produce(alloc)
    if isinstance(msg, Message):
        msg.arrays.update(arrays)
    return msg


def outputs(result: object) -> list[Message]:
    if result is None:
        return []
    return [result] if isinstance(result, Message) else list(result)


def run_graph(msg: Message, dep: dict, order: list[str], mods: dict[str, Module], sink: str,
              on_end: Callable[[Message], None]) -> None:
    """Push a decoded frame through the graph below the decoder; ``on_end`` for each message that
    reaches ``sink`` (which is not run: it stands for the app's end)."""
    inbox: dict[str, list[Message]] = {order[0]: [msg]}
    for name in order:
        for m in inbox.pop(name, []):
            if name == sink:
                on_end(m)
                continue
            if dep["modules"][name]["type"] == "decoder":
                outs = [m]
            else:
                t_in = time.time_ns()
                outs = outputs(mods[name].process(m))
                t_out = time.time_ns()
                for o in outs:
                    o.hops.append([name, t_in, t_out])
            for o in outs:
                for nxt in dep["modules"][name].get("outputs", []):
                    inbox.setdefault(nxt, []).append(o)
