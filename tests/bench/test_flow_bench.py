"""`unmask bench --flow` on a tiny continuous model beside the bundled text models: one report with the three
likelihood figures on the same windows and every sampled setting."""
from __future__ import annotations

import json

import pytest

from unmask.bench.flow import ratio_with_stderr, run_flow_bench, sweep


def test_the_ratio_error_adds_the_two_relative_errors_in_quadrature() -> None:
    ratio, se = ratio_with_stderr({"loss": 2.0, "loss_stderr": 0.06}, {"loss": 1.0, "loss_stderr": 0.04})
    assert ratio == 2.0 and se == pytest.approx(2.0 * 0.05)  # relative errors 0.03 and 0.04: hypot 0.05
    assert ratio_with_stderr({"loss": 2.0}, {"loss": 1.0, "loss_stderr": 0.04}) == (2.0, None)  # AR: exact


def test_the_flow_bench_reports_every_model_and_setting(trained_flow, tmp_path) -> None:
    report = run_flow_bench(quick=True, out_dir=tmp_path, progress=False, models={"flow": str(trained_flow[0])})
    kinds = {role: res["loss_kind"] for role, res in report["likelihood"].items()}
    assert kinds == {"ar": "nll", "mdm": "elbo", "flow": "ode-bound"}
    assert len({res["n"] for res in report["likelihood"].values()}) == 1  # the same windows for all
    bounds = [report["likelihood"][role] for role in ("mdm", "flow")]
    assert all(res["draws"] == 2 and res["loss_stderr"] > 0 for res in bounds)  # Monte Carlo: a standard error
    assert [s["key"] for s in report["samples"]] == [key for key, _, _ in sweep(True)]
    for s in report["samples"]:
        assert s["n"] == 2 and s["nfe_mean"] == s["options"].get("steps", s["nfe_mean"])
    md = (tmp_path / "flow.md").read_text()
    assert "Flow bound / MDM ELBO" in md and all(s["key"] in md for s in report["samples"])
    assert json.loads((tmp_path / "flow.json").read_text())["models"]["flow"] == str(trained_flow[0])
    assert (tmp_path / "flow.png").stat().st_size > 0
