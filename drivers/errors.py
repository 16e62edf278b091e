"""The project's one exception tree.

Every error the testbed raises on purpose derives from ``TestbedError``. Messages say what went
wrong, where (port, field, device), the offending value, and what to do about it.
"""

from __future__ import annotations


class TestbedError(Exception):
    """Base of every error the testbed raises on purpose."""

    __test__ = False  # not a pytest test class, despite the name


class ConfigError(TestbedError):
    """A configuration file or override is invalid. The message names file, field, value, rule."""


class DeviceError(TestbedError):
    """A device (stage, radio) failed, refused, or could not be reached."""


# --- stages -----------------------------------------------------------------------------------
class StageError(DeviceError):
    """A motion stage failed or refused a command."""


class StageTimeout(StageError):
    """No reply (no ``ok``, no status report) within the allowed time."""


class StageLimitError(StageError):
    """A move was refused before any byte was sent: it would break travel, spacing or speed limits."""


class StageAlarm(StageError):
    """The controller is in alarm (GRBL ``ALARM:N``, Zaber stall/limit). ``code`` is the firmware code."""

    def __init__(self, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StageCommandError(StageError):
    """The controller rejected a command (GRBL ``error:N``, Zaber ``RJ``)."""

    def __init__(self, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StageAborted(StageError):
    """A motion was cut short (stop(), a reset, an outside stop) and did not reach its target."""


class StageNotHomed(StageError):
    """The position is unknown (after power-up or a hard-limit alarm): home before moving."""


# --- radios -----------------------------------------------------------------------------------
class RadioError(DeviceError):
    """A radio failed, refused, or its server could not be reached."""


class RadioTimingError(RadioError):
    """A timed TX/RX went wrong. ``code`` is UHD's metadata code name, ``time_s`` the device time."""

    def __init__(self, message: str, code: str, time_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.time_s = time_s


class RadioLimitError(RadioError):
    """A setting (TX gain, power, rate, frequency) was refused before it reached the device."""


# --- federated learning -----------------------------------------------------------------------
class FLError(TestbedError):
    """Federated learning coordination failed."""


class ProtocolError(FLError):
    """A malformed, oversized, unknown or unauthorised message."""


# --- optimisation -----------------------------------------------------------------------------
class PlanError(TestbedError):
    """No feasible plan during a run (raised by ``testbed``; ``allocation`` itself raises its
    own ``allocation.AllocationError``, a ``ValueError``, being pure maths)."""
