"""Diagnosis probe, outside the framework: can re-weighting the frozen trunk's own neurons fit stack-red-on-blue?

Runs the held-out command with its `lora` method swapped for PEFT's (IA)^3 (a learned scale on the
outputs of `k_proj`/`v_proj` and on the input of `down_proj`, i.e. on the FFN's intermediate neurons).

    python results/tabletop/diagnosis_stack_prefix/ia3_probe.py k_proj,v_proj,down_proj \
        --config-dir conf/experiments --config-name tabletop_headline task=tabletop-stack-red-on-blue-v0 \
        'n_demos=[10]' 'methods=[lora]' 'seeds=[0]' 'lr_grid.lora=[0.01]' forgetting=false \
        results=results/tabletop/diagnosis_stack_prefix/ia3_kvd.json

argv[1]: comma-separated target modules; the rest: the held-out command's overrides.
"""

import sys

from peft import IA3Config, get_peft_model

import vla_prefix.experiments.heldout as heldout
import vla_prefix.training.modes as modes

TARGETS = sys.argv[1].split(",")


def attach_ia3(backbone, lora_cfg) -> None:
    """PEFT (IA)^3 on the trunk in place of LoRA; `down_proj` is scaled on its input (the FFN neurons)."""
    config = IA3Config(target_modules=TARGETS, feedforward_modules=[t for t in TARGETS if t == "down_proj"])
    backbone.trunk.model = get_peft_model(backbone.trunk.model, config)


def run_probe(cfg, command: str, run=heldout.run):
    """The held-out run, its results file recording this probe's command rather than the plain one."""
    probe = f"python results/tabletop/diagnosis_stack_prefix/ia3_probe.py {','.join(TARGETS)}"
    return run(cfg, command=command.replace("python -m vla_prefix.experiments.heldout", probe, 1))


if __name__ == "__main__":  # guarded: evaluation workers re-import this file
    modes.attach_lora = attach_ia3
    heldout.run = run_probe
    sys.argv = sys.argv[:1] + sys.argv[2:]
    heldout.main()
