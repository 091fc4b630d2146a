"""Network In Network (Lin, Chen & Yan, ICLR 2014): models, data, training, evaluation."""
from .version import __version__

from .card import ModelInfo
from .errors import NinError
from .inference import load
from .models import NIN, count_parameters, create_model, list_models

__all__ = ["NIN", "ModelInfo", "NinError", "count_parameters", "create_model", "list_models", "load", "__version__"]
