"""Cases for supcon: every option, and the edge cases of issue 3."""

from __future__ import annotations

import numpy as np

from . import Case

KINDS = ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean")
_ZERO_NOTE = ("inside the eps-ball the normalisation is x/eps, so the gradient is g/eps; "
              "a finite-difference step of 1e-6 leaves the ball")


def _supcon(rng):
    n, v, d = 6, 2, 3
    f = rng.standard_normal((n, v, d))
    f2 = rng.standard_normal((8, d))
    y = np.array([0, 1, 0, 2, 1, 0])
    y8 = np.array([3, 3, 1, 1, 1, 7, 7, 0])  # one singleton class (0)
    out = [Case(f"labels, positives={pm}", (f, y), {"temperature": 0.2, "positives": pm})
           for pm in ("out", "in", "per_pair")]
    out += [Case(f"labels, {k}", (f, y), {"temperature": 0.5, "similarity": k}) for k in KINDS[1:]]
    out += [
        Case("no labels (NT-Xent)", (f,), {"temperature": 0.3}),
        Case("no labels, 3 views, per_pair", (rng.standard_normal((4, 3, d)),),
             {"temperature": 0.3, "positives": "per_pair"}),
        Case("contrast_mode one", (f, y), {"temperature": 0.2, "contrast_mode": "one"}),
        Case("contrast_mode one, in, none", (f, y),
             {"temperature": 0.2, "contrast_mode": "one", "positives": "in", "reduction": "none"}),
        Case("(N, D) layout with a singleton, exclude", (f2, y8), {"temperature": 0.1}),
        Case("(N, D) layout with a singleton, zero", (f2, y8),
             {"temperature": 0.1, "no_positive": "zero"}),
        Case("(N, D) layout, per_pair, sum", (f2, y8),
             {"temperature": 0.1, "positives": "per_pair", "reduction": "sum"}),
        Case("reduction none", (f, y), {"temperature": 0.2, "reduction": "none"}),
        Case("base_temperature (SupContrast)", (f, y), {"temperature": 0.1, "base_temperature": 0.07}),
        Case("base_temperature 1 (lightly rescale), in", (f, y),
             {"temperature": 0.5, "base_temperature": 1.0, "positives": "in"}),
        Case("multi-label rows", (f, np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0],
                                               [0, 0, 1], [0, 0, 0], [1, 0, 0]])),
             {"temperature": 0.2}),
        Case("asymmetric bool mask", (f,), {"mask": np.triu(rng.random((n, n)) < 0.5),
                                            "temperature": 0.2}),
        Case("asymmetric 0/1 float mask, per_pair", (f2,),
             {"mask": (rng.random((8, 8)) < 0.3).astype(np.float64), "temperature": 0.2,
              "positives": "per_pair"}),
        # streamed over row blocks (the bilinear similarities): blocks that do not divide
        # the 12 anchors and cross from one view into the next
        Case("streamed, block of 1 row", (f, y), {"temperature": 0.2, "block_size": 1}),
        Case("streamed, blocks of 5, in, none", (f, y),
             {"temperature": 0.2, "positives": "in", "reduction": "none", "block_size": 5}),
        Case("streamed, 2-row memory budget, per_pair, multi-label", (f, np.array(
            [[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])),
             {"temperature": 0.2, "positives": "per_pair", "memory_budget": 2 * 2 * 12 * 8}),
        Case("streamed dot, mask, blocks of 5, base_temperature", (f,),
             {"mask": np.triu(rng.random((n, n)) < 0.5), "similarity": "dot", "temperature": 0.5,
              "base_temperature": 0.07, "block_size": 5}),
        Case("streamed neg_sq_euclidean, contrast_mode one, blocks of 4", (f, y),
             {"similarity": "neg_sq_euclidean", "temperature": 0.5, "contrast_mode": "one",
              "block_size": 4}),
    ]
    e = np.eye(4)
    col = np.outer(rng.uniform(0.5, 2.0, 6), np.abs(rng.standard_normal(d)) + 0.1)
    out += [
        Case("singleton classes only, V=1 (no positive: 0)", (f2, np.arange(8)), {}, kind="edge"),
        Case("all labels equal (no negatives)", (f, np.zeros(n, dtype=np.int64)),
             {"temperature": 0.2}, kind="edge"),
        Case("all labels equal, in", (f, np.zeros(n, dtype=np.int64)),
             {"temperature": 0.2, "positives": "in"}, kind="edge"),
        Case("all labels equal, per_pair", (f, np.zeros(n, dtype=np.int64)),
             {"temperature": 0.2, "positives": "per_pair"}, kind="edge"),
        Case("N = 1, V = 1", (f2[:1],), {}, kind="edge"),
        Case("N = 1, V = 2 (one positive, no negative)", (f[:1],), {"temperature": 0.3},
             kind="edge"),
        Case("4 orthogonal unit vectors, 2 classes, temperature 0.005 (log 3)",
             (e, np.array([0, 0, 1, 1])), {"temperature": 0.005}, kind="edge"),
        Case("duplicate embeddings", (np.concatenate([f2[:4], f2[:4]]), np.array([0, 1, 2, 0, 0, 1, 2, 0])),
             {"temperature": 0.2}, kind="edge"),
        Case("collinear embeddings", (col, y), {"temperature": 0.1}, kind="edge"),
        Case("zero vectors under cosine", (np.concatenate([np.zeros((2, d)), f2[2:]]), y8),
             {"temperature": 0.2}, kind="edge", fd=False, note=_ZERO_NOTE),
        Case("positive probability below tiny", (np.stack([f2[:4], -f2[:4]], axis=1),),
             {"temperature": 1e-3}, kind="edge", fd=False,
             note="each positive is antipodal: ~2e3 nats below its row's maximum"),
        Case("large, negative, non-contiguous labels", (f, np.array([-7, 10**12, -7, 5, 10**12, -7])),
             {"temperature": 0.2}, kind="edge"),
        Case("float labels", (f, np.array([0.5, -1.0, 0.5, 2.0, -1.0, 0.5])), {"temperature": 0.2},
             kind="edge"),
        Case("bool labels", (f2, np.array([True, False, True, True, False, False, True, False])),
             {"temperature": 0.2, "positives": "in"}, kind="edge"),
    ]
    return out + _reference_sets(rng, f, y, f2, y8)


def _reference_sets(rng, f, y, f2, y8):
    """``ref``/``ref_labels``/``ref_self`` (issue 14) and ``no_negative``."""
    d = f.shape[-1]
    r = rng.standard_normal((7, d))
    ry = np.array([0, 1, 1, 2, 3, 0, 0])  # class 3 has no anchor; anchors' class 2: one row
    own = np.array([[0, -1], [1, 2], [-1, 5], [3, 3], [-1, -1], [6, 4]])  # (N, V) of f
    multi = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    rmulti = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1]])
    same = np.zeros(6, dtype=np.int64)
    ref = {"ref": r, "ref_labels": ry}
    out = [Case(f"ref, positives={pm}", (f, y), {**ref, "temperature": 0.2, "positives": pm})
           for pm in ("out", "in", "per_pair")]
    out += [Case(f"ref, ref_self, positives={pm}", (f, y),
                 {**ref, "ref_self": own, "temperature": 0.3, "positives": pm})
            for pm in ("out", "in", "per_pair")]
    out += [Case(f"ref, {k}", (f, y), {**ref, "ref_self": own, "temperature": 0.5, "similarity": k})
            for k in KINDS[1:]]
    out += [
        Case("ref, contrast_mode one, ref_self, none", (f, y),
             {**ref, "ref_self": own, "temperature": 0.2, "contrast_mode": "one",
              "reduction": "none"}),
        Case("ref, (N, D) layout, more anchors than ref rows, zero", (f2, y8 % 3),
             {"ref": r[:4], "ref_labels": np.array([0, 1, 1, 2]),
              "ref_self": np.array([-1, 0, 1, -1, -1, 3, -1, 2]), "temperature": 0.1,
              "no_positive": "zero"}),
        Case("ref, multi-label rows, base_temperature, sum", (f, multi),
             {"ref": r, "ref_labels": rmulti, "temperature": 0.2, "base_temperature": 0.07,
              "reduction": "sum"}),
        Case("ref, float labels", (f, y * 0.5), {"ref": r, "ref_labels": ry * 0.5,
                                                 "temperature": 0.2}),
        Case("ref streamed, blocks of 5, in, none", (f, y),
             {**ref, "ref_self": own, "temperature": 0.2, "positives": "in", "reduction": "none",
              "block_size": 5}),
        Case("ref streamed neg_euclidean, block of 1 row, per_pair", (f, y),
             {**ref, "ref_self": own, "temperature": 0.4, "similarity": "neg_euclidean",
              "positives": "per_pair", "block_size": 1}),
        Case("no_negative zero with negatives (no effect)", (f, y),
             {"temperature": 0.2, "no_negative": "zero"}),
        Case("ref, no_negative zero with negatives (no effect), per_pair", (f, y),
             {**ref, "temperature": 0.2, "no_negative": "zero", "positives": "per_pair"}),
    ]
    out += [
        Case("ref: no anchor has a positive", (f, y + 10), {**ref, "temperature": 0.2},
             kind="edge"),
        Case("ref: every candidate excluded (M = 1, its own copy)", (f2[:1], y8[:1]),
             {"ref": f2[:1], "ref_labels": y8[:1], "ref_self": np.array([0])}, kind="edge"),
        Case("ref: the batch itself with ref_self (= no ref)", (f2, y8),
             {"ref": f2, "ref_labels": y8, "ref_self": np.arange(8), "temperature": 0.1},
             kind="edge"),
        Case("ref: one class, no negative (keep)", (f, same),
             {"ref": r, "ref_labels": np.zeros(7, dtype=np.int64), "temperature": 0.2},
             kind="edge"),
        Case("all labels equal, no_negative zero (PML: 0)", (f, same),
             {"temperature": 0.1, "no_negative": "zero"}, kind="edge"),
        Case("all labels equal, no_negative zero, in, none", (f, same),
             {"temperature": 0.1, "no_negative": "zero", "positives": "in", "reduction": "none"},
             kind="edge"),
        Case("ref: one class, no_negative zero, per_pair", (f, same),
             {"ref": r, "ref_labels": np.zeros(7, dtype=np.int64), "temperature": 0.2,
              "no_negative": "zero", "positives": "per_pair"}, kind="edge"),
        Case("no labels, 2 views, N = 1, no_negative zero", (f[:1],),
             {"temperature": 0.3, "no_negative": "zero"}, kind="edge"),
    ]
    return out


CASES = {"supcon": _supcon}
