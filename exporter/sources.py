"""Checkpoint sources: a Hugging Face folder, a module factory, or an existing ONNX file.

`load()` only inspects and checks files; it does not import torch. Weights are read when the
pipeline asks a source for its module, after the target's backend has been checked.

Module factory protocol: `path/to/file.py:make` or `pkg.mod:make` names a callable taking no
arguments and returning `(module, example_inputs)` or `(module, example_inputs, options)`:
- `module`: a `torch.nn.Module` whose `forward` takes the inputs as keyword arguments and
  returns a tensor or a tuple of tensors;
- `example_inputs`: a dict of input name -> tensor (shapes used for tracing);
- `options` (optional dict): `output_names` (list), `dynamic_axes` ({input: {axis: name}};
  default: axis 0 of every input is "batch"), `atol` (float, default 1e-4).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.artifact import sha256_file
from modelkiln.errors import CheckpointError, first_line
from modelkiln.exporter.safetensors_check import check_safetensors
from modelkiln.onnx_proto import iter_graphs, load_proto

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PREPROCESSING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
    "preprocessor_config.json",
    "generation_config.json",
    "config.json",
)


def _weights_record(paths: list[Path], root: Path) -> list[dict[str, Any]]:
    return [
        {"file": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size}
        for p in paths
    ]


@dataclass
class HFCheckpoint:
    path: Path
    config: dict[str, Any]
    weights: list[Path]
    pickled: bool
    preprocessing: list[Path]
    kind: str = "hf"
    stock_architecture: bool = False  # its config declares custom code, exported as stock

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    @property
    def generation_config(self) -> dict[str, Any]:
        """generation_config.json (special tokens, default sampling), or {}."""
        path = self.path / "generation_config.json"
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
        return data if isinstance(data, dict) else {}

    def describe(self) -> dict[str, Any]:
        record = {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "model_type": self.model_type,
            "architectures": self.config.get("architectures", []),
            "weights": _weights_record(self.weights, self.path),
        }
        if self.stock_architecture:
            record["stock_architecture"] = True
        return record

    def load_module(self, auto_class: str) -> Any:
        """Instantiate the model with real weights; refuses checkpoints missing task weights."""
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        cls = getattr(transformers, auto_class)
        kwargs: dict[str, Any] = {
            "local_files_only": True,
            "trust_remote_code": False,
            "use_safetensors": not self.pickled,
            "weights_only": True,
        }
        try:
            model, info = cls.from_pretrained(str(self.path), output_loading_info=True, **kwargs)
        except Exception as exc:
            raise CheckpointError(
                f"transformers cannot load {self.path} as {auto_class}: {first_line(exc)}"
            ) from None
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
        if missing:
            shown = ", ".join(sorted(missing)[:4]) + (" …" if len(missing) > 4 else "")
            raise CheckpointError(
                f"{self.path} lacks {len(missing)} weight(s) that {auto_class} needs ({shown}); "
                "the checkpoint was not trained for this task: pick another --task"
            )
        return model.eval()


@dataclass
class FactorySource:
    ref: str
    module: Any
    example_inputs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None
    kind: str = "factory"
    n_outputs: int = 0
    preprocessing: list[Path] = field(default_factory=list)

    @property
    def model_type(self) -> str:
        return type(self.module).__name__

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return {
            "kind": self.kind,
            "path": self.ref,
            "model_type": self.model_type,
            "weights": [{"file": "<state_dict>", "sha256": digest.hexdigest(), "size": None}],
        }

    def load_module(self, auto_class: str | None = None) -> Any:
        return self.module.eval()


@dataclass
class OnnxSource:
    path: Path
    files: list[Path]
    kind: str = "onnx"
    preprocessing: list[Path] = field(default_factory=list)

    @property
    def model_type(self) -> str:
        return "onnx"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "model_type": "onnx",
            "weights": _weights_record(self.files, self.path.parent),
        }


Source = HFCheckpoint | FactorySource | OnnxSource


def load(ref: str, allow_pickle: bool = False, stock_architecture: bool = False) -> Source:
    """`stock_architecture`: export a checkpoint whose config declares custom code
    (`auto_map`) with the stock transformers class instead of refusing it."""
    path = Path(ref)
    if path.suffix == ".onnx":
        return _load_onnx(path)
    if path.is_dir():
        return _load_hf(path, allow_pickle, stock_architecture)
    if path.exists():
        raise CheckpointError(
            f"{path} is a file modelkiln cannot export; give a Hugging Face checkpoint folder, "
            "an .onnx file or a module factory (file.py:make)"
        )
    if ":" in ref and not path.exists():
        return _load_factory(ref)
    raise CheckpointError(f"{path} does not exist")


def _load_hf(path: Path, allow_pickle: bool, stock_architecture: bool) -> HFCheckpoint:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{path} has no config.json; expected a Hugging Face checkpoint folder "
            "(config.json + *.safetensors)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} does not hold a JSON object")
    custom = _custom_code(config)
    if custom and not stock_architecture:
        raise CheckpointError(
            f"{config_path} declares custom code (auto_map: {custom}); modelkiln never runs "
            "code from a checkpoint, and the stock transformers class could build a different "
            "model than its author's: pass --stock-architecture to export the stock "
            f"{config.get('model_type', 'model')} class anyway"
        )
    # Exactly the files transformers loads: safetensors first, pickle only when allowed.
    weights = _weight_files(path, SAFETENSORS_NAME)
    pickled = False
    if weights:
        for w in weights:
            check_safetensors(w)
    else:
        weights = _weight_files(path, PICKLE_NAME)
        if not weights:
            found = sorted(
                p.name for p in path.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES)
            )
            raise CheckpointError(
                f"{path} has config.json but no weights: no {SAFETENSORS_NAME} (or sharded "
                f"{SAFETENSORS_NAME}.index.json)"
                + (
                    f"; it has {', '.join(found)}, which transformers does not load"
                    if found
                    else ""
                )
            )
        if not allow_pickle:
            names = ", ".join(p.name for p in weights)
            raise CheckpointError(
                f"{path} holds only pickle weights ({names}), which can run code when loaded; "
                "convert them to safetensors, or pass --allow-pickle to load them with "
                "torch.load(weights_only=True)"
            )
        pickled = True
    preprocessing = [path / n for n in PREPROCESSING_FILES if (path / n).is_file()]
    return HFCheckpoint(
        path, config, weights, pickled, preprocessing, stock_architecture=custom != ""
    )


def _custom_code(config: dict[str, Any]) -> str:
    """What `auto_map` maps to which module (empty: the checkpoint brings no code)."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return ""
    if isinstance(auto_map, dict):
        return ", ".join(f"{k} -> {v}" for k, v in auto_map.items())
    return str(auto_map)


def _weight_files(path: Path, name: str) -> list[Path]:
    """`name` itself, or the shards its `.index.json` names; empty when neither exists."""
    index = path / f"{name}.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            raise CheckpointError(f"{index} is not a valid weights index") from None
        root = path.resolve()
        for shard in shards:
            if not isinstance(shard, str) or not (root / shard).resolve().is_relative_to(root):
                raise CheckpointError(
                    f"{index} names shard {shard!r}, which is not a file inside {path}"
                )
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{path} is missing shard(s) {', '.join(missing)} named in {index.name}"
            )
        return [path / s for s in shards]
    single = path / name
    return [single] if single.is_file() else []


def _load_onnx(path: Path) -> OnnxSource:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    import onnx

    proto = load_proto(path, CheckpointError)
    root = path.parent.resolve()
    files = [path]
    for graph in iter_graphs(proto.graph):
        for tensor in graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (root / location).resolve()
            if not target.is_relative_to(root):
                raise CheckpointError(
                    f"{path}: tensor '{tensor.name}' points its external data at '{location}', "
                    f"outside the model's folder {root}; modelkiln reads external data only "
                    "from the model's own folder"
                )
            if not target.is_file():
                raise CheckpointError(
                    f"{path}: external data file '{location}' of tensor '{tensor.name}' is missing"
                )
            if target not in files:
                files.append(target)
    return OnnxSource(path, files)


FACTORY_OPTIONS = ("output_names", "dynamic_axes", "atol")


def _load_factory(ref: str) -> FactorySource:
    target, _, attr = ref.rpartition(":")
    if not target or not attr.isidentifier():
        raise CheckpointError(
            f"'{ref}' is not a module factory reference; use path/to/file.py:make or pkg.mod:make"
        )
    file = None
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise CheckpointError(f"module factory file {file} does not exist")
            spec = importlib.util.spec_from_file_location(f"_kiln_factory_{file.stem}", file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            # Like `python -m`, resolve packages from the current folder first.
            sys.path.insert(0, str(Path.cwd()))
            try:
                module = importlib.import_module(target)
            finally:
                sys.path.remove(str(Path.cwd()))
    except CheckpointError:
        raise
    except (Exception, SystemExit) as exc:
        raise CheckpointError(f"importing {target} failed: {type(exc).__name__}: {exc}") from None
    make = getattr(module, attr, None)
    if not callable(make):
        raise CheckpointError(f"{target} has no callable '{attr}' (from {ref})")
    try:
        result = make()
    except (Exception, SystemExit) as exc:
        raise CheckpointError(
            f"calling {attr}() from {target} failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise CheckpointError(
            f"{ref} must return (module, example_inputs) or (module, example_inputs, options); "
            f"it returned {type(result).__name__}"
        )
    import torch

    net, inputs, *rest = result
    if not isinstance(net, torch.nn.Module):
        raise CheckpointError(f"{ref} returned a {type(net).__name__}, not a torch.nn.Module")
    _check_example_inputs(ref, inputs)
    options = rest[0] if rest else {}
    _check_factory_options(ref, options, inputs)
    source = FactorySource(ref, net.eval(), inputs, options, file)
    source.n_outputs = _count_outputs(ref, net, inputs)
    return source


def _check_example_inputs(ref: str, inputs: Any) -> None:
    import torch

    if (
        not isinstance(inputs, dict)
        or not inputs
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inputs.items())
    ):
        raise CheckpointError(f"{ref} must return example inputs as a dict of name -> tensor")
    for name, tensor in inputs.items():
        if tensor.numel() == 0:
            raise CheckpointError(f"{ref}: example input '{name}' is empty; give real values")
        try:
            tensor.detach().cpu().numpy()
        except (TypeError, RuntimeError):
            raise CheckpointError(
                f"{ref}: example input '{name}' has dtype {tensor.dtype}, which numpy cannot "
                "hold; give float32/float16/int64/int32/bool inputs"
            ) from None


def _check_factory_options(ref: str, options: Any, inputs: dict[str, Any]) -> None:
    if not isinstance(options, dict):
        raise CheckpointError(f"{ref}: options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(FACTORY_OPTIONS))
    if unknown:
        raise CheckpointError(
            f"{ref}: unknown option(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(FACTORY_OPTIONS)}"
        )
    names = options.get("output_names")
    if names is not None and (
        not isinstance(names, list | tuple)
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise CheckpointError(f"{ref}: output_names must be a list of distinct names")
    axes = options.get("dynamic_axes")
    if axes is not None:
        if not isinstance(axes, dict):
            raise CheckpointError(f"{ref}: dynamic_axes must map input names to {{axis: name}}")
        for name, mapping in axes.items():
            if name not in inputs:
                raise CheckpointError(
                    f"{ref}: dynamic_axes names input '{name}'; inputs are {', '.join(inputs)}"
                )
            rank = inputs[name].dim()
            if not isinstance(mapping, dict) or not all(
                isinstance(a, int) and 0 <= a < rank and isinstance(d, str) and d
                for a, d in mapping.items()
            ):
                raise CheckpointError(
                    f"{ref}: dynamic_axes['{name}'] must map axes 0..{rank - 1} to dim names"
                )
    atol = options.get("atol", 1e-4)
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not 0 <= atol < float("inf"):
        raise CheckpointError(f"{ref}: atol must be a finite number >= 0, got {atol!r}")


def _count_outputs(ref: str, module: Any, inputs: dict[str, Any]) -> int:
    import torch

    try:
        with torch.inference_mode():
            result = module(**inputs)
    except Exception as exc:
        raise CheckpointError(
            f"{ref}: the module fails on its own example inputs: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(result, torch.Tensor):
        return 1
    if (
        isinstance(result, tuple | list)
        and result
        and all(isinstance(t, torch.Tensor) for t in result)
    ):
        return len(result)
    raise CheckpointError(
        f"{ref}: forward must return a tensor or a tuple of tensors, not {type(result).__name__}"
    )
