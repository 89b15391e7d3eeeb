"""The block-causal attention pattern (as in Octo), built as one explicit additive float mask.

The trunk sequence for one observation is, with `stream_order="vision_first"`,

    [ P_vis | visual | P_lang | instruction | proprio | readouts ]
      \\____ block 0 ___/ \\____ block 1 ______/  block 2    block 3

and with `"language_first"` (Octo's order; the default) the two streams swap places and block ids.

- A token attends bidirectionally within its own block and to every earlier block,
  so the second stream sees the first (its prefix included), never the reverse.
- Readouts (the last block) see everything; nothing attends to readouts.
- A key can also be invalid for one row (instruction padding, or prefix padding in a batch
  that mixes tasks with prefixes of different lengths): no query attends to it.

Deep prefixes are not tokens: their K/V sit in the cache, in front of the tokens. They take part
in the mask as keys only, with the block id of their stream.

The mask is additive (0 = attend, dtype-min = blocked) because `eager` attention silently
ignores boolean 4D masks while `sdpa` honours them (see DESIGN.md).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

PROPRIO_BLOCK, READOUT_BLOCK = 2, 3  # blocks 0 and 1 are the two streams, in `stream_blocks` order
STREAM_ORDERS = ("vision_first", "language_first")


def stream_blocks(order: str) -> dict[str, int]:
    """Block id of each stream ("visual", "language") under a stream order: the first is block 0."""
    if order not in STREAM_ORDERS:
        raise ConfigError(f"stream_order={order!r}: use one of {STREAM_ORDERS}")
    first, second = ("visual", "language") if order == "vision_first" else ("language", "visual")
    return {first: 0, second: 1}


def block_causal_mask(
    query_blocks: torch.Tensor,
    key_blocks: torch.Tensor,
    key_valid: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive mask (B, 1, T, S): 0 where query t may attend key s, dtype-min elsewhere.

    query_blocks: (T,) long, block id of each token.
    key_blocks:   (S,) long, block id of each key (cached prefix K/V first, then the T tokens).
    key_valid:    (B, S) bool, False for padded keys.
    """
    allowed = key_blocks[None, :] <= query_blocks[:, None]  # (T, S)
    allowed = allowed[None] & key_valid[:, None, :]  # (B, T, S)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def position_ids_from_valid(token_valid: torch.Tensor) -> torch.Tensor:
    """Explicit positions (B, T): valid tokens are numbered 0, 1, 2, ... in order; padding repeats.

    Padded slots (a shorter shallow prefix in a mixed batch, instruction padding) take no position,
    so a row gets the same positions whatever it is batched with. Deep-prefix K/V take no position
    either: a prefilled cache must never shift the tokens' positions.
    """
    return (token_valid.long().cumsum(dim=1) - 1).clamp(min=0)
