"""The ``autopeft`` command: the subcommands of :mod:`.search_commands`, :mod:`.result_commands` and
:mod:`.service_commands` under one parser. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from autopeft.cli import result_commands, search_commands, service_commands
from autopeft.errors import AutopeftError
from autopeft.progress import quiet_libraries
from autopeft.storage.backends import mask_url

__all__ = ["main"]

#: Every subcommand, in the order ``autopeft --help`` lists them.
COMMANDS = (*search_commands.COMMANDS, *result_commands.COMMANDS, *service_commands.COMMANDS)


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
    for command in COMMANDS:
        command.arguments(sub.add_parser(command.name, help=command.help))
        sub.choices[command.name].set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autopeft`` console script."""
    args = _parser().parse_args(argv)
    for flag in ("n_trials", "samples", "seeds", "workers"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            print(f"autopeft: error: --{flag.replace('_', '-')} must be a positive integer", file=sys.stderr)
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
