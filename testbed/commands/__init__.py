"""One module per ``testbed`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The CONFIG positional and repeated ``--set a.b.c=value`` overrides."""
    parser.add_argument("config", nargs=None if required else "?", help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="A.B.C=VALUE",
        help="override one config field (repeatable); the value is parsed as YAML",
    )


def run_with_progress(label: str, unit: str, work: Callable[[Callable[[int, int], None]], T]) -> T:
    """Run ``work(progress)`` under a rich progress bar; ``progress(done, total)`` advances it.

    Log lines are shown above the bar (a RichHandler on the bar's console replaces the plain
    console handler while the bar lives), so the two do not garble each other.
    """
    import logging

    from rich.logging import RichHandler
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    root = logging.getLogger()
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(unit, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        saved = list(root.handlers)
        console = [h for h in saved if type(h) is logging.StreamHandler]
        rich_handler = RichHandler(console=bar.console, show_path=False, level=root.level)
        root.handlers[:] = [h for h in saved if h not in console] + ([rich_handler] if console else [])
        try:
            return work(progress)
        finally:
            root.handlers[:] = saved
