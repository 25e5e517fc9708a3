"""Integer weight codes stored at their real width.

Codes of 2–4 bits are packed two per byte (uint8): column ``2j`` of a row goes to the low nibble of byte
``j`` and column ``2j+1`` to the high nibble; an odd row length is padded with one zero nibble. Codes of
5–8 bits take one byte each. Rows are output channels, so every row (and its zero point and scale) can be
unpacked on its own.

Shapes: ``codes`` is ``[O, K]`` uint8 with values in ``[0, 2**bits - 1]``; packed it is
``[O, ceil(K / 2)]`` for ``bits <= 4`` and ``[O, K]`` otherwise.
"""
from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits, what: str = "bits") -> int:
    """Return ``bits`` as an int, or raise ``ValueError`` naming the bad value (allowed: 2..8)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def packs_two_per_byte(bits: int) -> bool:
    return bits <= 4


def packed_row_bytes(k: int, bits: int) -> int:
    """Bytes one row of ``k`` codes occupies once packed."""
    return (k + 1) // 2 if packs_two_per_byte(bits) else k


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``[O, K]`` uint8 codes to their real width (see module docstring)."""
    check_bits(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"codes must be a 2-D uint8 tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ValueError(f"codes hold {int(codes.max())}, which does not fit in {bits} bits")
    if not packs_two_per_byte(bits):
        return codes.contiguous()
    o, k = codes.shape
    if k % 2:
        codes = torch.cat([codes, codes.new_zeros(o, 1)], dim=1)
    pairs = codes.view(o, -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``[O, ceil(K/2)]`` (or ``[O, K]``) uint8 -> ``[O, K]`` uint8."""
    if not packs_two_per_byte(bits):
        return packed
    o = packed.shape[0]
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).view(o, -1)[:, :k]
