"""TF-Lite SSD detectors of the TF Object Detection API on MobileNet v1 (Google's COCO `detect.tflite`,
coco_ssd_mobilenet_v1_1.0_quant): read into a `DetectorSource`, no TensorFlow.

The graph, as the API's TF-Lite export writes it:

    the 27 convs of MobileNet v1 (tflite_model.py's checks), then 4 extra layers
    (1x1 conv, 3x3 stride-2 conv, ReLU6 each); per feature map (block 11, block 13, the extras)
    a 1x1 box conv (anchors x 4: ty, tx, th, tw) and a 1x1 class conv (anchors x (1 + categories),
    background first), reshaped and concatenated over the maps; LOGISTIC (sigmoid scores) or
    SOFTMAX; the custom op TFLite_Detection_PostProcess with inputs (box encodings, scores,
    anchors as ycenter, xcenter, h, w) and its settings (flexbuffer options).

The flatbuffer reading, the conv checks and the dequantization are tflite_model.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import NUM_CONVS, ConvWeights
from .tflite_model import Op, Tensor, body_weights, conv_params, input_info, is_relu6, read_graph

POSTPROCESS = "TFLite_Detection_PostProcess"
NUM_EXTRAS = 4
# Feature maps the predictors read, as indices into the conv chain (stem, 13 x (dw, pw), 4 x (1x1, 3x3)):
# block 11's and block 13's pointwise convs (output stride 16 and 32), then each extra layer's 3x3 conv.
TAPS = (22, 26, 28, 30, 32, 34)
SCORE_FNS = {"LOGISTIC": "sigmoid", "SOFTMAX": "softmax"}
NOT_A_DETECTOR = "not a TF-Lite SSD on MobileNet v1 (TF Object Detection API export)"


@dataclass
class DetectorSource:
    sources: list[str]
    convs: list[ConvWeights]         # the backbone's 27 convs in Table 1 order (as SourceWeights.convs)
    extras: list[ConvWeights]        # 8: (1x1, 3x3 stride 2) per extra layer
    box_convs: list[ConvWeights]     # per feature map: anchors x (ty, tx, th, tw)
    class_convs: list[ConvWeights]   # per feature map: anchors x (background, categories...)
    anchors: np.ndarray              # (A, 4): ycenter, xcenter, h, w as fractions of the input side
    anchor_step: float               # the stored anchors' quantization step (0: float)
    postprocess: dict                # TFLite_Detection_PostProcess's options
    score_fn: str                    # sigmoid | softmax
    resolution: int
    input: dict                      # shape, dtype, scale, zero_point
    details: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Object categories, the background not counted."""
        return int(self.class_convs[0].weight.shape[0] // (self.box_convs[0].weight.shape[0] // 4)) - 1


def has_postprocess(ops: list[Op]) -> bool:
    return any(op.name == POSTPROCESS for op in ops)


def _producers(ops: list[Op]) -> dict[int, Op]:
    return {t.index: op for op in ops for t in op.outputs}


def _predictors(tensor: Tensor, producer: dict[int, Op], path: Path, what: str) -> list[Op]:
    """The conv ops whose outputs, reshaped and concatenated, make `tensor` (in concatenation order)."""
    op = producer.get(tensor.index)
    if op is None:
        raise UserError(f"{path}: the {what} input of {POSTPROCESS} is not computed by the graph: {NOT_A_DETECTOR}")
    if op.name in ("RESHAPE", "SQUEEZE", "DEQUANTIZE", "QUANTIZE"):
        return _predictors(op.inputs[0], producer, path, what)
    if op.name == "CONCATENATION":
        return [conv for t in op.inputs if t is not None for conv in _predictors(t, producer, path, what)]
    if op.name == "CONV_2D":
        return [op]
    raise UserError(f"{path}: the {what} come from a {op.name} op where TF's SSD has 1x1 convs: {NOT_A_DETECTOR}")


def _chain(ops: list[Op], start: Tensor, skip: set[int]) -> list[Op]:
    """The convs from the input on, each reading the previous one's output (the predictors `skip`ped)."""
    chain, current = [], start.index
    while True:
        nxt = [op for op in ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and id(op) not in skip
               and op.inputs and op.inputs[0] is not None and op.inputs[0].index == current]
        if not nxt:
            return chain
        if len(nxt) > 1:
            raise UserError(f"{nxt[0].source}: {len(nxt)} convs read {nxt[0].inputs[0].name}: {NOT_A_DETECTOR}")
        chain.append(nxt[0])
        current = nxt[0].outputs[0].index


def _extra_weights(extras: list[Op]) -> list[ConvWeights]:
    out = []
    for i, op in enumerate(extras):
        k, stride = (1, 1) if i % 2 == 0 else (3, 2)
        w = op.inputs[1]
        if op.name != "CONV_2D" or w is None or w.shape[1:3] != (k, k) or op.options.get("stride") != (stride,) * 2 \
                or op.options.get("padding") != "SAME" or not is_relu6(op):
            raise UserError(f"{op.source}: extra layer conv {op.outputs[0].name} is not a {k}x{k} stride-{stride} "
                            f"SAME conv with ReLU6 (TF's ssd_mobilenet_v1 extra layers): {NOT_A_DETECTOR}")
        out.append(conv_params(op, f"extra conv {i}"))
    return out


def _predictor_weights(convs: list[Op], taps: list[int], what: str) -> list[ConvWeights]:
    out = []
    for conv, tap in zip(convs, taps):
        w = conv.inputs[1]
        if w is None or w.shape[1:3] != (1, 1) or conv.options.get("activation") not in (None, "NONE"):
            raise UserError(f"{conv.source}: the {what} predictor {conv.outputs[0].name} is not a linear 1x1 conv "
                            f"(TF's ssd_mobilenet_v1 box predictor): {NOT_A_DETECTOR}")
        if conv.inputs[0].index != tap:
            raise UserError(f"{conv.source}: the {what} predictor {conv.outputs[0].name} reads "
                            f"{conv.inputs[0].name}, not the feature maps of TF's ssd_mobilenet_v1 (blocks 11 and "
                            f"13, then the extra layers): {NOT_A_DETECTOR}")
        out.append(conv_params(conv, f"{what} predictor"))
    return out


def _check_postprocess(options: dict, path: Path, num_classes: int) -> None:
    needed = ("max_detections", "num_classes", "nms_iou_threshold", "nms_score_threshold", "y_scale", "x_scale",
              "h_scale", "w_scale")
    missing = [k for k in needed if k not in options]
    if missing:
        raise UserError(f"{path}: {POSTPROCESS} has no {', '.join(missing)} option(s): not a TF-Lite SSD export")
    if int(options["num_classes"]) != num_classes:
        raise UserError(f"{path}: {POSTPROCESS} says {options['num_classes']} categories but the class predictors "
                        f"have {num_classes} (+ background): {NOT_A_DETECTOR}")
    if not options.get("use_regular_nms", False) and int(options.get("max_classes_per_detection", 1)) != 1:
        raise UserError(f"{path}: {POSTPROCESS} keeps {options['max_classes_per_detection']} classes per box; "
                        f"the toolkit's NMS (detection.nms_mode) keeps one (max_classes_per_detection=1)")


def read_detect_tflite(path: Path) -> DetectorSource:
    """Read a TF-Lite SSD on MobileNet v1; UserError (one line) for anything else."""
    ops, inputs, outputs = read_graph(path)
    post = [op for op in ops if op.name == POSTPROCESS]
    if len(post) != 1 or len(inputs) != 1 or len(post[0].inputs) < 3:
        raise UserError(f"{path} has {len(post)} {POSTPROCESS} ops and {len(inputs)} inputs: {NOT_A_DETECTOR}")
    post = post[0]
    producer = _producers(ops)
    boxes_t, scores_t, anchors_t = post.inputs[:3]
    score_op = producer.get(scores_t.index)
    if score_op is None or score_op.name not in SCORE_FNS:
        found = score_op.name if score_op else "no op"
        raise UserError(f"{path}: the scores come from {found}, where TF's SSD has LOGISTIC or SOFTMAX")
    box_ops = _predictors(boxes_t, producer, path, "box encodings")
    class_ops = _predictors(score_op.inputs[0], producer, path, "class scores")
    chain = _chain(ops, inputs[0], {id(op) for op in box_ops + class_ops})
    if len(chain) != NUM_CONVS + 2 * NUM_EXTRAS or len(box_ops) != len(TAPS) or len(class_ops) != len(TAPS):
        raise UserError(f"{path} has {len(chain)} backbone convs and {len(box_ops)} box / {len(class_ops)} class "
                        f"predictors where TF's ssd_mobilenet_v1 has {NUM_CONVS + 2 * NUM_EXTRAS} and "
                        f"{len(TAPS)}: {NOT_A_DETECTOR}")
    taps = [chain[i].outputs[0].index for i in TAPS]
    if anchors_t is None or anchors_t.data is None or anchors_t.shape != (int(boxes_t.shape[-2]), 4):
        raise UserError(f"{path}: {POSTPROCESS} has no constant (anchors, 4) anchor input: {NOT_A_DETECTOR}")
    source = DetectorSource(
        sources=[str(path)], convs=body_weights(chain[:NUM_CONVS]), extras=_extra_weights(chain[NUM_CONVS:]),
        box_convs=_predictor_weights(box_ops, taps, "box"), class_convs=_predictor_weights(class_ops, taps, "class"),
        anchors=anchors_t.values(), anchor_step=float(anchors_t.scale[0]) if anchors_t.scale is not None else 0.0,
        postprocess=post.options, score_fn=SCORE_FNS[score_op.name], resolution=int(inputs[0].shape[1]),
        input=input_info(inputs[0], path))
    _check_postprocess(post.options, path, source.num_classes)
    weight_types = sorted({np.dtype(op.inputs[1].dtype).name for op in chain + box_ops + class_ops})
    source.details = {"weight_dtype": "/".join(weight_types), "dequantized": weight_types != ["float32"],
                      "outputs": [t.name for t in outputs]}
    return source
