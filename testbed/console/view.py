"""The console's view model: one reader of the document stream, for the terminal and the web page.

A view is fed the documents of ``events.jsonl`` (bluesky's callback style: ``start``, ``event``,
``stop``; an event kind the view does not know is ignored) and folds them into compact state:
one small row per round or point, the latest state per node and stage, the last warnings and log
lines in bounded deques. It never keeps a raw document, and ``refresh()`` reads only the lines
appended since the last call (``JsonlTail``, in bounded chunks), so a 100 MB file costs its rows,
not its bytes.

    view = open_view("runs/dryrun-20260101T000000Z")   # RunView, CampaignView or CompareView
    view.refresh()                                      # True if anything changed
    view.to_dict()                                      # a JSON-able snapshot (the web page's)
    view.summary_row()                                  # one row of the web index

``RunView`` follows a run, ``CampaignView`` a measurement campaign, ``CompareView`` a compare
directory (each of its cells' run directories through a ``RunView``).
"""

from __future__ import annotations

from pathlib import Path

from testbed.console.base import View, jsonable
from testbed.console.folders import ConsoleError, identify
from testbed.console.run_view import RunView
from testbed.console.sweep_views import CampaignView, CompareView

AnyView = RunView | CampaignView | CompareView


def open_view(path: str | Path) -> AnyView:
    """The view of a run, campaign or compare directory, caught up with what is on disk.

    ``ConsoleError`` (exit 2 in the CLI) where the folder is none of the three, naming what it lacks.
    """
    folder = identify(path)
    view: AnyView
    if folder.kind == "compare":
        view = CompareView(folder.path)
    elif folder.kind == "campaign":
        view = CampaignView(folder.path)
    else:
        view = RunView(folder.path)
    view.refresh()
    return view


__all__ = [
    "AnyView",
    "CampaignView",
    "CompareView",
    "ConsoleError",
    "RunView",
    "View",
    "jsonable",
    "open_view",
]
