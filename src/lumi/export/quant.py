"""Symmetric per-row weight quantisation to 8, 6 or 4 bits, and the bit packing that stores it compactly.

A matrix W [rows, ...] is viewed as [rows, cols]; each row gets one fp16 scale s = max|row| / qmax
(qmax = 2^(bits-1) - 1: 127, 31, 7) and integer codes q = round(W / s) in [-qmax, qmax]; W' = q * s.
Codes are stored offset to unsigned (q + qmax + 1) and packed: 8 bits one per byte, 6 bits four per 3
bytes, 4 bits two per byte. This module is part of the code a packed artifact needs to run (its bytes
count against the size limit), so it stays small and depends only on numpy and torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BITS = (8, 6, 4)


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


@dataclass
class QuantizedMatrix:
    shape: tuple[int, ...]
    bits: int
    codes: bytes  # packed unsigned codes, row-major
    scales: np.ndarray  # float16 [rows]


def quantize(weight: torch.Tensor, bits: int) -> QuantizedMatrix:
    """Per-row symmetric quantisation of a tensor with >= 2 dimensions (rows = its first dimension)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    m = qmax(bits)
    # Scales are stored in fp16, so quantise with the fp16-rounded scale (what dequantisation will use).
    scales = (w.abs().amax(dim=1) / m).to(torch.float16)
    if not torch.isfinite(scales).all():
        raise ValueError(
            "a row's largest weight does not fit an fp16 scale (|w| > 65504 x qmax, or not finite)"
        )
    safe = torch.where(scales > 0, scales.to(torch.float32), torch.ones_like(w[:, 0]))
    q = torch.round(w / safe[:, None]).clamp_(-m, m).to(torch.int32)
    unsigned = (q + m + 1).numpy().astype(np.uint8).reshape(-1)
    return QuantizedMatrix(tuple(weight.shape), bits, pack_codes(unsigned, bits), scales.numpy())


def dequantize(qm: QuantizedMatrix) -> torch.Tensor:
    rows = qm.shape[0]
    n = int(np.prod(qm.shape))
    m = qmax(qm.bits)
    q = unpack_codes(qm.codes, qm.bits, n).astype(np.int32) - (m + 1)
    w = q.reshape(rows, -1).astype(np.float32) * qm.scales.astype(np.float32)[:, None]
    return torch.from_numpy(w.reshape(qm.shape))


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Unsigned codes (< 2^bits) into bytes: 8 bits as is, 6 bits four per 3 bytes, 4 bits two per byte."""
    c = codes.astype(np.uint8)
    if bits == 8:
        return c.tobytes()
    if bits == 4:
        c = np.pad(c, (0, len(c) % 2))
        return (c[0::2] | (c[1::2] << 4)).astype(np.uint8).tobytes()
    if bits == 6:
        c4 = np.pad(c, (0, (-len(c)) % 4)).astype(np.uint32).reshape(-1, 4)
        word = c4[:, 0] | (c4[:, 1] << 6) | (c4[:, 2] << 12) | (c4[:, 3] << 18)
        out = np.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], axis=1)
        return out.astype(np.uint8).tobytes()
    raise ValueError(f"bits must be one of {BITS}, got {bits}")


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """The inverse of ``pack_codes``: the first ``count`` codes as uint8."""
    b = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        out = b
    elif bits == 4:
        out = np.stack([b & 0x0F, b >> 4], axis=1).reshape(-1)
    elif bits == 6:
        t = b.reshape(-1, 3).astype(np.uint32)
        word = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
        out = np.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], axis=1).reshape(-1).astype(np.uint8)
    else:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if len(out) < count:
        raise ValueError(f"packed codes hold {len(out)} values, expected {count}")
    return out[:count]
