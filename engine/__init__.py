"""The accelerated backend for AudioX-Turbo: the one package that knows the model and the kernels.

    from audiox_engine import engine
    fast = engine.accelerate(model)          # deep copy: fused DiT blocks, fused SnakeBeta
    engine.describe(fast)                    # what was swapped, which backends run
    dit = fast.model.model                   # the AcceleratedDiT, where the DiT was
    x0 = engine.sample_turbo(dit, noise, cross_attn_cond, generator=g)   # 4 steps, CUDA graph on GPU
    audio = engine.decode(vae, x0)
    engine.quantize_accelerated_(fast, engine.Float8WeightAndActivationConfig())   # FP8 block weights

On CPU, ``accelerate`` picks the CPU backend (``engine.cpu_block``, ``engine.cpu_vae``):
GEMM-shaped blocks, bf16 GEMMs where the CPU has AMX / AVX-512 BF16, a channels-last VAE.

``AcceleratedDiT.prepare(cross_attn_cond)`` computes everything that does not depend on
the step once per generation; ``AcceleratedDiT.step(x, t, prepared)`` is one velocity;
``AcceleratedDiT.forward(x, t, cross_attn_cond, cfg_scale)`` stays a drop-in.
"""

from audiox_engine.engine.accelerate import BACKENDS, accelerate, describe
from audiox_engine.engine.accelerated_dit import AcceleratedDiT, PreparedConditioning
from audiox_engine.engine.attention import ATTENTION_BACKENDS, available_attention_backends
from audiox_engine.engine.fused_block import FusedDiTBlock
from audiox_engine.engine.profiling import annotate
from audiox_engine.engine.quant_fused_block import quantize_accelerated_
from audiox_engine.engine.quant_checkpoint import (
    QuantCheckpointError,
    load_quantized,
    save_quantized,
    weight_memory_report,
)
from audiox_engine.engine.quantize import (
    Float8WeightAndActivationConfig,
    Int8WeightAndActivationConfig,
    Int8WeightOnlyConfig,
    quantize_,
)
from audiox_engine.engine.sampling import decode, sample_teacher, sample_turbo
from audiox_engine.engine.vae import FusedSnakeBeta

__all__ = [
    "Float8WeightAndActivationConfig",
    "Int8WeightAndActivationConfig",
    "Int8WeightOnlyConfig",
    "QuantCheckpointError",
    "load_quantized",
    "quantize_",
    "quantize_accelerated_",
    "save_quantized",
    "weight_memory_report",
    "ATTENTION_BACKENDS",
    "BACKENDS",
    "AcceleratedDiT",
    "FusedDiTBlock",
    "FusedSnakeBeta",
    "PreparedConditioning",
    "accelerate",
    "annotate",
    "decode",
    "available_attention_backends",
    "describe",
    "sample_teacher",
    "sample_turbo",
]
