"""A GRBL 1.1h firmware emulator that speaks the real serial grammar (gnea/grbl
``doc/markdown/interface.md``, ``commands.md`` and the sources each part names).

- ``states``: the banner, buffer sizes, real-time bytes and machine states;
- ``gcode``: the line parser and modal state (gcode.c);
- ``planner``: the planner and motion on the model clock, homing, holds and limits;
- ``settings``: the ``$`` settings and the EEPROM (offsets, stored positions, start-up lines);
- ``reports``: status reports, ``$G`` and ``$I``;
- ``device``: ``GrblDevice``, which ties them: power-up, reset, the byte stream, real-time
  commands and the line dispatcher.

``sim.grbl_device`` is the entry point other code imports. This ``__init__`` imports nothing, so
importing one part does not pull in the others.
"""
