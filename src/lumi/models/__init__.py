"""The model zoo: the contract (base.py), the registry, and one module per architecture."""

from lumi.models.base import LumiModel, ModelConfig, ParamCounts
from lumi.models.registry import build_model, get_spec, list_models, load_model_file, make_config, register

__all__ = [
    "LumiModel",
    "ModelConfig",
    "ParamCounts",
    "build_model",
    "get_spec",
    "list_models",
    "load_model_file",
    "make_config",
    "register",
]
