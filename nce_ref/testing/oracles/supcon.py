"""Oracle for supcon: the definitions written out per anchor, in mpmath (50 digits)."""

from __future__ import annotations

import numpy as np

from ._mp import lse, mp, oracle, sim, to_f64, to_mp


def _related(n, labels, mask):
    """rel[i][j]: sample j is a positive of sample i (before removing the anchor itself)."""
    if mask is not None:
        m = np.asarray(mask)
        return [[bool(m[i, j] != 0) for j in range(n)] for i in range(n)]
    if labels is None:
        return [[i == j for j in range(n)] for i in range(n)]
    lab = np.asarray(labels)
    if lab.ndim == 1:
        return [[bool(lab[i] == lab[j]) for j in range(n)] for i in range(n)]
    return [[bool(np.any((lab[i] != 0) & (lab[j] != 0))) for j in range(n)] for i in range(n)]


def _shares_label(la, lb) -> bool:
    la, lb = np.asarray(la), np.asarray(lb)
    if la.ndim == 0:
        return bool(la == lb)
    return bool(np.any((la != 0) & (lb != 0)))


@oracle
def supcon(features, labels=None, *, mask=None, ref=None, ref_labels=None, ref_self=None,
           temperature=0.07, base_temperature=None, positives="out", no_positive="exclude",
           no_negative="keep", similarity="cosine", contrast_mode="all", reduction="mean",
           eps=1e-12, **_):
    f = np.asarray(features, dtype=np.float64)
    self_idx = None if ref_self is None else np.asarray(ref_self)
    if f.ndim == 2:
        f = f[:, None, :]
        self_idx = None if self_idx is None else self_idx[:, None]
    n, v, _d = f.shape
    views = [to_mp(f[i, k]) for k in range(v) for i in range(n)]  # view-major: row k*n + i
    sample = [r % n for r in range(n * v)]
    anchors = range(n * v) if contrast_mode == "all" else range(n)
    t = mp.mpf(float(temperature))
    if ref is None:
        rel = _related(n, labels, mask)
        cands = {a: [c for c in range(n * v) if c != a] for a in anchors}
        vec = lambda c: views[c]  # noqa: E731
        related = lambda a, c: rel[sample[a]][sample[c]]  # noqa: E731
    else:  # anchor row k*n + i against the ref rows; its own copy ref_self[i, k] excluded
        r = np.asarray(ref, dtype=np.float64)
        rows = [to_mp(r[m]) for m in range(r.shape[0])]
        lab, rlab = np.asarray(labels), np.asarray(ref_labels)
        own = {a: -1 if self_idx is None else int(self_idx[a % n, a // n]) for a in anchors}
        cands = {a: [m for m in range(r.shape[0]) if m != own[a]] for a in anchors}
        vec = lambda m: rows[m]  # noqa: E731
        related = lambda a, m: _shares_label(lab[sample[a]], rlab[m])  # noqa: E731
    per, count = [], []
    any_negative = False
    for a in anchors:
        z = {c: sim(views[a], vec(c), similarity, eps) / t for c in cands[a]}
        pos = [c for c in z if related(a, c)]
        negs = [c for c in z if c not in pos]
        any_negative = any_negative or bool(negs)
        if not pos:
            per.append(mp.mpf(0))
            count.append(0)
            continue
        if positives == "out":
            terms = [lse(z.values()) - z[p] for p in pos]
            per.append(mp.fsum(terms) / len(pos))
            count.append(1)
        elif positives == "in":
            lp = lse([z[p] for p in pos]) - mp.log(len(pos))
            per.append(lse(z.values()) - lp)
            count.append(1)
        else:
            per.append(mp.fsum(lse([z[p]] + [z[k] for k in negs]) - z[p] for p in pos))
            count.append(len(pos))
    scale = mp.mpf(1) if base_temperature is None else t / mp.mpf(float(base_temperature))
    if no_negative == "zero" and not any_negative:  # pytorch-metric-learning's 0
        scale = mp.mpf(0)
    per = [scale * x for x in per]
    if reduction == "none":
        return to_f64(per)
    total = mp.fsum(per)
    if reduction == "sum":
        return to_f64(total)
    if positives == "per_pair" or no_positive == "exclude":
        denom = sum(count)
    else:
        denom = len(per)
    return to_f64(total / denom if denom else mp.mpf(0))


ORACLES = {"supcon": supcon}

__all__ = ["ORACLES"]
