"""The operator's console: follow a run, a campaign or a compare while it works, and stop it.

Everything the console shows comes from the documents a run already writes to ``events.jsonl``
(one JSON object a line: ``start``, ``event`` and ``stop`` documents, see ``testbed.records``).
The live documents below are ``event`` documents like the rest; ``testbed report`` and
``--resume`` skip the kinds they do not read. Each has ``data``:

``phase``       the round (or campaign point) entered a phase: ``round`` (or ``point``),
                ``phase`` (one of ``PHASES``) and ``t_start`` (Unix seconds). A phase lasts
                until the next ``phase``, ``round`` or ``stop`` document.
``nodes``       node liveness, at most one a second: ``round``, ``nodes``: a list of
                ``{node, alive, heartbeat_age_s, participation, tokens_per_s, gpu_mem_bytes}``
                (the last two null where unknown).
``stage``       a stage's state, at most one per stage a second (state changes coalesce):
                ``stage``, ``state`` (``idle``, ``moving``, ``alarm``, ``homing``),
                ``position_m`` [x, y], ``target_m`` [x, y] or null, ``alarm`` (code) or null.
``budget``      what the run has spent against its budgets after a round: ``round``,
                ``energy_j``, ``energy_budget_j``, ``latency_s``, ``latency_budget_s``.
``warning``     a log line at WARNING or above: ``logger``, ``message``.
``stop_request``  ``testbed stop`` was heard: ``now`` (bool), ``by`` (who asked).

A run's ``round`` events carry the learning (``val_ppl``, ``nmse_db``, ``nmse_fpa_db``,
``positions_m``, ``time_breakdown_s``); a campaign's ``point`` events carry the gains.

Modules: ``folders`` (what kind of directory, and what it lacks), ``tail`` (reads complete new
lines of a growing file from an offset), ``control`` (the running marker and stop requests).
"""

# The phases of one FL round, in order (a campaign point uses move, settle, estimate).
from fl.phases import PHASES  # noqa: E402

__all__ = ["PHASES"]
