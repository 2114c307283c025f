"""A tiny RAM / DAPE configuration for tests and CPU quick runs (random weights, generated files).

`write_tiny_tagger_files(out_dir)` writes a short tag list, per-class thresholds and two tiny
BERT configs into `out_dir`, and returns the `KEY VALUE` overrides that make `MODEL.TAGGER.RAM`
build a small network from them (Swin 32x32 input with 4 stages, 2-layer BERTs of width 32).
"""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np

from rass.utils.io import write_text_atomic

__all__ = ["TINY_BERT", "write_tiny_tagger_files"]

# A 2-layer BERT of width 32 with cross-attention (used for tag encoder, decoder and head).
TINY_BERT = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=32,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
    add_cross_attention=True, encoder_width=32,
)


def write_tiny_tagger_files(out_dir: str, num_tags: int = 24, seed: int = 0) -> List[str]:
    """Write tiny tagger resources and return the config overrides that use them.

    Args:
        out_dir: folder to write into (created if missing).
        num_tags: number of tags ("tiny_tag_00", ...).
        seed: seed of the generated thresholds.

    Returns:
        A flat `[KEY, VALUE, ...]` list for `cfg.merge_from_list` / `setup_cfg(opts=...)`.
    """
    os.makedirs(out_dir, exist_ok=True)
    tags = [f"tiny_tag_{i:02d}" for i in range(num_tags)]
    thresholds = np.random.default_rng(seed).uniform(0.3, 0.7, size=num_tags)
    files = {
        "tags.txt": "\n".join(tags) + "\n",
        "thresholds.txt": "\n".join(f"{t:.4f}" for t in thresholds) + "\n",
        "text_bert.json": json.dumps(TINY_BERT, indent=2),
        "head_bert.json": json.dumps(dict(TINY_BERT, num_attention_heads=4), indent=2),
    }
    for name, text in files.items():
        write_text_atomic(os.path.join(out_dir, name), text)
    k = "MODEL.TAGGER.RAM."
    return [
        k + "TAG_LIST", os.path.join(out_dir, "tags.txt"),
        k + "THRESHOLDS", os.path.join(out_dir, "thresholds.txt"),
        k + "TEXT_BERT_CONFIG", os.path.join(out_dir, "text_bert.json"),
        k + "HEAD_BERT_CONFIG", os.path.join(out_dir, "head_bert.json"),
        k + "IMAGE_SIZE", "32",
        k + "SWIN_EMBED_DIM", "8",
        k + "SWIN_DEPTHS", "[2, 2, 2, 2]",
        k + "SWIN_NUM_HEADS", "[1, 2, 2, 4]",
        k + "SWIN_WINDOW_SIZE", "2",
        k + "EMBED_DIM", "16",
        k + "BATCH_SIZE", "4",
    ]
