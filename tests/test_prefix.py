"""PrefixSet: frozen backbone, bit-exact no-op cases, the training grid, prefix files."""

from __future__ import annotations

import itertools

import pytest
import torch

from backbones import FAMILIES, backbone, batch
from vla_prefix.errors import ConfigError, FingerprintMismatchError, PrefixFileError
from vla_prefix.prefix.config import PrefixConfig, StreamConfig
from vla_prefix.prefix.io import load_prefix, read_prefix_metadata, save_prefix
from vla_prefix.prefix.prefix_set import PrefixSet
from vla_prefix.prefix.tensors import PrefixTensors, StreamPrefix


def pair(depth="deep", length=4, site="trunk", init="vocab", reparam=False, **kw):
    return PrefixConfig(
        visual=StreamConfig(length=length, depth=depth, site=site, init="random" if site == "encoder" else init,
                            reparam=reparam),
        language=StreamConfig(length=length, depth=depth, init=init, reparam=reparam),
        **kw,
    )


def freeze(vla):
    for p in vla.parameters():
        p.requires_grad_(False)
    return vla


def test_only_prefix_tensors_change_after_an_optimizer_step():
    vla = freeze(backbone("llama"))
    before = {k: v.clone() for k, v in vla.state_dict().items()}
    prefix = PrefixSet(pair(reparam=True), vla, init_text="reach the cube")
    start = {k: v.clone() for k, v in prefix.state_dict().items()}
    opt = torch.optim.AdamW(prefix.parameters(), lr=1e-2)
    loss, _ = vla(batch(vla), prefix())
    loss.backward()
    assert all(p.grad is None for p in vla.parameters())
    opt.step()
    assert all(torch.equal(v, vla.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, prefix.state_dict()[k]) for k, v in start.items())


@pytest.mark.parametrize("family", FAMILIES)
def test_length_zero_is_bit_identical_to_the_bare_backbone(family):
    vla = backbone(family)
    b = batch(vla)
    prefix = PrefixSet(pair(length=0), vla)
    assert prefix.deployed_params() == 0
    assert torch.equal(vla.predict_actions(b, prefix()), vla.predict_actions(b))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("depth", ["deep", "shallow"])
def test_fully_masked_prefix_is_bit_identical(family, attn, depth):
    """Catches position_ids shifted by the prefix (a prefilled cache moves default positions).

    A deep prefix under `eager` attention is bit-identical. torch's CPU `sdpa` kernel splits the
    keys into blocks with an online softmax, and a shallow prefix lengthens every matmul, so extra
    (fully masked) slots change the summation order: there we allow float rounding (1e-5), far
    below what a shifted position causes (~1e-1).
    """
    vla = backbone(family, attn)
    b = batch(vla)
    tensors = PrefixSet(pair(depth=depth, length=5), vla)().expand(4)
    masked = PrefixTensors(**{n: StreamPrefix(s.kind, s.value, torch.zeros(4, s.length, dtype=torch.bool))
                              for n, s in tensors.streams().items()})
    got, bare = vla.predict_actions(b, masked), vla.predict_actions(b)
    if attn == "eager" and depth == "deep":
        assert torch.equal(got, bare)
    else:
        torch.testing.assert_close(got, bare, rtol=0, atol=1e-5)
    assert not torch.equal(vla.predict_actions(b, tensors), vla.predict_actions(b))


GRID = list(itertools.product(FAMILIES, ["shallow", "deep"], ["eager", "sdpa"], ["trunk", "encoder"]))


@pytest.mark.parametrize("family,depth,attn,site", GRID)
def test_training_grid_loss_falls_and_every_prefix_tensor_learns(family, depth, attn, site):
    torch.manual_seed(0)
    vla = freeze(backbone(family, attn))
    b = batch(vla, 6, seed=1)
    prefix = PrefixSet(pair(depth=depth, length=4, site=site), vla, seed=0)
    opt = torch.optim.Adam(prefix.parameters(), lr=3e-2)
    losses = []
    for step in range(6):
        loss, _ = vla(b, prefix())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = {n: p.grad for n, p in prefix.named_parameters()}
            assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads.keys()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_cached_and_uncached_forwards_agree_and_fold_is_exact():
    vla = backbone("llama")
    b = batch(vla)
    prefix = PrefixSet(pair(reparam=True), vla, seed=3)
    with torch.no_grad():  # make the MLP matter
        for s in prefix.streams.values():
            s.mlp[2].weight.normal_(0, 0.05)
    live = vla.predict_actions(b, prefix())
    assert torch.equal(vla.predict_actions(b, prefix.cached()), live)
    assert torch.equal(vla.predict_actions(b, prefix.fold()()), live)
    assert prefix.training_params() > prefix.deployed_params() == prefix.fold().training_params()


def test_accounting_at_the_headline_setting():
    vla = backbone("llama")
    prefix = PrefixSet(pair(length=10), vla)
    t = vla.trunk
    assert prefix.deployed_params() == 2 * 10 * t.n_layers * 2 * t.n_kv_heads * t.head_dim
    assert prefix.deployed_bytes() == 4 * prefix.deployed_params()


def test_shared_mode_is_one_visual_prefix_of_the_total_length():
    vla = backbone("llama")
    prefix = PrefixSet(PrefixConfig(StreamConfig(length=3), StreamConfig(length=5), shared=True), vla)
    assert list(prefix.streams) == ["visual"] and prefix().visual.length == 8


@pytest.mark.parametrize("init", ["random", "vocab", "text"])
def test_inits_give_finite_distinct_values(init):
    vla = backbone("llama")
    a = PrefixSet(pair(init=init), vla, init_text="push the blue ball", seed=0).values()
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in a.values())
    if init == "text":  # text init is the phrase's activations: deterministic
        again = PrefixSet(pair(init=init), vla, init_text="push the blue ball", seed=9).values()
        assert all(torch.equal(a[k], again[k]) for k in a)


@pytest.mark.parametrize("bad,match", [
    (dict(depth="middle"), "depth"),
    (dict(length=-1), "length"),
    (dict(site="encoder", init="vocab"), "init=random"),
])
def test_bad_prefix_config_is_one_clear_error(bad, match):
    stream = StreamConfig(**{**dict(length=2), **bad})
    with pytest.raises(ConfigError, match=match):
        PrefixConfig(visual=stream, language=StreamConfig(length=2)).resolved()
    with pytest.raises(ConfigError, match="unknown keys"):
        PrefixConfig.from_dict({"visual": {"lenght": 3}})


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("depth,site", [("deep", "trunk"), ("shallow", "trunk"), ("deep", "encoder")])
def test_export_and_load_round_trip_bit_exactly(tmp_path, depth, site):
    vla = backbone("llama")
    b = batch(vla)
    prefix = PrefixSet(pair(depth=depth, site=site, reparam=True), vla, seed=1)
    path = save_prefix(tmp_path / "task.safetensors", prefix, vla, task="t0", instruction="reach", steps=7)
    loaded, meta = load_prefix(path, vla)
    assert meta["task"] == "t0" and meta["steps"] == 7 and meta["backbone_fingerprint"] == vla.fingerprint()
    assert meta["prefix_config"]["visual"]["depth"] == depth
    assert torch.equal(vla.predict_actions(b, loaded.cached()), vla.predict_actions(b, prefix()))
    assert read_prefix_metadata(path)["instruction"] == "reach"


def test_loading_onto_another_backbone_fails_naming_both_fingerprints(tmp_path):
    vla, other = backbone("llama"), backbone("llama")
    with torch.no_grad():
        other.proprio_proj.bias.add_(1.0)
    other.refresh_fingerprint()
    path = save_prefix(tmp_path / "p.safetensors", PrefixSet(pair(), vla), vla, task="t")
    with pytest.raises(FingerprintMismatchError) as err:
        load_prefix(path, other)
    assert vla.fingerprint() in str(err.value) and other.fingerprint() in str(err.value)


def test_truncated_and_corrupt_files_fail_clearly(tmp_path):
    vla = backbone("llama")
    path = save_prefix(tmp_path / "p.safetensors", PrefixSet(pair(), vla), vla, task="t")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrefixFileError, match="corrupt or truncated"):
        load_prefix(tmp_path / "cut.safetensors", vla)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(PrefixFileError, match="corrupt"):
        load_prefix(tmp_path / "flip.safetensors", vla)
    (tmp_path / "junk.safetensors").write_bytes(b"not a prefix")
    with pytest.raises(PrefixFileError):
        load_prefix(tmp_path / "junk.safetensors", vla)


def test_wrong_shape_fails_clearly_never_broadcasts(tmp_path, monkeypatch):
    small, big = backbone("llama"), backbone("bert")  # different widths and layer layouts
    prefix = PrefixSet(pair(), small)
    path = save_prefix(tmp_path / "p.safetensors", prefix, small, task="t")
    monkeypatch.setattr(big, "fingerprint", small.fingerprint)  # pretend they agree: the shape check must still fire
    with pytest.raises(PrefixFileError, match="shape"):
        load_prefix(path, big)
