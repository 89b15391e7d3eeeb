"""vla-prefix: adapt a frozen vision-language-action policy with small per-stream prefixes."""

import os

# Headless MuJoCo: EGL through Mesa works without a display. Users may override.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"
