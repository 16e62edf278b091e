"""What GRBL reports (report.c): status reports with report.c's WCO/Ov refresh counters, the
parser state ``$G`` and the build info ``$I``. ``ReportsMixin`` is one part of ``GrblDevice``
(``sim.grbl.device``) and reads its state.
"""

from __future__ import annotations

from sim.grbl.states import BUSY, MM_PER_INCH, PLANNER_BLOCKS, RX_BUFFER_BYTES, VERSION_LINE, St

# report.c: WCO every 10 reports when idle, 30 when busy; Ov every 10 / 20 (config.h REPORT_*_REFRESH_*)
WCO_EVERY_IDLE, WCO_EVERY_BUSY, OV_EVERY_IDLE, OV_EVERY_BUSY = 10, 30, 10, 20


class ReportsMixin:
    """Report lines (part of ``GrblDevice``: it reads the device's state, queue, modal state and
    offsets, and uses ``_current_pos``/``_current_speed_mm_min`` from the planner)."""

    def _mm_list(self, values: list[float] | tuple[float, ...]) -> str:
        """Coordinates as print.c's printFloat_CoordValue prints them: mm with 3 decimals, or
        inches with 4 when ``$13=1`` (report inches)."""
        if self.settings[13]:
            return ",".join(f"{v / MM_PER_INCH:.4f}" for v in values)
        return ",".join(f"{v:.3f}" for v in values)

    def _rate(self, mm_min: float) -> str:
        """A feed rate as printFloat_RateValue prints it: mm/min with 0 decimals, in/min with 1."""
        if self.settings[13]:
            return f"{mm_min / MM_PER_INCH:.1f}"
        return f"{mm_min:.0f}"

    def _state_text(self) -> str:
        if self._state == St.HOLD:
            return f"Hold:{1 if self._hold is not None else 0}"
        if self._state == St.DOOR:
            return f"Door:{self._door_sub}"
        return self._state

    def _status_report(self) -> str:
        mask = int(self.settings[10])
        pos = self._current_pos()
        wco = self._wco()
        parts = [self._state_text()]
        if mask & 1:
            parts.append("MPos:" + self._mm_list(pos))
        else:
            parts.append("WPos:" + self._mm_list([p - w for p, w in zip(pos, wco, strict=True)]))
        if mask & 2:
            parts.append(f"Bf:{PLANNER_BLOCKS - len(self._queue)},{RX_BUFFER_BYTES - len(self._rx)}")
        # report.c: Ln only in a USE_LINE_NUMBERS build, and only for a block that has one (> 0)
        ln = self._queue[0].line_number if self._queue else None
        if self.line_numbers and ln:
            parts.append(f"Ln:{ln}")
        parts.append(f"FS:{self._rate(self._current_speed_mm_min())},{self._modal.spindle_speed:.0f}")
        if self._pins:
            parts.append("Pn:" + "".join(p for p in "XYZPDHRS" if p in self._pins))
        # report.c: each counter counts down; at zero the field goes out and the counter restarts
        # at 10 (idle) or 30/20 (busy) reports, and the other field is nudged to the next report.
        busy = self._state in BUSY
        if self._wco_count > 0:
            self._wco_count -= 1
        else:
            self._wco_count = (WCO_EVERY_BUSY if busy else WCO_EVERY_IDLE) - 1
            if self._ovr_count == 0:
                self._ovr_count = 1
            parts.append("WCO:" + self._mm_list(wco))
        if self._ovr_count > 0:
            self._ovr_count -= 1
        else:
            self._ovr_count = (OV_EVERY_BUSY if busy else OV_EVERY_IDLE) - 1
            if self._wco_count == 0:
                self._wco_count = 1
            parts.append("Ov:100,100,100")
            acc = "S" if self._modal.spindle == "M3" else "C" if self._modal.spindle == "M4" else ""
            acc += "".join(c for c, m in (("F", "M8"), ("M", "M7")) if m in self._modal.coolant)
            if acc:
                parts.append("A:" + acc)
        return "<" + "|".join(parts) + ">"

    def _wco(self) -> tuple[float, float, float]:
        """Work coordinate offset: the active G54..G59 plus G92 (gcode.c; WPos = MPos - WCO)."""
        c = self._coords[self._modal.coord_select]
        return (c[0] + self._g92[0], c[1] + self._g92[1], c[2] + self._g92[2])

    def _wco_changed(self) -> None:
        self._wco_count = 0  # system_flag_wco_change: WCO goes out in the next report

    def _parser_state(self) -> None:
        """``$G``: the active modal words (report.c report_gcode_modes)."""
        m = self._modal
        words = [f"G{m.motion}", f"G{54 + m.coord_select}", "G17", "G21" if m.metric else "G20",
                 "G90" if m.absolute else "G91", "G94", m.spindle, *(sorted(m.coolant) or ["M9"]),
                 f"T{m.tool}", f"F{self._rate(m.feed_mm_min)}", f"S{m.spindle_speed:g}"]  # fmt: skip
        self._emit("[GC:" + " ".join(words) + "]")
        self._ok()

    def _build_info(self) -> None:
        """``$I``: the version and the build options (``Z``: HOMING_FORCE_SET_ORIGIN)."""
        self._emit(VERSION_LINE)
        options = "V" + ("N" if self.line_numbers else "") + ("Z" if self.force_origin else "")
        self._emit(f"[OPT:{options},{PLANNER_BLOCKS},{RX_BUFFER_BYTES}]")
        self._ok()


__all__ = ["ReportsMixin"]
