"""The pipeline's stages, each run as ``python -m analysis.<stage>``; ``analysis.run`` chains them."""

from __future__ import annotations

import os
import sys

# Set by analysis.run, to its own process id, for the stages it starts (see common.main_guard).
CHILD_ENV = "OOD_STAGE_OF_RUN"


def _quiet_interrupt_in_a_stage_of_run() -> None:
    """In a stage started by ``analysis.run`` (which says "interrupted" once for the whole run), a
    Ctrl-C that comes while the stage still imports, before ``main_guard`` runs, ends it without a
    traceback as well. Processes the stage starts in turn (notebook kernels) are left as they are."""
    if os.environ.get(CHILD_ENV) != str(os.getppid()):
        return
    default = sys.excepthook

    def hook(kind, value, tb) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            default(kind, value, tb)

    sys.excepthook = hook


_quiet_interrupt_in_a_stage_of_run()
