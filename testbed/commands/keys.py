"""`testbed keys`: make the CurveZMQ key pairs of a lab (layout in ``fl/keys.py``)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys_dir", help="folder to write the keys into (fl.transport.keys_dir)")
    parser.add_argument("--nodes", type=int, required=True, help="number of FL nodes (lab.clients.count)")
    parser.add_argument("--radios", type=int, default=0, help="number of radio servers")
    parser.add_argument("--overwrite", action="store_true", help="replace existing key pairs")


def run(args: argparse.Namespace) -> int:
    from drivers.errors import ConfigError
    from fl.keys import make_lab_keys

    if args.nodes < 1 or args.radios < 0:
        raise ConfigError(f"--nodes must be >= 1 and --radios >= 0 (got {args.nodes}, {args.radios})")
    layout = make_lab_keys(args.keys_dir, args.nodes, args.radios, overwrite=args.overwrite)
    warning = git_exposure(Path(layout.root))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"keys in {layout.root}: coordinator, node-0..node-{args.nodes - 1}"
        + (f", radio-0..radio-{args.radios - 1}" if args.radios else "")
        + f"; allow lists in {layout.root / 'allow'}"
    )
    return 0


def git_exposure(folder: Path) -> str | None:
    """Why the secret keys in ``folder`` could end up in a commit, or None: the folder is inside a
    git work tree and git does not ignore it (or git is not there to ask)."""
    folder = folder.resolve()
    top = next((p for p in (folder, *folder.parents) if (p / ".git").exists()), None)
    if top is None:
        return None
    git = shutil.which("git")
    if git is not None:
        probe = subprocess.run(
            [git, "-C", str(top), "check-ignore", "-q", str(folder / "coordinator.key_secret")],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return None
    return (
        f"the secret keys in {folder} are inside the git work tree {top}, and git does not ignore "
        "them: `git status` offers them for a commit; add the folder to .gitignore or keep the keys "
        "outside the tree"
    )
