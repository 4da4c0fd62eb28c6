"""The subcommands that read or retrain a study's results: ``best``, ``trials``, ``pareto``, ``confirm``,
``refit``, ``export`` and ``report``, each with its arguments beside it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from autopeft.cli.options import (
    Command,
    add_format,
    add_output,
    add_quiet,
    add_storage,
    add_study,
    load_study,
    print_best,
    spread,
)
from autopeft.errors import AutopeftError
from autopeft.storage.backends import mask_url

__all__ = ["COMMANDS"]


def _listing(*formats: str) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a command that lists trials: the study, ``--storage`` and ``--format``."""

    def arguments(parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        add_storage(parser)
        add_format(parser, *formats)

    return arguments


def _best(args: argparse.Namespace) -> int:
    from autopeft.storage.results import refit_record, winner

    _, study, standard = load_study(args)
    best = winner(study, budget=standard.budget)
    if best is None:
        raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run `autopeft run` first")
    if args.format == "json":
        record = {
            "number": best.number,
            "values": best.values,
            "params": best.params,
            "user_attrs": best.user_attrs,
            "refit": refit_record(study, best),
        }
        print(json.dumps(record, indent=2))
    else:
        attrs = study.user_attrs
        print_best(best, attrs.get("metric", "value"), standard, refit_record(study, best, attrs), attrs)
    return 0


def _trials(args: argparse.Namespace) -> int:
    from autopeft.storage.results import format_rows, trial_row

    _, study, standard = load_study(args)
    metric = study.user_attrs.get("metric", "value")
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs  # one read: each is a query
    print(format_rows([trial_row(t, metric, standard, attrs) for t in trials], args.format))
    if args.format == "table" and trials:
        from collections import Counter

        from autopeft.storage.results import outcome, reason

        counts = Counter(outcome(t) for t in trials)
        print(f"\n{len(trials)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.most_common()))
        why = Counter(reason(t) for t in trials if outcome(t) in ("fail", "pruned"))
        for text, n in why.most_common():
            print(f"  {n} × {text}")
        if standard.baseline is not None:
            learned_nothing = sum(standard.at_baseline(t) for t in trials)
            print(f"baseline: {standard.describe_baseline()}; {learned_nothing} trials no better")
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from autopeft.search.study import pareto_front
    from autopeft.storage.results import FRONT_ATTR, confirm_record, format_rows, refit_record, trial_row

    _, study, standard = load_study(args)
    attrs = study.user_attrs  # one read: each is a query
    metric = attrs.get("metric", "value")
    front = attrs.get(FRONT_ATTR)
    raced = {p["trial"]: p for p in front["kept"]} if isinstance(front, dict) else {}
    rows = []
    for t in pareto_front(study, budget=standard.budget):
        row = trial_row(t, metric, standard, attrs)
        del row["state"], row["train_seconds"]
        if t.number in raced:  # a raced front: its paired seeds' figures, and its margin over the next smaller
            point, diff = raced[t.number], raced[t.number].get("difference")
            row |= {"raced_mean": point["mean"], "raced_std": point["std"], "raced_test_mean": point["test_mean"]}
            row["margin_over_smaller"] = diff and diff["mean"]
        confirmed = confirm_record(study, t, attrs)  # a bad record is skipped, with a warning
        if confirmed or args.format != "table":
            row["confirmed_mean"] = confirmed and confirmed["mean"]
            row["confirmed_std"] = confirmed and confirmed["std"]
            row["confirmed_seeds"] = confirmed and len(confirmed["seeds"])
        refit = refit_record(study, t, attrs)
        if refit or args.format != "table":
            row["refit_mean"] = refit and refit["mean"]
            row["refit_std"] = refit and refit["std"]
            row["refit_test_mean"] = refit and refit.get("test_mean")
        rows.append(row)
    if not rows:
        raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run `autopeft run` first")
    print(format_rows(rows, args.format))
    if args.format == "table" and standard.baseline is not None:
        print(f"baseline: {standard.describe_baseline()}")
    return 0


def _which(args: argparse.Namespace, default: str) -> str | int:
    """The trials ``--best`` / ``--trial N`` name, else ``default``."""
    return args.trial if args.trial is not None else "best" if args.best else default


def _retraining(seeds: int | None, chosen: str) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments ``confirm`` and ``refit`` share: which trials (:func:`_which`), how many seeds
    (``seeds``; None: the study's ``[final] seeds``)."""

    def arguments(parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        shown = seeds or "[final] seeds"
        parser.add_argument("--seeds", type=int, default=seeds, help=f"new seeds per configuration (default: {shown})")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--best", action="store_true", help=f"only the best search trial (default: {chosen})")
        group.add_argument("--trial", type=int, metavar="N", help="only trial N")
        add_storage(parser)
        add_quiet(parser)

    return arguments


def _confirm(args: argparse.Namespace) -> int:
    from autopeft.outputs.confirm import confirm_front

    which = _which(args, "pareto")
    _, records = confirm_front(args.study, seeds=args.seeds, storage=args.storage, quiet=args.quiet, which=which)
    for r in records:
        print(f"trial {r['trial']}: {spread(r)}")
    return 0


def _raced(args: argparse.Namespace) -> bool:
    from autopeft.config import load_config
    from autopeft.search.study import races

    return races(load_config(args.study))


def _refit(args: argparse.Namespace) -> int:
    from autopeft.outputs.confirm import refit
    from autopeft.storage.results import winner

    which = _which(args, "auto")
    if which == "auto" and args.seeds is None and _raced(args):  # the race's final rung is its refit
        from autopeft.search.race_loop import describe_decision
        from autopeft.search.study import run_study

        print("\n".join(describe_decision(run_study(args.study, storage=args.storage, quiet=True))))
        again = f"`autopeft refit {args.study} --best` trains the winner again"
        print(f"(a raced study's refit is its final rung; {again})")
        return 0
    study, records = refit(args.study, seeds=args.seeds, storage=args.storage, quiet=args.quiet, which=which)
    for r in records:
        fidelity = r["fidelity"]
        examples = fidelity["max_train_examples"] or "all"
        print(f"trial {r['trial']}: {spread(r)} ({fidelity['epochs']} epochs, {examples} examples)")
    chosen = winner(study)
    if chosen is not None:
        print(f"winner: trial {chosen.number} (best refit mean); `autopeft export {args.study} --best OUT` exports it")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    add_study(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", metavar="OUT", help="export the best trial into folder OUT")
    which.add_argument("--pareto", metavar="OUT", help="export every Pareto trial into OUT/trial-<n>")
    which.add_argument("--trial", nargs=2, metavar=("N", "OUT"), help="export trial N into folder OUT")
    add_storage(parser)
    add_quiet(parser)


def _export(args: argparse.Namespace) -> int:
    from autopeft.outputs.export import export
    from autopeft.progress import Progress

    if args.trial is not None:
        number, out = args.trial
        try:
            which: str | int = int(number)
        except ValueError:
            raise AutopeftError(f"--trial: {number!r} is not a trial number; e.g. --trial 7 out/") from None
    else:
        which, out = ("best", args.best) if args.best is not None else ("pareto", args.pareto)
    records = export(args.study, out, which, storage=args.storage, progress=Progress(quiet=args.quiet))
    metric = records[0]["study"]["metric"]
    for r in records:
        t = r["trial"]
        folder = Path(out) / f"trial-{t['number']}" if which == "pareto" else Path(out)
        source = {"artifact": "kept", "refit": "refit"}.get(r["weights"]["source"], "retrained")
        print(
            f"trial {t['number']}: {r['method']} {t['trainable_params']} params, {metric} "
            f"{t['validation_metric']:.4f} -> {folder} ({source} weights)"
        )
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    add_study(parser)
    add_output(parser, "HTML", "report file to write, e.g. report.html")
    parser.add_argument("--png", metavar="DIR", help="also write each plot as DIR/<name>.png (needs Chromium)")
    parser.add_argument(
        "--plotly-js",
        choices=["inline", "cdn"],
        default="inline",
        help="plotly.js inside the file (default: opens offline, ~5 MB) or from plotly's CDN (small; needs network)",
    )
    add_storage(parser)


def _report(args: argparse.Namespace) -> int:
    from autopeft.outputs.report import write_html, write_pngs

    if not (args.output or args.png):
        raise AutopeftError("report needs -o report.html, --png DIR, or both")
    url, study, standard = load_study(args)
    if args.output:
        print(f"report: {write_html(study, Path(args.output), mask_url(url), standard, args.plotly_js)}")
    if args.png:
        for path in write_pngs(study, Path(args.png), standard):
            print(f"plot: {path}")
    return 0


COMMANDS = (
    Command("best", "show the best trial", _listing("table", "json"), _best),
    Command("trials", "list every trial", _listing("table", "json", "csv"), _trials),
    Command(
        "pareto", "the Pareto front of metric against trainable parameters", _listing("table", "json", "csv"), _pareto
    ),
    Command(
        "confirm",
        "re-train the Pareto configurations (or one trial) with new seeds",
        _retraining(3, "every Pareto trial"),
        _confirm,
    ),
    Command(
        "refit",
        "train the best trials (or the front) at the [final] fidelity with new seeds; keeps their weights",
        _retraining(None, "[final] top, or the front"),
        _refit,
    ),
    Command(
        "export",
        "write trained adapters (peft format where peft implements the method) with provenance",
        _export_arguments,
        _export,
    ),
    Command("report", "write an HTML report with plots (and the plots as PNG images)", _report_arguments, _report),
)
