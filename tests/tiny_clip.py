"""A tiny random-weight Hugging Face CLIP folder in the original layout, for any test or benchmark that needs
a real CLIP checkpoint without a download (tests/ is on sys.path in every test session)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_clip(path: Path) -> Path:
    """A tiny random Hugging Face CLIP folder (model, byte-level BPE tokenizer, image processor)."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    tower = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32, **tower, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
            vocab_size=len(vocab), max_position_embeddings=24,
        ),
        vision_config=dict(hidden_size=48, **tower, image_size=32, patch_size=8),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    return path
