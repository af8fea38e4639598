"""The HVAE reproduces the reference numerically and keeps its state-dict layout."""
import contextlib
import json
import math
import os

import pytest
import torch

from conftest import DATA
from model.config import PAPER_WIDTHS, config_for
from model.hvae import HVAE
from utils.densities import discretized_logistic_logp, logistic_logp
from utils.modules import Squeeze2d, UnSqueeze2d, WnConv2d, data_dependent_init, deal_round_robin

VECTORS = torch.load(os.path.join(DATA, "reference_vectors.pt"))
with open(os.path.join(DATA, "reference_checkpoint_keys.json")) as f:
    CHECKPOINT_KEYS = json.load(f)


def model_for_vectors(entry):
    c = entry["config"]
    model = HVAE(xs=c["xs"], nz=c["nz"], zchannels=c["zchannels"], width=c["reswidth"],
                 nprocessing=c["nprocessing"], resdepth=c["resdepth"], kernel=c["kernel_size"],
                 conditional_xscale=c["module"] == "imagenetcrop_train")
    model.load_state_dict(entry["state_dict"], strict=True)
    return model.eval()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_conditionals_match_reference_vectors(name, channels_last):
    entry = VECTORS[name]
    model = model_for_vectors(entry)
    model.channels_last = channels_last
    x, z = entry["x"], entry["z"]
    with torch.no_grad():
        for i in range(model.nz):
            mu, scale = model.infer(i, x if i == 0 else z[i - 1])
            ref_mu, ref_scale = entry["infer"][i]
            torch.testing.assert_close(mu, ref_mu, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=1e-5)
            mu, scale = model.generate(i, z[i])
            ref_mu, ref_scale = entry["generate"][i]
            assert mu.shape == ref_mu.shape
            torch.testing.assert_close(mu, ref_mu, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(scale, ref_scale.expand_as(mu), rtol=1e-5, atol=1e-5)
        mu, scale = model.generate(0, z[0])
        logp = discretized_logistic_logp(x, mu, scale).reshape(x.shape[0], -1)
        torch.testing.assert_close(logp, entry["discretized_logistic_logp_x_given_z1"],
                                   rtol=1e-4, atol=1e-4)
        mu, scale = model.infer(0, x)
        logq = logistic_logp(z[0], mu, scale).reshape(x.shape[0], model.zchannels, -1)
        torch.testing.assert_close(logq, entry["logistic_logp_z1_given_x"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", sorted(CHECKPOINT_KEYS))
def test_state_dict_layout_equals_reference_checkpoints(key):
    dataset, nz = key.split("_nz")
    expected = dict(CHECKPOINT_KEYS[key])
    width = expected.pop("width")
    assert width == PAPER_WIDTHS[dataset][int(nz)]
    with torch.device("meta"):  # shapes only, no memory
        model = HVAE.from_config(config_for(dataset, nz=int(nz)))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("key", sorted(CHECKPOINT_KEYS))
def test_architecture_inferred_from_reference_checkpoint_keys(key):
    dataset, nz = key.split("_nz")
    shapes = dict(CHECKPOINT_KEYS[key])
    shapes.pop("width")
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    arch = HVAE.architecture_from_state_dict(state)
    cfg = config_for(dataset, nz=int(nz))
    assert arch == cfg.architecture()


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_architecture_inferred_from_vectors_state_dict(name):
    entry = VECTORS[name]
    arch = HVAE.architecture_from_state_dict(entry["state_dict"])
    c = entry["config"]
    assert (arch["nz"], arch["width"], arch["zchannels"], arch["nprocessing"], arch["resdepth"],
            arch["kernel"], arch["xs"]) == (c["nz"], c["reswidth"], c["zchannels"], c["nprocessing"],
                                            c["resdepth"], c["kernel_size"], list(c["xs"]))
    with pytest.raises(ValueError, match="not a Bit-Swap HVAE"):
        HVAE.architecture_from_state_dict({"foo": torch.zeros(1)})


def test_reference_state_dict_round_trips_through_our_checkpoint():
    entry = VECTORS["mnist_like"]
    model = model_for_vectors(entry)
    sd = model.state_dict()
    assert list(sd) == list(entry["state_dict"])
    for k, v in entry["state_dict"].items():
        assert torch.equal(sd[k], v)


def test_dropout_keeps_expectation_and_rate():
    from utils.modules import Dropout
    torch.manual_seed(0)
    d = Dropout(0.2)
    h = torch.ones(200_000)
    out = d(h)
    assert abs((out == 0).float().mean().item() - 0.2) < 0.005
    assert torch.allclose(out[out != 0], torch.tensor(1.25))
    assert abs(out.mean().item() - 1.0) < 0.01
    # each of the four 16-bit slices of a 64-bit draw drops at the same rate
    per_slice = (out.view(-1, 4) == 0).float().mean(0)
    assert torch.all((per_slice - 0.2).abs() < 0.01), per_slice
    assert abs(d.p_eff - 0.2) < 1e-5
    d.eval()
    assert torch.equal(d(h), h)


def test_fused_heads_equal_separate_heads_in_values_and_gradients():
    from utils.modules import separate_heads, twin_conv
    torch.manual_seed(0)
    mu, scale = WnConv2d(6, 2, 3), WnConv2d(6, 2, 3)
    h = torch.randn(4, 6, 8, 8)
    with data_dependent_init(torch.nn.ModuleList([mu, scale])):
        mu(h), scale(h)
    results = []
    for fused in (True, False):
        x = h.clone().requires_grad_()
        for m in (mu, scale):
            m.zero_grad()
        with contextlib.nullcontext() if fused else separate_heads():
            a, b = twin_conv(mu, scale, x)
        (a.square().sum() + (2 * b).sin().sum()).backward()
        results.append([a, b, x.grad] + [p.grad.clone() for p in [*mu.parameters(), *scale.parameters()]])
    assert results[0][0].shape == (4, 2, 8, 8)
    for fused, separate in zip(*results):
        torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-4)   # float rounding only


def test_squeeze_unsqueeze_are_inverse_and_match_layout():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    s = Squeeze2d()(x)
    assert s.shape == (2, 12, 2, 2)
    # channel c*4 + dy*2 + dx holds pixel (2i+dy, 2j+dx) of channel c
    assert s[0, 1 * 4 + 1 * 2 + 0, 1, 0] == x[0, 1, 3, 0]
    assert torch.equal(UnSqueeze2d()(s), x)


def test_residual_layers_dealt_round_robin():
    assert deal_round_robin(8, 3) == [3, 3, 2]
    assert deal_round_robin(8, 10) == [1] * 8 + [0, 0]
    # nz > resdepth: layers without residual layers are the identity
    model = HVAE(xs=(1, 8, 8), nz=3, zchannels=1, width=4, nprocessing=0, resdepth=2)
    assert isinstance(model.deepinfer_res[1], torch.nn.Identity)
    assert isinstance(model.infer_res0, torch.nn.Identity)


def test_data_dependent_init_normalises_outputs_and_keeps_reference_quirk():
    torch.manual_seed(0)
    conv = WnConv2d(3, 5, 3, init_scale=2.0, loggain=True)
    x = torch.randn(64, 3, 8, 8) * 3 + 1
    with data_dependent_init(conv):
        conv(x)
    direction_out = torch.nn.functional.conv2d(
        x, conv.v / conv.v.flatten(1).norm(dim=1).view(-1, 1, 1, 1), None, 1, 1)
    s = 2.0 / direction_out.var(dim=(0, 2, 3)).sqrt()
    # stored gain log(s): effective initial gain softplus(log s) = log(1 + s)
    torch.testing.assert_close(conv.gain.detach(), torch.log(s), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.effective_gain().detach(), torch.log1p(s), rtol=1e-4, atol=1e-4)
    # without loggain the init is exact: zero mean, std = init_scale
    lin = WnConv2d(3, 5, 3, init_scale=2.0, loggain=False)
    with data_dependent_init(lin):
        lin(x)
    out = lin(x).detach()
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.full((5,), 2.0), atol=1e-3, rtol=1e-3)
    assert not conv.init_pending and not lin.init_pending


def test_initialized_model_starts_with_zero_residual_branches_and_finite_loss():
    torch.manual_seed(0)
    model = HVAE(xs=(3, 32, 32), nz=2, zchannels=2, width=8, nprocessing=1, resdepth=2,
                 dropout=0.1)
    x = torch.randint(0, 256, (16, 3, 32, 32)).float()
    model.initialize(x)
    assert model.training  # restored
    conv2 = model.infer_res1[0].res8layer1.conv2
    assert torch.all(conv2.gain == 0)
    objective, terms = model(x)
    assert terms["kl"].shape == (2,) and terms["enc"].shape == (2,)
    assert torch.isfinite(objective)
    # free bits: each of nz * zchannels KL terms counts at least 1 bit
    floor = (terms["recon"] + 4 * 1.0 / model.dims)
    assert objective.item() >= floor.item() - 1e-6
    assert objective.item() >= terms["elbo"].item() - 1e-6
    # an 8-bit image model should start within a few bits/dim of uniform (8)
    assert 0 < terms["elbo"].item() < 30


def test_elbo_terms_are_consistent():
    torch.manual_seed(1)
    model = HVAE(xs=(1, 8, 8), nz=2, zchannels=1, width=4, nprocessing=1, resdepth=2).eval()
    x = torch.randint(0, 256, (8, 1, 8, 8)).float()
    model.initialize(x)
    _, terms = model(x)
    torch.testing.assert_close(terms["recon"] + terms["kl"].sum(), terms["elbo"])
    # enc = -log q, dec = -log p per layer (bits/dim), kl = log q - log p
    torch.testing.assert_close(terms["kl"], terms["dec"] - terms["enc"])


def test_free_bits_floor_each_layer_and_channel():
    """The training objective: (-recon + sum over layers and channels of
    max(KL, free_bits)) / dims. Layer 0 has one channel below the floor and
    is above it in total; layer 1 is below it in every channel."""
    model = HVAE(xs=(1, 8, 8), nz=2, zchannels=2, width=4, nprocessing=1, resdepth=2)
    kl = torch.tensor([[0.25, 3.0], [0.5, 0.125]])
    enc = torch.tensor([[5.0, 7.0], [2.0, 1.0]])
    model.loss = lambda x: dict(recon=torch.tensor(-100.0), enc=enc, dec=enc - kl, z=[])
    objective, terms = model(torch.zeros(1, 1, 8, 8), free_bits=1.0)
    expect = (100.0 + (1.0 + 3.0) + (1.0 + 1.0)) / 64
    assert objective.item() == pytest.approx(expect)
    assert terms["elbo"].item() == pytest.approx((100.0 + kl.sum().item()) / 64)


def test_generate_and_sample_shapes():
    model = HVAE(xs=(1, 32, 32), nz=3, zchannels=1, width=4, nprocessing=1, resdepth=2).eval()
    assert model.zdim == (1, 16, 16)
    z = torch.randn(2, *model.zdim)
    mu, scale = model.generate(0, z)
    assert mu.shape == scale.shape == (2, 1, 32, 32)
    assert torch.all(scale > 2 / 255 / 8)
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 32, 32) and s.min() >= 0 and s.max() <= 255
    with pytest.raises(IndexError):
        model.infer(3, z)


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="nz"):
        HVAE(nz=0)
    with pytest.raises(ValueError, match="nz"):
        config_for("mnist", nz=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        config_for("svhn")


def test_paper_defaults():
    assert config_for("mnist").width == 61 and config_for("mnist", nz=2).width == 63
    assert config_for("cifar", nz=4).width == 254 and config_for("cifar").dropout == 0.3
    assert config_for("imagenet").decay_start == 100_000
    assert config_for("imagenetcrop").conditional_xscale
    assert math.isclose(config_for("mnist").decay, 0.9995)
