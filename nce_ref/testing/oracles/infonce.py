"""Oracles for similarity, info_nce, nt_xent and info_nce_from_scores."""

from __future__ import annotations

import numpy as np

from ._mp import lse, mp, oracle, reduce, sim, to_mp


@oracle
def similarity(a, b, *, similarity="cosine", eps=1e-12, **_):
    A, B = to_mp(a), to_mp(b)
    return np.array([[float(sim(x, y, similarity, eps)) for y in B] for x in A], dtype=np.float64)


@oracle
def info_nce(query, key, negatives=None, *, temperature=0.1, similarity="cosine",
             negative_mode="unpaired", in_batch_negatives=None, symmetric=False,
             reduction="mean", eps=1e-12, **_):
    Q, K = to_mp(query), to_mp(key)
    t = mp.mpf(float(temperature))
    n = len(Q)
    in_batch = (negatives is None) if in_batch_negatives is None else in_batch_negatives
    negs = None if negatives is None else to_mp(negatives)

    def s(x, y):
        return sim(x, y, similarity, eps) / t

    per = []
    for i in range(n):
        cands = [s(Q[i], K[j]) for j in range(n)] if in_batch else [s(Q[i], K[i])]
        if negs is not None:
            row = negs if negative_mode == "unpaired" else negs[i]
            cands += [s(Q[i], c) for c in row]
        per.append(lse(cands) - s(Q[i], K[i]))
    if symmetric:
        per_c = [lse([s(Q[i], K[j]) for i in range(n)]) - s(Q[j], K[j]) for j in range(n)]
        per = [(a + b) / 2 for a, b in zip(per, per_c)]
    return reduce(per, reduction)


@oracle
def nt_xent(z1, z2, *, temperature=0.5, similarity="cosine", reduction="mean", eps=1e-12, **_):
    U = to_mp(z1) + to_mp(z2)
    n = len(U) // 2
    t = mp.mpf(float(temperature))
    per = []
    for a in range(2 * n):
        partner = (a + n) % (2 * n)
        logits = [sim(U[a], U[b], similarity, eps) / t for b in range(2 * n) if b != a]
        per.append(lse(logits) - sim(U[a], U[partner], similarity, eps) / t)
    return reduce(per, reduction)


@oracle
def info_nce_from_scores(scores, *, reduction="mean", **_):
    S = to_mp(scores)
    per = [lse(row) - row[i] for i, row in enumerate(S)]
    return reduce(per, reduction)


ORACLES = {
    "similarity": similarity,
    "info_nce": info_nce,
    "nt_xent": nt_xent,
    "info_nce_from_scores": info_nce_from_scores,
}

__all__ = ["ORACLES"]
