"""Cases for triplet and batch_triplet: every distance and option, the edge cases of
issue 3, and hand-built batches whose selections are known."""

from __future__ import annotations

import numpy as np

from . import Case

_KINK = "zero distance is a kink of the euclidean/lp distance: subgradient 0"


def _triplet(rng):
    n, d = 7, 4
    a, p, ng = (rng.standard_normal((n, d)) for _ in range(3))
    p = a + 0.8 * p  # positives closer than the negatives on average: a mix of active terms
    out = [Case(f"distance {dist}", (a, p, ng), {"distance": dist, "reduction": "none"})
           for dist in ("euclidean", "sq_euclidean", "cosine")]
    out += [Case(f"lp, p={q}", (a, p, ng), {"distance": "lp", "p": q, "reduction": "none"})
            for q in (1, 1.5, 3, 7.25)]
    out += [
        Case("swap", (a, p, ng), {"swap": True, "reduction": "none"}),
        Case("swap, lp p=3, sum", (a, p, ng), {"swap": True, "distance": "lp", "p": 3,
                                              "reduction": "sum"}),
        Case("soft", (a, p, ng), {"soft": True}),
        Case("soft, margin 0 (Hermans)", (a, p, ng), {"soft": True, "margin": 0.0, "swap": True}),
        Case("mean_nonzero", (a, p, ng), {"reduction": "mean_nonzero", "margin": 0.5}),
        Case("margin 0, cosine, mean", (a, p, ng), {"margin": 0.0, "distance": "cosine"}),
    ]
    out += [
        Case("N = 1", (a[:1], p[:1], ng[:1]), {}, kind="edge"),
        Case("same array as anchor and positive (zero distance)", (a, a.copy(), ng),
             {"reduction": "none"}, kind="edge", fd=False, note=_KINK),
        Case("same array twice, squared distance (smooth at 0)", (a, a.copy(), ng),
             {"distance": "sq_euclidean", "reduction": "none"}, kind="edge"),
        Case("identical triplets (all distances 0), lp p=1", (a, a.copy(), a.copy()),
             {"distance": "lp", "p": 1, "reduction": "none"}, kind="edge", fd=False, note=_KINK),
        Case("no active term: mean_nonzero is 0", (a, a + 1e-3, a + 10.0),
             {"reduction": "mean_nonzero"}, kind="edge"),
        Case("soft with huge arguments (no overflow)", (a * 1e3, ng * 1e3, p * 1e3),
             {"soft": True, "reduction": "none"}, kind="edge", fd=False,
             note="distances ~1e3: the softplus is linear there; a 1e-6 step is below rounding"),
        Case("zero vectors under cosine", (np.concatenate([np.zeros((1, d)), a[1:]]), p, ng),
             {"distance": "cosine"}, kind="edge", fd=False,
             note="inside the eps-ball the normalisation is x/eps"),
        Case("collinear embeddings", (np.outer(np.arange(1.0, 8.0), np.ones(d)),
                                      np.outer(np.arange(2.0, 9.0), np.ones(d)),
                                      np.outer(np.arange(4.0, 11.0), np.ones(d))),
             {"reduction": "none", "margin": 2.5}, kind="edge"),
    ]
    return out


def _batch_triplet(rng):
    n, d = 8, 3
    x = rng.standard_normal((n, d))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    out = []
    for mining in ("all", "hard", "semi_hard"):
        out += [Case(f"{mining}, {dist}", (x, y), {"mining": mining, "distance": dist,
                                                    "margin": 0.8 if dist != "cosine" else 0.4})
                for dist in ("euclidean", "sq_euclidean", "cosine")]
        out += [
            Case(f"{mining}, lp p=1.5, none", (x, y),
                 {"mining": mining, "distance": "lp", "p": 1.5, "reduction": "none"}),
            Case(f"{mining}, soft, sum", (x, y), {"mining": mining, "soft": True, "reduction": "sum"}),
            Case(f"{mining}, mean_nonzero", (x, y), {"mining": mining, "reduction": "mean_nonzero"}),
        ]
    # hand-built: points on a line, exact distances
    line = np.array([[0.0], [1.0], [3.0], [7.0], [12.0]])
    ly = np.array([0, 0, 1, 1, 0])
    out += [
        Case(f"hand-built line, {mining}", (line, ly), {"mining": mining, "margin": 2.5,
                                                      "reduction": "none"}, kind="edge")
        for mining in ("all", "hard", "semi_hard")
    ]
    out += [
        Case("N = 1", (x[:1], y[:1]), {}, kind="edge"),
        Case("all labels distinct (no positive)", (x, np.arange(n)), {"mining": "hard"}, kind="edge"),
        Case("all labels equal (no negative)", (x, np.zeros(n, dtype=np.int64)), {}, kind="edge"),
        Case("singleton class", (x, np.array([0, 0, 0, 1, 1, 2, 1, 0])), {"mining": "hard"},
             kind="edge"),
        Case("large, negative, non-contiguous labels", (x, np.array([-3, 10**12, 5, -3, 10**12, 5, -3, 5])),
             {"mining": "semi_hard", "margin": 1.5}, kind="edge"),
        Case("identical embeddings (all distances 0), all", (np.ones((5, d)), np.array([0, 1, 0, 1, 1])),
             {"reduction": "none"}, kind="edge", fd=False, note=_KINK),
        Case("identical embeddings, squared distance (smooth at 0)", (np.ones((5, d)),
                                                                      np.array([0, 1, 0, 1, 1])),
             {"distance": "sq_euclidean", "mining": "hard"}, kind="edge"),
        Case("float labels", (x, np.array([0.5, 1.5, 2.5, 0.5, 1.5, 2.5, 0.5, 1.5])),
             {"mining": "hard", "soft": True}, kind="edge"),
        Case("collinear embeddings, all", (np.outer([0.5, 1.3, 2.9, 4.2, 6.0, 7.7], [1.0, -2.0, 0.5]),
                                           np.array([0, 1, 0, 1, 0, 1])),
             {"margin": 1.0, "reduction": "none"}, kind="edge"),
        Case("collinear embeddings, semi_hard", (np.outer([0.5, 1.3, 2.9, 4.2, 6.0, 7.7], [1.0, -2.0, 0.5]),
                                                 np.array([0, 1, 0, 1, 0, 1])),
             {"mining": "semi_hard", "margin": 2.0}, kind="edge"),
        Case("zero vectors under cosine", (np.concatenate([np.zeros((2, d)), x[2:]]), y),
             {"distance": "cosine", "mining": "hard", "margin": 0.5}, kind="edge", fd=False,
             note="inside the eps-ball the normalisation is x/eps"),
    ]
    out += _batch_triplet_ref(rng, x, y)
    return out


def ref_set(rng, x, y, m=6):
    """A reference set of ``m`` rows (labels drawn from ``y``'s) and one that holds the
    batch itself first (a cross-batch memory after enqueueing), with ``ref_self``."""
    r = rng.standard_normal((m, x.shape[1]))
    ry = y[np.arange(m) % len(y)][::-1].copy()
    mem, mem_y = np.concatenate([x, r]), np.concatenate([y, ry])
    return r, ry, mem, mem_y, np.arange(len(x), dtype=np.int64)


def _batch_triplet_ref(rng, x, y):
    r, ry, mem, mem_y, own = ref_set(rng, x, y)
    out = [Case(f"ref set, {mining}", (x, y), {"mining": mining, "ref": r, "ref_labels": ry,
                                                "margin": 1.5 if mining == "semi_hard" else 0.8})
           for mining in ("all", "hard", "semi_hard")]
    out += [
        Case("ref set, none", (x, y), {"ref": r, "ref_labels": ry, "reduction": "none"}),
        Case("memory holding the batch (ref_self), all, per_anchor", (x, y),
             {"ref": mem, "ref_labels": mem_y, "ref_self": own, "reduction": "per_anchor"}),
        Case("memory holding the batch (ref_self), hard, mean_nonzero", (x, y),
             {"ref": mem, "ref_labels": mem_y, "ref_self": own, "mining": "hard",
              "reduction": "mean_nonzero"}),
        Case("per_anchor, all", (x, y), {"reduction": "per_anchor", "margin": 0.5}),
        Case("per_anchor, semi_hard, lp p=3", (x, y), {"reduction": "per_anchor", "mining": "semi_hard",
                                                       "distance": "lp", "p": 3, "margin": 1.5}),
        Case("ref_self all -1 (no copy in the reference set)", (x, y),
             {"ref": r, "ref_labels": ry, "ref_self": np.full(len(x), -1, dtype=np.int64)}, kind="edge"),
        Case("ref set of one row (no triplet)", (x, y), {"ref": r[:1], "ref_labels": ry[:1],
                                                         "reduction": "per_anchor"}, kind="edge"),
        Case("ref set equal to the batch without ref_self (self-pairs at distance 0)", (x, y),
             {"ref": x.copy(), "ref_labels": y, "reduction": "none", "distance": "sq_euclidean"},
             kind="edge"),
        Case("per_anchor with no positive term is 0", (x + 10.0 * y[:, None], y),
             {"reduction": "per_anchor", "margin": 0.5, "ref": x + 10.0 * y[:, None],
              "ref_labels": y}, kind="edge"),
    ]
    return out


CASES = {"triplet": _triplet, "batch_triplet": _batch_triplet}
