"""The operator commands of `strego` (`strego.cli` registers them with `add_commands`)."""

from __future__ import annotations

import argparse

from strego.commands import operator, web


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    operator.add_commands(commands)
    web.add_command(commands)
