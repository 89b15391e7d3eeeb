"""The frozen VLA backbone: block-causal mask, positions, save/load, fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backbones import FAMILIES, backbone, batch
from vla_prefix.errors import ConfigError
from vla_prefix.models import VLA, read_weights
from vla_prefix.models.attention import PROPRIO_BLOCK, READOUT_BLOCK, block_causal_mask, stream_blocks
from vla_prefix.prefix.config import PrefixConfig, StreamConfig
from vla_prefix.prefix.prefix_set import PrefixSet


def test_mask_pattern_is_block_causal():
    q = torch.tensor([0, 0, 1, 1, 2, 3])
    k = torch.cat([torch.tensor([0, 1]), q])  # two cached prefix keys, then the tokens
    valid = torch.ones(1, 8, dtype=torch.bool)
    valid[0, 5] = False  # a padded instruction token
    m = block_causal_mask(q, k, valid, torch.float32)[0, 0] == 0
    assert m[0].tolist() == [True, False, True, True, False, False, False, False]  # visual: own block only
    assert m[2].tolist() == [True, True, True, True, True, False, False, False]  # language sees vision; pad hidden
    assert m[4].tolist() == [True, True, True, True, True, False, True, False]  # proprio: not readouts
    assert m[5].tolist() == [True, True, True, True, True, False, True, True]  # readouts see everything valid
    assert not m[:5, 7].any()  # nothing but readouts attends to readouts


def _states(vla, b, prefix=None):
    """Hidden states by block: "visual", "language", "proprio", "readout"."""
    hidden, blocks = vla.sequence_states(b, prefix)
    ids = {**stream_blocks(vla.config.stream_order), "proprio": PROPRIO_BLOCK, "readout": READOUT_BLOCK}
    return {name: hidden[:, blocks == i] for name, i in ids.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_every_promise_of_the_mask_by_perturbation(family, attn):
    vla = backbone(family, attn)
    vla.config.stream_order = "vision_first"  # language_first has its own test below
    b = batch(vla, 2)
    cfg = PrefixConfig(StreamConfig(length=3, depth="deep"), StreamConfig(length=3, depth="deep"))
    prefix = PrefixSet(cfg, vla, seed=0)
    ref = _states(vla, b, prefix())

    def changed(states, block):
        return not torch.allclose(states[block], ref[block], atol=1e-6)

    def perturbed(stream):
        p = PrefixSet(cfg, vla, seed=0)
        with torch.no_grad():
            p.streams[stream].raw.add_(1.0)
        return p()

    s = _states(vla, b, perturbed("language"))  # the visual block must not move, later blocks must
    assert not changed(s, "visual") and changed(s, "language") and changed(s, "readout")

    s = _states(vla, b, perturbed("visual"))  # language sees the visual block, prefix included
    assert changed(s, "visual") and changed(s, "language") and changed(s, "proprio")

    b2 = dict(b, proprio=b["proprio"] + 1.0)  # proprio: only proprio and readouts move
    s = _states(vla, b2, prefix())
    assert not changed(s, "visual") and not changed(s, "language")
    assert changed(s, "proprio") and changed(s, "readout")

    b3 = dict(b, image=255 - b["image"])  # images: everything downstream moves
    s = _states(vla, b3, prefix())
    assert changed(s, "visual") and changed(s, "language") and changed(s, "readout")

    with torch.no_grad():  # readouts: nothing attends to them
        vla.readout_embed.add_(1.0)
        s = _states(vla, b, prefix())
    assert not any(changed(s, blk) for blk in ("visual", "language", "proprio"))
    assert changed(s, "readout")


def test_language_first_order_lets_the_visual_tokens_read_the_instruction(tmp_path):
    """stream_order=language_first: [P_lang | instruction | P_vis | visual | ...]; vision sees language, not the reverse."""
    from backbones import CORPUS, model_config
    from vla_prefix.models import build_backbone

    cfg = model_config("llama")
    cfg.config.stream_order = "language_first"
    vla = build_backbone(cfg, corpus=CORPUS).eval()
    b = batch(vla, 2)
    prefix_cfg = PrefixConfig(StreamConfig(length=3, depth="deep"), StreamConfig(length=2, depth="shallow"))
    prefix = PrefixSet(prefix_cfg, vla, seed=0)
    hidden, blocks = vla.sequence_states(b, prefix())
    language, visual = blocks == 0, blocks == 1
    assert int(language.sum()) == 2 + b["instruction_ids"].shape[1] and int(visual.sum()) == vla.vision.n_patches

    def moved(other_batch, other_prefix, where):
        return not torch.allclose(vla.sequence_states(other_batch, other_prefix)[0][:, where], hidden[:, where], atol=1e-6)

    ids = b["instruction_ids"].clone()
    ids[:, 0] = (ids[:, 0] + 7) % len(vla.tokenizer)
    assert moved(dict(b, instruction_ids=ids), prefix(), visual)  # the visual tokens read the instruction
    assert not moved(dict(b, image=255 - b["image"]), prefix(), language)  # the instruction never sees the image
    with torch.no_grad():
        prefix.streams["visual"].raw.add_(1.0)
    assert not moved(b, prefix(), language) and moved(b, prefix(), visual)

    vla.save_pretrained(tmp_path / "base")
    loaded = VLA.from_pretrained(tmp_path / "base")
    assert loaded.config.stream_order == "language_first"
    assert torch.equal(loaded.predict_actions(b), vla.predict_actions(b))
    cfg.config.stream_order = "images_first"
    with pytest.raises(ConfigError, match="stream_order='images_first'"):
        build_backbone(cfg, corpus=CORPUS)


@pytest.mark.parametrize("family", FAMILIES)
def test_bidirectional_within_a_block(family):
    """The first instruction token sees the last one, in decoder and encoder trunks alike."""
    vla = backbone(family)
    b = batch(vla, 1)
    ref = _states(vla, b)["language"][:, 0]
    ids = b["instruction_ids"].clone()
    last = int(b["instruction_mask"].sum()) - 1
    ids[0, last] = (ids[0, last] + 7) % len(vla.tokenizer)
    assert not torch.allclose(_states(vla, dict(b, instruction_ids=ids))["language"][:, 0], ref)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    vla = backbone("llama")
    vla.set_normalization([0.1] * 4, [2.0] * 4, [0.0] * 4, [0.5] * 4)
    b = batch(vla, 3)
    vla.save_pretrained(tmp_path / "base")
    loaded = VLA.from_pretrained(tmp_path / "base")
    assert torch.equal(loaded.predict_actions(b), vla.predict_actions(b))
    assert loaded.fingerprint() == vla.fingerprint()
    assert torch.equal(loaded.action_std, vla.action_std)  # normalisation travels with the weights
    assert (tmp_path / "base" / "tokenizer").is_dir()


def test_from_recipe_is_the_saved_architecture_with_fresh_seeded_weights(tmp_path):
    vla = backbone("llama")
    vla.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    fresh = VLA.from_recipe(tmp_path / "base")
    torch.manual_seed(1)
    again = VLA.from_recipe(tmp_path / "base")
    assert fresh.state_dict().keys() == vla.state_dict().keys()
    assert fresh.saved_recipe() == VLA.from_pretrained(tmp_path / "base").saved_recipe()
    assert fresh.fingerprint() == again.fingerprint() != vla.fingerprint()
    assert len(fresh.tokenizer) == len(vla.tokenizer)


def test_fingerprint_is_stable_and_sensitive():
    a, b = backbone("llama"), backbone("llama")
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.head.mlp[-1].bias.add_(1e-3)
    assert b.refresh_fingerprint() != a.fingerprint()


def test_a_config_changed_after_building_is_saved_and_fingerprinted(tmp_path):
    """Switching a built backbone's stream order (to continue pretraining in the other) must survive a save."""
    vla = backbone("llama")
    before = vla.fingerprint()
    vla.config.stream_order = "vision_first"
    assert vla.fingerprint() != before
    vla.save_pretrained(tmp_path / "base")
    loaded = VLA.from_pretrained(tmp_path / "base")
    assert loaded.config.stream_order == "vision_first" and loaded.fingerprint() == vla.fingerprint()


def test_from_pretrained_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a saved VLA"):
        VLA.from_pretrained(tmp_path / "nothing")


def test_wrong_image_size_is_a_clear_error():
    vla = backbone("llama")
    b = batch(vla, 1)
    b["image"] = torch.zeros(1, 1, 48, 48, 3, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="image_size"):
        vla.predict_actions(b)


def test_a_cnn_encoder_with_batchnorm_builds_saves_and_fingerprints(tmp_path):
    """Any timm model: a ResNet's feature map becomes tokens; 0-d BatchNorm counters hash fine."""
    from backbones import CORPUS, model_config
    from vla_prefix.models import build_backbone

    cfg = model_config("llama")
    cfg.vision.name, cfg.vision.model_kwargs = "test_resnet", {}
    vla = build_backbone(cfg, corpus=CORPUS).eval()
    assert not vla.vision.is_vit and vla.vision.n_patches > 0
    b = batch(vla, 2)
    vla.save_pretrained(tmp_path / "cnn")
    loaded = VLA.from_pretrained(tmp_path / "cnn")
    assert loaded.fingerprint() == vla.fingerprint()
    assert torch.equal(loaded.predict_actions(b), vla.predict_actions(b))


def test_a_base_with_gzipped_weights_loads_the_same_model(tmp_path):
    """model.safetensors.gz (`gzip -9n model.safetensors`: how a committed base stays under 20 MB) loads as is."""
    import gzip

    vla = backbone("llama")
    vla.save_pretrained(tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    (tmp_path / "base" / "model.safetensors.gz").write_bytes(gzip.compress(weights.read_bytes(), mtime=0))
    with pytest.raises(ConfigError, match="keep one"):
        VLA.from_pretrained(tmp_path / "base")
    weights.unlink()
    assert VLA.from_pretrained(tmp_path / "base").fingerprint() == vla.fingerprint()
    assert read_weights(tmp_path / "base")[1]["fingerprint"] == vla.fingerprint()


COMMITTED_BASES = sorted((Path(__file__).resolve().parents[1] / "checkpoints").glob("*_base"))


@pytest.mark.parametrize("base", COMMITTED_BASES, ids=lambda p: p.name)
def test_a_committed_base_is_small_loads_and_says_how_it_was_made(base):
    """A base may be committed only if <= 20 MB with its command and seed in its metadata (training.json)."""
    assert sum(f.stat().st_size for f in base.rglob("*") if f.is_file()) <= 20_000_000
    made = json.loads((base / "training.json").read_text())
    assert made["mode"] == "pretrain" and isinstance(made["seed"], int)
    assert made["command"].startswith("python -m vla_prefix.train mode=pretrain")
    assert made["steps"] > 0 and made["tasks"] and made["history"]
    vla = VLA.from_pretrained(base)
    assert vla.fingerprint() == read_weights(base)[1]["fingerprint"]
