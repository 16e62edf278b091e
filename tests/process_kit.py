"""Child processes for the Ctrl-C tests: the CLI started the way a terminal starts it."""

from __future__ import annotations

import signal


def hears_ctrl_c() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGINT back to its default action in the child.

    A shell starts a background job (``nohup make test &``) with SIGINT ignored, and an ignored
    signal stays ignored across exec, so the child's Python would never raise KeyboardInterrupt and
    every Ctrl-C test would watch its run finish instead. With the default action restored, Python
    installs its own handler at start-up, as it does under a terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
