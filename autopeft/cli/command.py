"""The ``autopeft`` command. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopeft.errors import AutopeftError
from autopeft.progress import quiet_libraries
from autopeft.storage.backends import STORAGE_ENV, mask_url
from autopeft.storage.results import Standard

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from autopeft.config import StudyConfig

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from autopeft.search.study import best_trial, pareto_front, run_study
    from autopeft.search.workers import run_workers

    common = {"n_trials": args.n_trials, "storage": args.storage, "quiet": args.quiet, "start_from": args.start_from}
    study = run_workers(args.study, args.workers, **common) if args.workers > 1 else run_study(args.study, **common)
    best = best_trial(study)
    if best is not None:
        _print_best(best, study.user_attrs.get("metric", "value"), Standard.of(study))
    if len(study.directions) > 1:
        print(f"Pareto front: {len(pareto_front(study))} trials; see `autopeft pareto {args.study}`")
    if best is not None:
        print(
            f"next: `autopeft refit {args.study}` (the best trials again with new seeds), "
            f"`autopeft export {args.study} --best OUT`, `autopeft report {args.study} -o report.html`"
        )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
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


def _print_best(best: FrozenTrial, metric: str, standard: Standard, refit: dict[str, Any] | None = None) -> None:
    attrs = best.user_attrs
    assert best.values is not None
    print(
        f"best trial {best.number}: {metric} {best.values[0]:.4f}"
        + (f" (test {attrs['test_metric']:.4f})" if "test_metric" in attrs else "")
        + (f"; {standard.describe_baseline()} without learning" if standard.baseline is not None else "")
    )
    if refit is not None:
        print(f"  refit: {_spread(refit)}; chosen by the refit mean on validation")
    print(
        f"  method {attrs.get('method')}  trainable {attrs.get('trainable_params')} "
        f"({100 * attrs.get('trainable_share', 0):.3f}%)  learning rate {attrs.get('learning_rate', 0):.2e}"
    )
    print(f"  config {attrs.get('config')}")
    if standard.at_baseline(best):
        print(f"  warning: no better than the {standard.baseline_name} baseline: it learned nothing from the inputs")


def _open(args: argparse.Namespace, read_only: bool = True) -> tuple[StudyConfig, str, optuna.Study]:
    """(study file, storage URL, study) of a command's ``study`` and ``--storage`` arguments; an SQLite
    study is opened read-only unless ``read_only`` is False."""
    from autopeft.config import load_config
    from autopeft.search.study import open_study

    config = load_config(args.study)
    url = args.storage or config.storage
    return config, url, open_study(config, url, create=False, read_only=read_only)


def _load(args: argparse.Namespace) -> tuple[str, optuna.Study, Standard]:
    """(storage URL, study, the standard its trials are judged by: the study file's budget as it is now)."""
    from autopeft.search.study import file_budget

    config, url, study = _open(args)
    return url, study, Standard.of(study, file_budget(config, study))


def _spread(record: dict[str, Any]) -> str:
    """``0.7512 ± 0.0061 over 3 seeds; test 0.7790 ± 0.0048`` of a confirm or refit record."""
    test = f"; test {record['test_mean']:.4f} ± {record['test_std']:.4f}" if "test_mean" in record else ""
    return f"{record['mean']:.4f} ± {record['std']:.4f} over {len(record['seeds'])} seeds{test}"


def _cmd_best(args: argparse.Namespace) -> int:
    from autopeft.storage.results import refit_record, winner

    _, study, standard = _load(args)
    best = winner(study, budget=standard.budget)
    if best is None:
        raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run `autopeft run` first")
    if args.format == "json":
        print(
            json.dumps(
                {
                    "number": best.number,
                    "values": best.values,
                    "params": best.params,
                    "user_attrs": best.user_attrs,
                    "refit": refit_record(study, best),
                },
                indent=2,
            )
        )
    else:
        _print_best(best, study.user_attrs.get("metric", "value"), standard, refit_record(study, best))
    return 0


def _cmd_trials(args: argparse.Namespace) -> int:
    from autopeft.storage.results import format_rows, trial_row

    _, study, standard = _load(args)
    metric = study.user_attrs.get("metric", "value")
    trials = study.get_trials(deepcopy=False)
    print(format_rows([trial_row(t, metric, standard) for t in trials], args.format))
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


def _cmd_pareto(args: argparse.Namespace) -> int:
    from autopeft.search.study import pareto_front
    from autopeft.storage.results import CONFIRM_PREFIX, REFIT_PREFIX, format_rows, trial_row

    _, study, standard = _load(args)
    attrs = study.user_attrs  # one read: each is a query
    metric = attrs.get("metric", "value")
    rows = []
    for t in pareto_front(study, budget=standard.budget):
        row = trial_row(t, metric, standard)
        del row["state"], row["train_seconds"]
        confirmed = attrs.get(f"{CONFIRM_PREFIX}{t.number}")
        if confirmed or args.format != "table":
            row["confirmed_mean"] = confirmed and confirmed["mean"]
            row["confirmed_std"] = confirmed and confirmed["std"]
            row["confirmed_seeds"] = confirmed and len(confirmed["seeds"])
        refit = attrs.get(f"{REFIT_PREFIX}{t.number}")
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


def _cmd_plan(args: argparse.Namespace) -> int:
    from autopeft.search.plan import format_plan, make_plan
    from autopeft.search.study import resolve

    plan = make_plan(resolve(args.study), samples=args.samples)
    print(json.dumps(plan, indent=2) if args.format == "json" else format_plan(plan))
    if not any(m["enabled"] for m in plan["methods"]):
        raise AutopeftError(plan["no_fit"])
    return 0


def _which(args: argparse.Namespace, default: str) -> str | int:
    """The trials ``--best`` / ``--trial N`` name (see :func:`_trial_choice`), else ``default``."""
    return args.trial if args.trial is not None else "best" if args.best else default


def _retraining(parser: argparse.ArgumentParser, seeds: int | None, chosen: str, func: Any) -> None:
    """The arguments ``confirm`` and ``refit`` share: which trials (:func:`_which`), how many seeds
    (``seeds``; None: the study's ``[final] seeds``)."""
    parser.add_argument("study", help=_STUDY_HELP)
    shown = seeds or "[final] seeds"
    parser.add_argument("--seeds", type=int, default=seeds, help=f"new seeds per configuration (default: {shown})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--best", action="store_true", help=f"only the best search trial (default: {chosen})")
    group.add_argument("--trial", type=int, metavar="N", help="only trial N")
    _storage_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=func)


def _cmd_confirm(args: argparse.Namespace) -> int:
    from autopeft.outputs.confirm import confirm_front

    which = _which(args, "pareto")
    _, records = confirm_front(args.study, seeds=args.seeds, storage=args.storage, quiet=args.quiet, which=which)
    for r in records:
        print(f"trial {r['trial']}: {_spread(r)}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autopeft.cli.init import write_study_file

    def ask(question: str, default: str) -> str:
        answer = input(f"{question} [{default}]: ").strip()
        return answer or default

    interactive = sys.stdin.isatty() and not args.yes
    out = write_study_file(
        Path(args.out),
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


def _cmd_refit(args: argparse.Namespace) -> int:
    from autopeft.outputs.confirm import refit
    from autopeft.storage.results import winner

    which = _which(args, "auto")
    study, records = refit(args.study, seeds=args.seeds, storage=args.storage, quiet=args.quiet, which=which)
    for r in records:
        fidelity = r["fidelity"]
        examples = fidelity["max_train_examples"] or "all"
        print(f"trial {r['trial']}: {_spread(r)} ({fidelity['epochs']} epochs, {examples} examples)")
    chosen = winner(study)
    if chosen is not None:
        print(f"winner: trial {chosen.number} (best refit mean); `autopeft export {args.study} --best OUT` exports it")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
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


def _cmd_report(args: argparse.Namespace) -> int:
    from autopeft.outputs.report import write_html, write_pngs

    url, study, standard = _load(args)
    if args.output:
        print(f"report: {write_html(study, Path(args.output), mask_url(url), standard, args.plotly_js)}")
    if args.png:
        for path in write_pngs(study, Path(args.png), standard):
            print(f"plot: {path}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from autopeft.search.study import name_objectives
    from autopeft.storage.artifacts import artifact_store
    from autopeft.storage.backends import open_storage

    try:
        import optuna_dashboard
    except ImportError:
        raise AutopeftError("dashboard: optuna-dashboard is not installed; pip install 'autopeft[dashboard]'") from None
    config, url, study = _open(args, read_only=False)
    if study.metric_names is None:  # studies made before autopeft named its objectives
        name_objectives(study, config)
    store = artifact_store(config, create=False)
    print(
        f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/ for {mask_url(url)}; trial attributes "
        "(method, config, trainable_params...) are under each trial; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    storage = open_storage(url, config.study.heartbeat_seconds)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return 0


def _cmd_serve_storage(args: argparse.Namespace) -> int:
    import optuna

    from autopeft.config import load_config
    from autopeft.storage.backends import mask_url, open_storage

    config = load_config(args.study)
    url = args.storage or config.storage
    if url.startswith("grpc:"):
        raise AutopeftError(
            "serve-storage: the study's storage is itself a gRPC proxy; give the database with --storage"
        )
    storage = open_storage(url, config.study.heartbeat_seconds)
    try:
        from optuna.storages import run_grpc_proxy_server
    except ImportError:
        raise AutopeftError("serve-storage: needs grpcio; pip install 'autopeft[grpc]'") from None
    print(
        f"gRPC storage proxy for {mask_url(url)} on {args.host}:{args.port}; workers use "
        f"--storage grpc://{args.host}:{args.port}; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        # get_storage puts Optuna's in-process trial cache in front of an RDB storage: without it every
        # client's read is a full query of the study (5.5 s a trial at trial 1,000, benchmarks/README.md).
        run_grpc_proxy_server(optuna.storages.get_storage(storage), host=args.host, port=args.port)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the way a proxy is meant to stop, nothing to resume
        print("autopeft: gRPC storage proxy stopped", file=sys.stderr)
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from autopeft.registry import get_plugin_manager, registered_methods, registered_tasks

    pm = get_plugin_manager()
    found: list[tuple[str, str, Any, object]] = [
        ("method", n, i, i.method) for n, i in sorted(registered_methods(pm).items())
    ]
    found += [("task", n, i, i.task) for n, i in sorted(registered_tasks(pm).items())]
    rows = [
        {
            "kind": kind,
            "name": name,
            "plugin": info.plugin,
            "distribution": info.distribution,
            "version": info.version,
            "description": ((type(obj).__doc__ or "").strip().splitlines() or [""])[0],
        }
        for kind, name, info, obj in found
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for kind in ("method", "task"):
        print(f"{kind}s:")
        for r in (r for r in rows if r["kind"] == kind):
            print(f"{r['name']:<24} {r['distribution']} {r['version']:<8} {r['description']}")
    return 0


_STUDY_HELP = "path of the study file (TOML)"
_STORAGE_HELP = (
    "storage URL instead of [study] storage, e.g. postgresql://user@host/db; default: $AUTOPEFT_STORAGE if set, "
    "which keeps a password off the command line (visible to every user through ps)"
)


def _storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or None, help=_STORAGE_HELP)


def _version() -> str:
    """``autopeft 0.1.0``, and the versions a trial's result depends on are in its ``versions`` record."""
    from autopeft._version import __version__

    return f"autopeft {__version__}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopeft", description="Search PEFT configurations under a parameter budget."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume the search a study file describes")
    run.add_argument("study", help=_STUDY_HELP)
    run.add_argument("--n-trials", type=int, help="finish this many trials instead of [study] n_trials")
    _storage_option(run)
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument(
        "--from",
        dest="start_from",
        metavar="OTHER_STUDY",
        help="study file of another study whose Pareto configurations are tried first",
    )
    run.add_argument(
        "--workers", type=int, default=1, help="local worker processes sharing the study (cores split between them)"
    )
    run.set_defaults(func=_cmd_run)

    worker = sub.add_parser("worker", help="join a study as one more worker (any machine that reaches its storage)")
    worker.add_argument("study", help=_STUDY_HELP)
    _storage_option(worker)
    worker.add_argument("--n-trials", type=int, help="finish this many trials instead of [study] n_trials")
    worker.add_argument("--quiet", action="store_true", help="no progress output")
    worker.add_argument("--label", default="", help="prefix of this worker's progress lines")
    worker.set_defaults(func=_cmd_worker)

    for name, func, text, formats in (
        ("best", _cmd_best, "show the best trial", ("table", "json")),
        ("trials", _cmd_trials, "list every trial", ("table", "json", "csv")),
        ("pareto", _cmd_pareto, "the Pareto front of metric against trainable parameters", ("table", "json", "csv")),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("study", help=_STUDY_HELP)
        _storage_option(p)
        p.add_argument("--format", choices=formats, default="table")
        p.set_defaults(func=func)

    plan = sub.add_parser("plan", help="show blocks, method sizes and how much of the space fits, without training")
    plan.add_argument("study", help=_STUDY_HELP)
    plan.add_argument("--samples", type=int, default=1000, help="random samples per method for the shares")
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.set_defaults(func=_cmd_plan)

    confirm = sub.add_parser("confirm", help="re-train the Pareto configurations (or one trial) with new seeds")
    _retraining(confirm, 3, "every Pareto trial", _cmd_confirm)

    init = sub.add_parser("init", help="write a commented study file from a model and a data file")
    init.add_argument("--model", required=True, help="a hub model name or a local folder")
    init.add_argument("--train", required=True, help="csv/json/jsonl/parquet file, or hub name[:split]")
    init.add_argument("--validation", required=True, help="as --train")
    init.add_argument("--test", help="as --train (optional)")
    init.add_argument("--text", help="the text column (default: the string column with the longest values)")
    init.add_argument("--label", help="the label column (default: one named like a label, or with few values)")
    init.add_argument("--budget", default="0.5%", help="max trainable parameters: a share or a count")
    init.add_argument("--out", default="study.toml", help="the study file to write (never overwritten)")
    init.add_argument("--yes", action="store_true", help="take every guess without asking, even on a terminal")
    init.set_defaults(func=_cmd_init)

    refit_cmd = sub.add_parser(
        "refit", help="train the best trials (or the front) at the [final] fidelity with new seeds; keeps their weights"
    )
    _retraining(refit_cmd, None, "[final] top, or the front", _cmd_refit)

    export = sub.add_parser(
        "export", help="write trained adapters (peft format where peft implements the method) with provenance"
    )
    export.add_argument("study", help=_STUDY_HELP)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", metavar="OUT", help="export the best trial into folder OUT")
    which.add_argument("--pareto", metavar="OUT", help="export every Pareto trial into OUT/trial-<n>")
    which.add_argument("--trial", nargs=2, metavar=("N", "OUT"), help="export trial N into folder OUT")
    _storage_option(export)
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(func=_cmd_export)

    report = sub.add_parser("report", help="write an HTML report with plots (and the plots as PNG images)")
    report.add_argument("study", help=_STUDY_HELP)
    report.add_argument("-o", "--output", metavar="HTML", help="report file to write, e.g. report.html")
    report.add_argument("--png", metavar="DIR", help="also write each plot as DIR/<name>.png (needs Chromium)")
    report.add_argument(
        "--plotly-js",
        choices=["inline", "cdn"],
        default="inline",
        help="plotly.js inside the file (default: opens offline, ~5 MB) or from plotly's CDN (small; needs network)",
    )
    _storage_option(report)
    report.set_defaults(func=_cmd_report)

    dashboard = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage")
    dashboard.add_argument("study", help=_STUDY_HELP)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    dashboard.add_argument("--port", type=int, default=8080)
    _storage_option(dashboard)
    dashboard.set_defaults(func=_cmd_dashboard)

    serve = sub.add_parser(
        "serve-storage", help="serve the study's database to many workers through Optuna's gRPC storage proxy"
    )
    serve.add_argument("study", help=_STUDY_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=13000)
    _storage_option(serve)
    serve.set_defaults(func=_cmd_serve_storage)

    plugins = sub.add_parser("plugins", help="list installed methods and the distribution providing each")
    plugins.add_argument("--format", choices=("table", "json"), default="table")
    plugins.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autopeft`` console script."""
    args = _parser().parse_args(argv)
    for flag in ("n_trials", "samples", "seeds", "workers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            print(f"autopeft: error: --{flag.replace('_', '-')} must be a positive integer", file=sys.stderr)
            return 2
    if args.command == "report" and not (args.output or args.png):
        print("autopeft: error: report needs -o report.html, --png DIR, or both", file=sys.stderr)
        return 2
    quiet_libraries()
    # A scheduler's SIGTERM (preemption, `kill`) stops a study the way Ctrl-C does: the running
    # trial is marked failed and queued again, instead of staying "running" until its heartbeat ages.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(args.func(args))
    except AutopeftError as exc:
        print(f"autopeft: error: {mask_url(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"autopeft: {exc or 'interrupted'}; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`autopeft trials ... | head`): nothing is wrong, and nothing more can be
        # written. Python would flush stdout at exit and print a second error; point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell tool reports
    except OSError as exc:  # the machine, not the input: a full disk, a folder that cannot be written
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"autopeft: error: {mask_url(exc.strerror or str(exc))}{where}; free space or choose another place, "
            "then run the same command again",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
