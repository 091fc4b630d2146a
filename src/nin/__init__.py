"""Network In Network (Lin, Chen & Yan, ICLR 2014): models, data, training, evaluation."""
__version__ = "0.1.0"

from .errors import NinError
from .models import NIN, count_parameters, create_model, list_models
from .export import ModelInfo, load

__all__ = ["NIN", "ModelInfo", "NinError", "count_parameters", "create_model", "list_models", "load", "__version__"]
