"""FFN memory (`prefix.memory`): a no-op at init, trains with the backbone frozen, stores, and mixes in a batch."""

from __future__ import annotations

import pytest
import torch

from backbones import backbone, batch
from vla_prefix.errors import ConfigError
from vla_prefix.prefix.config import MemoryConfig, PrefixConfig, StreamConfig
from vla_prefix.prefix.io import load_prefix, save_prefix
from vla_prefix.prefix.prefix_set import PrefixSet
from vla_prefix.prefix.tensors import PrefixTensors, StreamPrefix, gather_rows


def with_memory(length=6, prefix_length=3):
    return PrefixConfig(visual=StreamConfig(length=prefix_length), language=StreamConfig(length=prefix_length),
                        memory=MemoryConfig(length=length))


def frozen_llama():
    vla = backbone("llama")
    for p in vla.parameters():
        p.requires_grad_(False)
    return vla


def test_untrained_memory_leaves_the_output_unchanged_and_only_memory_learns():
    vla = frozen_llama()
    b = batch(vla, 6, seed=1)
    prefix = PrefixSet(PrefixConfig(visual=StreamConfig(length=0), language=StreamConfig(length=0),
                                    memory=MemoryConfig(length=8)), vla, seed=0)
    assert prefix.deployed_params() == 8 * vla.trunk.n_layers * 2 * vla.trunk.hidden_size
    assert torch.equal(vla.predict_actions(b, prefix()), vla.predict_actions(b))  # values start at 0
    before = {k: v.clone() for k, v in vla.state_dict().items()}
    opt = torch.optim.Adam(prefix.parameters(), lr=3e-2)
    losses = []
    for _ in range(8):
        loss, _ = vla(b, prefix())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, vla.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(vla.predict_actions(b, prefix()), vla.predict_actions(b))
    # the hooks are removed after every forward: the bare backbone is the bare backbone again
    assert all(not m._forward_hooks for m in vla.trunk.mlp_modules())


def test_memory_round_trips_through_a_prefix_file(tmp_path):
    vla = backbone("llama")
    prefix = PrefixSet(with_memory(), vla, init_text="stack the cubes", seed=2)
    with torch.no_grad():
        prefix.streams["memory"].raw.normal_()
    path = save_prefix(tmp_path / "task.safetensors", prefix, vla, task="t")
    loaded, _ = load_prefix(path, vla)
    b = batch(vla)
    assert torch.equal(vla.predict_actions(b, loaded()), vla.predict_actions(b, prefix()))


def test_mixed_batch_with_and_without_memory_matches_single_task_rows():
    vla = backbone("llama")
    b = batch(vla, 4, seed=3)
    long, short, none = (PrefixSet(with_memory(length=n), vla, seed=n) for n in (6, 2, 0))
    for p in (long, short):
        with torch.no_grad():
            p.streams["memory"].raw.normal_()
    sets = [long(), short(), none()]
    rows = torch.tensor([0, 1, 2, 0])
    mixed = vla.predict_actions(b, gather_rows(sets, rows))
    for i, r in enumerate(rows.tolist()):
        one = {k: v[i : i + 1] for k, v in b.items()}
        torch.testing.assert_close(mixed[i : i + 1], vla.predict_actions(one, sets[r]), rtol=0, atol=1e-5)


def test_config_dict_names_memory_only_when_it_is_on():
    """Results files and prefix files from before `memory` existed must compare equal to new ones."""
    assert "memory" not in PrefixConfig().as_dict()
    on = with_memory(length=4)
    assert on.as_dict()["memory"] == {"length": 4}
    assert PrefixConfig.from_dict(on.as_dict()) == on


def test_memory_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="memory.length must be an integer >= 0"):
        PrefixConfig(memory=MemoryConfig(length=-1)).resolved()
    with pytest.raises(ConfigError, match=r"valid keys: \['length'\]"):
        PrefixConfig.from_dict({"memory": {"slots": 4}})
    bert = backbone("bert")
    with pytest.raises(ConfigError, match="prefix.memory.length=0"):
        bert.predict_actions(batch(bert), PrefixSet(with_memory(), bert)())


def test_masked_memory_slots_add_nothing():
    vla = backbone("llama")
    b = batch(vla)
    prefix = PrefixSet(PrefixConfig(visual=StreamConfig(length=0), language=StreamConfig(length=0),
                                    memory=MemoryConfig(length=4)), vla)
    with torch.no_grad():
        prefix.streams["memory"].raw.normal_()
    memory = prefix().expand(4).memory
    masked = PrefixTensors(memory=StreamPrefix("memory", memory.value, torch.zeros(4, 4, dtype=torch.bool)))
    assert torch.equal(vla.predict_actions(b, masked), vla.predict_actions(b))
    assert not torch.equal(vla.predict_actions(b, prefix()), vla.predict_actions(b))
