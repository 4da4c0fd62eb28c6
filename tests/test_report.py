"""`autopeft report`: the HTML report opened in a real headless Chromium (no script errors, no network,
every plot drawn), `--png`, and `autopeft dashboard` serving the study with autopeft's attributes."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import write_study
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from autopeft import load_config, open_study
from autopeft.cli.command import main
from autopeft.outputs.report import FIGURES, build_figures, method_table, outcome_table
from autopeft.storage.results import feasible_trials, pareto_front

BUDGET = 120_000  # every LoRA pattern below fits but [8, 8, 8], the infeasible trial
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        pytest.fail("the report tests need Chromium: apt-get install chromium (.ci/run installs it)")
    return path


def _add(study: optuna.Study, number: int, method: str, metric: float, ranks: list[int], **attrs) -> None:
    per_block = 1536 if method == "bitfit" else 6144
    n = 770 + sum(r * per_block if method == "lora" else per_block * r for r in ranks)
    params: dict = {"method": method, f"{method}.learning_rate": 10 ** (-4 + number % 5 * 0.5)}
    dists: dict = {
        "method": CategoricalDistribution(["lora", "bitfit"]),
        f"{method}.learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
    }
    choices = [0, 2, 4, 8] if method == "lora" else [0, 1]
    for i, r in enumerate(ranks):
        key = f"{method}.{'r' if method == 'lora' else 'block'}[{i}]"
        params[key], dists[key] = r, CategoricalDistribution(choices)
    config = {"ranks": ranks, "alpha": 2} if method == "lora" else {"blocks": ranks}
    user_attrs = {
        "method": method,
        "config": json.dumps(config),
        "trainable_params": n,
        "budget": BUDGET,
        "learning_rate": params[f"{method}.learning_rate"],
        "block_params": [r * per_block for r in ranks],
        "train_seconds": 1.0 + number / 10,
        **attrs,
    }
    state = attrs.pop("state", TrialState.COMPLETE)
    infeasible = attrs.get("infeasible", False)
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=[metric, float(n)] if state == TrialState.COMPLETE else None,
            params=params,
            distributions=dists,
            user_attrs={k: v for k, v in user_attrs.items() if k != "state"},
            system_attrs={"constraints": [float(n - BUDGET) if infeasible else -1.0]},
        )
    )


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, optuna.Study]:
    """A two-objective study of 3 blocks without training: 14 LoRA and 6 BitFit trials, one pruned,
    one infeasible, one failed."""
    path = write_study(tmp_path, study={"name": "syn", "objectives": ["accuracy", "trainable_params"]})
    study = open_study(load_config(path), directions=["maximize", "minimize"])
    study.set_user_attr("metric", "accuracy")
    study.set_user_attr("budget", BUDGET)
    patterns = [[0, 2, 4], [8, 0, 2], [4, 4, 4], [2, 8, 0], [0, 0, 8], [8, 8, 0], [2, 2, 2]]
    for k in range(14):
        ranks = patterns[k % len(patterns)]
        _add(study, k, "lora", 0.6 + 0.01 * sum(ranks) + 0.002 * k, ranks)
    for k in range(6):
        blocks = [k % 2, (k // 2) % 2, 1]
        _add(study, 14 + k, "bitfit", 0.55 + 0.03 * sum(blocks), blocks)
    _add(
        study,
        20,
        "lora",
        0.5,
        [2, 0, 0],
        state=TrialState.PRUNED,
        pruned_at_step=4,
        steps_saved=12,
        intermediate={"4": 0.52},
    )
    _add(study, 21, "lora", 0.0, [8, 8, 8], infeasible=True)
    _add(study, 22, "bitfit", 0.0, [1, 1, 1], state=TrialState.FAIL, error="ValueError: loss is NaN")
    return path, study


def test_report_opens_in_headless_chromium_with_every_plot_drawn(synthetic, tmp_path, chromium) -> None:
    from playwright.sync_api import sync_playwright

    path, study = synthetic
    report = tmp_path / "report.html"
    assert main(["report", str(path), "-o", str(report)]) == 0

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.route(
            "**/*",
            lambda r: (
                (requests.append(r.request.url), r.abort()) if not r.request.url.startswith("file:") else r.continue_()
            ),
        )
        page.goto(report.as_uri())
        for name in FIGURES:
            page.wait_for_selector(f"#fig-{name} .main-svg", timeout=20_000)
        feasible, front = feasible_trials(study), len(pareto_front(study))
        # Trials at the same size and metric share one marker (BitFit's [0,0,1] twice...), labelled ×2.
        points = {(t.user_attrs["method"], t.user_attrs["trainable_params"], round(t.values[0], 6)) for t in feasible}
        assert len(points) < len(feasible)
        assert page.locator("#fig-pareto .scatterlayer .point").count() == len(points) + front
        assert page.locator("#fig-pareto .textpoint", has_text="×2").count() >= 1
        assert page.locator("#fig-history .scatterlayer .point").count() == len(feasible) + 1  # and the pruned one
        assert page.locator("#fig-importance .barlayer .point").count() >= 4  # lora's parameters and bitfit's
        assert page.locator("#fig-blocks .hm image").count() == 1
        heat_rows = page.locator("#fig-blocks .yaxislayer-above .ytick").count()
        assert heat_rows == front
        rows = page.locator("table").first.locator("tbody tr")
        assert rows.count() == 2 and "lora" in rows.first.inner_text()
        outcomes = page.locator("table").nth(1).inner_text()
        assert "pruned at step 4" in outcomes and "loss is NaN" in outcomes and "not trained" in outcomes
        browser.close()
    assert errors == []
    assert requests == []  # nothing fetched from the network: the report views offline


def test_png_writes_every_plot_as_an_image(synthetic, tmp_path, chromium) -> None:
    path, _ = synthetic
    assert main(["report", str(path), "--png", str(tmp_path / "png")]) == 0
    for name in FIGURES:
        data = (tmp_path / "png" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1000, 460)


def test_tables_count_outcomes_and_reasons(synthetic) -> None:
    _, study = synthetic
    methods = {r["method"]: r for r in method_table(study)}
    assert methods["lora"]["trials"] == 16 and methods["lora"]["pruned"] == 1 and methods["lora"]["infeasible"] == 1
    assert methods["bitfit"]["failed"] == 1 and methods["bitfit"]["complete"] == 6
    best_lora = max((t for t in feasible_trials(study) if t.user_attrs["method"] == "lora"), key=lambda t: t.values[0])
    assert methods["lora"]["best trial"] == best_lora.number
    reasons = {r["trial"]: r["reason"] for r in outcome_table(study)}
    assert set(reasons) == {20, 21, 22}


def test_report_of_a_real_study(trained_study, tmp_path) -> None:
    path, study, _ = trained_study
    figures = build_figures(study)
    heat = figures["blocks"].data[0]
    assert [list(row) for row in heat.z] == [t.user_attrs["block_params"] for t in pareto_front(study)]
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1_000_000  # plotly.js is inlined
    assert main(["report", str(path), "-o", str(tmp_path / "cdn.html"), "--plotly-js", "cdn"]) == 0
    small = (tmp_path / "cdn.html").read_text()
    assert len(small.encode()) < 500_000 and '<script src="https://cdn.plot.ly/plotly-' in small
    assert small.count("<div class='plot'") == (tmp_path / "r.html").read_text().count("<div class='plot'")


@pytest.mark.parametrize(
    "tampered",
    [
        {"trainable_params": "lots"},
        {"method": None, "config": [1]},
        {"learning_rate": "fast", "block_params": "x"},
        {"trainable_params": 1.5, "method": ["lora"]},
    ],
    ids=["size", "method-and-config", "rate-and-blocks", "float-size-list-method"],
)
def test_readers_of_a_study_with_a_tampered_trial_record_draw_what_they_can(synthetic, tmp_path, capsys, tampered):
    path, study = synthetic
    _add(study, 23, "lora", 0.99, [8, 8, 8])
    # As an old release or a hand edit might leave it: Optuna cannot change a finished trial, SQL can.
    with sqlite3.connect(load_config(path).storage.removeprefix("sqlite:///")) as db:
        for key, value in tampered.items():
            db.execute(
                "UPDATE trial_user_attributes SET value_json = ? WHERE key = ? AND trial_id = ?",
                (json.dumps(value), key, study.trials[23]._trial_id),
            )
    for command in (["best"], ["trials"], ["pareto"], ["pareto", "--format", "csv"], ["report", "-o", "r.html"]):
        args = [command[0], str(path), *command[1:]]
        if command[0] == "report":
            args[-1] = str(tmp_path / "r.html")
        code = main(args)
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err, (command, err)
    if "trainable_params" in tampered:  # a size that is not a count is never the best or on the front
        assert 23 not in {t.number for t in pareto_front(study)}


def test_report_needs_an_output(synthetic, capsys) -> None:
    path, _ = synthetic
    assert main(["report", str(path)]) == 2
    assert "-o report.html" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_dashboard_serves_the_study_with_autopeft_attributes(trained_study) -> None:
    path, study, _ = trained_study
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autopeft", "dashboard", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                summaries = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 90 s"
                time.sleep(0.5)
        (summary,) = [s for s in summaries if s["study_name"] == "trained"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0")
        assert detail["objective_names"] == ["accuracy", "trainable_params"]
        assert len(detail["trials"]) == len(study.trials)
        for trial in detail["trials"]:
            attrs = {a["key"] for a in trial["user_attrs"]}
            assert {"method", "config", "trainable_params", "budget", "block_params"} <= attrs
            assert trial["artifacts"], "kept weights are listed as the trial's artifacts"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dashboard_without_its_extra_is_a_one_line_error(trained_study, monkeypatch, capsys) -> None:
    path, _, _ = trained_study
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    assert main(["dashboard", str(path)]) == 2
    assert "pip install 'autopeft[dashboard]'" in capsys.readouterr().err
