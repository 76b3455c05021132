"""`kiln generate`: text (or token ids) from a text-generation artifact, streamed as it comes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from modelkiln.cli.common import err, handle_errors
from modelkiln.errors import UserInputError
from modelkiln.runtime import load
from modelkiln.sampling import Sampling
from modelkiln.text import TextCodec


def _ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UserInputError(f"--ids {text!r}: give token ids separated by commas") from None
    if not ids:
        raise UserInputError("--ids: give at least one token id")
    return ids


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("prompt", required=False)
@click.option(
    "--ids", default=None, help="The prompt as token ids, comma-separated, instead of text."
)
@click.option(
    "--max-new-tokens", type=int, default=64, show_default=True, help="Tokens to generate at most."
)
@click.option(
    "--temperature",
    type=float,
    default=None,
    help="Sample with this temperature (> 0); default: greedy.",
)
@click.option("--top-k", type=int, default=None, help="Sample from the k most likely tokens.")
@click.option(
    "--top-p",
    type=float,
    default=None,
    help="Sample from the smallest set reaching this probability, in (0, 1].",
)
@click.option(
    "--repetition-penalty",
    type=float,
    default=None,
    help="Penalize tokens already in the text (> 0; 1: none).",
)
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--threads", type=int, default=None, help="Intra-op threads of the runtime.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (no streaming)."
)
@handle_errors
def generate(
    artifact: Path,
    prompt: str | None,
    ids: str | None,
    max_new_tokens: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float | None,
    seed: int | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Generate from ARTIFACT (a text-generation artifact) after PROMPT, printing the new text
    to stdout as it comes. Greedy by default; --temperature, --top-k or --top-p sample."""
    if (prompt is None) == (ids is None):
        raise UserInputError("give a PROMPT (text) or --ids (token ids), one of them")
    sampling = Sampling(
        do_sample=any(v is not None for v in (temperature, top_k, top_p)),
        temperature=1.0 if temperature is None else temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    if max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    session = load(artifact, **({"threads": threads} if threads else {}))
    if session.artifact.manifest.decoder is None:
        raise UserInputError(
            f"{artifact} is a {session.artifact.manifest.task} artifact; kiln generate needs a "
            "text-generation one (export a *ForCausalLM checkpoint)"
        )
    codec = TextCodec.open(artifact) if prompt is not None else None
    prompt_ids = (
        codec.encode(prompt) if codec is not None and prompt is not None else _ids(ids or "")
    )
    new: list[int] = []
    shown = ""

    def stream(token: np.ndarray) -> None:
        nonlocal shown
        new.append(int(token[0]))
        if as_json:
            return
        if codec is None:
            sys.stdout.write(f"{'' if len(new) == 1 else ','}{int(token[0])}")
        else:
            text = codec.decode(new)
            if not text.endswith("\ufffd"):  # a character still incomplete: wait for it
                sys.stdout.write(text[len(shown) :])
                shown = text
        sys.stdout.flush()

    start = time.perf_counter()
    result = session.generate(
        [prompt_ids], max_new_tokens=max_new_tokens, sampling=sampling, streamer=stream
    )
    seconds = time.perf_counter() - start
    tokens = result.new_tokens[0].tolist()
    if as_json:
        record = {
            "artifact": str(artifact),
            "prompt_ids": prompt_ids,
            "new_ids": tokens,
            "text": None if codec is None else codec.decode(tokens),
            "sampling": sampling.to_json(),
            "seconds": round(seconds, 3),
        }
        click.echo(json.dumps(record, indent=2))
        return
    if codec is not None:
        sys.stdout.write(codec.decode(tokens)[len(shown) :])
    sys.stdout.write("\n")
    err.print(
        f"{len(tokens)} tokens in {seconds:.2f}s ({len(tokens) / seconds:.1f} tokens/s)",
        style="dim",
        markup=False,
    )
