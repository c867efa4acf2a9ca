"""The ViT and CNN image classifiers, training-time augmentation, and their digits configs."""

import json

import pytest
import torch

from modelworks.config import ConfigError, load_config
from modelworks.models.cnn import CNN, CNNConfig
from modelworks.models.registry import build_model, model_config_from
from modelworks.models.vit import ViT, ViTConfig
from modelworks.pipeline import run
from modelworks.tasks.augment import Augment, AugmentedLoader, make_augment
from modelworks.train.data import ExampleLoader
from modelworks.train.parallel import apply_activation_checkpointing
from tests.conftest import ROOT


def _vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(
        ViTConfig(**{"image_size": 8, "channels": 1, "n_classes": 10, "patch_size": 2, **kw})
    )


@pytest.mark.parametrize(("size", "channels", "patch"), [(8, 1, 2), (16, 3, 4), (28, 1, 7)])
def test_forward_shapes(size, channels, patch):
    x = torch.randn(5, channels, size, size)
    vit = ViT(ViTConfig(image_size=size, channels=channels, n_classes=7, patch_size=patch))
    cnn = CNN(CNNConfig(image_size=size, channels=channels, n_classes=7, widths=[8, 16]))
    assert vit(x).shape == (5, 7) and cnn(x).shape == (5, 7)
    assert vit.tokens(x).shape == (5, 1 + (size // patch) ** 2, 64)


def test_configs_build_from_the_model_section():
    cnn_cfg = model_config_from({"name": "cnn", "widths": [4, 8], "norm": "group"})
    assert cnn_cfg.widths == [4, 8] and CNNConfig().widths is not CNNConfig().widths
    cnn_cfg.image_size, cnn_cfg.channels, cnn_cfg.n_classes = 8, 1, 3
    assert build_model(cnn_cfg)(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="does not divide"):
        ViTConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="too small for 3 stages"):
        CNNConfig(image_size=4, widths=[8, 8, 8])


def _swap_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """Exchange the top-left and bottom-right p x p patches."""
    y = x.clone()
    y[..., :p, :p], y[..., -p:, -p:] = x[..., -p:, -p:], x[..., :p, :p]
    return y


@torch.no_grad()
def test_vit_position_embeddings_make_patch_order_matter():
    vit = _vit().eval()
    x = torch.randn(3, 1, 8, 8)
    swapped = _swap_patches(x, 2)
    assert not torch.allclose(vit(x), vit(swapped), atol=1e-4)
    # without positions the class token sees a set of patches: order is invisible
    vit.pos_emb.weight.zero_()
    torch.testing.assert_close(vit(x), vit(swapped), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_vit_attention_is_bidirectional():
    vit = _vit().eval()
    x = torch.randn(3, 1, 8, 8)
    y = x.clone()
    y[..., -2:, -2:] += 1.0  # only the last patch changes
    # the class token comes first: under a causal mask it could never see the last patch
    assert not torch.allclose(vit.tokens(x)[:, 0], vit.tokens(y)[:, 0], atol=1e-4)


def test_vit_activation_checkpointing_keeps_gradients():
    x, target = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    grads = []
    for checkpointed in (False, True):
        vit = _vit()
        if checkpointed:
            assert apply_activation_checkpointing(vit) == vit.cfg.n_layer
        torch.nn.functional.cross_entropy(vit(x), target).backward()
        grads.append(torch.cat([p.grad.flatten() for p in vit.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_augment_keeps_shapes_and_is_deterministic_under_a_seed():
    x = torch.randn(16, 3, 12, 12)
    out = [Augment(2, True, 15.0, seed=s)(x) for s in (7, 7, 8)]
    assert all(o.shape == x.shape and o.dtype == x.dtype for o in out)
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], out[2])
    assert make_augment(0, False, 0.0, seed=7) is None  # all off: batches untouched


@pytest.mark.parametrize("flip", [False, True])
def test_flip_false_never_flips(flip):
    x = torch.zeros(200, 1, 8, 8)
    x[..., :3] = 1.0  # ink in the left columns only
    out = Augment(crop_padding=1, flip=flip, rotate_degrees=10.0, seed=0)(x)
    left_heavy = out[..., :4].sum((1, 2, 3)) > out[..., 4:].sum((1, 2, 3))
    if flip:
        assert 0.3 < left_heavy.float().mean() < 0.7
    else:
        assert left_heavy.all()


def test_augmented_loader_resumes_exactly_and_ranks_differ():
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40)

    def loader(rank=0):
        inner = ExampleLoader(x, y, batch_size=8, seed=3)
        return AugmentedLoader(inner, Augment(1, False, 10.0, seed=3), rank)

    a = loader()
    for _ in range(7):  # past an epoch boundary
        a.next_batch()
    state = a.state_dict()
    assert state == a.loader.state_dict()  # the checkpoint format is the plain loader's
    expected = [a.next_batch() for _ in range(3)]
    b = loader()
    b.next_batch()  # a different generator position must not matter
    b.load_state_dict(state)
    for (ex, ey), (gx, gy) in zip(expected, [b.next_batch() for _ in range(3)], strict=True):
        torch.testing.assert_close(ex, gx)
        assert torch.equal(ey, gy)
    xa, ya = loader(0).next_batch()
    xb, yb = loader(1).next_batch()
    assert torch.equal(ya, yb) and not torch.allclose(xa, xb)


def _digits(tmp_path, config: str, *extra: str) -> dict:
    cfg = load_config(ROOT / "configs" / config, [f"runs_dir={tmp_path / 'runs'}", *extra])
    run(cfg)
    return json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())


def test_cnn_config_reaches_97_percent(tmp_path):
    m = _digits(tmp_path, "cnn.yaml")  # about 10 s on one core; measured 0.992
    assert m["split"] == "test" and m["examples"] > 300
    assert m["accuracy"] >= 0.97, m["accuracy"]


def test_augmented_cnn_training_still_learns(tmp_path):
    m = _digits(
        tmp_path,
        "cnn.yaml",
        "pretrain.steps=150",
        "pretrain.eval_every=50",
        "tasks.image_classification.augment_crop_padding=1",
        "tasks.image_classification.augment_rotate_degrees=10",
    )
    assert m["accuracy"] >= 0.9, m["accuracy"]


def test_augmentation_knobs_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="augment_rotate_degrees"):
        _digits(tmp_path, "cnn.yaml", "tasks.image_classification.augment_rotate_degrees=-5")


@pytest.mark.slow  # the default suite trains the CNN; the ViT's full run is slow too
def test_vit_short_run_reaches_92_percent(tmp_path):
    # 300 of the config's 1200 steps: about 15 s; measured 0.967
    m = _digits(
        tmp_path,
        "vit.yaml",
        "pretrain.steps=300",
        "pretrain.warmup_steps=30",
        "pretrain.eval_every=100",
    )
    assert m["accuracy"] >= 0.92, m["accuracy"]


@pytest.mark.slow
def test_vit_config_reaches_97_percent(tmp_path):
    m = _digits(tmp_path, "vit.yaml")  # about 65 s on one core; measured 0.994
    assert m["split"] == "test" and m["examples"] > 300
    assert m["accuracy"] >= 0.97, m["accuracy"]


def test_pretrain_on_digits_then_finetune_on_another_label_set(tmp_path):
    """A CNN pretrained on the 10 digit classes is fine-tuned on odd/even labels of the same
    images (given as an .npz): a new 2-way output layer, every other weight carried over."""
    import numpy as np
    from sklearn.datasets import load_digits

    from modelworks.train.checkpoint import load_model

    base = _digits(tmp_path, "cnn.yaml", "pretrain.steps=120", "pretrain.eval_every=60")
    assert base["accuracy"] > 0.8
    base_dir = tmp_path / "runs" / "cnn-digits"
    before = (base_dir / "pretrain" / "model.safetensors").read_bytes()
    d = load_digits()
    parity = np.array(["even", "odd"])[d.target % 2]
    np.savez(tmp_path / "parity.npz", x=np.uint8(d.images * 255 / 16), y=parity)
    m = _digits(
        tmp_path,
        "cnn.yaml",
        "name=parity",
        "collect.sources=[{type: npz, paths: ['" + str(tmp_path / "parity.npz") + "']}]",
        f"finetune.from={base_dir}",
        "finetune.steps=60",
        "finetune.lr=0.003",
        "finetune.eval_every=30",
        "finetune.best_metric=val_accuracy",
        "finetune.best_mode=max",
    )
    assert m["accuracy"] >= 0.9, m["accuracy"]  # held-out test images, 2 classes
    tuned = load_model(tmp_path / "runs" / "parity" / "finetune")
    assert tuned.cfg.n_classes == 2
    base_model = load_model(base_dir / "pretrain")
    carried = [k for k in base_model.state_dict() if k.startswith("features.")]
    assert carried and not all(
        torch.equal(tuned.state_dict()[k], base_model.state_dict()[k]) for k in carried
    )  # started from the base, then trained on
    assert (base_dir / "pretrain" / "model.safetensors").read_bytes() == before
    summary = json.loads((tmp_path / "runs" / "parity" / "finetune" / "manifest.json").read_text())
    assert summary["summary"]["new_head"] and summary["summary"]["base_classes"] == 10
