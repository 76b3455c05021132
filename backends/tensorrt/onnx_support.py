"""TensorRT's published ONNX operator support, as data, per TensorRT major version.

Source for TensorRT 10: onnx/onnx-tensorrt `docs/operators.md` as released with TensorRT 10.15
GA (header "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24"),
cross-checked against tag `release/10.1-GA` (96e7811); where the two differ the 10.15 text is
kept (Pad and Slice lost their "`axes` must be an initializer" rule, TopK's `K` need not be an
initializer, BlackmanWindow/HammingWindow/HannWindow/STFT/Attention/RMSNormalization/
RotaryEmbedding/TensorScatter became supported). TensorRT 10 is the latest 10.x matrix: an
older 10.x parser may lack the ops 10.15 added.

TensorRT 11: onnx-tensorrt has no 11.x `operators.md` we could read, so its table is the 10.15
one plus what the TensorRT 11 release notes and ONNX opset guide document: opset 9 to 25
(11.5 GA), `Swish` supported (11.0), the `TRT_Attention`/`TRT_MoE`/`TRT_KVCacheUpdate` custom
ops (11.0), `DFT` and 5-D `GridSample` (11.2), `Squeeze` without `axes` (11.5). TensorRT 11
also removed implicit INT8 and the weak-typing precision flags (kFP16, kINT8, ...): that
changes how an engine is built (strongly typed, explicit Q/DQ only), not which ONNX graphs the
parser accepts, so it shows up here only as the reasons given for quantized tensors.

Type names are `onnx_ir.DataType` names. `types` lists the types of the op's data input(s)
(`typed_inputs`, default the first input; for ops without inputs, the first output);
index/shape inputs (Gather indices, Reshape shape, ...) are not checked against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Attribute rules: (attribute, kind, allowed), checked only when the attribute is present.
#   "in": value in allowed · "len_in": len(value) in allowed · "all_ones": every element is 1
#   "absent": the attribute must not be set
AttrRule = tuple[str, str, tuple[object, ...]]
# Constant-input rules: index -> (ONNX input name, kind); kinds:
#   "initializer": an initializer or a Constant node's output
#   "constant": foldable at build time (computed from constants only)
#   "zero": a constant whose every element is 0 · "false": a constant False
#   "lt3840": when constant, every element below 3840
ConstRule = tuple[str, str]


@dataclass(frozen=True)
class OpSupport:
    supported: bool
    types: tuple[str, ...] = ()  # empty: the matrix lists none (not checked)
    typed_inputs: tuple[int, ...] = (0,)
    typed_outputs: tuple[int, ...] = ()
    const_inputs: Mapping[int, ConstRule] = field(default_factory=dict)
    attrs: tuple[AttrRule, ...] = ()
    unsupported_inputs: Mapping[int, str] = field(default_factory=dict)
    unsupported_outputs: Mapping[int, str] = field(default_factory=dict)
    input_dtypes: Mapping[int, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    input_ranks: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    # input (or, before opset 13, attribute) whose omission needs a static input 0 shape
    static_if_omitted: Mapping[int, str] = field(default_factory=dict)
    static_input: bool = False  # "`input` must have static dimensions"
    note: str = ""  # the matrix's own words, for unsupported ops and unchecked restrictions


F = ("FLOAT", "FLOAT16", "BFLOAT16")
FH = ("FLOAT", "FLOAT16")
I = ("INT32", "INT64")  # noqa: E741
B = ("BOOL",)
FP8, FP4, INT8, INT4 = "FLOAT8E4M3FN", "FLOAT4E2M1", "INT8", "INT4"
NO = OpSupport(False)


def y(*types: str, **rules: Any) -> OpSupport:
    return OpSupport(True, tuple(types), **rules)


def n(note: str = "") -> OpSupport:
    return OpSupport(False, note=note)


_AXES = {1: ("axes", "initializer")}
_POOL = (("kernel_shape", "len_in", (2, 3)), ("dilations", "all_ones", ()))
_REDUCE = y(*F, *I, const_inputs=_AXES)
_RANDOM = y(*F, typed_inputs=(), typed_outputs=(0,), note="`seed` value is ignored by TensorRT")

_OPS_10: dict[str, OpSupport] = {
    "Abs": y(*F, *I),
    "Acos": y(*F),
    "Acosh": y(*F),
    "Add": y(*F, *I),
    "AffineGrid": NO,
    "And": y(*B),
    "ArgMax": y(*F, *I),
    "ArgMin": y(*F, *I),
    "Asin": y(*F),
    "Asinh": y(*F),
    "Atan": y(*F),
    "Atanh": y(*F),
    "Attention": y(
        *F,
        INT8,
        FP8,
        input_ranks={0: (4,), 1: (4,), 2: (4,), 3: (4,)},
        unsupported_inputs={4: "past_key", 5: "past_value", 6: "nonpad_kv_seqlen"},
        unsupported_outputs={1: "present_key", 2: "present_value", 3: "qk_matmul_output"},
        attrs=(("qk_matmul_output_mode", "in", (0,)), ("softcap", "in", (0.0,))),
    ),
    "AveragePool": y(*F, attrs=_POOL),
    "BatchNormalization": y(*F),
    "Bernoulli": NO,
    "BitShift": NO,
    "BitwiseAnd": NO,
    "BitwiseNot": NO,
    "BitwiseOr": NO,
    "BitwiseXor": NO,
    "BlackmanWindow": y(*FH, typed_inputs=(), typed_outputs=(0,)),
    "Cast": y(*F, *I, "UINT8", *B, typed_outputs=(0,)),
    "CastLike": y(*F, *I, "UINT8", *B, typed_inputs=(0, 1)),
    "Ceil": y(*F),
    "Col2Im": NO,
    "Celu": y(*F),
    "CenterCropPad": NO,
    "Clip": y(*F),
    "Compress": NO,
    "Concat": y(*F, *I, *B),
    "ConcatFromSequence": NO,
    "Constant": y(
        *F,
        FP8,
        FP4,
        INT4,
        *I,
        *B,
        typed_inputs=(),
        typed_outputs=(0,),
        attrs=(
            ("sparse_value", "absent", ()),
            ("value_string", "absent", ()),
            ("value_strings", "absent", ()),
        ),
    ),
    "ConstantOfShape": y(*F, FP8, FP4, INT4, *I, *B, typed_inputs=(), typed_outputs=(0,)),
    "Conv": y(*F),
    "ConvInteger": NO,
    "ConvTranspose": y(*F),
    "Cos": y(*F),
    "Cosh": y(*F),
    "CumSum": y(*F, const_inputs={1: ("axis", "constant")}),
    "DFT": NO,
    "DeformConv": y(
        *FH,
        note="`input` must have 1D or 2D spatial dimensions; `pads` for the beginning and "
        "end along each spatial axis must be the same",
    ),
    "DepthToSpace": y(*F, *I),
    "DequantizeLinear": y(INT8, FP8, FP4, INT4, const_inputs={2: ("x_zero_point", "zero")}),
    "Det": NO,
    "Div": y(*F, *I),
    "Dropout": y(*F, const_inputs={2: ("training_mode", "false")}),
    "DynamicQuantizeLinear": n(
        "TensorRT's IDynamicQuantize can be composed from ONNX operators in the form of a "
        "model local function"
    ),
    "Einsum": y(*F),
    "Elu": y(*F),
    "Equal": y(*F, *I),
    "Erf": y(*F),
    "Exp": y(*F),
    "Expand": y(*F, *I, *B),
    "EyeLike": y(*F, *I, *B, static_input=True),
    "Flatten": y(*F, *I, *B),
    "Floor": y(*F),
    "Gather": y(*F, *I, *B),
    "GatherElements": y(*F, *I, *B),
    "GatherND": y(*F, *I, *B),
    "Gelu": y(*F, INT8, *I),
    "Gemm": y(*F),
    "GlobalAveragePool": y(*F),
    "GlobalLpPool": y(*F),
    "GlobalMaxPool": y(*F),
    "Greater": y(*F, *I),
    "GreaterOrEqual": y(*F, *I),
    "GridSample": y(*FH, input_ranks={0: (4,)}),
    "GroupNormalization": y(*F),
    "GRU": y(
        *F,
        note="for bidirectional GRUs, activation functions must be the same for both the "
        "forward and reverse pass",
    ),
    "HammingWindow": y(*FH, typed_inputs=(), typed_outputs=(0,)),
    "HannWindow": y(*FH, typed_inputs=(), typed_outputs=(0,)),
    "HardSigmoid": y(*F),
    "HardSwish": y(*F),
    "Hardmax": y(*F, note="`axis` dimension of input must be a build-time constant"),
    "Identity": y(*F, *I, *B),
    "If": y(
        *F,
        *I,
        *B,
        typed_inputs=(),
        note="output tensors of the two branches must have the same rank and different names",
    ),
    "ImageScaler": y(*F),
    "ImageDecoder": NO,
    "InstanceNormalization": y(*F),
    "IsInf": y(*F),
    "IsNaN": y(*F, *I),
    "LayerNormalization": y(*F, unsupported_outputs={1: "Mean", 2: "InvStdDev"}),
    "LeakyRelu": y(*F),
    "Less": y(*F, *I),
    "LessOrEqual": y(*F, *I),
    "Log": y(*F),
    "LogSoftmax": y(*F),
    "Loop": y(
        *F,
        *I,
        *B,
        typed_inputs=(),
        note="scan output length cannot be dynamic; loop-carried shapes must not change",
    ),
    "LRN": y(*F),
    "LSTM": y(*F, attrs=(("input_forget", "in", (0,)), ("layout", "in", (0,)))),
    "LpNormalization": y(*F),
    "LpPool": y(*F, attrs=(("dilations", "all_ones", ()),)),
    "MatMul": y(*F),
    "MatMulInteger": NO,
    "Max": y(*F, *I),
    "MaxPool": y(*F, attrs=_POOL, unsupported_outputs={1: "Indices"}),
    "MaxRoiPool": NO,
    "MaxUnpool": NO,
    "Mean": y(*F, FP8, *I),
    "MeanVarianceNormalization": y(*F),
    "MelWeightMatrix": NO,
    "Min": y(*F, *I),
    "Mish": y(*FH),
    "Mod": y(*F, *I),
    "Mul": y(*F, *I),
    "Multinomial": NO,
    "Neg": y(*F, *I),
    "NegativeLogLikelihoodLoss": NO,
    "NonMaxSuppression": y(*FH),
    "NonZero": y(*FH),
    "Not": y(*B),
    "OneHot": y(*F, *I, *B, typed_inputs=(2,), const_inputs={1: ("depth", "constant")}),
    "Optional": NO,
    "OptionalGetElement": NO,
    "OptionalHasElement": NO,
    "Or": y(*B),
    "Pad": y(*F, *I),
    "ParametricSoftplus": y(*F),
    "Pow": y(*F, *I),
    "PRelu": y(*F),
    "QLinearConv": NO,
    "QLinearMatMul": NO,
    "QuantizeLinear": y(*F, const_inputs={2: ("y_zero_point", "zero")}),
    "RandomNormal": _RANDOM,
    "RandomNormalLike": y(
        *F, typed_inputs=(), typed_outputs=(0,), note="`seed` value is ignored by TensorRT"
    ),
    "RandomUniform": _RANDOM,
    "RandomUniformLike": y(
        *F, typed_inputs=(), typed_outputs=(0,), note="`seed` value is ignored by TensorRT"
    ),
    "Range": y(*F, *I),
    "Reciprocal": y(*F),
    "ReduceL1": _REDUCE,
    "ReduceL2": _REDUCE,
    "ReduceLogSum": _REDUCE,
    "ReduceLogSumExp": _REDUCE,
    "ReduceMax": _REDUCE,
    "ReduceMean": _REDUCE,
    "ReduceMin": _REDUCE,
    "ReduceProd": _REDUCE,
    "ReduceSum": _REDUCE,
    "ReduceSumSquare": _REDUCE,
    "RegexFullMatch": NO,
    "Relu": y(*F, *I),
    "Reshape": y(*F, *I, *B),
    "Resize": y(
        *F,
        attrs=(
            (
                "coordinate_transformation_mode",
                "in",
                ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric")
                + ("align_corners",),
            ),
            ("mode", "in", ("nearest", "linear")),
            ("nearest_mode", "in", ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")),
            ("keep_aspect_ratio_policy", "in", ("stretch",)),
            ("antialias", "in", (0,)),
        ),
        note="when `scales` is a tensor input, `axes` must be an iota vector of length rank(input)",
    ),
    "ReverseSequence": y(*F, *I, *B),
    "RMSNormalization": y(*F),
    "RNN": y(*F),
    "RoiAlign": y(*FH),
    "RotaryEmbedding": y(*F, input_dtypes={3: ("position_ids", ("INT64",))}),
    "Round": y(*F),
    "STFT": y(
        "FLOAT",
        const_inputs={1: ("frame_step", "initializer"), 2: ("window", "initializer")},
        note="input must be real-valued",
    ),
    "ScaledTanh": y(*F),
    "Scan": y(*F, typed_inputs=()),
    "Scatter": y(*F, *I),
    "ScatterElements": y(*F, *I),
    "ScatterND": y(*F, *I, attrs=(("reduction", "in", ("none",)),)),
    "Selu": y(*F),
    "SequenceAt": NO,
    "SequenceConstruct": NO,
    "SequenceEmpty": NO,
    "SequenceErase": NO,
    "SequenceInsert": NO,
    "SequenceLength": NO,
    "SequenceMap": NO,
    "Shape": y(*F, *I, *B),
    "Shrink": y(*F, *I),
    "Sigmoid": y(*F),
    "Sign": y(*F, *I),
    "Sin": y(*F),
    "Sinh": y(*F),
    "Size": y(*F, *I, *B),
    "Slice": y(*F, *I, *B),
    "Softmax": y(*F),
    "SoftmaxCrossEntropyLoss": NO,
    "Softplus": y(*F),
    "Softsign": y(*F),
    "SpaceToDepth": y(*F, *I),
    "Split": y(*F, *I, *B),
    "SplitToSequence": NO,
    "Sqrt": y(*F),
    "Squeeze": y(*F, *I, *B, const_inputs={1: ("axes", "constant")}, static_if_omitted={1: "axes"}),
    "StringConcat": NO,
    "StringNormalizer": NO,
    "StringSplit": NO,
    "Sub": y(*F, *I),
    "Sum": y(*F, *I),
    "Tan": y(*F),
    "Tanh": y(*F),
    "TensorScatter": y(*F, "INT32", input_ranks={0: (4,), 1: (4,)}, attrs=(("axis", "in", (-2,)),)),
    "TfIdfVectorizer": NO,
    "ThresholdedRelu": y(*F),
    "Tile": y(*F, *I, *B),
    "TopK": y(*F, *I, const_inputs={1: ("K", "lt3840")}, attrs=(("sorted", "in", (1,)),)),
    "Transpose": y(*F, *I, *B),
    "Trilu": y(*F, *I, *B),
    "Unique": NO,
    "Unsqueeze": y(*F, *I, *B, const_inputs={1: ("axes", "constant")}),
    "Upsample": y(*F),
    "Where": y(*F, *I, *B, typed_inputs=(1, 2)),
    "Xor": y(*B),
}

_OPS_11 = dict(_OPS_10)
_OPS_11.update(
    {
        # The release notes give no types for these two: not checked.
        "Swish": y(),
        "DFT": y(),  # through the FFT plugin (11.2)
        "Squeeze": y(*F, *I, *B, const_inputs={1: ("axes", "constant")}),
        "GridSample": y(*FH, input_ranks={0: (4, 5)}),
    }
)


@dataclass(frozen=True)
class ParserSupport:
    """What one TensorRT major version's ONNX parser takes."""

    version: int
    opsets: tuple[int, int]  # inclusive range of the default domain's opset
    ops: Mapping[str, OpSupport]
    # TensorRT's own ops (any domain): the parser has importers for them by name.
    custom_ops: frozenset[str]


# Custom ops with parser importers (onnxOpImporters.cpp at 10.1-GA, docs/TRT_custom_ops.md).
_CUSTOM_10 = frozenset(
    {
        "TRT_FP8QuantizeLinear",
        "TRT_FP8DequantizeLinear",
        "TRT_INT4QuantizeLinear",
        "TRT_INT4DequantizeLinear",
        "TRT_Scale",
        "TRT_Shuffle",
        "TRT_TopK_Min",
        "TRT_MatMul",
        "TRT_RaggedSoftmax",
        "TRT_QuantizedAttention",
    }
)

PARSERS: Mapping[int, ParserSupport] = MappingProxyType(
    {
        10: ParserSupport(10, (9, 24), MappingProxyType(_OPS_10), _CUSTOM_10),
        11: ParserSupport(
            11,
            (9, 25),
            MappingProxyType(_OPS_11),
            _CUSTOM_10 | {"TRT_Attention", "TRT_MoE", "TRT_KVCacheUpdate"},
        ),
    }
)

# Graph-level type rules from the matrix's preamble.
TRT_TYPES = frozenset(
    {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "BOOL", "UINT8", "DOUBLE"}
    | {FP8, FP4, INT8, INT4}
)
QUANTIZED_TYPES = frozenset({FP8, FP4, INT8, INT4})
# How the matrix names types, for messages.
TYPE_NAMES = MappingProxyType(
    {
        "FLOAT": "FP32",
        "FLOAT16": "FP16",
        "BFLOAT16": "BF16",
        FP8: "FP8",
        FP4: "FP4",
    }
)

__all__ = ["PARSERS", "QUANTIZED_TYPES", "TRT_TYPES", "TYPE_NAMES", "OpSupport", "ParserSupport"]
