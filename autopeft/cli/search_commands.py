"""The subcommands that search: ``run``, ``worker``, ``plan`` and ``init``, each with its arguments beside it."""

from __future__ import annotations

import argparse
import json
import sys

from autopeft.cli.options import Command, add_format, add_output, add_quiet, add_storage, add_study, print_best
from autopeft.errors import AutopeftError
from autopeft.storage.results import Standard

__all__ = ["COMMANDS"]


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    add_study(parser)
    parser.add_argument("--n-trials", type=int, help="finish this many trials instead of [study] n_trials")
    add_storage(parser)
    add_quiet(parser)
    parser.add_argument(
        "--from",
        dest="start_from",
        metavar="OTHER_STUDY",
        help="study file of another study whose Pareto configurations are tried first",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="local worker processes sharing the study (cores split between them)"
    )


def _run(args: argparse.Namespace) -> int:
    from autopeft.search.race_loop import describe_decision, describe_front
    from autopeft.search.study import best_trial, pareto_front, run_study
    from autopeft.search.workers import run_workers

    common = {"n_trials": args.n_trials, "storage": args.storage, "quiet": args.quiet, "start_from": args.start_from}
    study = run_workers(args.study, args.workers, **common) if args.workers > 1 else run_study(args.study, **common)
    decided = describe_decision(study) or describe_front(study)
    if decided:  # a raced study: its recommendation (or its front), with the evidence
        if args.quiet or args.workers > 1:  # otherwise the race's own progress just said it
            print("\n".join(decided))
        see = f"`autopeft trials {args.study}` (every training, by rung and seed)"
        if len(study.directions) > 1:
            see = f"`autopeft pareto {args.study}` (the surviving front)"
        print(f"next: {see}, `autopeft export {args.study} --best OUT`, `autopeft report {args.study} -o report.html`")
        return 0
    best = best_trial(study)
    if best is not None:
        print_best(best, study.user_attrs.get("metric", "value"), Standard.of(study), attrs=study.user_attrs)
    if len(study.directions) > 1:
        print(f"Pareto front: {len(pareto_front(study))} trials; see `autopeft pareto {args.study}`")
    if best is not None:
        print(
            f"next: `autopeft refit {args.study}` (the best trials again with new seeds), "
            f"`autopeft export {args.study} --best OUT`, `autopeft report {args.study} -o report.html`"
        )
    return 0


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    add_study(parser)
    add_storage(parser)
    parser.add_argument("--n-trials", type=int, help="finish this many trials instead of [study] n_trials")
    add_quiet(parser)
    parser.add_argument("--label", default="", help="prefix of this worker's progress lines")


def _worker(args: argparse.Namespace) -> int:
    import os
    import socket
    import zlib

    from autopeft.search.study import run_study
    from autopeft.storage.results import finished_trials

    # Each worker samples with its own seed (run_study derives it from a label), or workers would try
    # the same configurations: an unlabelled worker is known by its host and process.
    worker_seed = None if args.label else zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    study = run_study(
        args.study,
        n_trials=args.n_trials,
        storage=args.storage,
        quiet=args.quiet,
        label=args.label,
        worker_seed=worker_seed,
    )
    if not args.quiet:
        print(f"worker done: study {study.study_name!r} has {len(finished_trials(study))} finished trials")
    return 0


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    add_study(parser)
    parser.add_argument("--samples", type=int, default=1000, help="random samples per method for the shares")
    add_format(parser, "table", "json")


def _plan(args: argparse.Namespace) -> int:
    from autopeft.search.plan import format_plan, make_plan
    from autopeft.search.study import resolve

    plan = make_plan(resolve(args.study), samples=args.samples)
    print(json.dumps(plan, indent=2) if args.format == "json" else format_plan(plan))
    if not any(m["enabled"] for m in plan["methods"]):
        raise AutopeftError(plan["no_fit"])
    return 0


def _init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a hub model name or a local folder")
    parser.add_argument("--train", required=True, help="csv/json/jsonl/parquet file, or hub name[:split]")
    parser.add_argument("--validation", required=True, help="as --train")
    parser.add_argument("--test", help="as --train (optional)")
    parser.add_argument("--text", help="the text column (default: the string column with the longest values)")
    parser.add_argument("--label", help="the label column (default: one named like a label, or with few values)")
    parser.add_argument("--budget", default="0.5%", help="max trainable parameters: a share or a count")
    add_output(parser, "TOML", "the study file to write (never overwritten)", "--out", default="study.toml")
    parser.add_argument("--yes", action="store_true", help="take every guess without asking, even on a terminal")


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autopeft.cli.init import write_study_file

    def ask(question: str, default: str) -> str:
        answer = input(f"{question} [{default}]: ").strip()
        return answer or default

    interactive = sys.stdin.isatty() and not args.yes
    out = write_study_file(
        Path(args.output),
        model=args.model,
        train=args.train,
        validation=args.validation,
        test=args.test,
        text=args.text,
        label=args.label,
        budget=args.budget,
        ask=ask if interactive else None,
    )
    print(f"wrote {out}; next: `autopeft plan {out}`, then `autopeft run {out}`")
    return 0


COMMANDS = (
    Command("run", "run or resume the search a study file describes", _run_arguments, _run),
    Command(
        "worker",
        "join a study as one more worker (any machine that reaches its storage)",
        _worker_arguments,
        _worker,
    ),
    Command(
        "plan", "show blocks, method sizes and how much of the space fits, without training", _plan_arguments, _plan
    ),
    Command("init", "write a commented study file from a model and a data file", _init_arguments, _init),
)
