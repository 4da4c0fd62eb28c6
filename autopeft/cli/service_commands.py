"""The subcommands that serve a study or list what is installed: ``dashboard``, ``serve-storage`` and
``plugins``, each with its arguments beside it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from autopeft.cli.options import Command, add_format, add_storage, add_study, open_study_of
from autopeft.errors import AutopeftError
from autopeft.storage.backends import mask_url

__all__ = ["COMMANDS"]


def _serving(port: int) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a command that serves the study: the study, ``--host``, ``--port`` and ``--storage``."""

    def arguments(parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
        parser.add_argument("--port", type=int, default=port)
        add_storage(parser)

    return arguments


def _dashboard(args: argparse.Namespace) -> int:
    from autopeft.search.study import name_objectives
    from autopeft.storage.artifacts import artifact_store
    from autopeft.storage.backends import open_storage

    try:
        import optuna_dashboard
    except ImportError:
        raise AutopeftError("dashboard: optuna-dashboard is not installed; pip install 'autopeft[dashboard]'") from None
    config, url, study = open_study_of(args, read_only=False)
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


def _serve_storage(args: argparse.Namespace) -> int:
    import optuna

    from autopeft.config import load_config
    from autopeft.storage.backends import open_storage

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


def _plugins_arguments(parser: argparse.ArgumentParser) -> None:
    add_format(parser, "table", "json")


def _plugins(args: argparse.Namespace) -> int:
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


COMMANDS = (
    Command("dashboard", "serve optuna-dashboard on the study's storage", _serving(8080), _dashboard),
    Command(
        "serve-storage",
        "serve the study's database to many workers through Optuna's gRPC storage proxy",
        _serving(13000),
        _serve_storage,
    ),
    Command("plugins", "list installed methods and the distribution providing each", _plugins_arguments, _plugins),
)
