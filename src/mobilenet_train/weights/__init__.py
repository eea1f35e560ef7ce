"""Readers for Google's released MobileNet v1 weights (no TensorFlow needed).

Each reader turns its file format into one `SourceWeights`: the 27 convolutions of Table 1
in order (stem, then depthwise/pointwise pairs) in PyTorch layout, with either their BN
statistics (Keras) or folded biases (TF-Lite), plus the classifier. `common.to_model`
then infers the width multiplier and builds the toolkit's model from it.

- `keras`: Keras HDF5 weights (``keras.applications.MobileNet``) and the same model in the
  TensorFlow.js layers format (model.json + binary shards); one name mapping for both.
- `tflite_model`: TF-Lite flatbuffers of TF-slim MobileNet v1, float32 or 8-bit quantized
  (dequantized here), including a model split into pieces that chain.
- `timm_model`: timm's MobileNet v1 state dicts (safetensors, torch files, Hub folders) with the eval
  preprocessing of their pretrained cfg; and the toolkit's model written back in timm's Hub layout.
"""

from .common import ConvWeights, SourceWeights, to_model

__all__ = ["ConvWeights", "SourceWeights", "to_model"]
