"""A plain BERT layer for parity tests, independent of our code: reads original key names from a state dict.

Written independently of ``memeguard.models.blocks`` so that the single-stream parity tests (OSCAR, UNITER)
compare our modules against arithmetic spelled out here, one unpadded example at a time.
"""

from __future__ import annotations

import math

import torch


def ln(x, sd, name, eps=1e-12):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def lin(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_layer(h, sd, p, heads=2):
    """One post-LN BERT layer ``p`` on an unpadded [L, H] sequence."""
    length, width = h.shape
    d = width // heads
    q = lin(h, sd, f"{p}.attention.self.query").reshape(length, heads, d)
    k = lin(h, sd, f"{p}.attention.self.key").reshape(length, heads, d)
    v = lin(h, sd, f"{p}.attention.self.value").reshape(length, heads, d)
    probs = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d), dim=-1)
    context = torch.einsum("hqk,khd->qhd", probs, v).reshape(length, width)
    attended = ln(lin(context, sd, f"{p}.attention.output.dense") + h, sd, f"{p}.attention.output.LayerNorm")
    inner = gelu(lin(attended, sd, f"{p}.intermediate.dense"))
    return ln(lin(inner, sd, f"{p}.output.dense") + attended, sd, f"{p}.output.LayerNorm")
