"""The network: the seed's layers and parameter count, every variant's shapes, the options."""
import pytest
import torch
from torch import nn

import nin
from nin.models import (NIN, STEP_OVERHEAD_BYTES, _kept_bytes, count_parameters, create_model, list_models,
                        nin_cifar10, training_step_bytes)


class SeedNIN(nn.Module):
    """The seed document's CIFAR-10 network, copied layer for layer as the reference."""

    def __init__(self, in_channels=3, out_channels=10):
        super().__init__()
        self.features1 = nn.Sequential(
            nn.Conv2d(in_channels, 192, 5, padding=2), nn.ReLU(), nn.Conv2d(192, 160, 1), nn.ReLU(),
            nn.Conv2d(160, 96, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5))
        self.features2 = nn.Sequential(
            nn.Conv2d(96, 192, 5, padding=2), nn.ReLU(), nn.Conv2d(192, 192, 1), nn.ReLU(),
            nn.Conv2d(192, 192, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5))
        self.features3 = nn.Sequential(
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.Conv2d(192, 192, 1), nn.ReLU(),
            nn.Conv2d(192, out_channels, 1), nn.ReLU())
        self.gap = nn.AvgPool2d(8, 1)

    def forward(self, x):
        return self.gap(self.features3(self.features2(self.features1(x)))).flatten(1)


def test_nin_cifar10_is_the_seed_network_parameter_for_parameter():
    ours, seed = nin_cifar10(), SeedNIN()
    assert count_parameters(ours) == count_parameters(seed) == 966_986
    our_params = [(name, p.shape) for name, p in ours.named_parameters()]
    seed_params = [(name, p.shape) for name, p in seed.named_parameters()]
    assert our_params == seed_params
    # the seed's weights load as they are and give the same outputs
    ours.load_state_dict(seed.state_dict())
    ours.eval(), seed.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), seed(x))
    layer_types = [type(m).__name__ for m in ours.features1]
    assert layer_types == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Dropout"]


EXPECTED_PARAMETERS = {"nin_cifar10": 966_986, "nin_cifar100": 984_356, "nin_svhn": 1_199_594,
                       "nin_mnist": 349_674, "nin_imagenet": 7_595_176}
INPUTS = {"nin_cifar10": (3, 32, 10), "nin_cifar100": (3, 32, 100), "nin_svhn": (3, 32, 10),
          "nin_mnist": (1, 28, 10), "nin_imagenet": (3, 224, 1000)}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_every_variant_has_its_parameter_count_and_output_shape(name):
    model = create_model(name).eval()
    assert count_parameters(model) == EXPECTED_PARAMETERS[name]
    channels, size, classes = INPUTS[name]
    with torch.no_grad():
        maps = model.forward_features(torch.randn(2, channels, size, size))
        assert maps.shape[:2] == (2, classes)  # one category confidence map per class
        assert model.forward_head(maps).shape == (2, classes)


def test_imagenet_maps_are_6x6_as_in_caffe():
    with torch.no_grad():
        maps = create_model("nin_imagenet").eval().forward_features(torch.randn(1, 3, 224, 224))
    assert maps.shape == (1, 1000, 6, 6)


def test_registry_lists_every_variant_and_its_batchnorm_twin():
    names = nin.list_models()
    for base in EXPECTED_PARAMETERS:
        assert base in names and f"{base}_bn" in names
    assert any(isinstance(m, nn.BatchNorm2d) for m in nin.create_model("nin_mnist_bn").modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nin.create_model("nin_mnist").modules())


@pytest.mark.parametrize("size", [24, 32, 40, 57])
def test_global_average_pooling_takes_any_input_size(size):
    model = create_model("nin_cifar10", num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_options_change_the_layers():
    model = create_model("nin_cifar10", dropout=0.0, pools=("max", "avg"), relu_before_gap=False)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert isinstance(model.features2[6], nn.AvgPool2d)
    assert not isinstance(model.features3[-1], nn.ReLU)


@pytest.mark.parametrize("head,dropouts", [("fc", 2), ("fc_dropout", 3)])
def test_fully_connected_heads_for_table_5(head, dropouts):
    model = create_model("nin_cifar10", head=head)
    assert isinstance(model.fc[-1], nn.Linear) and model.fc[-1].out_features == 10
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == dropouts
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_width_multiplier_scales_every_layer_but_the_class_maps():
    half = create_model("nin_cifar10", width=0.5)
    convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 80, 48, 96, 96, 96, 96, 96, 10]
    assert 0.2 < count_parameters(half) / count_parameters(create_model("nin_cifar10")) < 0.3
    for name, head, (channels, size) in [("cnn_sec46", "gap", (3, 32)), ("cnn_sec46", "fc_dropout", (3, 32)),
                                         ("nin_mnist_bn", "fc", (1, 28))]:
        model = create_model(name, width=0.5, head=head).eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_gaussian_init_is_the_authors_std_005():
    model = create_model("nin_cifar10", init="gaussian")
    weight = model.features2[0].weight
    assert abs(weight.std().item() - 0.05) < 0.002
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_default_init_starts_every_class_map_alive():
    """Dead ReLUs before GAP are NIN's best-known failure: every class must get gradient at step 0."""
    torch.manual_seed(0)
    model = create_model("nin_cifar10")
    logits = model(torch.randn(16, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 10, (16,))).backward()
    last = model.features3[4]
    assert (last.weight.grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("kwargs,message", [
    ({"head": "mlp"}, "unknown head"), ({"init": "xavier"}, "unknown init"),
    ({"pools": ("max",)}, "pools needs 2"), ({"pools": ("max", "min")}, "unknown pooling"),
    ({"widths": 3}, "bad argument"), ({"width": 0}, "width 0 is not a multiplier"),
    ({"width": -0.5}, "width -0.5 is not"), ({"width": 17}, "width 17 is not"), ({"width": "half"}, "width 'half'"),
])
def test_bad_options_raise_a_clear_error(kwargs, message):
    with pytest.raises(nin.NinError, match=message):
        create_model("nin_cifar10", **kwargs)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(nin.NinError, match="unknown model 'nin_cifar11'.*nin_cifar10"):
        create_model("nin_cifar11")


def test_model_class_is_exported():
    assert isinstance(nin.create_model("nin_mnist"), NIN) and "nin_mnist" in list_models()


def test_locally_connected_layer_is_a_convolution_with_a_filter_per_position():
    from nin.models import LocallyConnected2d

    layer = LocallyConnected2d(3, 4, size=6, kernel=3, padding=1)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():  # give every position the convolution's filter: the outputs must agree
        layer.weight.copy_(conv.weight.reshape(4, -1).expand(36, 4, 27))
        layer.bias.copy_(conv.bias.view(4, 1, 1).expand(4, 6, 6))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(layer(x), conv(x))
    with torch.no_grad():  # and one position's own filter changes that position only
        layer.weight[7].zero_()
    changed = (layer(x) - conv(x)).abs().sum(dim=(0, 1)) > 1e-3
    assert changed.flatten().nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("head,parameters", [("gap", 2_374_912), ("fc", 3_049_098), ("fc_dropout", 3_049_098)])
def test_section_4_6_conventional_cnn_has_three_convolutions_and_a_locally_connected_layer(head, parameters):
    from nin.models import LocallyConnected2d

    model = create_model("cnn_sec46", head=head).eval()
    assert count_parameters(model) == parameters
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 3
    assert sum(isinstance(m, LocallyConnected2d) for m in model.modules()) == 1
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(nin.NinError, match="built for 8x8 maps, got 7x7"):
        model(torch.randn(1, 3, 28, 28))


def test_training_step_memory_counts_what_the_backward_pass_keeps():
    # in-place ReLUs share their input's memory; max pooling keeps int64 indices, dropout a byte mask
    assert _kept_bytes(nn.ReLU(inplace=True), 1000) == 0
    assert _kept_bytes(nn.MaxPool2d(2), 1000) == 12_000
    assert _kept_bytes(nn.Dropout(0.5), 1000) == 5_000
    assert _kept_bytes(nn.Conv2d(1, 1, 1), 1000) == 4_000
    small, double = (training_step_bytes("nin_mnist", {}, batch, 1, 28) for batch in (64, 128))
    activations = double - small  # what 64 more images add: the batch's part, the fixed part cancels
    assert small == activations + STEP_OVERHEAD_BYTES + 16 * count_parameters(create_model("nin_mnist"))


@pytest.mark.parametrize("channels, pairs", [(1, 25), (3, 48)])
def test_whitening_decorrelates_the_first_layers_outputs_on_real_images(fashion_mnist_root, channels, pairs):
    """Grey 5x5 patches have 25 directions (50 of the 96 filters set); colour ones 75, more than the 48
    pairs that 96 filters hold: the strongest 48."""
    from nin.data import load_dataset
    from nin.models import whiten_first_layer

    images = load_dataset("fashion-mnist", None, "test").images[:200].float() / 255  # all of them used
    images = images * torch.rand(200, channels, 1, 1, generator=torch.Generator().manual_seed(0))  # tinted
    images = (images - images.mean()) / images.std()
    model = create_model("nin_mnist_bn", in_channels=channels)
    before = model.features1[0].weight.detach().clone()
    assert whiten_first_layer(model, images) == 2 * pairs
    conv = model.features1[0]
    outputs = conv(images).detach().transpose(0, 1).reshape(conv.out_channels, -1).double()
    second_moment = outputs[:pairs] @ outputs[:pairs].T / outputs.shape[1]
    assert second_moment[0, 0].item() == pytest.approx(1.0, abs=0.01)  # the strongest direction: unit variance
    off_diagonal = second_moment - torch.diag(second_moment.diag())
    assert off_diagonal.abs().max().item() < 0.01  # uncorrelated
    assert torch.equal(conv.weight[pairs:2 * pairs], -conv.weight[:pairs])  # each filter with its negation
    assert torch.equal(conv.weight[2 * pairs:], before[2 * pairs:])  # the others keep their random start


def test_identity_init_passes_each_inner_layers_first_channels_through():
    """nin_mnist_bn's convolutions: 1->96 (5x5), 96->64, 64->48, 48->128 (5x5), 128->96, 96->48, 48->128 (5x5),
    128->96, 96->10: all but the first and the class maps start as identities on their first channels."""
    from nin.models import identity_init

    model = create_model("nin_mnist_bn")
    convs = [layer for layer in model.modules() if isinstance(layer, nn.Conv2d)]
    before = [conv.weight.detach().clone() for conv in convs]
    assert identity_init(model) == 7
    inner = convs[2]  # 64 -> 48, 1x1: its 48 filters each take one input channel
    assert torch.equal(inner.weight[:, :, 0, 0], torch.eye(48, 64))
    spatial = convs[3]  # 48 -> 128, 5x5: the first 48 filters copy their channel's centre pixel, the rest random
    x = torch.randn(1, 48, 9, 9)
    assert torch.allclose(nn.functional.conv2d(x, spatial.weight[:48], padding=2), x, atol=1e-6)
    assert torch.equal(spatial.weight[48:], before[3][48:])
    assert torch.equal(convs[0].weight, before[0]) and torch.equal(convs[-1].weight, before[-1])
