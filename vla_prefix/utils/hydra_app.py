"""What every quiet vla-prefix Hydra app shares (collect, evaluate, serve, quickstart).

Such an app writes nothing of Hydra's own (no outputs/ folder, no .hydra/), keeps the working
directory, logs to stdout, and names the closest setting for a mistyped override.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

from ..errors import ConfigError, closest


def quiet_defaults():
    """The `defaults` field of a quiet app's structured config."""
    return field(default_factory=lambda: [
        "_self_", {"override hydra/job_logging": "stdout"}, {"override hydra/hydra_logging": "none"}])


def quiet_hydra(app_name: str, doc: str):
    """The `hydra` field of a quiet app's structured config; `--help` shows `doc` and every setting."""
    return field(default_factory=lambda: {
        "run": {"dir": "."},
        "sweep": {"dir": ".", "subdir": "."},
        "output_subdir": None,
        "job": {"chdir": False},
        "help": {
            "app_name": app_name,
            "header": doc.strip(),
            "template": "${hydra.help.header}\n\n== Settings (override any with key=value) ==\n\n"
                        "$CONFIG\n${hydra.help.footer}",
        },
    })


def setting_names(config_cls) -> list[str]:
    return [f.name for f in fields(config_cls) if f.name not in ("defaults", "hydra")]


def check_overrides(argv: list[str], config_cls: Any) -> None:
    """Name the closest setting for a mistyped override (Hydra alone would not suggest one)."""
    names = setting_names(config_cls)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("~")
        if key.startswith(("+", "hydra")) or key.split(".")[0] in names:
            continue
        hint = closest(key, names)
        hint = f"; did you mean {hint[0]}?" if hint else ""
        raise ConfigError(f"unknown setting {key!r}{hint} (settings: {', '.join(names)})")


def to_dataclass(cfg, config_cls, app: str, required: tuple[str, ...], usage: str):
    """A `config_cls` instance from itself, a Hydra DictConfig or a plain dict.

    Unknown keys (with the closest valid one), wrong types and missing required keys each fail
    with one ConfigError. Validation of values is left to the app.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, config_cls):
        return cfg
    names = setting_names(config_cls)
    try:
        if isinstance(cfg, dict):
            unknown = [k for k in cfg if k not in names]
            if unknown:
                hint = closest(unknown[0], names)
                raise ConfigError(f"unknown {app} setting {unknown[0]!r}" + (f"; did you mean {hint[0]}?" if hint else ""))
            cfg = OmegaConf.merge(OmegaConf.structured(config_cls), cfg)  # checks the types
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad {app} setting: {str(err).splitlines()[0]}") from None
    assert isinstance(cfg, DictConfig)
    for key in required:
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            raise ConfigError(f"`{key}` is required: {usage}")
    return config_cls(**{k: OmegaConf.to_object(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in names})
