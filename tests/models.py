"""A bank of tiny models built in code, each with its builder and its own check.

Like Polygraphy's model bank: every entry knows how to write itself to disk in the form
`kiln export` accepts (Hugging Face folder, module factory file, .onnx file) and how to check an
exported artifact against an independent reference on inputs of shapes the export never saw.
The checks compute the reference without modelkiln (transformers, torch or numpy directly), so a
bug in modelkiln's own validation cannot hide a wrong artifact.

Builders are deterministic (fixed seeds) and take a few hundred milliseconds; the expensive part
is exporting, which conftest.py does once per session.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_SIZE = 100
HIDDEN = 32
MAX_POSITIONS = 128
NUM_LABELS = 3
VIT_LABELS = 4
IMAGE_SIZE = 32
MLP_IN, MLP_OUT = 16, 32
ATOL = 1e-4

# A WordPiece vocabulary small enough to read; the model's vocab (100) is larger, as real
# checkpoints often pad theirs.
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "kiln", "fire", "hello", "world", ".", ",", "!"]
TOKENIZER_VOCAB = SPECIALS + LETTERS + ["##" + c for c in LETTERS] + WORDS + ["##s", "##ing"]


# --------------------------------------------------------------------------- helpers


def text_feeds(
    input_names: list[str], batch: int, sequence: int, seed: int = 7, vocab: int = VOCAB_SIZE
) -> dict[str, np.ndarray]:
    """Token ids, a right-padded attention mask and mixed token types, as int64 arrays."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, sequence)).astype(np.int64)
    mask = np.ones((batch, sequence), dtype=np.int64)
    if batch > 1:
        mask[-1, sequence // 2 :] = 0
        ids[-1, sequence // 2 :] = 0  # [PAD]
    types = np.zeros((batch, sequence), dtype=np.int64)
    types[:, sequence // 3 :] = 1  # exercises the token-type embedding, not just zeros
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: available[name] for name in input_names}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _torch_outputs(module: Any, feeds: dict[str, np.ndarray]) -> Any:
    import torch

    with torch.inference_mode():
        return module(**{k: torch.from_numpy(v) for k, v in feeds.items()})


def import_file(path: Path, name: str | None = None) -> Any:
    """Import a Python file as a fresh module (factory files are not on sys.path)."""
    name = name or f"_tests_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- tiny BERT


def bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    settings: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,  # `kiln validate --reference` checks 61
        type_vocab_size=2,
        pad_token_id=0,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def write_tokenizer(folder: Path) -> Path:
    """A WordPiece tokenizer.json (tokenizers package) plus vocab.txt, as BERT checkpoints ship."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(TOKENIZER_VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    path = folder / "tokenizer.json"
    tok.save(str(path))
    (folder / "vocab.txt").write_text("\n".join(TOKENIZER_VOCAB) + "\n")
    return path


def build_tiny_bert(folder: Path, tokenizer: bool = True) -> Path:
    """2-layer BertModel (feature-extraction) saved as safetensors, with a tokenizer."""
    import torch
    from transformers import BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = BertModel(bert_config(), add_pooling_layer=True).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    if tokenizer:
        write_tokenizer(folder)
    return folder


def build_tiny_bert_pickle(folder: Path) -> Path:
    """The same architecture as `build_tiny_bert`, but with only a pickle `pytorch_model.bin`."""
    import torch
    from transformers import BertModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    model = BertModel(bert_config()).eval()
    model.config.architectures = ["BertModel"]  # as save_pretrained would record
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def check_tiny_bert(folder: Path, session: Any, batch: int = 2, sequence: int = 11) -> float:
    """Artifact vs transformers' BertModel on a shape the export never checked."""
    from transformers import BertModel

    feeds = text_feeds(list(session.inputs), batch, sequence)
    got = session.run(feeds)["last_hidden_state"]
    model = BertModel.from_pretrained(str(folder)).eval()
    want = _torch_outputs(model, feeds).last_hidden_state.numpy()
    diff = max_abs_diff(want, got)
    assert diff <= ATOL, f"last_hidden_state differs from PyTorch by {diff}"
    return diff


def build_tiny_bert_classifier(folder: Path) -> Path:
    """2-layer BertForSequenceClassification with 3 labels, safetensors, no tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    model = BertForSequenceClassification(bert_config(num_labels=NUM_LABELS)).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def check_tiny_bert_classifier(
    folder: Path, session: Any, batch: int = 3, sequence: int = 9
) -> float:
    from transformers import BertForSequenceClassification

    feeds = text_feeds(list(session.inputs), batch, sequence, seed=11)
    got = session.run(feeds)["logits"]
    assert got.shape == (batch, NUM_LABELS)
    model = BertForSequenceClassification.from_pretrained(str(folder)).eval()
    want = _torch_outputs(model, feeds).logits.numpy()
    diff = max_abs_diff(want, got)
    assert diff <= ATOL, f"logits differ from PyTorch by {diff}"
    return diff


TOKEN_LABELS = 5


def build_tiny_bert_tagger(folder: Path) -> Path:
    """2-layer BertForTokenClassification with 5 labels (task inferred from architectures)."""
    import torch
    from transformers import BertForTokenClassification

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(6)
    model = BertForTokenClassification(bert_config(num_labels=TOKEN_LABELS)).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def check_tiny_bert_tagger(folder: Path, session: Any, batch: int = 2, sequence: int = 13) -> float:
    from transformers import BertForTokenClassification

    feeds = text_feeds(list(session.inputs), batch, sequence, seed=12)
    got = session.run(feeds)["logits"]
    assert got.shape == (batch, sequence, TOKEN_LABELS)
    model = BertForTokenClassification.from_pretrained(str(folder)).eval()
    want = _torch_outputs(model, feeds).logits.numpy()
    diff = max_abs_diff(want, got)
    assert diff <= ATOL, f"logits differ from PyTorch by {diff}"
    return diff


# --------------------------------------------------------------------------- tiny ViT


def build_tiny_vit(folder: Path) -> Path:
    """2-layer ViTForImageClassification, 32x32 images in 8x8 patches, 4 labels."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=VIT_LABELS,
    )
    ViTForImageClassification(config).eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


def check_tiny_vit(folder: Path, session: Any, batch: int = 5) -> float:
    from transformers import ViTForImageClassification

    rng = np.random.default_rng(5)
    pixels = rng.standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    got = session.run({"pixel_values": pixels})["logits"]
    model = ViTForImageClassification.from_pretrained(str(folder)).eval()
    want = _torch_outputs(model, {"pixel_values": pixels}).logits.numpy()
    diff = max_abs_diff(want, got)
    assert diff <= ATOL, f"logits differ from PyTorch by {diff}"
    return diff


# --------------------------------------------------------------------------- module factories

CNN_FACTORY = '''\
"""A tiny CNN module factory (see modelkiln.exporter.sources for the protocol)."""
import torch


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, *, pixel_values):
        h = torch.relu(self.conv(pixel_values))
        h = torch.relu(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


def make():
    torch.manual_seed(4)
    return (
        TinyCNN().eval(),
        {"pixel_values": torch.randn(2, 3, 32, 32)},
        {"output_names": ["logits"], "dynamic_axes": {"pixel_values": {0: "batch"}}},
    )
'''

# Random ops make the exported model diverge from eager PyTorch for real: ONNX Runtime draws
# other numbers than torch. `clean` is deterministic and must match; the two others must fail.
NOISY_FACTORY = '''\
"""A module whose outputs are random: its artifact cannot match the PyTorch reference."""
import torch


class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(256, 256)

    def forward(self, x):
        h = self.lin(x)
        return h + torch.randn_like(h), torch.nn.functional.dropout(h, 0.5, training=True), h


def make():
    torch.manual_seed(5)
    return Noisy(), {"x": torch.randn(2, 256)}, {"output_names": ["noisy", "dropped", "clean"]}
'''


def write_cnn_factory(folder: Path) -> str:
    """Write the CNN factory file; returns the `file.py:make` reference for `kiln export`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny_cnn.py"
    path.write_text(CNN_FACTORY)
    return f"{path}:make"


def check_cnn(ref: str, session: Any, batch: int = 4) -> float:
    path, _, attr = ref.rpartition(":")
    module, _, _ = getattr(import_file(Path(path)), attr)()
    rng = np.random.default_rng(6)
    pixels = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    got = session.run({"pixel_values": pixels})["logits"]
    want = _torch_outputs(module, {"pixel_values": pixels}).numpy()
    diff = max_abs_diff(want, got)
    assert diff <= ATOL, f"logits differ from PyTorch by {diff}"
    return diff


def write_noisy_factory(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "noisy.py"
    path.write_text(NOISY_FACTORY)
    return f"{path}:make"


# --------------------------------------------------------------------------- ONNX files


def mlp_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((MLP_IN, MLP_OUT)).astype(np.float32)
    bias = rng.standard_normal(MLP_OUT).astype(np.float32)
    return weight, bias


def mlp_proto() -> Any:
    """Relu(x @ W + b) with x: float32[batch, 16]; W is 2 KiB, b 128 bytes."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = mlp_weights()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["xwb"]),
            helper.make_node("Relu", ["xwb"], ["y"]),
        ],
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", MLP_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", MLP_OUT])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def build_mlp_onnx(path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model = mlp_proto()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_onnx_with_external_data(path: Path, location: str) -> Path:
    """The MLP with its weight W stored externally at `location` (relative to the model)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model = mlp_proto()
    weight = next(t for t in model.graph.initializer if t.name == "W")
    raw = weight.raw_data or np.asarray(mlp_weights()[0]).tobytes()
    target = (path.parent / location).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def check_mlp(session: Any, batch: int = 7) -> float:
    weight, bias = mlp_weights()
    x = np.random.default_rng(9).standard_normal((batch, MLP_IN)).astype(np.float32)
    got = session.run({"x": x})["y"]
    want = np.maximum(x.astype(np.float64) @ weight + bias, 0.0)
    diff = max_abs_diff(want, got)
    assert diff <= ATOL, f"y differs from numpy by {diff}"
    return diff


# --------------------------------------------------------------------------- the bank


@dataclass(frozen=True)
class BankEntry:
    """`build(folder)` returns what `kiln export` takes; `check(source, session)` the max diff."""

    name: str
    build: Callable[[Path], Any]
    check: Callable[[Any, Any], float]
    task: str | None = None


def _onnx_build(folder: Path) -> Path:
    return build_mlp_onnx(folder / "tiny_mlp.onnx")


BANK: dict[str, BankEntry] = {
    entry.name: entry
    for entry in (
        BankEntry("tiny-bert", build_tiny_bert, check_tiny_bert, "feature-extraction"),
        BankEntry(
            "tiny-bert-classifier",
            build_tiny_bert_classifier,
            check_tiny_bert_classifier,
            "text-classification",
        ),
        BankEntry(
            "tiny-bert-tagger",
            build_tiny_bert_tagger,
            check_tiny_bert_tagger,
            "token-classification",
        ),
        BankEntry("tiny-vit", build_tiny_vit, check_tiny_vit, "image-classification"),
        BankEntry("tiny-cnn", write_cnn_factory, check_cnn, "custom"),
        BankEntry("tiny-mlp-onnx", _onnx_build, lambda _src, session: check_mlp(session), "custom"),
    )
}


def read_manifest(artifact: Path) -> dict[str, Any]:
    return json.loads((Path(artifact) / "kiln.json").read_text())


# --------------------------------------------------------------------------- preprocessing only


def write_tiny_bert_preprocessing(folder: Path, model_input_names: list[str] | None = None) -> Path:
    """The tiny BERT's config.json and tokenizer, without building or saving weights, for code
    that only tokenizes; `model_input_names` restricts what the tokenizer produces."""
    folder.mkdir(parents=True, exist_ok=True)
    config = bert_config()
    config.architectures = ["BertModel"]
    config.save_pretrained(str(folder))
    write_tokenizer(folder)
    if model_input_names is not None:
        settings = {"model_input_names": model_input_names}
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder
