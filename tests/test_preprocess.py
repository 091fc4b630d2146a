"""The paper's preprocessing (nin.data.preprocess): GCN + ZCA whitening and LCN prove their defining
properties on synthetic data, keep Normalize's interface, and survive a state_dict round trip exactly."""
import io
import math

import pytest
import torch

from nin.data import DeviceLoader, Normalize
from nin.data.preprocess import (KINDS, MAX_ZCA_DIM, GcnZca, Lcn, Standardize, global_contrast_normalize,
                                 make_preprocess, preprocess_from_state)
from nin.errors import NinError

SHAPE = (3, 8, 8)  # D = 192
DIM = math.prod(SHAPE)


def correlated_images(count: int, seed: int, shape=SHAPE) -> torch.Tensor:
    """uint8 images whose pixels are strongly correlated: Gaussian noise through a fixed random mixing with
    a spectrum from 1 down to 0.03 (variances 400 .. 0.4 + rounding), plus per-image brightness and contrast
    (what GCN removes). The mixing is the same for every seed; the noise is not."""
    dim = math.prod(shape)
    mixing_gen = torch.Generator().manual_seed(1234)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=mixing_gen, dtype=torch.float64))
    mixing = basis * torch.logspace(0, -1.5, dim, dtype=torch.float64) @ basis.T
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, dim, generator=gen, dtype=torch.float64) @ mixing
    brightness = 100 + 50 * torch.rand(count, 1, generator=gen, dtype=torch.float64)
    contrast = 12 + 10 * torch.rand(count, 1, generator=gen, dtype=torch.float64)
    pixels = brightness + contrast * noise
    assert pixels.min() > 0 and pixels.max() < 255  # no clipping: the covariance is what we built
    return pixels.round().to(torch.uint8).view(count, *shape)


@pytest.fixture(scope="module")
def train_images():
    return correlated_images(2000, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return correlated_images(300, seed=1)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The biased (1/N) covariance of rows, in float64, as ZCA defines it."""
    x = x.reshape(len(x), -1).double()
    centred = x - x.mean(dim=0)
    return centred.T @ centred / len(x)


def gcn64(images: torch.Tensor, scale: float = 55.0) -> torch.Tensor:
    """An independent float64 GCN: centre each image, scale it to norm ``scale``."""
    x = images.reshape(len(images), -1).double()
    x = x - x.mean(dim=1, keepdim=True)
    return scale * x / x.norm(dim=1, keepdim=True)


# --- GCN -----------------------------------------------------------------------------------------------

def test_gcn_makes_every_image_zero_mean_with_norm_55_whatever_its_brightness_and_contrast(train_images):
    x = train_images[:100].reshape(100, -1).float()
    out = global_contrast_normalize(x)
    assert out.dtype == torch.float32
    assert out.mean(dim=1).abs().max() < 1e-4
    torch.testing.assert_close(out.norm(dim=1), torch.full((100,), 55.0), rtol=1e-5, atol=0)
    torch.testing.assert_close(global_contrast_normalize(3.0 * x + 17.0), out, rtol=0, atol=2e-4)  # affine-free
    flat = global_contrast_normalize(torch.full((2, DIM), 77.0))
    assert torch.equal(flat, torch.zeros(2, DIM))  # a flat image: zeros, never NaN


# --- ZCA -----------------------------------------------------------------------------------------------

def test_zca_with_bias_0_turns_the_training_covariance_into_the_identity(train_images):
    raw = covariance(train_images)
    spread = torch.linalg.eigvalsh(raw)
    assert spread.max() / spread.min() > 500  # strongly correlated to begin with
    pre = GcnZca.fit(train_images, gcn=False, filter_bias=0.0)
    white = pre(train_images)
    assert white.shape == train_images.shape and white.dtype == torch.float32
    assert white.reshape(len(white), -1).mean(dim=0).abs().max() < 1e-4
    assert (covariance(white) - torch.eye(DIM, dtype=torch.float64)).abs().max() < 1e-5


def test_gcn_then_zca_with_bias_0_whitens_all_but_the_constant_direction_gcn_removed(train_images):
    pre = GcnZca.fit(train_images, filter_bias=0.0)
    ones = torch.full((DIM, 1), 1 / math.sqrt(DIM), dtype=torch.float64)
    expected = torch.eye(DIM, dtype=torch.float64) - ones @ ones.T  # identity on the images' subspace
    assert (covariance(pre(train_images)) - expected).abs().max() < 1e-5


def test_zca_with_the_papers_bias_shrinks_each_direction_to_l_over_l_plus_bias(train_images):
    pre = GcnZca.fit(train_images)  # the defaults: GCN scale 55, filter bias 0.1
    assert (pre.scale, pre.filter_bias, pre.gcn) == (55.0, 0.1, True)
    s = covariance(gcn64(train_images))
    expected = s @ torch.linalg.inv(s + 0.1 * torch.eye(DIM, dtype=torch.float64))
    got = covariance(pre(train_images))
    assert (got - expected).abs().max() < 1e-5
    eigenvalues = torch.linalg.eigvalsh(got)
    assert eigenvalues.max() < 1.0 and eigenvalues.min() > -1e-4  # shrunk, never amplified past 1
    assert (got - torch.eye(DIM, dtype=torch.float64)).abs().max() > 0.01  # and visibly not the identity


def test_a_held_out_batch_gets_the_training_transform_image_by_image(train_images, held_out):
    pre = GcnZca.fit(train_images)
    out = pre(held_out)
    reference = (gcn64(held_out) - pre.mean.double()) @ pre.whiten.double()  # the stored matrix, float64
    torch.testing.assert_close(out.reshape(len(held_out), -1).double(), reference, rtol=0, atol=1e-4)
    # eval time: an image's output does not depend on the batch it comes in
    torch.testing.assert_close(pre(held_out[5:12]), out[5:12], rtol=0, atol=1e-5)
    refit = GcnZca.fit(torch.cat([train_images, held_out]))
    assert not torch.allclose(refit.whiten, pre.whiten, atol=1e-4)  # the fit is the training images' alone


def test_fitting_in_uint8_chunks_matches_fitting_everything_at_once(train_images):
    whole = GcnZca.fit(train_images, chunk=len(train_images))
    chunked = GcnZca.fit(train_images, chunk=137)  # uneven last chunk
    torch.testing.assert_close(chunked.mean, whole.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.whiten, whole.whiten, rtol=0, atol=1e-5)


def test_zca_refuses_images_too_large_to_whiten_and_a_batch_of_the_wrong_shape(train_images):
    with pytest.raises(NinError, match="ZCA whitening of 3x65x65 images needs a 12675 x 12675 matrix"):
        GcnZca.fit(torch.zeros(2, 3, 65, 65, dtype=torch.uint8))
    assert 3 * 64 * 64 == MAX_ZCA_DIM
    pre = GcnZca.fit(train_images[:300])
    with pytest.raises(NinError, match="fitted on 3x8x8 images, got 3x9x9"):
        pre(torch.zeros(1, 3, 9, 9, dtype=torch.uint8))


# --- LCN -----------------------------------------------------------------------------------------------

def lcn_test_image(contrast: int = 1, seed: int = 0) -> torch.Tensor:
    """(1, 2, 32, 32) uint8: left half a flat (channel 0) or linear ramp (channel 1) region, right half
    integer noise of standard deviation 20 times ``contrast`` (exactly: the same noise scaled, no clipping)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.empty(2, 32, 32)
    image[0] = 90.0
    image[1] = 40.0 + 4.0 * torch.arange(32.0).view(1, 32)  # linear across the columns, ramp across the image
    noise = (20 * torch.randn(2, 32, 16, generator=gen)).round().clamp(-60, 60)
    image[:, :, 16:] = 128 + contrast * noise
    assert image.min() >= 0 and image.max() <= 255
    return image.to(torch.uint8).unsqueeze(0)


def test_lcn_is_zero_in_flat_and_linear_regions_and_unit_in_textured_ones():
    pre = Lcn()  # 7x7 Gaussian, sigma 2: its reach is 3 pixels
    assert (pre.kernel_size, pre.sigma) == (7, 2.0) and torch.allclose(pre.kernel.sum(), torch.tensor(1.0))
    out = pre(lcn_test_image())
    assert out.shape == (1, 2, 32, 32) and out.dtype == torch.float32
    inside = out[0, :, 3:29, 3:13]  # 3+ pixels from the image border and from the noise
    assert inside.abs().max() < 1e-4  # local mean removed: nothing left of a flat or linear region
    texture = out[0, :, 3:29, 19:29]
    assert 0.7 < texture.square().mean().sqrt() < 1.3  # divided by its local standard deviation


def test_lcn_normalises_contrast_high_contrast_regions_come_out_the_same():
    pre = Lcn()
    low, high = pre(lcn_test_image(1)), pre(lcn_test_image(2))  # the same noise, twice the contrast
    # 6+ pixels inside the noise: the local standard deviation at a pixel sees the centred values 3 pixels
    # away, whose local means see 3 pixels further
    a, b = low[0, :, 6:26, 22:26], high[0, :, 6:26, 22:26]
    assert (a - b).abs().max() < 1e-5  # divided by the local standard deviation, which doubled too
    assert 0.8 < a.square().mean().sqrt() < 1.2


# --- all kinds: the Normalize interface, exact state round trips ----------------------------------------

@pytest.fixture(scope="module")
def fitted(train_images):
    return {kind: make_preprocess(kind, train_images) for kind in KINDS}


def test_factories_make_each_kind_and_read_old_normalize_states(train_images, fitted):
    assert [type(fitted[k]) for k in KINDS] == [Standardize, GcnZca, Lcn]
    assert all(fitted[k].kind == k for k in KINDS)
    plain = Normalize.fit(train_images)
    assert isinstance(fitted["standardize"], Normalize)  # code that reads .mean and .std keeps working
    assert torch.equal(fitted["standardize"](train_images[:50]), plain(train_images[:50]))
    old = preprocess_from_state(plain.state_dict())  # {"mean", "std"}: every checkpoint written so far
    assert isinstance(old, Standardize) and torch.equal(old(train_images[:50]), plain(train_images[:50]))
    with pytest.raises(NinError, match="unknown preprocessing 'pca': expected one of standardize, gcn_zca, lcn"):
        make_preprocess("pca", train_images)
    with pytest.raises(NinError, match="incomplete gcn_zca preprocessing state"):
        preprocess_from_state({"kind": "gcn_zca", "shape": [3, 8, 8]})


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_through_a_weights_only_checkpoint_gives_identical_outputs(kind, fitted, held_out):
    pre = fitted[kind]
    state = pre.state_dict()
    assert state["kind"] == kind
    buffer = io.BytesIO()
    torch.save({"normalization": state}, buffer)
    buffer.seek(0)
    back = preprocess_from_state(torch.load(buffer, weights_only=True)["normalization"])
    assert type(back) is type(pre)
    assert torch.equal(back(held_out), pre(held_out))
    assert torch.equal(type(pre).from_state(state)(held_out), pre(held_out))


@pytest.mark.parametrize("kind", KINDS)
def test_to_module_computes_the_same_function_for_exports(kind, fitted, held_out):
    module = fitted[kind].to_module()
    assert torch.equal(module(held_out), fitted[kind](held_out))
    assert torch.equal(module(held_out.float()), fitted[kind](held_out))  # float 0..255 pixels too
    assert sum(1 for _ in module.parameters()) == 0  # buffers only: nothing to train


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_drops_into_the_device_loader(kind, fitted, train_images):
    labels = torch.arange(len(train_images)) % 10
    loader = DeviceLoader(train_images, labels, fitted[kind], batch_size=256, train=True, translate=2, flip=True)
    batches = list(loader)
    assert len(batches) == len(train_images) // 256
    for batch, _ in batches:
        assert batch.shape == (256, *SHAPE) and batch.dtype == torch.float32 and torch.isfinite(batch).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_applying_on_the_gpu_gives_float32_there_and_matches_the_cpu(kind, fitted, held_out, train_images):
    pre = fitted[kind]
    out = pre(held_out.cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), pre(held_out), rtol=0, atol=1e-3)
    if kind == "gcn_zca":  # and the fit itself can run there
        on_gpu = GcnZca.fit(train_images, device="cuda")
        torch.testing.assert_close(on_gpu.whiten, pre.whiten, rtol=0, atol=1e-4)


def test_a_zca_fit_is_remembered_for_the_same_images_and_settings(train_images, held_out, monkeypatch):
    """nin reproduce trains many rows on the same images: the D x D fit is done once per process."""
    import nin.data.preprocess as preprocess

    monkeypatch.setattr(preprocess, "_FITTED_ZCA", {})  # nothing remembered from the other tests
    fits = []
    real_fit = GcnZca.fit.__func__
    monkeypatch.setattr(GcnZca, "fit", classmethod(lambda cls, *a, **k: fits.append(1) or real_fit(cls, *a, **k)))
    first = make_preprocess("gcn_zca", train_images, filter_bias=0.05)
    again = make_preprocess("gcn_zca", train_images.clone(), filter_bias=0.05)  # equal bytes, another tensor
    other = make_preprocess("gcn_zca", train_images, filter_bias=0.2)
    assert len(fits) == 2 and torch.equal(first(held_out), again(held_out))
    assert not torch.equal(first(held_out), other(held_out))
