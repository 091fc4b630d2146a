"""Exports: safetensors + JSON round trip, ONNX (every variant, checked by onnxruntime), TorchScript,
torch.hub from the local repository, and the `nin export` command's outputs and one-line errors."""
import contextlib
import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import nin
from nin.cli import main
from nin.data import load_dataset
from nin.errors import NinError
from nin.export import ModelInfo, WithPreprocessing, export_model
from nin.models import default_cfg
from tiny_run import CLASSES, train_tiny_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def trained(run):
    return nin.load(run)


@pytest.fixture(scope="module")
def test_images(run):
    return run_test_images(run)


def run_test_images(run) -> torch.Tensor:
    """The run's own test images, uint8 (N, 3, 16, 16), as `nin eval` reads them."""
    config = json.loads((run / "config.json").read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NIN_CACHE_DIR", str(run.parent / "cache"))
        return load_dataset("folder", config["root"], "test", image_size=16, channels=3).images


def reference_logits(trained, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return trained(trained.info.normalize()(images))


def export(run, fmt, out, capsys=None) -> str:
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    return capsys.readouterr().out if capsys else ""


# --- safetensors ------------------------------------------------------------------------------------

def test_safetensors_export_writes_the_weights_and_a_json_config(run, trained, tmp_path, capsys):
    out = export(run, "safetensors", tmp_path / "tiny", capsys)
    assert (tmp_path / "tiny.safetensors").is_file() and (tmp_path / "tiny.json").is_file()
    assert "tiny.safetensors" in out and "tiny.json" in out
    config = json.loads((tmp_path / "tiny.json").read_text())
    assert config["format"] == "nin-export" and config["format_version"] == 2  # one format version for every kind
    assert config["model"] == "nin_mnist_bn" and config["model_kwargs"]["num_classes"] == 3
    assert config["classes"] == list(CLASSES)
    assert config["input"].items() >= {"layout": "NCHW", "size": 16, "channels": 3, "dtype": "float32"}.items()
    assert config["normalization"]["mean"] == pytest.approx(trained.info.normalize().mean)
    assert config["normalization"]["std"] == pytest.approx(trained.info.normalize().std)
    assert all(0 < m < 1 for m in config["normalization"]["mean"])  # the 0..1 scale


def test_safetensors_round_trip_gives_identical_outputs(run, trained, test_images, tmp_path, monkeypatch):
    export(run, "safetensors", tmp_path / "tiny.safetensors")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("nin.load must not unpickle anything"))
    model = nin.load(tmp_path / "tiny.safetensors")
    assert not model.training
    assert model.info.classes == list(CLASSES) and (model.info.size, model.info.channels) == (16, 3)
    with torch.no_grad():
        logits = model(model.info.normalize()(test_images))
    assert torch.equal(logits, reference_logits(trained, test_images))
    from_json = nin.load(tmp_path / "tiny.json")  # the config names its weights file
    assert torch.equal(from_json.state_dict()["features1.0.weight"], model.state_dict()["features1.0.weight"])


def test_create_model_with_weights_uses_the_json_arguments(run, trained, test_images, tmp_path):
    export(run, "safetensors", tmp_path / "tiny")
    model = nin.create_model("nin_mnist_bn", weights=tmp_path / "tiny.safetensors").eval()
    assert model.num_classes == 3 and model.info.name == "nin_mnist_bn"
    with torch.no_grad():
        assert torch.equal(model(trained.info.normalize()(test_images)), reference_logits(trained, test_images))


def test_create_model_with_weights_alone_and_with_wrong_names_or_shapes(tmp_path):
    model = nin.create_model("nin_mnist", num_classes=4).eval()
    info = ModelInfo("nin_mnist", {"num_classes": 4}, list("abcd"), 28, 1, [0.5], [0.25])
    export_model(model, info, "safetensors", tmp_path / "w")
    (tmp_path / "w.json").unlink()  # weights alone: the arguments come from the caller (or the file's copy)
    again = nin.create_model("nin_mnist", weights=tmp_path / "w.safetensors", num_classes=4).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(again(x), model(x))
    with pytest.raises(NinError, match="holds weights for 'nin_mnist', not 'nin_cifar10'"):
        nin.create_model("nin_cifar10", weights=tmp_path / "w.safetensors")
    with pytest.raises(NinError, match="do not fit model 'nin_mnist'") as error:
        nin.create_model("nin_mnist", weights=tmp_path / "w.safetensors", num_classes=10)
    assert "\n" not in str(error.value)
    with pytest.raises(NinError, match="no weights at"):
        nin.create_model("nin_mnist", weights=tmp_path / "missing.safetensors")


def test_a_corrupt_or_foreign_weights_file_is_refused(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(NinError, match="not a readable safetensors file"):
        nin.load(tmp_path / "bad.safetensors")
    with pytest.raises(NinError, match="must be a .safetensors file"):
        nin.create_model("nin_mnist", weights=tmp_path / "model.pt")
    info = ModelInfo("nin_mnist", {}, [str(d) for d in range(10)], 28, 1, [0.5], [0.25])
    (tmp_path / "m.json").write_text(json.dumps(info.to_json("onnx", "m.onnx")))
    with pytest.raises(NinError, match="describes a onnx export; nin.load and create_model"):
        nin.load(tmp_path / "m.json")


def test_nin_load_reads_a_run_folder_too(run, trained, test_images):
    model = nin.load(run)
    assert not model.training and model.info.classes == list(CLASSES)
    with torch.no_grad():
        assert torch.equal(model(model.info.normalize()(test_images)), reference_logits(trained, test_images))


# --- ONNX ------------------------------------------------------------------------------------------

def randomise_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Fresh BatchNorm layers have mean 0, var 1: give them statistics worth exporting."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("name", nin.list_models())
def test_onnx_export_of_every_variant_matches_pytorch_in_onnxruntime(name, tmp_path):
    cfg = default_cfg(name)
    model = nin.create_model(name).eval()
    randomise_batch_norm(model, seed=1)
    channels = cfg.in_channels
    info = ModelInfo(name, {}, [f"c{i}" for i in range(cfg.num_classes)], cfg.input_size, channels,
                     [0.45, 0.5, 0.55][:channels], [0.2, 0.25, 0.3][:channels])
    written = export_model(model, info, "onnx", tmp_path / name, check=False)
    onnx.checker.check_model(str(written["model"]))
    session = onnxruntime.InferenceSession(str(written["model"]), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.name == "images" and given.type == "tensor(uint8)"
    assert isinstance(given.shape[0], str) and given.shape[1:] == [channels, cfg.input_size, cfg.input_size]
    wrapper = WithPreprocessing(model, info.normalize()).eval()
    generator = torch.Generator().manual_seed(2)
    for batch in ((2,) if name.startswith("nin_imagenet") else (1, 3)):  # not the export's batch of 2 but there
        images = torch.randint(0, 256, (batch, channels, cfg.input_size, cfg.input_size), dtype=torch.uint8,
                               generator=generator)
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        with torch.no_grad():
            expected = wrapper(images).numpy()
        assert logits.shape == (batch, cfg.num_classes)
        assert np.abs(logits - expected).max() <= 1e-4


def test_onnx_export_of_a_run_takes_raw_pixels(run, trained, test_images, tmp_path, capsys):
    out = export(run, "onnx", tmp_path / "tiny.onnx", capsys)
    assert "checked with onnxruntime: max abs diff" in out and "uint8 NCHW (batch, 3, 16, 16)" in out
    config = json.loads((tmp_path / "tiny.json").read_text())
    assert config["file"] == "tiny.onnx" and config["input"]["dtype"] == "uint8"
    assert config["input"]["range"] == [0, 255] and config["input"]["name"] == "images"
    stored = {p.key: p.value for p in onnx.load(str(tmp_path / "tiny.onnx")).metadata_props}
    assert json.loads(stored["nin"]) == config
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": test_images.numpy()})
    assert np.abs(logits - reference_logits(trained, test_images).numpy()).max() <= 1e-4


# --- TorchScript ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_torchscript_round_trip(run, trained, test_images, tmp_path, capsys):
    out = export(run, "torchscript", tmp_path / "tiny", capsys)
    assert "checked with torch.jit.load" in out
    path = tmp_path / "tiny.torchscript.pt"
    extra = {"nin.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["nin.json"]) == json.loads((tmp_path / "tiny.json").read_text())
    expected = reference_logits(trained, test_images)
    with torch.no_grad():
        assert (loaded(test_images) - expected).abs().max() <= 1e-5
        assert (loaded(test_images.float()) - expected).abs().max() <= 1e-5  # float pixels 0..255 too
        assert loaded(test_images[:1]).shape == (1, 3)


# --- runs trained with the paper's preprocessing: GCN + ZCA (CIFAR), LCN (SVHN) -------------------------

@pytest.fixture(scope="module", params=["gcn_zca", "lcn"])
def preprocessed(request, tmp_path_factory):
    """(kind, run, trained, test images): a tiny run with that preprocessing (16x16x3: a 768-dim ZCA)."""
    run = train_tiny_run(tmp_path_factory.mktemp(request.param), preprocess=request.param)
    return request.param, run, nin.load(run), run_test_images(run)


def test_runs_with_gcn_zca_or_lcn_are_exported_with_their_preprocessing_described(preprocessed, tmp_path):
    kind, run, trained, _ = preprocessed
    assert trained.info.normalize().kind == kind and trained.info.kind == kind  # no refusal
    export(run, "safetensors", tmp_path / "m")
    config = json.loads((tmp_path / "m.json").read_text())
    assert config["format_version"] == 2 and "normalization" not in config  # no mean/std to misapply
    block = config["preprocessing"]
    assert block["kind"] == kind and kind.split("_")[-1] in block["description"].lower()
    assert {k: v for k, v in block.items() if k not in ("description", "tensors")} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in trained.info.normalize().state_dict().items()
        if not isinstance(v, torch.Tensor)}
    assert kind in config["input"]["preprocessing"] and config["input"]["dtype"] == "float32"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        stored = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith("preprocess.")}
    if kind == "gcn_zca":
        assert block["tensors"] == {"mean": "preprocess.mean", "whiten": "preprocess.whiten"}
        assert torch.equal(stored["preprocess.whiten"], trained.info.normalize().whiten)
        assert torch.equal(stored["preprocess.mean"], trained.info.normalize().mean)
        assert stored["preprocess.whiten"].shape == (768, 768)
    else:
        assert stored == {} and "tensors" not in block


def test_safetensors_round_trip_of_gcn_zca_and_lcn_runs(preprocessed, tmp_path):
    kind, run, trained, images = preprocessed
    export(run, "safetensors", tmp_path / "m")
    expected = reference_logits(trained, images)
    model = nin.load(tmp_path / "m.safetensors")
    assert model.info.kind == kind and model.info.mean is None
    assert "preprocess.mean" not in model.state_dict()
    with torch.no_grad():
        assert (model(model.info.normalize()(images)) - expected).abs().max() <= 1e-5
        created = nin.create_model("nin_mnist_bn", weights=tmp_path / "m.json").eval()
        assert (created(created.info.normalize()(images)) - expected).abs().max() <= 1e-5
        hub = torch.hub.load(str(REPO), "nin_mnist_bn", source="local", weights=str(tmp_path / "m.safetensors"))
        assert (hub.eval()(hub.info.normalize()(images)) - expected).abs().max() <= 1e-5


def test_onnx_export_of_gcn_zca_and_lcn_runs_takes_raw_pixels(preprocessed, tmp_path, capsys):
    kind, run, trained, images = preprocessed
    assert "checked with onnxruntime" in export(run, "onnx", tmp_path / "m", capsys)
    config = json.loads((tmp_path / "m.json").read_text())
    assert config["preprocessing"]["kind"] == kind and "tensors" not in config["preprocessing"]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    expected = reference_logits(trained, images).numpy()
    for batch in (images, images[:1]):
        (logits,) = session.run(None, {"images": batch.numpy()})
        assert np.abs(logits - expected[: len(batch)]).max() <= 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_torchscript_export_of_gcn_zca_and_lcn_runs_takes_raw_pixels(preprocessed, tmp_path):
    kind, run, trained, images = preprocessed
    export(run, "torchscript", tmp_path / "m")
    loaded = torch.jit.load(str(tmp_path / "m.torchscript.pt"))
    expected = reference_logits(trained, images)
    with torch.no_grad():
        assert (loaded(images) - expected).abs().max() <= 1e-5
        assert (loaded(images.float()) - expected).abs().max() <= 1e-5
        assert (loaded(images[:1]) - expected[:1]).abs().max() <= 1e-5


@pytest.mark.parametrize("preprocessed", ["gcn_zca"], indirect=True)  # lcn has no tensors to lose
def test_a_gcn_zca_export_without_its_whitening_matrix_is_refused(preprocessed, tmp_path):
    _, run, _, _ = preprocessed
    from safetensors import safe_open
    from safetensors.torch import save_file

    export(run, "safetensors", tmp_path / "m")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        kept = {key: handle.get_tensor(key) for key in handle.keys() if key != "preprocess.whiten"}
    save_file(kept, str(tmp_path / "m.safetensors"))
    with pytest.raises(NinError, match="cannot rebuild its gcn_zca preprocessing") as error:
        nin.load(tmp_path / "m.safetensors")
    assert "\n" not in str(error.value)


# --- torch.hub ------------------------------------------------------------------------------------

def hub_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_one_entry_point_per_variant():
    module = hub_module()
    entries = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
    assert entries == nin.list_models() and module.dependencies == ["torch"]


def test_torch_hub_loads_a_variant_with_weights_from_the_local_repository(run, trained, test_images, tmp_path):
    export(run, "safetensors", tmp_path / "tiny")
    model = torch.hub.load(str(REPO), "nin_mnist_bn", source="local", weights=str(tmp_path / "tiny.safetensors"))
    assert model.info.classes == list(CLASSES)
    with torch.no_grad():
        assert torch.equal(model.eval()(trained.info.normalize()(test_images)), reference_logits(trained, test_images))
    fresh = torch.hub.load(str(REPO), "nin_cifar10", source="local", num_classes=7)
    assert fresh.num_classes == 7


def test_hubconf_falls_back_to_the_src_folder_when_nin_is_not_installed(tmp_path):
    src = str(REPO / "src")
    code = (f"import sys; sys.path[:] = [p for p in sys.path if p.rstrip('/') != {src!r}]\n"
            "import importlib.util\n"
            "try:\n    import nin\nexcept ImportError: pass\nelse: print('installed'); raise SystemExit\n"
            f"spec = importlib.util.spec_from_file_location('hubconf', {str(REPO / 'hubconf.py')!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "print(module.nin_mnist().num_classes)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "installed":
        pytest.skip("nin is installed without an editable path to strip")
    assert done.stdout.strip() == "10"


# --- the command's errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--format", "keras"], "unknown export format 'keras': expected one of safetensors, onnx, torchscript"),
    (["--format", "onnx"], "no checkpoint at"),
])
def test_export_errors_are_one_line_with_exit_code_2(argv, message, run, tmp_path, capsys):
    source = str(run) if "keras" in argv else str(tmp_path / "missing")
    assert main(["export", source, *argv, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("m.*"))


def test_export_refuses_to_overwrite_the_config_of_another_format(run, tmp_path, capsys):
    export(run, "safetensors", tmp_path / "m")
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m")]) == 2
    assert "describes m.safetensors (safetensors); pick another --out" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_a_torchscript_export_named_like_the_checkpoint_leaves_it_alone(run, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes((run / "checkpoint.pt").read_bytes())
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(checkpoint)]) == 0
    assert checkpoint.read_bytes() == (run / "checkpoint.pt").read_bytes()
    assert (tmp_path / "checkpoint.torchscript.pt").is_file() and (tmp_path / "checkpoint.json").is_file()


def test_onnx_export_without_its_packages_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    info = ModelInfo("nin_mnist", {}, [str(d) for d in range(10)], 28, 1, [0.5], [0.25])
    with pytest.raises(NinError, match=r"pip install 'network-in-network\[onnx\]'"):
        export_model(nin.create_model("nin_mnist"), info, "onnx", tmp_path / "m")


# --- outputs that cannot be written, and the files' modes -------------------------------------------

@contextlib.contextmanager
def file_size_limit(size: int):
    """Files may not grow past ``size`` bytes (EFBIG, as a full disk gives ENOSPC), in this process."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the signal would kill the process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def one_line_error(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nin: error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_weights_that_do_not_fit_on_the_disk_leave_nothing_and_are_one_line(fmt, run, tmp_path, capsys):
    out = tmp_path / "new" / "m"
    with file_size_limit(4096):  # room for the JSON, not for the weights
        err = one_line_error(["export", run, "--format", fmt, "--out", out], capsys)
    suffix = ".safetensors" if fmt == "safetensors" else ".torchscript.pt"
    assert f"cannot write {out}{suffix}: File too large" in err or "cannot write" in err and suffix in err, err
    assert not (tmp_path / "new").exists()  # nor the folder made for them


def test_an_export_with_room_for_the_weights_but_not_the_json_leaves_neither(run, tmp_path, capsys, monkeypatch):
    def disk_full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("nin.export._write_text", disk_full)
    (tmp_path / "models").mkdir()
    err = one_line_error(["export", run, "--out", tmp_path / "models" / "m"], capsys)
    assert f"cannot write {tmp_path / 'models' / 'm.json'}: No space left on device" in err
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("out", ["/proc/m", "/proc/nin-no-such-folder/m", "/proc/self/m"])
def test_an_export_into_a_place_that_takes_no_files_is_one_line(out, run, capsys):
    assert "cannot write" in one_line_error(["export", run, "--out", out], capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_exporting_a_run_that_lies_in_a_read_only_folder_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    copy.chmod(0o500)
    try:
        assert f"cannot write {copy / 'model.safetensors'}" in one_line_error(["export", copy], capsys)
    finally:
        copy.chmod(0o700)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_weights_get_the_mode_the_umask_gives_as_the_json_does(umask, run, tmp_path):
    previous = os.umask(umask)
    try:
        export(run, "safetensors", tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"m.safetensors": 0o666 & ~umask, "m.json": 0o666 & ~umask}


def test_weights_that_are_not_numbers_are_not_exported(tmp_path):
    model = nin.create_model("nin_mnist")
    with torch.no_grad():
        next(model.parameters())[0, 0, 0, 0] = float("nan")
    info = ModelInfo("nin_mnist", {}, [str(d) for d in range(10)], 28, 1, [0.5], [0.25])
    with pytest.raises(NinError, match=r"NaN or infinite values \(features1.0.weight\)"):
        export_model(model, info, "safetensors", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
