"""The CurveZMQ key folder of a lab, made by ``testbed keys``.

Layout (``KEYS`` is ``fl.transport.keys_dir``)::

    KEYS/coordinator.key, KEYS/coordinator.key_secret     the coordinator (a CURVE server)
    KEYS/node-<i>.key,    KEYS/node-<i>.key_secret        FL node i (0-based)
    KEYS/radio-<j>.key,   KEYS/radio-<j>.key_secret       radio server j (a CURVE server)
    KEYS/allow/coordinator/node-<i>.key                   public keys the coordinator admits
    KEYS/allow/radio/{coordinator,node-<i>}.key           public keys the radio servers admit

Copy to each host only what it needs: a node gets its own ``node-<i>.key_secret`` plus the
public ``coordinator.key`` (and ``radio-<j>.key`` for its radio). Secret files are mode 0600.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from drivers.zmq_security import make_keypair


@dataclass(frozen=True)
class KeyLayout:
    root: Path

    def secret(self, name: str) -> Path:
        return self.root / f"{name}.key_secret"

    def public(self, name: str) -> Path:
        return self.root / f"{name}.key"

    @property
    def coordinator_allow(self) -> Path:
        return self.root / "allow" / "coordinator"

    @property
    def radio_allow(self) -> Path:
        return self.root / "allow" / "radio"


def node_name(node: int) -> str:
    return f"node-{int(node)}"


def make_lab_keys(root: str | Path, nodes: int, radios: int = 0, overwrite: bool = False) -> KeyLayout:
    """Key pairs for the coordinator, ``nodes`` nodes and ``radios`` radio servers, plus allow lists."""
    layout = KeyLayout(Path(root))
    names = ["coordinator", *(node_name(i) for i in range(nodes)), *(f"radio-{j}" for j in range(radios))]
    for name in names:
        if overwrite or not layout.secret(name).is_file():
            make_keypair(layout.root, name)
    layout.coordinator_allow.mkdir(parents=True, exist_ok=True)
    layout.radio_allow.mkdir(parents=True, exist_ok=True)
    for i in range(nodes):
        shutil.copy2(layout.public(node_name(i)), layout.coordinator_allow / f"{node_name(i)}.key")
        shutil.copy2(layout.public(node_name(i)), layout.radio_allow / f"{node_name(i)}.key")
    shutil.copy2(layout.public("coordinator"), layout.radio_allow / "coordinator.key")
    return layout
