"""A decoder of realistic size (SmolLM-135M's shape, random weights): export fp32 and
int4-weights for ONNX Runtime and OpenVINO, then one `kiln bench` of all four against
PyTorch eager `generate()` in the same run, plus this machine's memory-bandwidth limit.

The model is built from a LlamaConfig (hidden 576, 30 layers, 9 heads / 3 KV heads, FFN
1536, vocabulary 49152, tied embeddings): decode speed does not depend on the weights'
values. A word-level tokenizer over the 49152 ids and 24 random evaluation prompts let the
int4 export measure its agreement with fp32; on random weights the logits are nearly flat,
so that agreement is not a quality figure (the budget is set low on purpose).

Decode at batch 1 reads every weight once per token, so memory bandwidth bounds it: the
limit printed is copy bandwidth / bytes of weights read per token (all weights, except the
input embedding, which is read one row per token unless tied to the output).

    .venv/bin/python benchmarks/llm.py [--batch 1,8] [--seq 128] [--new-tokens 64]
        [--rounds 3] [--threads N] [--wait-quiet S] [--keep DIR]

Writes benchmarks/results/llm.json and benchmarks/results/llm.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, git_revision, timed, wait_quiet, write_json  # noqa: E402

CONFIG = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    rms_norm_eps=1e-5,
)


def kiln() -> list[str]:
    return [sys.executable, "-c", "from modelkiln.cli import run; run()"]


def build_checkpoint(folder: Path) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**CONFIG))
    model.eval().save_pretrained(str(folder))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, CONFIG["vocab_size"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<pad>", "<s>", "</s>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def eval_texts(path: Path, count: int = 24) -> Path:
    rng = random.Random(0)
    lines = [
        " ".join(f"w{rng.randrange(3, CONFIG['vocab_size'])}" for _ in range(rng.randrange(4, 48)))
        for _ in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def export(ckpt: Path, out: Path, name: str, extra: list[str]) -> dict[str, Any]:
    cmd = [*kiln(), "export", str(ckpt), "--target", "cpu", "--target", "openvino-cpu"]
    cmd += ["--name", name, "-o", str(out), "--json", "--no-cache", *extra]
    seconds, done = timed(cmd)
    if done.returncode != 0:
        raise SystemExit(f"export failed: {done.stderr.strip().splitlines()[-1]}")
    return {"seconds": round(seconds, 1), "summary": json.loads(done.stdout)}


def copy_bandwidth(megabytes: int = 512, repeats: int = 7) -> float:
    """GB/s of a large numpy copy (bytes read + bytes written per second), best of a few."""
    src = np.ones(megabytes << 18, dtype=np.float32)  # megabytes MiB
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def weight_bytes_per_token(artifact: Path) -> int:
    """Bytes of weights one decode step reads: every weight file of the artifact."""
    manifest = json.loads((artifact / "kiln.json").read_text())
    roles = manifest["backend"]["files"]
    return sum(manifest["files"][f]["size"] for f in roles.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the artifacts here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="kiln-llm-"))
    root.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(root / "smollm-135m-shape")
    data = eval_texts(root / "eval.txt")
    exports = {
        "fp32": export(ckpt, root / "out", "smol", []),
        "int4-weights": export(
            ckpt,
            root / "out",
            "smol-int4",
            ["--precision", "int4-weights", "--eval", str(data), "--min-top1-agreement", "0.01"],
        ),
    }
    artifacts = [
        root / "out" / f"{n}-{t}" for n in ("smol", "smol-int4") for t in ("cpu", "openvino-cpu")
    ]
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet else None
    report_path = root / "bench.json"
    cmd = [*kiln(), "bench", *map(str, artifacts), "--baseline", str(ckpt), "--batch", args.batch]
    cmd += [
        "--seq",
        str(args.seq),
        "--new-tokens",
        str(args.new_tokens),
        "--rounds",
        str(args.rounds),
    ]
    cmd += ["--json", str(report_path)] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench failed: {done.stderr.strip()[-2000:]}")
    report = json.loads(report_path.read_text())
    bandwidth = copy_bandwidth()
    limits = {
        str(a.name): {
            "weight_bytes": weight_bytes_per_token(a),
            "tokens_per_s_limit": round(bandwidth * 1e9 / weight_bytes_per_token(a), 1),
        }
        for a in artifacts
    }
    accuracy = {
        s["target"]: (s["accuracy"] or {}) for s in exports["int4-weights"]["summary"]["artifacts"]
    }
    result = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "config": CONFIG,
        "wait_quiet": quiet,
        "exports": exports,
        "bench": report,
        "copy_bandwidth_gb_s": round(bandwidth, 2),
        "bandwidth_limits": limits,
        "int4_accuracy_random_weights": accuracy,
    }
    write_json(RESULTS / "llm.json", result)
    markdown = render(result)
    (RESULTS / "llm.md").write_text(markdown)
    print(markdown)


def render(result: dict[str, Any]) -> str:
    from modelkiln.benchmark.generation import markdown_table

    report = result["bench"]
    machine = report["machine"]
    lines = [
        f"# SmolLM-135M shape (random weights): decode on {machine['cpu_model']}, "
        f"{report['settings']['threads']} threads",
        "",
        markdown_table(report),
        "",
        f"Copy bandwidth {result['copy_bandwidth_gb_s']} GB/s; batch-1 decode limit = bandwidth / "
        "weight bytes per token:",
        "",
        "| artifact | weight MB | limit tokens/s |",
        "|---|---|---|",
    ]
    for name, row in result["bandwidth_limits"].items():
        lines.append(f"| {name} | {row['weight_bytes'] / 1e6:.1f} | {row['tokens_per_s_limit']} |")
    lines += [
        "",
        "Export wall time (both targets, one trace): "
        + ", ".join(f"{k} {v['seconds']} s" for k, v in result["exports"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
