"""The VAE on the CPU: channels-last convolutions, weight norm folded once, fused SnakeBeta.

The Oobleck decoder is 1-D convolutions over long sequences (up to 128 channels x 483k
samples for 10 s) with a SnakeBeta before each. On CPU:

- Layout: oneDNN runs these convolutions fastest channels-last (NWC); PyTorch has no
  channels-last format for 1-D tensors, so each conv runs as a 2-D conv on
  ``x.unsqueeze(2)`` (B, C, 1, T) in ``channels_last``. Its output, squeezed back, is a
  (B, C, T) tensor whose memory is (B, T, C): the next SnakeBeta, residual add and conv
  read it as it is, so the layout is converted once, at the first conv, and never again.
  Narrow outputs (<= 8 channels: the audio) come back contiguous.
- Weights: weight norm (``weight_g``/``weight_v`` hooks, ``parametrizations.weight``, or
  our already folded ``WNConv1d``) is folded once into a plain weight, stored in the
  channels-last order the conv reads, in the VAE dtype (fp32 as the release, or bf16
  where ``vae_dtype`` asks for it).
- SnakeBeta: ``x + 1/(exp(beta)+1e-9) * sin(exp(alpha) x)^2`` is one pass over x through
  ``torch.compile`` (inductor's C++ backend, vectorised sin), compiled once per dtype
  and layout with dynamic sizes (a one-off cost of seconds, see BENCHMARKS.md). Tensors
  under ``COMPILE_MIN_ELEMENTS`` (a tiny VAE, a short clip), or any tensor where
  compiling fails (no C++ compiler), run it as five in-place PyTorch ops instead. Its
  math is fp32 whatever the activations' dtype, and alpha and beta stay fp32.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from audiox_engine.engine.discover import find_snake_betas, replace_module
from audiox_engine.engine.vae import swap_snake_betas
from audiox_engine.kernels.snake_beta import snake_beta_reference

__all__ = ["ChannelsLastConv1d", "CPUSnakeBeta", "accelerate_vae_cpu", "snake_beta_cpu", "COMPILE_MIN_ELEMENTS"]

logger = logging.getLogger("engine")

# Outputs this narrow (the waveform) are returned contiguous: converting them costs nothing.
_CONTIGUOUS_OUT_CHANNELS = 8
# Below this many elements a SnakeBeta runs as PyTorch ops: the fused pass saves less than
# a millisecond there, and a first call would pay the compile.
COMPILE_MIN_ELEMENTS = 1 << 20


def _folded_weight(conv: nn.Module) -> torch.Tensor:
    """The weight a conv computes with: weight norm folded (old-style hook or parametrize)."""
    for hook in conv._forward_pre_hooks.values():
        if type(hook).__name__ == "WeightNorm" and hasattr(hook, "compute_weight"):
            return hook.compute_weight(conv).detach()
    return conv.weight.detach()  # a plain weight, or parametrize's computed one


def _pair(v, name: str) -> int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(v) != 1 or not isinstance(v[0], int):
        raise ValueError(f"{name} must be one int, got {v!r}")
    return v[0]


def conv_swap_problem(conv: nn.Module) -> str | None:
    """Why ``ChannelsLastConv1d`` cannot stand in for this conv, or None."""
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only zero padding)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (only integer padding)"
    return None


class ChannelsLastConv1d(nn.Module):
    """A Conv1d or ConvTranspose1d run as a channels-last 2-D conv; (B, Cin, T) -> (B, Cout, T').

    ``weight`` is (Cout, Cin/groups, K) (transposed: (Cin, Cout/groups, K)), folded, with
    strides such that ``weight.unsqueeze(2)`` is a ``channels_last`` 4-D tensor (no copy per
    call). Inputs are cast to the weight's dtype.
    """

    def __init__(self, conv: nn.Module, dtype: torch.dtype | None = None):
        super().__init__()
        problem = conv_swap_problem(conv)
        if problem is not None:
            raise ValueError(f"cannot run {type(conv).__name__} channels-last: {problem}")
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        self.stride = _pair(conv.stride, "stride")
        self.padding = _pair(conv.padding, "padding")
        self.dilation = _pair(conv.dilation, "dilation")
        self.output_padding = _pair(getattr(conv, "output_padding", 0), "output_padding")
        self.groups = int(conv.groups)
        self.in_channels, self.out_channels = int(conv.in_channels), int(conv.out_channels)
        w = _folded_weight(conv)
        dtype = dtype or w.dtype
        w4 = w.to(dtype).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(w4.squeeze(2), requires_grad=False)
        bias = conv.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype).clone(), requires_grad=False)
        self.contiguous_output = self.out_channels <= _CONTIGUOUS_OUT_CHANNELS
        self.pointwise = (not self.transposed and self.weight.shape[-1] == 1 and self.stride == 1
                          and self.padding == 0 and self.groups == 1)

    def extra_repr(self) -> str:
        kind = "transposed, " if self.transposed else ""
        return (f"{self.in_channels}, {self.out_channels}, {kind}kernel={self.weight.shape[-1]}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"dtype={str(self.weight.dtype).replace('torch.', '')}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, T), got {tuple(x.shape)}")
        w = self.weight.unsqueeze(2)
        x4 = x.to(w.dtype).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        if self.pointwise:
            # (B, T, Cin) @ (Cin, Cout): ATen's conv picks a slow im2col path for 1x1 kernels.
            y = F.linear(x4.squeeze(2).transpose(1, 2), self.weight.squeeze(2), self.bias).transpose(1, 2)
            return y.contiguous() if self.contiguous_output else y
        if self.transposed:
            y = F.conv_transpose2d(x4, w, self.bias, stride=(1, self.stride), padding=(0, self.padding),
                                   output_padding=(0, self.output_padding), groups=self.groups,
                                   dilation=(1, self.dilation))
        else:
            y = F.conv2d(x4, w, self.bias, stride=(1, self.stride), padding=(0, self.padding),
                         dilation=(1, self.dilation), groups=self.groups)
        y = y.squeeze(2)
        return y.contiguous() if self.contiguous_output else y


# ----------------------------------------------------------------------------- SnakeBeta


def _snake_eager(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``kernels.snake_beta_reference`` as in-place PyTorch ops (no compiler): sin(a x),
    square, scale, add; one fp32 temporary instead of five."""
    a = alpha.exp()[None, :, None]
    inv = 1.0 / (beta.exp()[None, :, None] + 1e-9)
    xf = x.float()
    s = torch.mul(xf, a).sin_().square_()
    return s.mul_(inv).add_(xf).to(x.dtype)


class _CompiledSnake:
    """``torch.compile(kernels.snake_beta_reference, dynamic=True)`` built on first use;
    eager if that fails."""

    def __init__(self):
        self.fn = None
        self.failed: str | None = None

    def __call__(self, x, alpha, beta):
        if self.failed is None and self.fn is None:
            self.fn = torch.compile(snake_beta_reference, dynamic=True)
        if self.failed is None:
            try:
                # Plain tensors, not Parameters: dynamo keeps a Parameter's shape static,
                # which would recompile for every channel count.
                return self.fn(x, alpha.detach(), beta.detach())
            except Exception as exc:  # no C++ compiler, or an inductor that cannot build it here
                self.failed = f"{type(exc).__name__}: {str(exc)[:200]}"
                logger.warning("engine: torch.compile of SnakeBeta failed (%s); running it as PyTorch ops",
                               self.failed)
        return _snake_eager(x, alpha, beta)


_compiled_snake = _CompiledSnake()


def snake_beta_cpu(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, compiled: bool = True) -> torch.Tensor:
    """SnakeBeta on CPU, one fused pass when ``compiled`` (see the module docstring)."""
    if compiled and x.numel() >= COMPILE_MIN_ELEMENTS and not torch.compiler.is_compiling():
        return _compiled_snake(x, alpha, beta)
    return _snake_eager(x, alpha, beta)


class CPUSnakeBeta(nn.Module):
    """SnakeBeta for the CPU VAE path: alpha, beta (C,) fp32, same parameter names."""

    def __init__(self, snake: nn.Module, compiled: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(snake.alpha.detach().float().clone(), requires_grad=False)
        self.beta = nn.Parameter(snake.beta.detach().float().clone(), requires_grad=False)
        self.compiled = bool(compiled)

    @property
    def implementation(self) -> str:
        """"compiled" (one inductor pass), "eager" (PyTorch ops), or why compiling failed."""
        if not self.compiled:
            return "eager"
        failed = _compiled_snake.failed
        return "compiled" if failed is None else f"eager (compile failed: {failed[:80]})"

    def extra_repr(self) -> str:
        return f"channels={self.alpha.shape[0]}, {self.implementation}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake_beta_cpu(x, self.alpha, self.beta, self.compiled)


# ----------------------------------------------------------------------------- the swap


def accelerate_vae_cpu(root: nn.Module, dtype: torch.dtype | None = None,
                       compiled: bool = True) -> tuple[int, int, list[str]]:
    """Swap the VAE convs and SnakeBetas under ``root`` for the CPU path, in place.

    A conv belongs to a VAE when a SnakeBeta sits beside it (the same parent module: every
    Oobleck conv does, in its ``layers`` sequence); other convs under ``root`` (the DiT's,
    a conditioner's) keep their layout. dtype: the convolutions' dtype (None keeps the
    weights'). Returns (SnakeBetas swapped, convs swapped, what was skipped and why).
    """
    snake_parents = {name.rpartition(".")[0] for name, _ in find_snake_betas(root)}
    convs = 0
    skipped: list[str] = []
    for name, module in list(root.named_modules()):
        if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) or name.rpartition(".")[0] not in snake_parents:
            continue
        problem = conv_swap_problem(module)
        if problem is not None:
            skipped.append(f"{name}: {problem}; kept eager")
            continue
        replace_module(root, name, ChannelsLastConv1d(module, dtype))
        convs += 1
    snakes, snake_skips = swap_snake_betas(root, "cpu", lambda snake: CPUSnakeBeta(snake, compiled))
    return snakes, convs, skipped + snake_skips
