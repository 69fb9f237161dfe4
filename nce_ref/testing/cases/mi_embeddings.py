"""Cases for ``nce_ref.mi.bound_from_embeddings``: every streamed bound, similarity and block layout."""

from __future__ import annotations

import numpy as np

from . import Case

_GRAD_NOTE_JS = ("report='mi' returns NWJ at 1 + f but registers the JS objective's gradient: "
                 "not the derivative of the value")


def _lme_offdiag(s):
    v = s[~np.eye(s.shape[0], dtype=bool)]
    m = v.max()
    return float(m + np.log(np.mean(np.exp(v - m))))


def _cases(rng):
    n, d = 5, 3
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    lb = rng.standard_normal(n)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    lma = _lme_offdiag(xn @ yn.T / 0.5)  # MINE's gradient is DV's (the value's) here
    out = [
        Case("infonce, cosine, block of 2", (x, y), {"bound": "infonce", "similarity": "cosine",
                                                     "temperature": 0.2, "block_size": 2}),
        Case("nwj, dot, axis=0", (x, y), {"bound": "nwj", "temperature": 2.0, "axis": 0}),
        Case("tuba, one baseline per sample, neg_sq_euclidean", (x, y, lb),
             {"bound": "tuba", "similarity": "neg_sq_euclidean", "temperature": 3.0, "block_size": 3}),
        Case("tuba, scalar baseline, cosine", (x, y, 0.3), {"bound": "tuba", "similarity": "cosine",
                                                            "temperature": 0.5}),
        Case("dv, cosine, block of 1", (x, y), {"bound": "dv", "similarity": "cosine", "temperature": 0.1,
                                                "block_size": 1}),
        Case("mine at the batch mean (DV's gradient)", (x, y),
             {"bound": "mine", "similarity": "cosine", "temperature": 0.5, "log_moving_average": lma,
              "block_size": 2}),
        Case("js objective, dot", (x, y), {"bound": "js", "report": "objective", "block_size": 4}),
        Case("js reported MI, cosine", (x, y), {"bound": "js", "similarity": "cosine", "temperature": 0.3},
             fd=False, note=_GRAD_NOTE_JS),
        Case("interpolated, one baseline per sample, cosine, block of 2", (x, y, lb),
             {"bound": "interpolated", "alpha": 0.5, "similarity": "cosine", "temperature": 0.5,
              "block_size": 2}),
        Case("interpolated, scalar baseline, dot, axis=0", (x, y, 0.3),
             {"bound": "interpolated", "alpha": 0.01, "temperature": 2.0, "axis": 0}),
        Case("interpolated, alpha 0.99, neg_sq_euclidean, block of 3", (x, y, lb),
             {"bound": "interpolated", "alpha": 0.99, "similarity": "neg_sq_euclidean",
              "temperature": 3.0, "block_size": 3}),
        Case("smile, dot, clip 1.5", (x, y), {"bound": "smile", "clip": 1.5, "block_size": 2}),
        Case("loo_upper, neg_sq_euclidean, axis=0", (x, y),
             {"bound": "loo_upper", "similarity": "neg_sq_euclidean", "temperature": 4.0, "axis": 0}),
        Case("N = 2, dv", (x[:2], y[:2]), {"bound": "dv", "similarity": "cosine"}, kind="edge"),
        Case("temperature 1e-3, cosine, dv", (x, y), {"bound": "dv", "similarity": "cosine",
                                                      "temperature": 1e-3, "block_size": 2},
             kind="edge", fd=False, note="logits ~1e3: a 1e-6 step is not small against the curvature"),
        Case("temperature 1e-3, cosine, loo_upper", (x, y),
             {"bound": "loo_upper", "similarity": "cosine", "temperature": 1e-3}, kind="edge", fd=False),
        Case("temperature 1e4, cosine, infonce", (x, y),
             {"bound": "infonce", "similarity": "cosine", "temperature": 1e4}, kind="edge"),
        Case("duplicate embeddings, cosine, nwj", (np.vstack([x[:2], x[:2], x[4:]]),
                                                   np.vstack([y[:2], y[:2], y[4:]])),
             {"bound": "nwj", "similarity": "cosine", "temperature": 0.5}, kind="edge"),
        Case("zero vectors under cosine, infonce", (np.vstack([np.zeros((1, d)), x[1:]]), y),
             {"bound": "infonce", "similarity": "cosine", "temperature": 0.2}, kind="edge",
             fd=False, note="inside the eps-ball the normalisation is x/eps"),
    ]
    return out


CASES = {"mi.bound_from_embeddings": _cases}

__all__ = ["CASES"]
