"""torch.hub entry points, one per NIN variant:

    model = torch.hub.load("path/to/network-in-network", "nin_cifar10", source="local",
                           weights="model.safetensors")

``weights``: the name of weights shipped with the package (``"fashion-mnist"`` for ``nin_mnist_bn``,
``"fashion-mnist-plain"`` for ``nin_mnist``), or a
``.safetensors`` file written by ``nin export`` (the JSON beside it gives the model's arguments, classes and
normalisation: ``model.info``). Without it the model has fresh random weights.
Other keyword arguments are those of ``nin.create_model``. Like torchvision's, the model comes back in
training mode: call ``model.eval()`` before predicting.
"""
import os as _os
import sys as _sys

dependencies = ["torch"]

try:
    import nin as _nin
except ImportError:  # a plain checkout, not installed: use its src/ folder
    _sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src"))
    import nin as _nin


def _entry(name):
    def entry(*, weights=None, **kwargs):
        return _nin.create_model(name, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"NIN variant {name!r}. weights: shipped weights by name or a .safetensors file from "
                     "`nin export` (optional); "
                     "other keyword arguments: see nin.create_model.")
    return entry


for _name in _nin.list_models():
    globals()[_name] = _entry(_name)
