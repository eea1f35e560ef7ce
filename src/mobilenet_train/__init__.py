"""mobilenet-train: train, evaluate and compare MobileNet v1 (Howard et al., 2017)."""

from .model import MobileNetV1, ModelArgs, build_model, mobilenet_v1

__all__ = ["MobileNetV1", "ModelArgs", "build_model", "mobilenet_v1"]
__version__ = "0.1.0"
