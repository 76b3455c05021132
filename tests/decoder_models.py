"""Tiny random-weight decoders, one per family: 2 layers, hidden 32, vocabulary 128.

Each is built from its transformers config with a fixed seed and saved with save_pretrained,
plus a word-level tokenizer.json over the same 128 ids so text prompts work too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB = 128
POSITIONS = 256
WORDS = [f"w{i}" for i in range(3, VOCAB)]  # ids 0..2 are <pad>, <s>, </s>


def _llama_like(name: str, **extra: Any) -> Any:
    import transformers

    settings = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
    )
    return getattr(transformers, name)(**{**settings, **extra})


def _config(name: str, **settings: Any) -> Any:
    import transformers

    return getattr(transformers, name)(**settings)


FAMILIES: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: _config(
        "GPT2Config", n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=POSITIONS,
        bos_token_id=1, eos_token_id=2,
    ),
    "gpt_neo": lambda: _config(
        "GPTNeoConfig", hidden_size=32, num_layers=2, num_heads=4, vocab_size=VOCAB,
        max_position_embeddings=POSITIONS, attention_types=[[["global", "local"], 1]],
        window_size=8, bos_token_id=1, eos_token_id=2,
    ),
    "gpt_neox": lambda: _config(
        "GPTNeoXConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=POSITIONS, rotary_pct=0.25,
    ),
    "llama": lambda: _llama_like("LlamaConfig"),
    "mistral": lambda: _llama_like("MistralConfig", sliding_window=8),
    "qwen2": lambda: _llama_like("Qwen2Config"),
    "qwen3": lambda: _llama_like("Qwen3Config", head_dim=8),
    "phi": lambda: _config(
        "PhiConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
        max_position_embeddings=POSITIONS, partial_rotary_factor=0.5,
    ),
    "phi3": lambda: _llama_like("Phi3Config", pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gemma": lambda: _llama_like("GemmaConfig", head_dim=8),
    "gemma2": lambda: _llama_like("Gemma2Config", head_dim=8, sliding_window=8),
    "opt": lambda: _config(
        "OPTConfig", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, word_embed_proj_dim=32, max_position_embeddings=POSITIONS,
    ),
    "bloom": lambda: _config("BloomConfig", hidden_size=32, n_layer=2, n_head=4, vocab_size=VOCAB),
    "falcon": lambda: _config(
        "FalconConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB, new_decoder_architecture=True, num_kv_heads=2,
        max_position_embeddings=POSITIONS,
    ),
    "stablelm": lambda: _llama_like("StableLmConfig", partial_rotary_factor=0.25),
    "olmo": lambda: _llama_like("OlmoConfig", pad_token_id=0, eos_token_id=2),
    "granite": lambda: _llama_like("GraniteConfig"),
    "smollm3": lambda: _llama_like(
        "SmolLM3Config", pad_token_id=0, bos_token_id=1, eos_token_id=2, no_rope_layer_interval=2
    ),
}  # fmt: skip


def build_decoder(family: str, folder: Path, seed: int = 0) -> Path:
    """The family's tiny model with random weights, saved as a checkpoint folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()
    model.save_pretrained(str(folder))
    write_tokenizer(folder)
    return folder


def write_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer.json: "w5 w9" -> [5, 9]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<pad>", "<s>", "</s>"])
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return path
