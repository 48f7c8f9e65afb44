"""The ``qsmplanner`` command. Each subcommand lives in ``cli/cmd_<name>.py`` and defines
``register(subparsers)``, adding its parser with ``set_defaults(func=run)``; ``run(args)`` returns
an exit status. Subcommands parse, call QSMPlannerLib, and print: no algorithm lives here.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..errors import InputError, ProcessingError
from ..progress import Cancelled


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsmplanner",
        description="QSM-based DBS planning: QSM reconstruction, registration, STN segmentation, "
                    "trajectory planning and Leksell frame coordinates. World coordinates are RAS mm "
                    "unless a value says otherwise.")
    parser.add_argument("--version", action="version", version=f"qsmplanner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("cmd_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"qsmplanner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ProcessingError as exc:
        print(f"qsmplanner {args.command}: failed: {exc}", file=sys.stderr)
        return 3
    except (Cancelled, KeyboardInterrupt):
        print(f"qsmplanner {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
