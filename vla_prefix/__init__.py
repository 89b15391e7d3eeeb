"""vla-prefix: adapt a frozen vision-language-action policy with small per-stream prefixes."""

import logging
import os

# Headless MuJoCo: EGL through Mesa works without a display. Users may override.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"

# PyOpenGL (imported by MuJoCo's renderers) logs an INFO line about an optional accelerator.
logging.getLogger("OpenGL").setLevel(logging.WARNING)
