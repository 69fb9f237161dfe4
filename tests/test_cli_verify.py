"""``nce-ref verify``: exit codes 0 / 1 / 2, one-line diagnoses, the table and ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from nce_ref.cli import main

TARGETS = textwrap.dedent('''
    import numpy as np

    def good(q, k, *, temperature=0.1, reduction="mean"):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        k = k / np.linalg.norm(k, axis=1, keepdims=True)
        z = q @ k.T / temperature
        m = z.max(axis=1, keepdims=True)
        per = m[:, 0] + np.log(np.exp(z - m).sum(axis=1)) - np.diag(z)
        return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]

    def summed(q, k, *, temperature=0.1):
        return good(q, k, temperature=temperature, reduction="sum")

    def raises(q, k, *, temperature=0.1):
        raise RuntimeError("not implemented yet")

    def python_float(q, k, *, temperature=0.1):
        return float(good(q, k, temperature=temperature))

    def wrong_shape(q, k, *, temperature=0.1):
        return good(q, k, temperature=temperature, reduction="none")

    class Loss:
        def __call__(self, q, k, *, temperature=0.1):
            return good(q, k, temperature=temperature)

    def floored(q, k, *, temperature=0.1):
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
        z = q @ k.T / temperature
        m = z.max(axis=1, keepdims=True)
        return np.mean(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)) - np.diag(z))

    def with_tau(q, k, *, tau=0.1):
        return floored(q, k, temperature=tau)

    def with_beta(q, k, *, beta=0.1):
        return floored(q, k, temperature=beta)

    def fixed(q, k):
        return floored(q, k, temperature=0.07)

    def some_raise(q, k, *, temperature=0.1):
        if len(q) == 1:
            raise IndexError("needs two rows")
        return floored(q, k, temperature=temperature)

    class NeedsArgs:
        def __init__(self, scale):
            self.scale = scale

    NOT_CALLABLE = 42
''')


@pytest.fixture
def targets(tmp_path, monkeypatch):
    (tmp_path / "nce_verify_targets.py").write_text(TARGETS)
    (tmp_path / "nce_verify_broken.py").write_text("import numpy as np\ndef f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for m in ("nce_verify_targets", "nce_verify_broken"):
        sys.modules.pop(m, None)
    return "nce_verify_targets"


def _run(capsys, *argv):
    rc = main(["verify", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_agreeing_target_exits_0(targets, capsys):
    rc, out, err = _run(capsys, f"{targets}:good", "--as", "info_nce", "--framework", "numpy")
    assert rc == 0, out + err
    assert "AGREES with nce_ref.info_nce" in out
    assert "random cosine" in out and "FAIL" not in out


def test_callable_class_is_instantiated(targets, capsys):
    rc, out, _ = _run(capsys, f"{targets}:Loss", "--as", "info_nce", "--framework", "numpy",
                      "--dtype", "float64")
    assert rc == 0 and "Loss()" in out


def test_disagreeing_target_exits_1_and_points_at_the_cases(targets, capsys):
    rc, out, _ = _run(capsys, f"{targets}:summed", "--as", "info_nce", "--framework", "numpy")
    assert rc == 1
    assert "DISAGREES" in out
    assert "FAIL random cosine [float64]: value" in out
    assert "diagnosis: the implementation follows reduction='sum'" in out


def test_json(targets, capsys):
    rc, out, _ = _run(capsys, f"{targets}:summed", "--as", "info_nce", "--framework", "numpy",
                      "--json", "--cases", "edge")
    assert rc == 1
    d = json.loads(out)
    assert d["passed"] is False and d["cases"] == "edge"
    assert d["results"] and all(r["status"] in ("fail", "n/a", "pass") for r in d["results"])
    assert any("reduction='sum'" in x for x in d["diagnosis"])


@pytest.mark.parametrize("target, extra, message", [
    ("no_such_module_xyz:f", [], "cannot import module 'no_such_module_xyz': ModuleNotFoundError"),
    ("nce_verify_broken:f", [], "cannot import module 'nce_verify_broken': SyntaxError"),
    ("nce_verify_targets:missing", [], "has no attribute 'missing'"),
    ("nce_verify_targets:NOT_CALLABLE", [], "is not callable (it is a int)"),
    ("nce_verify_targets:NeedsArgs", [], "could not be instantiated without arguments"),
    ("nce_verify_targets:raises", [], "raised on every case (2 of 2); first: RuntimeError: "
                                      "not implemented yet"),
    ("nce_verify_targets:python_float", [], "returned a builtins.float"),
    ("nce_verify_targets:wrong_shape", [], "returned the wrong shape on every case"),
    ("nce_verify_targets", [], "must look like module.path:function"),
    ("nce_verify_targets:good", ["--convention", "nope"], "unknown convention 'nope'"),
])
def test_bad_input_exits_2_with_one_line(targets, capsys, target, extra, message):
    rc, out, err = _run(capsys, target, "--as", "info_nce", "--framework", "numpy", *extra)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nce-ref verify: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err


def test_bad_input_with_json(targets, capsys):
    rc, out, err = _run(capsys, f"{targets}:raises", "--as", "info_nce", "--framework", "numpy",
                        "--json")
    assert rc == 2
    assert json.loads(out)["exit_code"] == 2
    assert "raised on every case" in err


def test_unknown_reference_exits_2(targets, capsys):
    rc, _, err = _run(capsys, f"{targets}:good", "--as", "infonce")
    assert rc == 2 and "--as: unknown function 'infonce'" in err


def test_console_entry_point(targets, tmp_path):
    out = subprocess.run([sys.executable, "-m", "nce_ref.cli", "verify", f"{targets}:summed",
                          "--as", "info_nce", "--framework", "numpy", "--dtype", "float64"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "DISAGREES" in out.stdout and out.stderr == ""


def test_installed_peer_under_its_convention(capsys):
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("info_nce", reason="info-nce-pytorch is not installed")
    rc, out, _ = _run(capsys, "info_nce:info_nce", "--as", "info_nce", "--convention",
                      "info_nce_pytorch", "--cases", "all")
    assert rc == 0, out
    assert "under convention 'info_nce_pytorch'" in out
    assert "paired negatives" in out


def test_planted_bug_in_torch_exits_1(capsys):
    pytest.importorskip("torch", reason="torch is not installed")
    rc, out, _ = _run(capsys, "tests.test_verify:capped", "--as", "info_nce", "--cases", "edge",
                      "--dtype", "float64")
    assert rc == 1
    assert "FAIL positive probability below tiny [float64]" in out
    assert "capped at -log(1e-8)" in out


def test_param_maps_a_temperature(targets, capsys):
    rc, out, _ = _run(capsys, f"{targets}:with_beta", "--as", "info_nce", "--framework", "numpy",
                      "--cases", "edge", "--param", "temperature=beta")
    assert rc == 0, out
    assert "`beta` = temperature" in out and "temperature 1e-4" in out
    rc, out, _ = _run(capsys, f"{targets}:with_tau", "--as", "info_nce", "--framework", "numpy",
                      "--cases", "edge")
    assert rc == 0 and "`tau` = temperature (a common alias" in out
    rc, _, err = _run(capsys, f"{targets}:with_beta", "--as", "info_nce", "--param", "beta")
    assert rc == 2 and "--param 'beta' must look like temperature=tau" in err


def test_dropped_temperature_cases_are_listed(targets, capsys):
    rc, out, _ = _run(capsys, f"{targets}:fixed", "--as", "info_nce", "--framework", "numpy",
                      "--cases", "edge", "--convention", "moco", "--show-na")
    assert rc == 0, out
    assert "not tested at their own `temperature`" in out
    assert "temperature 1e4 (not run" in out


def test_accept_a_named_deviation(capsys):
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
    argv = ("nce_ref.testing.conventions:pml_nt_xent", "--as", "nt_xent", "--convention",
            "pytorch_metric_learning", "--cases", "edge")
    rc, out, _ = _run(capsys, *argv)
    assert rc == 1
    rc, out, _ = _run(capsys, *argv, "--accept", "capped")
    assert rc == 0, out
    assert "ACCEPTED (capped)" in out and "accepted" in out.splitlines()[0]


def test_some_cases_raising_exit_2_with_the_table(targets, capsys):
    rc, out, err = _run(capsys, f"{targets}:some_raise", "--as", "info_nce", "--framework", "numpy",
                        "--cases", "all")
    assert rc == 2 and err == ""
    assert "COULD NOT RUN some cases" in out and "ERROR N = 1" in out
    assert "not a disagreement" in out


def test_misspelt_function_suggests(targets, capsys):
    rc, _, err = _run(capsys, f"{targets}:good", "--as", "ntxent")
    assert rc == 2 and "did you mean 'nt_xent'" in err


def test_wrong_framework_is_named(capsys):
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("jax", reason="JAX is not installed")
    rc, _, err = _run(capsys, "tests.test_verify:torch_info_nce", "--as", "info_nce",
                      "--framework", "jax")
    assert rc == 2 and "framework is probably wrong" in err and "looks like torch" in err


def test_lightly_info_nce_says_memory_bank(targets, capsys):
    rc, out, _ = _run(capsys, f"{targets}:good", "--as", "info_nce", "--convention", "lightly",
                      "--framework", "numpy", "--dtype", "float64")
    assert "memory-bank (MoCo) variant" in out
