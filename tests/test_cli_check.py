"""`nce-ref check`: the table, the exit codes, JSON, and that it catches a broken gradient."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nce_ref
from nce_ref.cli import main


def test_check_passes_and_prints_the_table(capsys):
    rc = main(["check", "--backends", "numpy,array_api_strict", "--functions",
               "info_nce,nt_xent", "--cases", "standard"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "info_nce" in out and "array_api_strict" in out and "finite differences" in out
    assert "0 failed" in out


def test_check_json_and_unknown_backend(capsys):
    rc = main(["check", "--backends", "numpy", "--functions", "similarity", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["passed"] and {r["dtype"] for r in data["rows"]} == {"float32", "float64"}
    assert main(["check", "--backends", "tpu"]) == 2


def test_check_fails_on_a_wrong_gradient(monkeypatch, capsys):
    entry = nce_ref.autodiff.lookup(nce_ref.info_nce_from_scores)
    impl = entry.impl

    def broken(*args, **kwargs):
        value, back = impl(*args, **kwargs)
        return value, lambda g: {k: 1.01 * v for k, v in back(g).items()}

    bad = type(entry)(**{**entry.__dict__, "impl": broken})
    monkeypatch.setitem(nce_ref.autodiff._REGISTRY, entry.name, bad)
    monkeypatch.setattr(entry.public, "__nce_ref__", bad)
    rc = main(["check", "--backends", "numpy", "--functions", "info_nce_from_scores"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL info_nce_from_scores" in out and "against finite differences" in out


def test_main_without_command_prints_help(capsys):
    assert main([]) == 2
    assert "check" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--version"]])
def test_version(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and nce_ref.__version__ in capsys.readouterr().out
    assert np is not None
