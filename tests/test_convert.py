"""`nin convert caffe`: the authors' Caffe models (files written here in Caffe's own format, random
weights) become nin exports that compute what Caffe computes, checked against a forward pass written
from the Caffe layer definitions (tests/caffe_files.py)."""
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import nin
from caffe_files import (NIN_CIFAR10, NIN_IMAGENET, caffe_forward, mean_binaryproto, random_blobs,
                         write_caffemodel, write_prototxt)
from nin.caffe import read_caffemodel
from nin.cli import main
from formats import write_cifar10
from nin.convert import ILSVRC_MEAN_BGR, PYTORCHCV_MEAN, PYTORCHCV_STD
from nin.data.preprocess import make_preprocess

CIFAR_MEAN_RGB = (125.3, 123.0, 113.9)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, message):
    assert code == 2 and err.startswith("nin: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


def rgb_images(count: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def converted_logits(path, images: torch.Tensor) -> torch.Tensor:
    model = nin.load(path)
    with torch.no_grad():
        return model(model.info.normalize()(images)).double()


@pytest.mark.parametrize("generation", ["v0", "v1", "new"])
def test_the_authors_cifar10_network_computes_what_caffe_computes(generation, tmp_path, capsys):
    blobs = random_blobs(NIN_CIFAR10, 3)
    write_caffemodel(tmp_path / "cifar10_nin.caffemodel", NIN_CIFAR10, blobs, generation)
    code, out, _ = run(["convert", "caffe", tmp_path / "cifar10_nin.caffemodel", "--model", "nin_cifar10",
                        "--out", tmp_path / "nin", "--mean", ",".join(map(str, CIFAR_MEAN_RGB))], capsys)
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'nin.safetensors'}")

    images = rgb_images(4, 32)  # this original reads RGB, the order of its pylearn2 arrays
    reference = caffe_forward(NIN_CIFAR10, blobs, images, CIFAR_MEAN_RGB)
    assert (converted_logits(tmp_path / "nin.safetensors", images) - reference).abs().max() < 1e-5 * reference.abs().max()
    config = json.loads((tmp_path / "nin.json").read_text())
    assert config["model_kwargs"]["pools"] == ["max", "avg"] and config["model_kwargs"]["pool_ceil"] is True
    assert config["classes"][0] == "airplane" and config["source"]["reported_test_accuracy"] == 89.6


def test_the_authors_imagenet_network_reads_bgr_minus_the_ilsvrc_mean(tmp_path, capsys):
    blobs = random_blobs(NIN_IMAGENET, 3)
    write_caffemodel(tmp_path / "nin_imagenet.caffemodel", NIN_IMAGENET, blobs, "new")
    assert run(["convert", "caffe", tmp_path / "nin_imagenet.caffemodel", "--model", "nin_imagenet",
                "--out", tmp_path / "imagenet"], capsys)[0] == 0

    images = rgb_images(2, 224)
    reference = caffe_forward(NIN_IMAGENET, blobs, images.flip(1), ILSVRC_MEAN_BGR)  # Caffe is fed BGR
    logits = converted_logits(tmp_path / "imagenet.json", images)
    assert (logits - reference).abs().max() < 1e-5 * reference.abs().max()
    config = json.loads((tmp_path / "imagenet.json").read_text())
    assert len(config["classes"]) == 1000 and config["classes"][0] == "tench"


def test_a_converted_model_predicts_and_exports_to_onnx(tmp_path, capsys):
    blobs = random_blobs(NIN_CIFAR10, 3)
    write_caffemodel(tmp_path / "c.caffemodel", NIN_CIFAR10, blobs)
    mean_file = tmp_path / "mean.binaryproto"
    mean_file.write_bytes(mean_binaryproto(CIFAR_MEAN_RGB))  # in the order the network reads: RGB for this one
    assert run(["convert", "caffe", tmp_path / "c.caffemodel", "--model", "nin_cifar10", "--out", tmp_path / "m",
                "--mean-file", mean_file], capsys)[0] == 0
    assert nin.load(tmp_path / "m.safetensors").info.mean == pytest.approx([m / 255 for m in CIFAR_MEAN_RGB])

    Image.fromarray(np.asarray(rgb_images(1, 32)[0].permute(1, 2, 0))).save(tmp_path / "photo.png")
    code, out, _ = run(["predict", tmp_path / "m.safetensors", tmp_path / "photo.png", "--topk", "2"], capsys)
    assert code == 0 and "photo.png" in out
    code, out, _ = run(["convert", "caffe", tmp_path / "c.caffemodel", "--model", "nin_cifar10", "--out",
                        tmp_path / "onnx", "--mean", "120,120,120", "--format", "onnx"], capsys)
    assert code == 0 and (tmp_path / "onnx.onnx").is_file()  # checked with onnxruntime as nin export does


def test_the_authors_whitening_is_fitted_on_cifar10_when_asked(tmp_path, capsys):
    # the authors fed their CIFAR-10 network GCN + ZCA-whitened images, which the .caffemodel does not hold
    batches = write_cifar10(tmp_path / "data", n=4)
    blobs = random_blobs(NIN_CIFAR10, 3)
    write_caffemodel(tmp_path / "c.caffemodel", NIN_CIFAR10, blobs)
    assert run(["convert", "caffe", tmp_path / "c.caffemodel", "--model", "nin_cifar10", "--out", tmp_path / "w",
                "--fit-preprocess", "cifar10", "--root", tmp_path / "data"], capsys)[0] == 0

    config = json.loads((tmp_path / "w.json").read_text())
    assert config["preprocessing"]["kind"] == "gcn_zca" and config["dataset"] == "cifar10"
    training = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    whiten = make_preprocess("gcn_zca", torch.from_numpy(training))
    images = rgb_images(4, 32)
    reference = caffe_forward(NIN_CIFAR10, blobs, whiten(images), (0, 0, 0))
    assert (converted_logits(tmp_path / "w.json", images) - reference).abs().max() < 1e-5 * reference.abs().max()


def test_pooling_kinds_come_from_the_file_when_it_has_them(tmp_path):
    spec = [NIN_CIFAR10[0], (*NIN_CIFAR10[1][:5], ("max", 3, 2)), NIN_CIFAR10[2]]  # the seed's max pooling
    write_caffemodel(tmp_path / "max.caffemodel", spec, random_blobs(spec, 3))
    from nin.convert import convert_caffe

    convert_caffe(tmp_path / "max.caffemodel", "nin_cifar10", tmp_path / "max", mean=(0, 0, 0))
    assert json.loads((tmp_path / "max.json").read_text())["model_kwargs"]["pools"] == ["max", "max"]
    layers = read_caffemodel(tmp_path / "max.caffemodel")
    assert [layer.name for layer in layers if layer.blobs][:2] == ["conv1", "cccp1-1"]


@pytest.mark.parametrize("generation", ["v0", "v1", "new"])
def test_a_prototxt_gives_the_pooling_kinds_a_caffemodel_leaves_out(generation, tmp_path, capsys):
    blobs = random_blobs(NIN_CIFAR10, 3)
    spec = [(*stage[:5], ("max", *stage[5][1:])) for stage in NIN_CIFAR10]  # every pooling left at Caffe's default
    write_caffemodel(tmp_path / "bare.caffemodel", spec, blobs, generation, pooling_params=False)
    write_prototxt(tmp_path / "train_val.prototxt", NIN_CIFAR10, generation)  # the second pooling: AVE
    code, _, _ = run(["convert", "caffe", tmp_path / "bare.caffemodel", "--model", "nin_cifar10", "--out",
                      tmp_path / "nin", "--prototxt", tmp_path / "train_val.prototxt", "--mean", "0,0,0"], capsys)
    assert code == 0

    images = rgb_images(4, 32)
    reference = caffe_forward(NIN_CIFAR10, blobs, images, (0, 0, 0))
    assert (converted_logits(tmp_path / "nin.json", images) - reference).abs().max() < 1e-5 * reference.abs().max()


def test_a_prototxt_data_layer_gives_the_mean_and_scale(tmp_path, capsys):
    blobs = random_blobs(NIN_IMAGENET, 3)
    write_caffemodel(tmp_path / "nin_imagenet.caffemodel", NIN_IMAGENET, blobs, "new")
    mean_bgr, scale = (100.0, 110.0, 120.0), 0.5
    write_prototxt(tmp_path / "deploy.prototxt", NIN_IMAGENET, "new", mean_value=mean_bgr, scale=scale)
    assert run(["convert", "caffe", tmp_path / "nin_imagenet.caffemodel", "--model", "nin_imagenet", "--out",
                tmp_path / "imagenet", "--prototxt", tmp_path / "deploy.prototxt"], capsys)[0] == 0

    images = rgb_images(2, 224)
    reference = caffe_forward(NIN_IMAGENET, [(n, [w * scale, b]) for n, (w, b) in blobs[:1]] + blobs[1:],
                              images.flip(1), mean_bgr)  # Caffe scales the centred pixels: the first layer sees it
    logits = converted_logits(tmp_path / "imagenet.json", images)
    assert (logits - reference).abs().max() < 1e-5 * reference.abs().max()
    assert nin.load(tmp_path / "imagenet.json").info.mean == pytest.approx([m / 255 for m in mean_bgr[::-1]])


def test_bad_caffe_files_and_options_are_one_line(tmp_path, capsys):
    blobs = random_blobs(NIN_CIFAR10, 3)
    good = tmp_path / "cifar10.caffemodel"
    write_caffemodel(good, NIN_CIFAR10, blobs)
    (tmp_path / "half.caffemodel").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.caffemodel").write_text("name: 'not a binary model'\n")
    wide = [(name, [arrays[0][:, :, :3, :3], arrays[1]]) if name == "conv2" else (name, arrays)
            for name, arrays in blobs]
    write_caffemodel(tmp_path / "wide.caffemodel", NIN_CIFAR10, wide)
    write_prototxt(tmp_path / "imagenet.prototxt", NIN_IMAGENET)
    write_prototxt(tmp_path / "cifar.prototxt", NIN_CIFAR10)
    text = (tmp_path / "cifar.prototxt").read_text()
    (tmp_path / "half.prototxt").write_text(text[: text.rindex("}")])  # the last layer left open
    (tmp_path / "two_means.prototxt").write_text('layer { name: "data" transform_param { mean_value: [1, 2] } }\n'
                                                 + text)
    (tmp_path / "negative.prototxt").write_text('layer { name: "data" transform_param { scale: -1 } }\n' + text)
    (tmp_path / "empty.prototxt").write_text("# nothing here\n")
    convert = ["convert", "caffe"]
    cifar = [good, "--model", "nin_cifar10", "--mean", "1,2,3", "--prototxt"]
    cases = [
        ([*cifar, tmp_path / "imagenet.prototxt"], "describes 12 layers with weights (conv1, cccp1-1, cccp1-2, conv2...)"
                                                   ", " f"{good} holds 9 (conv1, cccp1-1, cccp1-2, conv2...): not the same"),
        ([*cifar, tmp_path / "half.prototxt"], "not a readable Caffe prototxt (a message has no closing brace"),
        ([*cifar, good], "not a readable Caffe prototxt"),
        ([*cifar, tmp_path / "nowhere.prototxt"], "no file at"),
        ([*cifar, tmp_path / "empty.prototxt"], "holds no Caffe layers"),
        ([*cifar, tmp_path / "two_means.prototxt"], "mean_value [1.0, 2.0] is neither one number nor one a channel"),
        ([*cifar, tmp_path / "negative.prototxt"], "scale -1.0 is not a positive number"),
        ([tmp_path / "half.caffemodel", "--model", "nin_cifar10", "--mean", "1,2,3"], "the file is truncated"),
        ([tmp_path / "text.caffemodel", "--model", "nin_cifar10", "--mean", "1,2,3"], "not a readable Caffe model"),
        ([tmp_path / "missing.caffemodel", "--model", "nin_cifar10", "--mean", "1,2,3"], "no file at"),
        ([good, "--model", "nin_imagenet"], "has 9 layers with weights (conv1, cccp1-1, cccp1-2, conv2...), "
                                            "nin_imagenet has 12 convolutions: not a nin_imagenet model"),
        ([good, "--model", "nin_mnist", "--mean", "1,2,3"], "no Caffe original is known for 'nin_mnist'"),
        ([good, "--model", "nin_cifar10"], "preprocessing is not in its .caffemodel: give --mean"),
        ([good, "--model", "nin_cifar10", "--mean", "1,2"], "--mean wants three numbers 0..255"),
        ([good, "--model", "nin_cifar10", "--mean", "a,b,c"], "--mean wants three numbers 0..255"),
        ([good, "--model", "nin_cifar10", "--mean-file", tmp_path / "text.caffemodel"],
         "is not a readable Caffe mean file"),
        ([good, "--model", "nin_cifar10", "--mean-file", tmp_path / "nowhere.binaryproto"], "no file at"),
        ([good, "--model", "nin_cifar10", "--mean", "1,2,3", "--format", "pdf"], "pdf"),
        ([tmp_path / "wide.caffemodel", "--model", "nin_cifar10", "--mean", "1,2,3"],
         "layer 'conv2' has a blob of shape (192, 96, 3, 3), the model expects (192, 96, 5, 5)"),
    ]
    for argv, message in cases:
        code, _, err = run([*convert, *argv, "--out", tmp_path / "out"], capsys)
        assert_one_line_error(code, err, message)
    assert not list(tmp_path.glob("out.*"))


def pytorchcv_logits(model, images: torch.Tensor) -> torch.Tensor:
    """pytorchcv's own model on its own input: pixels / 255 standardised with imgclsmob's CIFAR numbers."""
    mean, std = torch.tensor(PYTORCHCV_MEAN).view(1, 3, 1, 1), torch.tensor(PYTORCHCV_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()((images / 255 - mean) / std).double()


@pytest.mark.parametrize("name, original, classes", [
    ("nin_cifar10", "pytorchcv:nin_cifar10", 10),
    ("nin_cifar100", None, 100),  # recognised from its 100 class maps
    ("nin_svhn", "pytorchcv:nin_svhn", 10),  # NIN-CIFAR's widths: only --original tells it from nin_cifar10
])
def test_pytorchcv_weights_compute_what_pytorchcv_computes(name, original, classes, tmp_path, capsys):
    from pytorchcv.models import nin_cifar

    torch.manual_seed(0)
    theirs = getattr(nin_cifar, name)()
    torch.save(theirs.state_dict(), tmp_path / f"{name}.pth")
    flags = ["--original", original] if original else []
    code, out, _ = run(["convert", "torch", tmp_path / f"{name}.pth", "--out", tmp_path / name, *flags], capsys)
    assert code == 0 and "osmr/imgclsmob" in out

    images = rgb_images(4, 32)
    reference = pytorchcv_logits(theirs, images)
    assert (converted_logits(tmp_path / f"{name}.safetensors", images) - reference).abs().max() < 1e-5
    assert len(nin.load(tmp_path / f"{name}.safetensors").info.classes) == classes


def neural_style_nin() -> torch.nn.Sequential:
    """neural-style-pt's NIN layout (nin_imagenet.pth): the Caffe network as one Sequential."""
    nn = torch.nn
    layers, channels = [], 3
    for index, (kernel, stride, pad, widths) in enumerate([(11, 4, 0, (96, 96, 96)), (5, 1, 2, (256, 256, 256)),
                                                           (3, 1, 1, (384, 384, 384)), (3, 1, 1, (1024, 1024, 1000))]):
        if index == 3:
            layers.append(nn.Dropout(0.5))
        for position, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, kernel if position == 0 else 1, stride if position == 0 else 1,
                                 pad if position == 0 else 0), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True) if index < 3 else nn.AvgPool2d(6, 1, ceil_mode=True))
    return nn.Sequential(*layers, nn.Flatten())


def test_neural_style_nin_imagenet_is_recognised_and_reads_rgb(tmp_path, capsys):
    torch.manual_seed(0)
    theirs = neural_style_nin().eval()
    torch.save(theirs.state_dict(), tmp_path / "nin_imagenet.pth")
    assert run(["convert", "torch", tmp_path / "nin_imagenet.pth", "--out", tmp_path / "ns"], capsys)[0] == 0
    images = rgb_images(2, 224)
    bgr = images.flip(1).float() - torch.tensor(ILSVRC_MEAN_BGR).view(1, 3, 1, 1).float()
    with torch.no_grad():
        reference = theirs(bgr).double()
    assert (converted_logits(tmp_path / "ns.safetensors", images) - reference).abs().max() < 1e-5 * reference.abs().max()


def test_other_state_dicts_and_wrong_options_are_one_line(tmp_path, capsys):
    from pytorchcv.models import nin_cifar
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "resnet.pth")
    torch.save(nin_cifar.nin_cifar10().state_dict(), tmp_path / "cifar.pth")
    (tmp_path / "text.pth").write_text("not a state dict")
    cases = [
        ([tmp_path / "resnet.pth"], "not a known NIN port"),
        ([tmp_path / "text.pth"], "is not a readable PyTorch state dict"),
        ([tmp_path / "cifar.pth"], "has the layers of pytorchcv:nin_cifar10 and pytorchcv:nin_svhn: say which with "
                                   "--original"),
        ([tmp_path / "cifar.pth", "--original", "timm:nin"], "no PyTorch original is known for 'timm:nin'"),
        ([tmp_path / "cifar.pth", "--original", "pytorchcv:nin_cifar100"], "cifar.pth: layer 'output.final_conv"
         ".conv' has a blob of shape (10, 192, 1, 1), the model expects (100, 192, 1, 1)"),
        ([tmp_path / "cifar.pth", "--mean", "1,2,3"], "--mean is for Caffe files"),
        ([tmp_path / "cifar.pth", "--prototxt", tmp_path / "cifar.pth"], "--prototxt is for Caffe files"),
    ]
    for argv, message in cases:
        code, _, err = run(["convert", "torch", *argv, "--out", tmp_path / "out"], capsys)
        assert_one_line_error(code, err, message)
    code, _, err = run(["convert", "caffe", tmp_path / "cifar.pth", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "nin convert caffe needs --model")
    assert not list(tmp_path.glob("out.*"))


def test_weights_that_are_not_numbers_or_not_there_are_one_line(tmp_path, capsys):
    from pytorchcv.models import nin_cifar

    blobs = random_blobs(NIN_CIFAR10, 3)
    blobs[1][1][0][0, 0, 0, 0] = np.nan
    write_caffemodel(tmp_path / "nan.caffemodel", NIN_CIFAR10, blobs)
    code, _, err = run(["convert", "caffe", tmp_path / "nan.caffemodel", "--model", "nin_cifar10", "--mean", "1,2,3",
                        "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "layer 'cccp1-1' holds NaN or infinite weights")
    state = nin_cifar.nin_cifar10().state_dict()
    name = next(iter(state))
    conv, bias = torch.empty(192, 3, 5, 5), torch.empty(192)
    dicts = {
        "inf": ({**state, name: state[name].clone().fill_(float("inf"))}, f"{name} holds NaN or infinite values"),
        "meta": ({"c.weight": conv.to("meta"), "c.bias": bias.to("meta")}, "c.weight is a meta tensor"),
        "huge": ({"c.weight": torch.zeros(1).expand(10 ** 6, 10 ** 6, 1, 1), "c.bias": torch.zeros(1).expand(10 ** 6)},
                 "c.weight has shape (1000000, 1000000, 1, 1), 1e+12 values"),
        "sparse": ({"c.weight": conv.to_sparse(), "c.bias": bias}, "c.weight is a sparse_coo tensor"),
    }
    for kind, (tensors, message) in dicts.items():
        torch.save(tensors, tmp_path / f"{kind}.pth")
        code, _, err = run(["convert", "torch", tmp_path / f"{kind}.pth", "--out", tmp_path / "out"], capsys)
        assert_one_line_error(code, err, message)
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_converted_weights_get_the_mode_the_umask_gives(umask, tmp_path, capsys):
    from pytorchcv.models import nin_cifar

    torch.save(nin_cifar.nin_cifar10().state_dict(), tmp_path / "cifar.pth")
    previous = os.umask(umask)
    try:
        code, _, _ = run(["convert", "torch", tmp_path / "cifar.pth", "--original", "pytorchcv:nin_cifar10",
                          "--out", tmp_path / "out" / "m"], capsys)
    finally:
        os.umask(previous)
    assert code == 0
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").iterdir()} == {
        "m.safetensors": 0o666 & ~umask, "m.json": 0o666 & ~umask}


@pytest.mark.parametrize("out", ["/proc/m", "/proc/nin-no-such-folder/m"])
def test_a_conversion_into_a_place_that_takes_no_files_is_one_line(out, tmp_path, capsys):
    from pytorchcv.models import nin_cifar

    torch.save(nin_cifar.nin_cifar10().state_dict(), tmp_path / "cifar.pth")
    code, _, err = run(["convert", "torch", tmp_path / "cifar.pth", "--original", "pytorchcv:nin_cifar10",
                        "--out", out], capsys)
    assert_one_line_error(code, err, "cannot write")
