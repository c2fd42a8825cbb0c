"""Class-aware greedy non-maximum suppression, vectorised with numpy.

Greedy NMS keeps the best-scoring box, drops every box of its class overlapping it by more
than ``iou``, and goes on with the best of the rest. Each step is one vectorised comparison of
the kept box with all the boxes still in play, so the Python loop runs once per *kept* box (a
few dozen on a busy frame after the score threshold), not once per candidate, and no K x K
matrix is built. Ties in score keep the input order (a stable sort), as OpenCV's
``NMSBoxesBatched`` does, so results match the OpenCV call this replaced.
"""

from __future__ import annotations

import numpy as np


def nms(rows: np.ndarray, iou: float) -> np.ndarray:
    """Indices (best score first) of the ``[K, >=6]`` rows (``x1, y1, x2, y2, score, class``)
    that class-aware greedy NMS at IoU ``iou`` keeps: a box goes when it overlaps a better
    kept box *of its class* by IoU > ``iou``."""
    order = np.argsort(-rows[:, 4], kind="stable")
    if len(order) < 2:
        return order
    r = rows[order]
    x1, y1, x2, y2, cls = r[:, 0], r[:, 1], r[:, 2], r[:, 3], r[:, 5]
    area = (x2 - x1) * (y2 - y1)
    idx = np.arange(len(r))
    keep = []
    while idx.size:
        i = idx[0]
        keep.append(i)
        rest = idx[1:]
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        # inter/union > iou, written without a division (a zero-area union cannot divide by 0)
        over = inter > iou * (area[i] + area[rest] - inter)
        idx = rest[~(over & (cls[rest] == cls[i]))]
    return order[np.asarray(keep, np.int64)]
