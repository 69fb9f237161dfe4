"""Mutual information: exact ground truth, variational bounds on critic scores, theory."""
