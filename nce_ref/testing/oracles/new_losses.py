"""Oracles for siglip, dcl, multi_similarity and pairwise_contrastive: the formulas of the
docstrings written out pair by pair in mpmath (50 digits)."""

from __future__ import annotations

import numpy as np

from ._mp import lse, mp, oracle, reduce, sim, to_f64, to_mp
from .triplet import dist, per_anchor, ref_pairs


def _softplus(v):
    return mp.log1p(mp.exp(v)) if v < 0 else v + mp.log1p(mp.exp(-v))


def _f(v):
    return mp.mpf(float(np.asarray(v)))


@oracle
def siglip(x, y, *, scale=10.0, bias=-10.0, similarity="cosine", reduction="mean", eps=1e-12, **_):
    X, Y = to_mp(x), to_mp(y)
    t, b = _f(scale), _f(bias)
    per = []
    for i, xi in enumerate(X):
        terms = []
        for j, yj in enumerate(Y):
            u = t * sim(xi, yj, similarity, eps) + b
            terms.append(_softplus(-u if i == j else u))
        per.append(mp.fsum(terms))
    return reduce(per, reduction)


@oracle
def dcl(z1, z2, *, temperature=0.1, weight="none", sigma=0.5, similarity="cosine",
        reduction="mean", eps=1e-12, **_):
    A, B = to_mp(z1), to_mp(z2)
    n = len(A)
    tau = _f(temperature)
    U = A + B
    s_pos = [sim(A[i], B[i], similarity, eps) for i in range(n)]
    if weight == "von_mises":
        e = [mp.exp(s / mp.mpf(float(sigma))) for s in s_pos]
        tot = mp.fsum(e)
        w = [2 - n * v / tot for v in e]
    else:
        w = [mp.mpf(1)] * n
    per = []
    for a in range(2 * n):
        i = a % n
        partner = a + n if a < n else a - n
        negs = [sim(U[a], U[c], similarity, eps) / tau for c in range(2 * n) if c not in (a, partner)]
        per.append(lse(negs) - w[i] * s_pos[i] / tau)
    return reduce(per, reduction)


def _reduce_nonzero(per, terms, reduction):
    if reduction in ("none", "sum", "mean"):
        return reduce(per, reduction)
    nz = sum(1 for t in terms if t > 0)
    return to_f64(mp.fsum(per) / nz if nz else mp.mpf(0))


@oracle
def multi_similarity(embeddings, labels, *, alpha=2.0, beta=50.0, base=0.5, mining_margin=None,
                     similarity="cosine", reduction="mean", ref=None, ref_labels=None,
                     ref_self=None, eps=1e-12, **_):
    X = to_mp(embeddings)
    R = X if ref is None else to_mp(ref)
    lab = np.asarray(labels)
    n = len(X)
    al, be, lam = mp.mpf(float(alpha)), mp.mpf(float(beta)), mp.mpf(float(base))
    S = [[sim(X[i], R[j], similarity, eps) for j in range(len(R))] for i in range(n)]
    POS, NEG = ref_pairs(n, lab, ref_labels, ref_self, len(R))
    per = []
    for i in range(n):
        P, N = POS[i], NEG[i]
        if mining_margin is not None:
            m = mp.mpf(float(mining_margin))
            max_n = max((S[i][k] for k in N), default=mp.mpf("-inf"))
            min_p = min((S[i][j] for j in P), default=mp.mpf("inf"))
            P, N = [j for j in P if S[i][j] - m < max_n], [k for k in N if S[i][k] + m > min_p]
        lp = mp.log(1 + mp.fsum(mp.exp(-al * (S[i][j] - lam)) for j in P)) / al
        ln = mp.log(1 + mp.fsum(mp.exp(be * (S[i][k] - lam)) for k in N)) / be
        per.append(lp + ln)
    return _reduce_nonzero(per, per, reduction)


@oracle
def pairwise_contrastive(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0, distance="euclidean",
                         p=2, squared=False, normalize=False, split_pos_neg=False, reduction="mean",
                         ref=None, ref_labels=None, ref_self=None, eps=1e-12, **_):
    X = to_mp(embeddings)
    R = X if ref is None else to_mp(ref)
    if normalize:
        X, R = ([[v / max(mp.sqrt(mp.fsum(c * c for c in row)), mp.mpf(eps)) for v in row]
                 for row in A] for A in (X, R))
    lab = np.asarray(labels)
    n = len(X)
    POS, NEG = ref_pairs(n, lab, ref_labels, ref_self, len(R))
    mp_, mn = mp.mpf(float(pos_margin)), mp.mpf(float(neg_margin))

    def h(v):
        v = v if v > 0 else mp.mpf(0)
        return v * v / 2 if squared else v

    per, tp, tn, per_p, per_n = [], [], [], [], []
    for i in range(n):
        rp = [h(dist(X[i], R[j], distance, p, eps) - mp_) for j in POS[i]]
        rn = [h(mn - dist(X[i], R[k], distance, p, eps)) for k in NEG[i]]
        tp += rp
        tn += rn
        per_p.append(mp.fsum(rp))
        per_n.append(mp.fsum(rn))
        per.append(per_p[-1] + per_n[-1])
    if reduction in ("none", "sum"):
        return reduce(per, reduction)
    if reduction == "per_anchor":
        cp, cn = [len(v) for v in POS], [len(v) for v in NEG]
        if split_pos_neg:
            return to_f64(per_anchor(per_p, cp) + per_anchor(per_n, cn))
        return to_f64(per_anchor(per, [a + b for a, b in zip(cp, cn)]))

    def mean(ts):
        ts_ = ts if reduction == "mean" else [t for t in ts if t > 0]
        return mp.fsum(ts_) / len(ts_) if ts_ else mp.mpf(0)

    return to_f64(mean(tp) + mean(tn) if split_pos_neg else mean(tp + tn))


ORACLES = {"siglip": siglip, "dcl": dcl, "multi_similarity": multi_similarity,
           "pairwise_contrastive": pairwise_contrastive}

__all__ = ["ORACLES"]
