"""Environment adapters (MetaWorld, LIBERO, ManiSkill) on gymnasium's vector API, with action chunks. No policy code."""

import os

# MuJoCo picks its OpenGL backend when first imported; headless CPU machines need EGL (Mesa).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
