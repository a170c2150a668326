"""Tensor encodings for GGUF: F32/F16/BF16, Q8_0 and MXFP4, plus the OpenAI MXFP4 checkpoint layout.

The Q8_0 and MXFP4 encoders follow ggml's reference quantizers (``quantize_row_q8_0_ref``,
``quantize_row_mxfp4_ref``; ``gguf.quants`` implements the same) bit for bit, but run in torch so
a 20B model quantizes on every core instead of one; tests compare them with ``gguf.quants``.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

QK = 32  # block size of Q8_0 and MXFP4
# Thresholds between consecutive E2M1 magnitudes in ggml's doubled units (0,1,2,3,4,6,8,12): a value
# exactly on a threshold goes to the smaller magnitude, as ggml's first-minimum search does.
_MXFP4_THRESHOLDS = torch.tensor([0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0])
_MXFP4_MAG_OF_HALF_UNIT = torch.tensor([int((_MXFP4_THRESHOLDS <= k / 2).sum()) for k in range(32)], dtype=torch.uint8)
_MXFP4_VALUES = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=torch.float32)
# a byte holds two codes: its (low nibble, high nibble) values, looked up at once
_MXFP4_BYTE_VALUES = torch.stack([_MXFP4_VALUES[torch.arange(256) & 0x0F], _MXFP4_VALUES[torch.arange(256) >> 4]],
                                 dim=1)

BLOCKED = {QT.Q8_0, QT.MXFP4}


def nbytes_of(shape: tuple[int, ...], qtype: QT) -> int:
    """Bytes a tensor of numpy ``shape`` takes in ``qtype`` (rows must hold whole blocks)."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def row_fits(cols: int, qtype: QT) -> bool:
    return cols % GGML_QUANT_SIZES[qtype][0] == 0


def encode(t: torch.Tensor, qtype: QT) -> np.ndarray:
    """Encode float rows (any shape, last dim = row) as GGUF tensor bytes of ``qtype``."""
    if qtype == QT.F32:
        return t.to(torch.float32).contiguous().numpy()
    if qtype == QT.F16:
        return t.to(torch.float16).contiguous().numpy()
    if qtype == QT.BF16:
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    if qtype == QT.Q8_0:
        return quantize_q8_0(t)
    if qtype == QT.MXFP4:
        return quantize_mxfp4(t)
    raise ValueError(f"cannot encode {qtype.name}")


def quantize_q8_0(t: torch.Tensor) -> np.ndarray:
    """ggml Q8_0: per 32 values an f16 scale d = max|x|/127 and int8 round(x/d) (half away from zero)."""
    x = t.to(torch.float32).reshape(-1, QK)
    d = x.abs().amax(dim=1, keepdim=True).div_(127.0)
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    v = x * inv
    v.add_(torch.copysign(torch.tensor(0.5), v))  # the cast to int8 truncates: round half away from zero
    out = torch.empty((x.shape[0], 2 + QK), dtype=torch.uint8)
    out[:, :2] = d.to(torch.float16).view(torch.uint8)
    out[:, 2:] = v.to(torch.int8).view(torch.uint8)
    return out.numpy()


def quantize_mxfp4(t: torch.Tensor) -> np.ndarray:
    """ggml MXFP4: per 32 values an E8M0 exponent e and 4-bit E2M1 codes (element j low, j+16 high)."""
    x = t.to(torch.float32).reshape(-1, QK)
    amax = x.abs().amax(dim=1, keepdim=True)
    # floor(log2(amax)) exactly, from the float's exponent: amax = m * 2**ex with m in [0.5, 1)
    _, ex = torch.frexp(amax)
    e = torch.where(amax > 0, (ex - 1) - 2 + 127, torch.zeros_like(ex)).clamp(0, 254)
    # d = 2**(e - 128) (ggml_e8m0_to_fp32_half); scaling by its inverse is exact
    factor = torch.ldexp(torch.ones_like(amax), (128 - e).to(torch.float32))
    scaled = x * torch.where(amax > 0, factor, torch.zeros_like(factor))  # an all-zero block stays zero
    # every threshold is a multiple of 1/2, so ceil(2|x|) - 1 names the half-unit interval (k/2, (k+1)/2]
    # a value falls in, and a table gives that interval's magnitude code
    k = scaled.abs().mul_(2).ceil_().sub_(1).clamp_(0, 31).to(torch.uint8)
    mag = _MXFP4_MAG_OF_HALF_UNIT[k.long()]
    code = mag + ((scaled < 0) & (mag > 0)).to(torch.uint8) * 8
    out = torch.empty((x.shape[0], 1 + QK // 2), dtype=torch.uint8)
    out[:, 0] = e.squeeze(1).to(torch.uint8)
    out[:, 1:] = code[:, : QK // 2] | (code[:, QK // 2 :] << 4)
    return out.numpy()


def dequantize_mxfp4(data: np.ndarray | torch.Tensor, cols: int) -> torch.Tensor:
    """ggml MXFP4 bytes (rows of cols/32 blocks of 17 bytes) back to float32 rows."""
    raw = torch.as_tensor(np.ascontiguousarray(data)).reshape(-1, 1 + QK // 2)
    pairs = _MXFP4_BYTE_VALUES[raw[:, 1:].long()]  # (n, 16, 2): element j low, j+16 high
    values = torch.cat([pairs[..., 0], pairs[..., 1]], dim=1)
    scale = torch.ldexp(torch.ones(raw.shape[0], 1), raw[:, :1].to(torch.float32) - 128)
    return (values * scale).reshape(-1, cols)


# --- the OpenAI MXFP4 checkpoint layout (``*_blocks`` / ``*_scales``) --------------------------------
# A row of ``in`` values is stored as in/32 blocks of 16 bytes (byte j: element 2j in the low nibble,
# 2j+1 in the high one) and in/32 uint8 exponents (bias 127). Its E2M1 codes and exponents are the
# ones ggml uses, so converting is a reordering of nibbles, no arithmetic.

def hf_mxfp4_to_ggml(blocks: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """Repack ``(..., nb, 16)`` blocks and ``(..., nb)`` scales into ggml MXFP4 bytes ``(..., nb*17)``."""
    lead = blocks.shape[:-2]
    nb = blocks.shape[-2]
    b = blocks.reshape(-1, 16)
    codes = torch.stack([b & 0x0F, b >> 4], dim=-1).reshape(-1, QK)  # element order 0..31
    qs = codes[:, :16] | (codes[:, 16:] << 4)
    out = torch.cat([scales.reshape(-1, 1), qs], dim=1)
    return out.reshape(*lead, nb * 17).numpy()


def dequantize_hf_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``(..., nb, 16)`` blocks + ``(..., nb)`` scales to float32 ``(..., nb*32)``."""
    lead = blocks.shape[:-2]
    nb = blocks.shape[-2]
    values = _MXFP4_BYTE_VALUES[blocks.reshape(-1, 16).long()].reshape(-1, QK)  # element 2j low, 2j+1 high
    scale = torch.ldexp(torch.ones(values.shape[0], 1), scales.reshape(-1, 1).to(torch.float32) - 128)
    return values.mul_(scale).reshape(*lead, nb * QK)


def encode_hf_mxfp4(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float rows to the OpenAI layout (used to build test and benchmark checkpoints)."""
    ggml = torch.from_numpy(quantize_mxfp4(t)).reshape(-1, 17)
    e, qs = ggml[:, 0], ggml[:, 1:]
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=1)  # element order 0..31
    pairs = codes.reshape(-1, 16, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    lead = t.shape[:-1]
    nb = t.shape[-1] // QK
    return blocks.reshape(*lead, nb, 16).contiguous(), e.reshape(*lead, nb).contiguous()
