"""``nce-ref bounds``, through ``nce_ref.cli.main``, on tiny configurations."""

from __future__ import annotations

import json
import math
import sys

import pytest

from nce_ref.cli import main

TINY = ["bounds", "--steps", "25", "--dim", "3", "--mi", "0.5", "4", "-n", "8", "--seed", "3"]


def _run_json(capsys, extra=()):
    rc = main([*TINY, "--json", "--no-plot", "--no-progress", *extra])
    out = capsys.readouterr()
    return rc, json.loads(out.out), out.err


def test_json_output_holds_every_estimator_and_the_checks(capsys):
    rc, res, err = _run_json(capsys)
    assert rc == 0 and err == ""
    keys = {e["key"] for e in res["estimators"]}
    assert keys == {"infonce", "nwj", "js", "tuba", "dv", "mine", "interpolated", "smile", "loo_upper"}
    (r,) = res["results"]
    assert r["batch_size"] == 8 and r["log_n"] == pytest.approx(math.log(8))
    assert [lv["true_mi"] for lv in r["levels"]] == [0.5, 4.0]
    for lv in r["levels"]:
        st = lv["estimators"]
        assert st["infonce"]["max"] <= math.log(8) + 1e-12  # the theorem, on every batch
        assert st["interpolated"]["max"] <= r["interpolated_ceiling"] + 1e-12
        assert st["js"]["mean"] == pytest.approx(st["nwj"]["mean"], rel=1e-10)  # NWJ at 1 + f*
        assert st["mine"]["mean"] == st["dv"]["mean"]
        assert all(v["std"] >= 0 for v in st.values())
    # I = 4 nats with log 8 = 2.08: InfoNCE saturates below log N, the others do not
    assert r["levels"][1]["estimators"]["infonce"]["mean"] < math.log(8)
    assert r["levels"][1]["estimators"]["loo_upper"]["mean"] > 4.0
    assert all(c["ok"] for c in res["checks"])
    assert res["figure"] is None


def test_seeded_runs_are_reproducible_and_the_seed_matters(capsys):
    _, a, _ = _run_json(capsys)
    _, b, _ = _run_json(capsys)
    _, c, _ = _run_json(capsys, ["--seed", "4"])
    pick = lambda r: [lv["estimators"]["dv"]["mean"] for lv in r["results"][0]["levels"]]  # noqa: E731
    assert pick(a) == pick(b)
    assert pick(a) != pick(c)


def test_table_names_each_estimator_log_n_and_the_checks(capsys):
    rc = main([*TINY, "--no-plot", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    for label in ("InfoNCE (log N - L)", "NWJ", "DV", "MINE", "JS", "TUBA", "I_alpha", "SMILE",
                  "LOO upper bound", "min(I, log N)"):
        assert label in out
    assert "log N = 2.0794" in out
    assert "[ok] N = 8: InfoNCE <= log N on every batch" in out
    assert "FAIL" not in out


def test_several_batch_sizes(capsys):
    rc, res, _ = _run_json(capsys, ["-n", "4", "16", "--mi", "1"])
    assert rc == 0
    assert [r["batch_size"] for r in res["results"]] == [4, 16]
    assert [r["log_n"] for r in res["results"]] == pytest.approx([math.log(4), math.log(16)])


def test_writes_a_png_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the `plot` extra) not installed")
    path = tmp_path / "bounds.png"
    rc = main([*TINY, "--no-progress", "-o", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"figure: {path}" in out
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_without_matplotlib_says_so_and_still_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = tmp_path / "bounds.png"
    rc = main([*TINY, "--no-progress", "-o", str(path)])
    out = capsys.readouterr()
    assert rc == 0
    assert "matplotlib is not installed" in out.err and "nce-ref[plot]" in out.err
    assert "InfoNCE (log N - L)" in out.out
    assert not path.exists()


def test_progress_bar_goes_to_stderr_only_when_asked(capsys):
    main([*TINY, "--no-plot", "--progress", "--json"])
    out = capsys.readouterr()
    assert "\r[" in out.err and "50/50 batches" in out.err
    json.loads(out.out)  # stdout stays machine-readable
    main([*TINY, "--no-plot", "--no-progress"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args,match", [
    (["-n", "1"], "batch-size"),
    (["--steps", "0"], "steps"),
    (["--alpha", "0"], "alpha"),
    (["--clip", "-1"], "clip"),
    (["--mi", "-1"], "mi"),
])
def test_bad_options_exit_2_with_a_message(capsys, args, match):
    rc = main([*TINY, "--no-plot", "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2 and match in err
