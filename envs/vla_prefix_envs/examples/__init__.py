"""Worked examples of user task modules (not imported by `import vla_prefix_envs`)."""
