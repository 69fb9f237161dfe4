"""Oracles for triplet and batch_triplet: distances, selections and reductions written
out triplet by triplet in mpmath (50 digits)."""

from __future__ import annotations

import numpy as np

from ._mp import mp, oracle, sim, to_f64, to_mp


def dist(a, b, distance, p, eps):
    """The distance of ``nce_ref.triplet`` (and of the pair losses), in mpmath."""
    if distance == "euclidean":
        return mp.sqrt(mp.fsum((x - y) ** 2 for x, y in zip(a, b)))
    if distance == "sq_euclidean":
        return mp.fsum((x - y) ** 2 for x, y in zip(a, b))
    if distance == "cosine":
        return 1 - sim(a, b, "cosine", eps)
    pp = mp.mpf(float(p))
    s = mp.fsum(abs(x - y) ** pp for x, y in zip(a, b))
    return s ** (1 / pp) if s > 0 else mp.mpf(0)


def _h(x, soft):
    if soft:
        return mp.log1p(mp.exp(x)) if x < 0 else x + mp.log1p(mp.exp(-x))
    return x if x > 0 else mp.mpf(0)


def ref_pairs(n, lab, ref_labels, ref_self, m_rows):
    """``(rows, pos, neg)``: for each anchor the lists of its positive and negative
    column indices, over the batch itself (``ref_labels is None``: the anchor itself
    excluded) or the reference set (the row ``ref_self[i]`` excluded)."""
    if ref_labels is None:
        rl, own = lab, list(range(n))
    else:
        rl = np.asarray(ref_labels)
        own = [-1] * n if ref_self is None else [int(v) for v in np.asarray(ref_self)]
    pos = [[j for j in range(m_rows) if j != own[i] and rl[j] == lab[i]] for i in range(n)]
    neg = [[k for k in range(m_rows) if k != own[i] and rl[k] != lab[i]] for i in range(n)]
    return pos, neg


def per_anchor(per, counts):
    """PML's ``PerAnchorReducer(AvgNonZeroReducer())``: each anchor's mean, then the mean
    of the positive means (0 when none is)."""
    v = [t / c if c else mp.mpf(0) for t, c in zip(per, counts)]
    v = [x for x in v if x > 0]
    return mp.fsum(v) / len(v) if v else mp.mpf(0)


def _reduce(per, count, count_pos, reduction):
    if reduction == "none":
        return to_f64(per)
    total = mp.fsum(per)
    if reduction == "sum":
        return to_f64(total)
    denom = count if reduction == "mean" else count_pos
    return to_f64(total / denom if denom else mp.mpf(0))


@oracle
def triplet(anchor, positive, negative, *, margin=1.0, distance="euclidean", p=2, swap=False,
            soft=False, reduction="mean", eps=1e-12, **_):
    A, P, N = to_mp(anchor), to_mp(positive), to_mp(negative)
    m = mp.mpf(float(margin))
    per = []
    for a, ps, ng in zip(A, P, N):
        d_an = dist(a, ng, distance, p, eps)
        if swap:
            d_an = min(d_an, dist(ps, ng, distance, p, eps))
        per.append(_h(dist(a, ps, distance, p, eps) - d_an + m, soft))
    if reduction == "mean":
        return _reduce(per, len(per), 0, "mean")
    return _reduce(per, len(per), sum(1 for x in per if x > 0), reduction)


@oracle
def batch_triplet(embeddings, labels, *, mining="all", margin=1.0, distance="euclidean", p=2,
                  soft=False, reduction="mean", ref=None, ref_labels=None, ref_self=None,
                  eps=1e-12, **_):
    X = to_mp(embeddings)
    R = X if ref is None else to_mp(ref)
    lab = np.asarray(labels)
    n = len(X)
    m = mp.mpf(float(margin))
    D = [[dist(X[i], R[j], distance, p, eps) for j in range(len(R))] for i in range(n)]
    POS, NEG = ref_pairs(n, lab, ref_labels, ref_self, len(R))
    per, count, count_pos, counts = [], 0, 0, []
    for i in range(n):
        pos, neg = POS[i], NEG[i]
        terms = []
        if mining == "all":
            terms = [_h(D[i][j] - D[i][k] + m, soft) for j in pos for k in neg]
        elif mining == "hard":
            if pos and neg:
                terms = [_h(max(D[i][j] for j in pos) - min(D[i][k] for k in neg) + m, soft)]
        else:
            for j in pos:
                semi = [D[i][k] for k in neg if D[i][j] < D[i][k] < D[i][j] + m]
                if semi:
                    terms.append(_h(D[i][j] - min(semi) + m, soft))
        per.append(mp.fsum(terms))
        counts.append(len(terms))
        count += len(terms)
        count_pos += sum(1 for x in terms if x > 0)
    if reduction == "per_anchor":
        return to_f64(per_anchor(per, counts))
    return _reduce(per, count, count_pos, reduction)


ORACLES = {"triplet": triplet, "batch_triplet": batch_triplet}

__all__ = ["ORACLES", "ref_pairs", "per_anchor"]
