"""Rank sentences by meaning with an exported sentence-embedding artifact.

This is what an application ships: modelkiln's runtime, numpy and tokenizers, no torch and
no transformers.

    kiln export "$(python samples/minilm/checkpoint.py)" -o out/minilm-cpu
    python samples/embed_app.py out/minilm-cpu
    python samples/embed_app.py out/minilm-cpu "query" "sentence 1" "sentence 2" ...

With sentences on the command line the first is the query and the rest are the corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

import modelkiln

QUERY = "How do I keep my cat healthy?"
CORPUS = [
    "Feed your cat a balanced diet and take it to the vet once a year.",
    "The stock market fell sharply after the interest rate announcement.",
    "Kittens need several vaccinations during their first months.",
    "Preheat the oven to 200 degrees before baking the bread.",
    "Regular brushing keeps a long-haired cat's coat free of mats.",
    "The train to Berlin leaves from platform seven.",
]
MAX_TOKENS = 128


def load_tokenizer(artifact: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    pad_token = (tokenizer.padding or {}).get("pad_token", "[PAD]")
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    # Pad to the longest sentence in the batch, not to a fixed length.
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)
    return tokenizer


def embed(session: modelkiln.Session, tokenizer: Tokenizer, sentences: list[str]) -> np.ndarray:
    """One L2-normalized embedding per sentence: mean of the token vectors, padding excluded."""
    encodings = tokenizer.encode_batch(sentences)
    columns = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    # Feed only what the artifact declares, with the dtype it declares.
    feeds = {
        name: np.array(columns[name], dtype=spec.dtype) for name, spec in session.inputs.items()
    }
    hidden = session.run(feeds)["last_hidden_state"]  # (batch, sequence, dim)
    mask = np.array(columns["attention_mask"], dtype=hidden.dtype)[:, :, None]
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    artifact = Path(argv[0])
    query, corpus = (argv[1], argv[2:]) if len(argv) > 1 else (QUERY, CORPUS)
    if not corpus:
        print("error: give a query and at least one sentence to rank", file=sys.stderr)
        return 2
    try:
        session = modelkiln.load(artifact)
    except modelkiln.ModelkilnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(artifact)

    vectors = embed(session, tokenizer, [query, *corpus])
    scores = vectors[1:] @ vectors[0]  # cosine similarity: the vectors are unit length
    print(f"query: {query}\n")
    for rank, i in enumerate(np.argsort(-scores), start=1):
        print(f"{rank:2d}. {scores[i]:+.3f}  {corpus[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
