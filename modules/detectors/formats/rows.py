"""``output_format: rows``: one output of rows ``x1, y1, x2, y2, score, class`` in input
pixels (``[N, K, 6]`` or ``[K, 6]``), already decoded: the bundled CenterNet, or any model
exported with its decoding (NMS is still the module's)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeva.modules.detectors import rows
from edgeva.modules.detectors.formats import (
    Format,
    FormatError,
    FormatOptions,
    ModelMeta,
    OutputSpec,
    Preprocess,
)


def pick(outputs: Sequence[OutputSpec], name: str | None) -> OutputSpec:
    """The output ``name`` names, or the first one."""
    if name is None:
        return outputs[0]
    for o in outputs:
        if o.name == name:
            return o
    raise FormatError(f"no output {name!r} (outputs: {[o.name for o in outputs]})")


class Rows(Format):
    name = "rows"
    preprocess = Preprocess(resize="stretch", channels="rgb", scale=1.0)

    def __init__(self, out: OutputSpec) -> None:
        self.outputs = (out.name,)
        self.detail = f"{out.name} {list(out.shape)}"

    @classmethod
    def bind(cls, outputs: Sequence[OutputSpec], meta: ModelMeta, size: tuple[int, int],
             options: FormatOptions) -> Rows:
        out = pick(outputs, options.output_name)
        last = (6, None) if options.explicit else (6,)  # dynamic: only when the deployment says rows
        if len(out.shape) not in (2, 3) or out.shape[-1] not in last:
            raise FormatError(f"needs [K, 6] rows, {out.name} is {list(out.shape)}")
        return cls(out)

    def decode(self, outs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
        return rows(outs[0])

