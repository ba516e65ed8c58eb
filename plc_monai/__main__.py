"""Command line: ``python -m plc_monai <command> --help`` for the commands of :data:`COMMANDS`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import fire
from fire import helptext, trace

from plc_monai import cli
from plc_monai.experiments.harness import experiment

COMMANDS: dict[str, Callable[..., Any]] = {
    "phantom": cli.phantom,
    "check_data": cli.check_data,
    "prepare": cli.prepare,
    "demo": cli.demo,
    "experiment": experiment,
}


def command_help(name: str) -> str:
    """The help text of command ``name`` (a key of :data:`COMMANDS`): its docstring and flags, as fire formats them."""
    command = COMMANDS[name]
    fire_trace = trace.FireTrace(COMMANDS, name="plc_monai")
    fire_trace.AddAccessedProperty(command, name, [name], None, None)
    return helptext.HelpText(command, trace=fire_trace)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command named in ``argv`` (default: the process arguments).

    ``<command> --help``/``-h`` before any ``--`` prints its help only (fire would pass it to ``**overrides``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        own = args[1 : args.index("--")] if "--" in args else args[1:]
        if "--help" in own or "-h" in own:
            print(command_help(args[0]))
            return
    fire.Fire(COMMANDS, command=args, name="plc_monai")


if __name__ == "__main__":
    main()
