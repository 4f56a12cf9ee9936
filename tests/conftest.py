"""Session-wide test hooks."""

from __future__ import annotations

import gc
import sys


def pytest_sessionfinish(session, exitstatus):
    """Free every MuJoCo EGL context (ours and robosuite's) while EGL is still initialised; left to
    interpreter teardown, their __del__ prints an EGLError after pytest's summary."""
    egl = sys.modules.get("mujoco.egl")
    if egl is None:
        return
    for obj in gc.get_objects():
        if isinstance(obj, egl.GLContext):
            try:
                obj.free()
            except Exception:  # noqa: BLE001 - best effort at exit
                obj._context = None
