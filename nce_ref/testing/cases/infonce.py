"""Cases for similarity, info_nce, nt_xent and info_nce_from_scores."""

from __future__ import annotations

import numpy as np

from . import Case

KINDS = ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean")
_ZERO_NOTE = ("inside the eps-ball the normalisation is x/eps, so the gradient is g/eps "
              "(torch.nn.functional.normalize's); a finite-difference step of 1e-6 leaves the ball")


def _similarity(rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    out = [Case(f"random {k}", (a, b), {"similarity": k}) for k in KINDS]
    z = np.zeros((2, 3))
    out.append(Case("zero vectors under cosine", (np.vstack([z, a]), b), {"similarity": "cosine"},
                    kind="edge", fd=False, note=_ZERO_NOTE))
    out.append(Case("identical rows (zero distance)", (a, a.copy()), {"similarity": "neg_euclidean"},
                    kind="edge", fd=False, note="zero distance is a kink; subgradient 0"))
    return out


def _info_nce(rng):
    n, d = 6, 4
    q, k = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    negs, paired = rng.standard_normal((5, d)), rng.standard_normal((n, 3, d))
    out = [Case(f"random {s}", (q, k), {"temperature": 0.2, "similarity": s}) for s in KINDS]
    out += [
        Case("symmetric (CLIP)", (q, k), {"temperature": 0.07, "symmetric": True}),
        Case("reduction none", (q, k), {"temperature": 0.5, "reduction": "none"}),
        Case("reduction sum", (q, k), {"temperature": 0.5, "reduction": "sum"}),
        Case("unpaired negatives", (q, k, negs), {"temperature": 0.3}),
        Case("unpaired negatives + in-batch", (q, k, negs),
             {"temperature": 0.3, "in_batch_negatives": True}),
        Case("paired negatives", (q, k, paired), {"temperature": 0.3, "negative_mode": "paired"}),
        Case("paired negatives + in-batch", (q, k, paired),
             {"temperature": 0.3, "negative_mode": "paired", "in_batch_negatives": True}),
        Case("streamed, block of 1 row", (q, k, negs),
             {"temperature": 0.2, "in_batch_negatives": True, "block_size": 1}),
        Case("streamed, block not dividing N", (q, k),
             {"temperature": 0.2, "block_size": 4, "reduction": "none"}),
        Case("streamed dot, block of 5", (q, k), {"similarity": "dot", "block_size": 5}),
        Case("streamed symmetric, block of 4", (q, k),
             {"temperature": 0.1, "symmetric": True, "block_size": 4, "reduction": "none"}),
        Case("symmetric neg_euclidean (dense)", (q, k),
             {"symmetric": True, "similarity": "neg_euclidean"}),
        Case("streamed neg_sq_euclidean, block of 4", (q, k, negs),
             {"similarity": "neg_sq_euclidean", "block_size": 4}),
    ]
    col = np.outer(rng.uniform(0.5, 2.0, n), rng.standard_normal(d))
    out += [
        Case("N = 1", (q[:1], k[:1]), {"temperature": 0.1}, kind="edge"),
        Case("collinear embeddings (log N)", (np.abs(col), np.abs(col)), {"temperature": 0.1},
             kind="edge"),
        Case("temperature 1e-4", (q, k), {"temperature": 1e-4}, kind="edge", fd=False,
             note="logits ~1e4: a 1e-6 step is not small against the curvature"),
        Case("temperature 1e4", (q, k), {"temperature": 1e4}, kind="edge"),
        Case("scores of magnitude 1e4 (dot)", (q * 100.0, k * 100.0),
             {"temperature": 1.0, "similarity": "dot"}, kind="edge", fd=False),
        Case("positive probability below tiny", (q, -q), {"temperature": 1e-3}, kind="edge",
             fd=False, note="the positive is at the bottom of each row by ~2e3 nats"),
        Case("duplicate embeddings", (np.vstack([q[:3], q[:3]]), np.vstack([k[:3], k[:3]])),
             {"temperature": 0.2}, kind="edge"),
        Case("zero vectors under cosine", (np.vstack([np.zeros((1, d)), q[1:]]), k),
             {"temperature": 0.2}, kind="edge", fd=False, note=_ZERO_NOTE),
    ]
    return out


def _nt_xent(rng):
    n, d = 5, 3
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    out = [Case(f"random {s}", (a, b), {"temperature": 0.5, "similarity": s}) for s in KINDS]
    out += [
        Case("reduction none", (a, b), {"temperature": 0.1, "reduction": "none"}),
        Case("streamed, block of 1 row", (a, b), {"temperature": 0.2, "block_size": 1}),
        Case("streamed, block of 3 (straddles nothing, does not divide N)", (a, b),
             {"temperature": 0.2, "block_size": 3, "reduction": "none"}),
        Case("N = 1", (a[:1], b[:1]), {}, kind="edge"),
        Case("collinear (log(2N-1))", (np.ones((n, d)), 2 * np.ones((n, d))), {}, kind="edge"),
        Case("temperature 1e-4", (a, b), {"temperature": 1e-4}, kind="edge", fd=False),
        Case("temperature 1e4", (a, b), {"temperature": 1e4}, kind="edge"),
        Case("same array twice", (a, a.copy()), {"temperature": 0.3}, kind="edge"),
        Case("positive probability below tiny", (a, -a), {"temperature": 1e-3}, kind="edge",
             fd=False, note="each positive is antipodal: ~2e3 nats below its row's maximum"),
        Case("duplicate embeddings", (np.vstack([a[:2], a[:2], a[4:]]), np.vstack([b[:2], b[:2], b[4:]])),
             {"temperature": 0.2}, kind="edge"),
        Case("zero vectors under cosine", (np.vstack([np.zeros((1, d)), a[1:]]), b),
             {"temperature": 0.2}, kind="edge", fd=False, note=_ZERO_NOTE),
    ]
    return out


def _from_scores(rng):
    s = rng.standard_normal((5, 8))
    return [
        Case("square", (s[:, :5],), {}),
        Case("extra negative columns", (s,), {"reduction": "none"}),
        Case("scores of magnitude 1e4", (s * 1e4,), {}, kind="edge", fd=False),
        Case("N = 1", (s[:1, :1],), {}, kind="edge"),
    ]


CASES = {
    "similarity": _similarity,
    "info_nce": _info_nce,
    "nt_xent": _nt_xent,
    "info_nce_from_scores": _from_scores,
}
