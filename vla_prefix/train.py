"""`python -m vla_prefix.train`: one trainer for every mode (Hydra app).

Examples:
    python -m vla_prefix.train mode=pretrain model=default data.path=data/tabletop_pretrain
    python -m vla_prefix.train mode=prefix base=outputs/base task=tabletop-pick-green-ball-v0 data.path=data/heldout
    python -m vla_prefix.train mode=lora base=outputs/base task=heldout data.path=data/heldout optim.lr=1e-3
    python -m vla_prefix.train ... resume=true hydra.run.dir=<the run to continue>
"""

from __future__ import annotations

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .errors import cli_errors
from .training.config import TrainConfig, register_configs
from .training.trainer import train

register_configs()


def run(cfg: DictConfig) -> dict:
    typed: TrainConfig = OmegaConf.to_object(cfg)
    out = cfg.out_dir or HydraConfig.get().runtime.output_dir
    summary = train(typed, out)
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun: every rank returns the summary; one prints it
        print(f"[vla_prefix.train] {summary['mode']}: final loss {summary['final_loss']:.4f}, "
              f"{summary['trainable_params']} trainable params ({summary['trainable_pct']:.3f}%), "
              f"{summary['wall_s']} s -> {out}")
    return summary


@hydra.main(config_path="../conf", config_name="train", version_base=None)
@cli_errors(interrupted="interrupted; continue from the last checkpoint: rerun with resume=true out_dir=<this run>")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
