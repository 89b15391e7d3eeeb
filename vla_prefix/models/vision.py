"""The vision encoder: any timm model, producing patch tokens per camera.

Images arrive as uint8 (B, n_cameras, H, W, 3), the env's own layout; normalisation with the
model's mean/std happens here, so every caller feeds raw frames.
"""

from __future__ import annotations

import os

import timm
import torch
from torch import nn

from ..errors import ConfigError


class VisionEncoder(nn.Module):
    """timm backbone -> patch tokens (B, n_cameras * n_patches, width).

    ViTs drop their CLS/register tokens (`num_prefix_tokens`); CNNs flatten their feature map.
    With `prompts`, a ViT runs a hand-written block loop that inserts VPT prompts after the
    prefix tokens: shallow prompts (B, L, width) enter at the first block; deep prompts
    (B, L, depth, width) replace the prompt slots before every block (VPT-deep).
    """

    def __init__(self, name: str, img_size: int = 64, pretrained: bool = False, model_kwargs: dict | None = None):
        super().__init__()
        if pretrained:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline timm otherwise retries ~60 s
        kwargs = dict(model_kwargs or {})
        try:
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size, **kwargs)
        except TypeError:  # CNNs take no img_size
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except RuntimeError as err:
            raise ConfigError(f"timm could not build {name!r} ({err}); pretrained weights cannot be downloaded here, "
                              "set model.vision.pretrained=false or give a local checkpoint") from None
        self.name, self.img_size = name, img_size
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1) * 255, persistent=False)
        self.is_vit = hasattr(self.model, "blocks") and hasattr(self.model, "_pos_embed")
        self.width = self.model.num_features
        self.depth = len(self.model.blocks) if self.is_vit else 0
        self.model.eval()  # probe the token count without touching BatchNorm statistics
        with torch.no_grad():
            self.n_patches = self._tokens(torch.zeros(1, 3, img_size, img_size)).shape[1]
        self.model.train()

    def _tokens(self, x: torch.Tensor, prompts: torch.Tensor | None = None, prompt_valid: torch.Tensor | None = None):
        if prompts is None:
            feats = self.model.forward_features(x)
            if feats.ndim == 4:  # CNN feature map (B, C, h, w)
                return feats.flatten(2).transpose(1, 2)
            return feats[:, getattr(self.model, "num_prefix_tokens", 0) :]
        return self._prompted_tokens(x, prompts, prompt_valid)

    def _prompted_tokens(self, x, prompts, prompt_valid):
        """VPT: prompts sit between the ViT's prefix tokens and its patch tokens."""
        if not self.is_vit:
            raise ConfigError(f"prefix.visual.site=encoder needs a ViT encoder, not {self.name!r}; use site=trunk")
        vit, npt, n_prompt = self.model, self.model.num_prefix_tokens, prompts.shape[1]
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        mask = None
        if prompt_valid is not None and not bool(prompt_valid.all()):
            valid = torch.ones(x.shape[0], x.shape[1] + n_prompt, dtype=torch.bool, device=x.device)
            valid[:, npt : npt + n_prompt] = prompt_valid
            mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill_(~valid, torch.finfo(x.dtype).min)
            mask = mask[:, None, None, :]  # (B, 1, 1, N): padded prompts are never attended to
        deep = prompts.ndim == 4
        for i, block in enumerate(vit.blocks):
            if i == 0 or deep:
                layer_prompts = prompts[:, :, i] if deep else prompts
                rest = x[:, npt:] if i == 0 else x[:, npt + n_prompt :]
                x = torch.cat([x[:, :npt], layer_prompts.to(x.dtype), rest], dim=1)
            x = block(x, attn_mask=mask)
        x = vit.norm(x)
        return x[:, npt + n_prompt :]

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None, prompt_valid: torch.Tensor | None = None):
        """images: uint8 (B, n_cam, H, W, 3) -> tokens (B, n_cam * n_patches, width).

        prompts: optional VPT prompts (B, L, width) or (B, L, depth, width), shared by all cameras.
        prompt_valid: optional (B, L) bool, False for padding in mixed-length batches.
        """
        b, n_cam, h, w, _ = images.shape
        if h != self.img_size or w != self.img_size:
            raise ConfigError(f"images are {h}x{w} but the vision encoder expects {self.img_size}x{self.img_size}; "
                              "set the env image_size to match model.vision.img_size")
        x = images.reshape(b * n_cam, h, w, 3).permute(0, 3, 1, 2).to(self.mean.dtype)
        x = (x - self.mean) / self.std
        if prompts is not None:
            prompts = prompts.repeat_interleave(n_cam, dim=0)
            prompt_valid = None if prompt_valid is None else prompt_valid.repeat_interleave(n_cam, dim=0)
        tokens = self._tokens(x, prompts, prompt_valid)
        return tokens.reshape(b, n_cam * tokens.shape[1], tokens.shape[2])
