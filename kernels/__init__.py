"""Triton kernels for the AudioX-Turbo hot path: pure functions over tensors.

Each op runs its Triton kernel on CUDA tensors (or under ``TRITON_INTERPRET=1``) and
its plain-PyTorch ``*_reference`` otherwise; see ``kernels._dispatch``.
"""

from audiox_engine.kernels.adaln import (
    adaln_modulate,
    adaln_modulate_reference,
    gated_residual_adaln,
    gated_residual_adaln_reference,
)
from audiox_engine.kernels.conv1d_k3 import (
    conv1d_k3,
    conv1d_k3_gated_residual,
    conv1d_k3_gated_residual_reference,
    conv1d_k3_reference,
    conv1d_k3_swiglu,
    conv1d_k3_swiglu_reference,
    pack_conv_weight,
    unpack_conv_weight,
)
from audiox_engine.kernels.dit_attention import dit_attention, dit_attention_reference, rope_tables
from audiox_engine.kernels.quant_adaln import adaln_modulate_quantize
from audiox_engine.kernels.quant_gemm import pack_quant_conv_weight, scaled_conv1d_k3, scaled_mm
from audiox_engine.kernels.quant_rows import quantize_rows
from audiox_engine.kernels.snake_beta import snake_beta, snake_beta_reference

__all__ = [
    "adaln_modulate_quantize",
    "pack_quant_conv_weight",
    "quantize_rows",
    "scaled_conv1d_k3",
    "scaled_mm",
    "adaln_modulate",
    "adaln_modulate_reference",
    "conv1d_k3",
    "conv1d_k3_gated_residual",
    "conv1d_k3_gated_residual_reference",
    "conv1d_k3_reference",
    "conv1d_k3_swiglu",
    "conv1d_k3_swiglu_reference",
    "dit_attention",
    "dit_attention_reference",
    "gated_residual_adaln",
    "gated_residual_adaln_reference",
    "pack_conv_weight",
    "rope_tables",
    "snake_beta",
    "snake_beta_reference",
    "unpack_conv_weight",
]
