"""The U-Net denoiser (shapes, EMA buffers, checkpoint round trip) and the rectified-flow
samplers (exactness on a known velocity field, guidance, seeds)."""

import pytest
import torch

from modelworks.models.flow import flow_loss, sample, to_uint8
from modelworks.models.registry import build_model
from modelworks.models.unet import UNetConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny convolutions: a second thread only adds contention


def _model(**kw):
    cfg = UNetConfig(image_size=8, channels=1, n_classes=3, base_width=16, **kw)
    return build_model(cfg)


def test_unet_predicts_the_image_shape_and_starts_at_zero_velocity():
    m = _model(width_mults=[1, 2, 2])
    x = torch.randn(5, 1, 8, 8)
    v = m(x, torch.rand(5), torch.tensor([0, 1, 2, 3, 0]))  # 3: the "no class" token
    assert v.shape == x.shape and torch.all(v == 0)


def test_ema_is_buffers_that_follow_the_weights_and_survive_a_checkpoint(tmp_path):
    from modelworks.train.checkpoint import load_model, save_model

    m = _model()
    assert m.num_params() == sum(p.numel() for p in m.parameters())  # the EMA is not parameters
    assert not any(n.startswith("ema.") for n, _ in m.named_parameters())
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    for _ in range(200):
        m.update_ema(0.9)
    w, e = m.net.conv_in.weight, m.ema.conv_in.weight
    assert torch.allclose(w, e, atol=1e-4) and int(m.ema_updates) == 200
    save_model(tmp_path / "m", m)
    back = load_model(tmp_path / "m")
    assert torch.equal(back.ema.conv_in.weight, e) and int(back.ema_updates) == 200


def test_unet_rejects_a_size_that_does_not_halve():
    with pytest.raises(ValueError, match="does not halve"):
        UNetConfig(image_size=6, channels=1, n_classes=2, width_mults=[1, 2, 2])


class _Straight(torch.nn.Module):
    """The exact velocity for data that is a point mass at `target[y]`: (target - x) / (1 - t)."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def forward(self, x, t, y):
        target = self.targets[y]
        return (target - x) / (1 - t)[:, None, None, None].clamp(min=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 3])
def test_samplers_land_exactly_on_a_point_mass(sampler, steps):
    targets = torch.tensor([-0.5, 0.25, 0.75, 0.0]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    labels = torch.tensor([0, 1, 2, 1])
    x = sample(_Straight(targets), labels, (1, 2, 2), 3, steps=steps, guidance=1.0,
               sampler=sampler)  # fmt: skip
    assert torch.allclose(x, targets[labels], atol=1e-5)


def test_guidance_extrapolates_away_from_the_unconditional_prediction():
    targets = torch.tensor([0.5, -0.5]).reshape(2, 1, 1, 1).expand(2, 1, 1, 1)  # 1: "no class"
    net = _Straight(targets)
    labels = torch.tensor([0])
    plain = sample(net, labels, (1, 1, 1), 1, steps=1, guidance=1.0, seed=0)
    uncond = sample(net, labels, (1, 1, 1), 1, steps=1, guidance=0.0, seed=0)
    guided = sample(net, labels, (1, 1, 1), 1, steps=1, guidance=3.0, seed=0)
    assert plain.item() == pytest.approx(0.5) and uncond.item() == pytest.approx(-0.5)
    assert guided.item() == pytest.approx(-0.5 + 3.0 * (0.5 + 0.5))  # u + w (c - u)


def test_a_seed_gives_the_same_images_and_quantisation_is_pixel_exact():
    m = _model()
    labels = torch.tensor([0, 1, 2])
    a = sample(m.ema, labels, (1, 8, 8), 3, steps=2, seed=5)
    assert torch.equal(a, sample(m.ema, labels, (1, 8, 8), 3, steps=2, seed=5))
    assert not torch.equal(a, sample(m.ema, labels, (1, 8, 8), 3, steps=2, seed=6))
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="sampler="):
        sample(m.ema, labels, (1, 8, 8), 3, sampler="ddpm")


def test_flow_loss_trains_the_unet_on_a_toy_set():
    torch.manual_seed(0)
    m = _model()
    x = torch.cat([torch.full((16, 1, 8, 8), -0.8), torch.full((16, 1, 8, 8), 0.8)])
    y = torch.tensor([0] * 16 + [1] * 16)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = flow_loss(m, x, y, 3, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
