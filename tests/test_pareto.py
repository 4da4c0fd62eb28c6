"""Two-objective studies end to end on MiniLM cut to 2 blocks: the front, `pareto`, `confirm`,
`plan`, and starting another study from this one's front."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import optuna
import pytest
from conftest import workbench_for, write_study

from autopeft import ConfigError, load_config, run_study
from autopeft.cli.command import main
from autopeft.search.search_space import RATE_LADDER, SearchSpace
from autopeft.search.warm_start import map_to_blocks
from autopeft.storage.results import pareto_front

ALL = ["lora", "ia3", "adapter", "bitfit", "unfreeze", "prompt"]


@pytest.fixture(scope="module")
def front_study(tmp_path_factory, minilm_available) -> tuple[Path, optuna.Study]:
    folder = tmp_path_factory.mktemp("pareto")
    path = write_study(
        folder,
        study={"n_trials": 8, "seed": 1, "objectives": ["accuracy", "trainable_params"]},
        data={"test": "validation.parquet"},
        train={"evals_per_epoch": 2},
        search={"methods": ALL},
    )
    return path, run_study(path, quiet=True)


def test_front_is_optunas_pareto_front(front_study) -> None:
    _, study = front_study
    front = pareto_front(study)
    assert front and [t.user_attrs["trainable_params"] for t in front] == sorted(
        t.user_attrs["trainable_params"] for t in front
    )
    ours = {(t.values[0], t.values[1]) for t in front}
    optunas = {(t.values[0], t.values[1]) for t in study.best_trials}
    assert ours == optunas
    for t in front:
        assert t.values[1] == t.user_attrs["trainable_params"] <= t.user_attrs["budget"]


def test_pareto_command_table_json_csv(front_study, capsys) -> None:
    path, study = front_study
    numbers = [t.number for t in pareto_front(study)]
    assert main(["pareto", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in rows] == numbers and all("accuracy" in r and r["method"] in ALL for r in rows)
    assert main(["pareto", str(path), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["number"]) for r in table] == numbers and float(table[0]["trainable_params"]) > 0
    assert main(["pareto", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["number", "accuracy", "test"] and len(out) == len(numbers) + 2
    assert out[-1].startswith("baseline: majority class 0.")


def test_confirm_records_mean_and_spread_and_resumes(front_study, capsys) -> None:
    path, study = front_study
    front = pareto_front(study)
    assert main(["confirm", str(path), "--seeds", "2", "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(front)
    reloaded = optuna.load_study(study_name="tiny", storage=f"sqlite:///{path.parent / 'tiny.db'}")
    records = {t.number: reloaded.user_attrs[f"confirm:{t.number}"] for t in front}
    for number, r in records.items():
        assert len(r["seeds"]) == len(r["values"]) == len(r["test_values"]) == 2
        assert number + 1 not in r["seeds"]  # new seeds, not the search trial's
        assert r["mean"] == pytest.approx(sum(r["values"]) / 2) and r["std"] >= 0
    assert main(["confirm", str(path), "--seeds", "2", "--quiet"]) == 0  # nothing new to train
    capsys.readouterr()
    again = optuna.load_study(study_name="tiny", storage=f"sqlite:///{path.parent / 'tiny.db'}")
    assert {n: again.user_attrs[f"confirm:{n}"] for n in records} == records
    assert main(["pareto", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["confirmed_seeds"] == 2 and r["confirmed_mean"] == records[r["number"]]["mean"] for r in rows)


def test_confirm_takes_the_best_or_one_trial(front_study, capsys) -> None:
    from autopeft.storage.results import best_trial, is_feasible

    path, study = front_study
    best = best_trial(study)
    off_front = [t for t in study.trials if is_feasible(t) and t.number not in {f.number for f in pareto_front(study)}]
    assert main(["confirm", str(path), "--seeds", "3", "--best", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"trial {best.number}: ") and "over 3 seeds" in out[0]
    if off_front:  # a trial the front does not hold is confirmed when named
        number = off_front[0].number
        assert main(["confirm", str(path), "--seeds", "1", "--trial", str(number), "--quiet"]) == 0
        assert capsys.readouterr().out.startswith(f"trial {number}: ")
    assert main(["confirm", str(path), "--trial", "999", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no complete feasible trial 999" in err[0]


def test_another_study_starts_from_this_front(front_study, tmp_path) -> None:
    path, study = front_study
    front = pareto_front(study)
    deeper = write_study(
        tmp_path,
        study={"name": "deeper", "n_trials": len(front)},
        model={"overrides": {"num_hidden_layers": 3}},
        search={"methods": ALL},
    )
    other = run_study(deeper, quiet=True, start_from=path)
    started = [t for t in other.trials if t.user_attrs.get("started_from") == "tiny"]
    assert len(started) == len(front)
    for source, trial in zip(front, started):
        assert trial.params == map_to_blocks(source.params, 3)
    again = run_study(deeper, n_trials=len(front) + 1, quiet=True, start_from=path)  # not enqueued twice
    assert sum(t.user_attrs.get("started_from") == "tiny" for t in again.trials) == len(front)


def test_map_to_blocks_by_relative_depth() -> None:
    params = {"method": "lora", "lora.alpha": 2, "lora.r[0]": 4, "lora.r[1]": 8, "lora.r[2]": 16}
    assert map_to_blocks(params, 2) == {"method": "lora", "lora.alpha": 2, "lora.r[0]": 4, "lora.r[1]": 16}
    five = map_to_blocks(params, 5)
    assert [five[f"lora.r[{i}]"] for i in range(5)] == [4, 4, 8, 16, 16]
    assert map_to_blocks(params, 1)["lora.r[0]"] == 16  # one block: the top block's value


def test_default_configuration_is_tried_first_only_when_it_fits(tmp_path, minilm_available) -> None:
    def warm(budget: str) -> list[str]:
        path = write_study(tmp_path, budget={"max_trainable": budget}, search={"methods": ["lora", "ia3"]})
        return [p["method"] for p in SearchSpace(workbench_for(load_config(path))).warm_start_params()]

    # LoRA r=8 on query and value of 2 blocks: 2 * 8 * (384 + 384) * 2 + 770 (head) = 25,346 parameters.
    assert warm("25346") == ["lora", "lora", "ia3"]  # the lead method at two rates (the rate ladder)
    assert warm("25345") == ["ia3", "ia3"]  # IA3 leads when LoRA's default does not fit


def test_warm_starts_are_per_method_and_off_for_random_search(tmp_path, minilm_available) -> None:
    def warm(sampler: str, **search) -> list[str]:
        path = write_study(tmp_path, study={"sampler": sampler}, search={"methods": ["lora", "ia3"], **search})
        return [p["method"] for p in SearchSpace(workbench_for(load_config(path))).warm_start_params()]

    assert warm("tpe") == ["lora", "lora", "ia3"]
    assert warm("tpe", ia3={"warm_start": False}) == ["lora", "lora"]  # a method's own table turns its default off
    assert warm("random") == []  # a random search is a baseline: nothing queued unless asked for
    assert warm("random", lora={"warm_start": True}) == ["lora", "lora"]
    assert warm("random", warm_start=True) == ["lora", "lora", "ia3"]


def test_the_lead_methods_default_is_tried_at_each_rate_of_the_ladder_within_its_range(
    tmp_path, minilm_available
) -> None:
    def rates(**lora) -> list[float]:
        path = write_study(tmp_path, search={"methods": ["lora", "ia3"], "lora": lora})
        queued = SearchSpace(workbench_for(load_config(path))).warm_start_params()
        assert [p["method"] for p in queued][-1] == "ia3" and queued[-1]["ia3.learning_rate"] == 3e-3  # one rate
        return [p.get("lora.learning_rate", 0.0) for p in queued if p["method"] == "lora"]

    assert rates() == pytest.approx([3e-3 * m for m in RATE_LADDER])  # LoRA's default rate, and 3x it
    assert rates(learning_rate=[1e-3, 5e-3]) == pytest.approx([3e-3, 5e-3])  # the higher rung clipped to the range
    assert rates(learning_rate=[1e-4, 1e-3]) == pytest.approx([1e-3])  # both clipped to one rate: tried once
    assert rates(learning_rate=1e-3) == [0.0]  # a fixed rate is no parameter: the default is tried once
    with pytest.raises(ConfigError, match=r"search.lora.warm_start: must be true or false"):
        load_config(write_study(tmp_path, search={"methods": ["lora"], "lora": {"warm_start": "no"}}))


def test_plan_shows_blocks_sizes_and_fitting_shares(tmp_path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, budget={"max_trainable": "20k"}, search={"methods": ALL})
    assert main(["plan", str(path), "--format", "json", "--samples", "300"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [b["path"] for b in plan["blocks"]] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert set(plan["blocks"][0]["groups"]) == {"query", "key", "value", "attn_output", "mlp"}
    methods = {m["method"]: m for m in plan["methods"]}
    assert list(methods) == ALL and plan["budget"] == 20_000
    lora = methods["lora"]
    assert lora["smallest"] < 20_000 < lora["largest"] and lora["default"] == 25_346 and not lora["default_fits"]
    assert lora["share_fitting_unshaped"] < 1.0 and lora["share_fitting_sampled"] == 1.0
    assert all(m["smallest"] <= m["largest"] for m in plan["methods"])
    assert lora["learning_rate"] == [1e-4, 1e-2]  # write_study's [train] range, for every method
    assert main(["plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert "2 blocks:" in text and "attention.self.query" in text and "lora" in text and "25.3k!" in text
    assert "1e-04..1e-02" in text


def test_objectives_must_be_the_metric_then_size(tmp_path, capsys) -> None:
    path = write_study(tmp_path, study={"objectives": ["trainable_params", "accuracy"]})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "study.objectives" in err and 'objectives = ["accuracy", "trainable_params"]' in err


def test_changing_objectives_of_an_existing_study_is_refused(front_study, capsys) -> None:
    path, _ = front_study
    text = path.read_text().replace('objectives = ["accuracy", "trainable_params"]', 'objectives = ["accuracy"]')
    single = path.parent / "single.toml"
    single.write_text(text)
    assert main(["best", str(single)]) == 2
    assert "was created with 2 objective(s), the study file asks for 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "s.toml", "--samples", "0"],
        ["confirm", "s.toml", "--seeds", "0"],
        ["run", "s.toml", "--n-trials", "-1"],
    ],
)
def test_counts_must_be_positive(argv, capsys) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith("must be a positive integer")
