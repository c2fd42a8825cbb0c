"""Class-aware greedy non-maximum suppression, vectorised with numpy.

Greedy NMS keeps the best-scoring box, drops every box of its class overlapping it by IoU >
``iou``, and goes on with the best of the rest. Done literally, that is a Python loop over the
kept boxes, each step a dozen small numpy calls (~20 us): 1 ms for 40 kept boxes. Here instead:

- up to ``MATRIX_MAX`` candidates (what a frame has after the score threshold), one K x K
  "i suppresses j" matrix (IoU above ``iou``, same class, i better than j) built in a few
  vectorised calls, then the greedy pass in score order, where each kept box that overlaps
  any worse one clears its row of suppressed boxes in one call (a box overlapping nothing
  costs nothing);
- beyond that (a threshold near 0), the loop over kept boxes, whose memory stays linear.

Ties in score keep the input order (a stable sort), as OpenCV's ``NMSBoxesBatched`` does, so
the results match the OpenCV call this replaced. ``tools/time_nms.py`` times both.
"""

from __future__ import annotations

import numpy as np

#: Most candidates handled with the K x K matrix (1024: a 1 MB boolean matrix).
MATRIX_MAX = 1024
#: Cells of one block of rows of the matrix (float32: 256 KB a temporary).
_CELLS = 65536


def nms(rows: np.ndarray, iou: float) -> np.ndarray:
    """Indices (best score first) of the ``[K, >=6]`` rows (``x1, y1, x2, y2, score, class``)
    that class-aware greedy NMS at IoU ``iou`` keeps: a box goes when it overlaps a better
    kept box *of its class* by IoU > ``iou``."""
    order = np.argsort(-rows[:, 4], kind="stable")
    if len(order) < 2:
        return order
    r = rows[order]
    keep = _matrix(r, iou) if len(r) <= MATRIX_MAX else _loop(r, iou)
    return order[keep]


def _matrix(r: np.ndarray, iou: float) -> np.ndarray:
    k = len(r)
    # Contiguous columns: broadcasting over strided column views is several times slower.
    x1, y1, x2, y2, _, cls = np.ascontiguousarray(r[:, :6].T)
    area = (x2 - x1) * (y2 - y1)
    thr = np.float32(iou)
    cols = np.arange(k)
    over = np.empty((k, k), bool)  # [i, j]: i (the better) suppresses j
    # Row blocks of at most _CELLS cells: temporaries of a few hundred KB come from the heap;
    # megabyte ones are fresh pages from the kernel each time, which costs more than the maths.
    step = max(1, _CELLS // k)
    for s in range(0, k, step):
        e = min(k, s + step)
        inter = np.minimum(x2[s:e, None], x2) - np.maximum(x1[s:e, None], x1)
        np.maximum(inter, 0, out=inter)  # (np.clip costs more in Python overhead than this)
        ih = np.minimum(y2[s:e, None], y2) - np.maximum(y1[s:e, None], y1)
        np.maximum(ih, 0, out=ih)
        inter *= ih
        # inter / union > iou, without dividing (two empty boxes have union 0)
        np.greater(inter, (area[s:e, None] + area - inter) * thr, out=over[s:e])
        over[s:e] &= (cls[s:e, None] == cls) & (cols > cols[s:e, None])  # same class, i < j
    keep = np.ones(k, bool)
    # Greedy, in score order; only boxes that overlap a worse one can suppress anything, and
    # each kept one does it in one vectorised step.
    for i in np.flatnonzero(over.any(axis=1)).tolist():
        if keep[i]:
            keep[over[i]] = False
    return np.flatnonzero(keep)


def _loop(r: np.ndarray, iou: float) -> np.ndarray:
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
        inter = np.maximum(iw, 0) * np.maximum(ih, 0)
        over = inter > (area[i] + area[rest] - inter) * np.float32(iou)
        idx = rest[~(over & (cls[rest] == cls[i]))]
    return np.asarray(keep, np.int64)
