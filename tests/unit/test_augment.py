"""FixMatch weak/strong augmentations and the RandAugment ops on small uint8 batches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from training.augment import (
    CUTOUT_FILL,
    OPS,
    STRONG_POLICY,
    WEAK_DEFAULTS,
    AugmentConfig,
    apply_op,
    strong_augment,
    weak_augment,
)

PLAIN = AugmentConfig(hflip=False, vflip=False, translate=0.0, n_ops=0, cutout=0.0)


def random_images(n: int, size: int, low: int = 0, high: int = 256, seed: int = 0, width: int | None = None):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, width or size), dtype=torch.uint8, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("augment", [weak_augment, strong_augment])
@pytest.mark.parametrize("size", [32, 64, 96])
@pytest.mark.parametrize("n", [1, 16])
def test_shape_and_dtype_preserved_and_input_untouched(augment, size, n):
    x = random_images(n, size)
    before = x.clone()
    y = augment(x, gen())
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(x, before)


def test_channels_last_and_non_square_inputs():
    nhwc = random_images(4, 32).permute(0, 2, 3, 1).contiguous()
    x = nhwc.permute(0, 3, 1, 2)  # what the trainer passes: a channels_last view of NHWC numpy data
    assert torch.equal(strong_augment(x, gen(3)), strong_augment(x.contiguous(), gen(3)))
    wide = random_images(3, 32, width=48)
    assert strong_augment(wide, gen()).shape == (3, 3, 32, 48)
    assert torch.equal(apply_op(wide, "rotate", 0.0), wide)


@pytest.mark.parametrize("augment", [weak_augment, strong_augment])
def test_same_seed_same_output_other_seed_differs(augment):
    x = random_images(16, 32)
    assert torch.equal(augment(x, gen(7)), augment(x, gen(7)))
    assert not torch.equal(augment(x, gen(7)), augment(x, gen(8)))


def test_global_rng_is_never_used():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    strong_augment(random_images(8, 32), gen(1))
    weak_augment(random_images(8, 32), gen(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_plain_config_is_an_exact_copy():
    x = random_images(4, 32)
    assert torch.equal(weak_augment(x, gen(), PLAIN), x)
    assert torch.equal(strong_augment(x, gen(), PLAIN), x)


def test_identity_op_is_exact():
    x = random_images(5, 32)
    y = apply_op(x, "identity", 0.7)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("op,bounds", STRONG_POLICY)
def test_each_op_changes_a_non_constant_image(op, bounds):
    x = random_images(2, 32, low=50, high=200)
    low, high = bounds
    y = apply_op(x, op, low + 0.75 * (high - low))
    assert y.shape == x.shape and y.dtype == torch.uint8
    changed = (y != x).float().mean().item()
    if op == "identity":
        assert changed == 0.0
    else:
        assert changed > 0.01, f"{op} left the image (nearly) unchanged"


def test_policy_is_the_fixmatch_pool_and_every_op_exists():
    names = [name for name, _ in STRONG_POLICY]
    assert len(names) == 14 == len(set(names))
    assert set(names) == set(OPS)
    assert all(low <= high for _, (low, high) in STRONG_POLICY)
    assert dict(WEAK_DEFAULTS) == {"hflip": True, "vflip": True, "translate": 0.125}


def test_point_ops_follow_their_definitions():
    x = random_images(3, 16)
    xf = x.float()
    assert torch.equal(apply_op(x, "brightness", 0.5), (xf * 0.5).round().to(torch.uint8))
    assert torch.equal(apply_op(x, "posterize", 4), x & 0xF0)
    assert torch.equal(apply_op(x, "posterize", 8), x)
    assert torch.equal(apply_op(x, "solarize", 128), torch.where(x >= 128, 255 - x, x))
    assert torch.equal(apply_op(x, "solarize", 256), x)
    grey = apply_op(x, "color", 0.0)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    flat = apply_op(x, "contrast", 0.0)
    assert (flat.flatten(1).max(1).values - flat.flatten(1).min(1).values).max() <= 1
    for op in ("brightness", "color", "contrast", "sharpness"):
        assert torch.equal(apply_op(x, op, 1.0), x), f"{op} at factor 1 must be the identity"


def test_sharpness_and_autocontrast():
    x = random_images(2, 16, low=60, high=180)
    smooth = apply_op(x, "sharpness", 0.0)
    assert torch.equal(smooth[..., 0, :], x[..., 0, :]) and torch.equal(smooth[..., :, -1], x[..., :, -1])
    assert smooth[..., 1:-1, 1:-1].float().std() < x[..., 1:-1, 1:-1].float().std()
    stretched = apply_op(x, "autocontrast", 0.0).flatten(2)
    assert (stretched.min(2).values == 0).all() and (stretched.max(2).values == 255).all()
    flat = torch.full((1, 3, 8, 8), 90, dtype=torch.uint8)
    assert torch.equal(apply_op(flat, "autocontrast", 0.0), flat)


def test_geometric_ops_move_pixels_correctly():
    x = random_images(2, 32)
    assert torch.equal(apply_op(x, "rotate", 90.0), torch.rot90(x, 1, (2, 3)))  # counter-clockwise
    right = apply_op(x, "translate_x", 0.25)
    assert torch.equal(right[..., 8:], x[..., :-8]) and (right[..., :8] == 0).all()
    down = apply_op(x, "translate_y", -0.25)
    assert torch.equal(down[..., :-8, :], x[..., 8:, :]) and (down[..., -8:, :] == 0).all()
    rows = torch.arange(1, 33, dtype=torch.uint8).view(1, 1, 32, 1).expand(1, 3, 32, 32).contiguous()
    sheared = apply_op(rows, "shear_x", 0.3)  # horizontal shear keeps every pixel in its row
    assert not torch.equal(sheared, rows)
    assert ((sheared == rows) | (sheared == 0)).all()
    cols = rows.transpose(2, 3).contiguous()
    sheared = apply_op(cols, "shear_y", -0.3)
    assert not torch.equal(sheared, cols)
    assert ((sheared == cols) | (sheared == 0)).all()


@pytest.mark.parametrize(
    "axis,cfg", [(3, AugmentConfig(vflip=False, translate=0.0)), (2, AugmentConfig(hflip=False, translate=0.0))]
)
def test_flips_happen_with_probability_one_half(axis, cfg):
    x = random_images(400, 8)
    y = weak_augment(x, gen(11), cfg)
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(axis)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 0.4 < flipped.float().mean().item() < 0.6


def test_translation_is_a_reflect_padded_random_crop():
    x = random_images(40, 32)
    y = weak_augment(x, gen(5), AugmentConfig(hflip=False, vflip=False, translate=0.125))
    padded = nnf.pad(x.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)  # int(0.125 * 32) = 4
    offsets = set()
    for i in range(len(x)):
        crops = {(dy, dx): padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
        found = [offset for offset, crop in crops.items() if torch.equal(y[i], crop)]
        assert found, f"image {i} is not a crop of the reflect-padded input"
        offsets.add(found[0])
    assert len(offsets) > 10


def test_cutout_paints_one_grey_square_in_every_image():
    x = random_images(64, 32)
    x[x == CUTOUT_FILL] = 0  # so that every grey pixel in the output comes from cutout
    y = strong_augment(x, gen(2), AugmentConfig(hflip=False, vflip=False, translate=0.0, n_ops=0, cutout=0.5))
    grey = (y == CUTOUT_FILL).all(1)
    sides = []
    for i in range(len(x)):
        rows, cols = grey[i].nonzero(as_tuple=True)
        assert len(rows), f"image {i} has no cutout"
        box = grey[i, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and int(box.sum()) == int(grey[i].sum()), "cutout must be one filled rectangle"
        assert max(box.shape) <= 16
        sides.append(max(box.shape))
        assert torch.equal(y[i][:, ~grey[i]], x[i][:, ~grey[i]])
    assert len(set(sides)) > 3


def test_policy_is_data():
    x = random_images(6, 16)
    invert = (("solarize", (0.0, 0.0)),)
    once = AugmentConfig(hflip=False, vflip=False, translate=0.0, n_ops=1, cutout=0.0, policy=invert)
    assert torch.equal(strong_augment(x, gen(), once), 255 - x)
    twice = AugmentConfig(hflip=False, vflip=False, translate=0.0, n_ops=2, cutout=0.0, policy=invert)
    assert torch.equal(strong_augment(x, gen(), twice), x)


def test_strong_ops_are_spread_over_the_batch():
    x = random_images(64, 16, low=50, high=200)
    cfg = AugmentConfig(hflip=False, vflip=False, translate=0.0, cutout=0.0)
    y = strong_augment(x, gen(4), cfg)
    unchanged = (y == x).flatten(1).all(1).float().mean().item()
    assert unchanged < 0.2  # only identity+identity (1/196) or near-no-op draws leave an image as is


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.zeros(2, 3, 16, 16), "uint8"),
        (torch.zeros(3, 16, 16, dtype=torch.uint8), "shape"),
        (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "shape"),
        (torch.zeros(2, 16, 16, 3, dtype=torch.uint8), "shape"),
        (torch.zeros(2, 3, 2, 2, dtype=torch.uint8), "at least"),
        (np.zeros((2, 3, 16, 16), dtype=np.uint8), "torch.Tensor"),
    ],
)
def test_invalid_images_raise_clear_errors(bad, message):
    calls = (lambda: weak_augment(bad, gen()), lambda: strong_augment(bad, gen()), lambda: apply_op(bad, "rotate", 1))
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_invalid_config_and_op_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown augment op"):
        apply_op(random_images(1, 16), "blur", 1.0)
    with pytest.raises(ValueError, match="unknown augment op"):
        AugmentConfig(policy=(("blur", (0.0, 1.0)),))
    with pytest.raises(ValueError, match="empty range"):
        AugmentConfig(policy=(("rotate", (30.0, -30.0)),))
    with pytest.raises(ValueError, match="op_name"):
        AugmentConfig(policy=("rotate",))
    with pytest.raises(ValueError, match="translate"):
        AugmentConfig(translate=0.7)
    with pytest.raises(ValueError, match="n_ops"):
        AugmentConfig(n_ops=-1)
    with pytest.raises(ValueError, match="cutout"):
        AugmentConfig(cutout=1.5)
    with pytest.raises(ValueError, match="policy is empty"):
        AugmentConfig(policy=())
