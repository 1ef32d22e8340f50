"""Sizes for the two-stream co-attention models (DeVLBERT, ERNIE-ViL) in the checkpoint tests.

Every width differs from every other (text d=32, vision v=48, co-attention c=40, text FFN 56, vision FFN 72,
region feature 24), so a transposed or misplaced tensor cannot have the right shape. Both architectures take
the same sizes; only the co-attention fields' prefix differs (DeVLBERT ``bi_``, ERNIE-ViL ``co_``).
"""

from __future__ import annotations

from typing import Any


def odd_two_stream_sizes(co_prefix: str, vocab_size: int, max_position_embeddings: int) -> dict[str, Any]:
    """Config keyword arguments with all-distinct widths; ``co_prefix`` names the co-attention fields."""
    text = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 56}
    vision = {
        "v_hidden_size": 48,
        "v_num_hidden_layers": 2,
        "v_num_attention_heads": 4,
        "v_intermediate_size": 72,
    }
    co_attention = {f"{co_prefix}_hidden_size": 40, f"{co_prefix}_num_attention_heads": 2}
    layers = {"v_biattention_id": [0, 1], "t_biattention_id": [1, 2], "visual_feat_dim": 24}
    return {
        "vocab_size": vocab_size,
        **text,
        "max_position_embeddings": max_position_embeddings,
        **vision,
        **co_attention,
        **layers,
    }
