"""Triton kernels for the AudioX-Turbo hot path: pure functions over tensors.

Each op runs its Triton kernel on CUDA tensors (or under ``TRITON_INTERPRET=1``) and
its plain-PyTorch ``*_reference`` otherwise; see ``kernels._dispatch``. One kernel per
idea: ``implicit_gemm`` behind every conv / Linear op (float and FP8/INT8), ``adaln``
behind the three adaLN ops (float and quantized output).
"""

from audiox_engine.kernels.adaln import (
    adaln_modulate,
    adaln_modulate_quantize,
    adaln_modulate_quantize_reference,
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
from audiox_engine.kernels.quant_gemm import (
    pack_quant_conv_weight,
    scaled_conv1d_k3,
    scaled_conv1d_k3_reference,
    scaled_mm,
    scaled_mm_reference,
    unpack_quant_conv_weight,
)
from audiox_engine.kernels.quant_rows import (
    dequantize_per_channel,
    dequantize_rows,
    quantize_per_channel,
    quantize_rows,
    quantize_rows_reference,
)
from audiox_engine.kernels.snake_beta import snake_beta, snake_beta_reference

__all__ = [
    "adaln_modulate",
    "adaln_modulate_quantize",
    "adaln_modulate_quantize_reference",
    "adaln_modulate_reference",
    "conv1d_k3",
    "conv1d_k3_gated_residual",
    "conv1d_k3_gated_residual_reference",
    "conv1d_k3_reference",
    "conv1d_k3_swiglu",
    "conv1d_k3_swiglu_reference",
    "dequantize_per_channel",
    "dequantize_rows",
    "dit_attention",
    "dit_attention_reference",
    "gated_residual_adaln",
    "gated_residual_adaln_reference",
    "pack_conv_weight",
    "pack_quant_conv_weight",
    "quantize_per_channel",
    "quantize_rows",
    "quantize_rows_reference",
    "rope_tables",
    "scaled_conv1d_k3",
    "scaled_conv1d_k3_reference",
    "scaled_mm",
    "scaled_mm_reference",
    "snake_beta",
    "snake_beta_reference",
    "unpack_conv_weight",
    "unpack_quant_conv_weight",
]
