"""One DiT block (`MMDitSingleBlock`) for the CPU: every convolution a single GEMM.

Per block, per step (B, N, D tokens; the residual stream ``x`` is fp32; G is the GEMM
dtype, the weights' dtype: bf16 where the CPU has AMX / AVX-512 BF16, else fp32):

    h   = LayerNorm(x) * (1 + scale1) + shift1         (1 + scale) added once, in prepare
    qkv = h @ Wqkv^T + b                                rows laid out [q | k | v] at build time
    a   = SDPA(rope(rms(q)), rope(rms(k)), v)           q and k normalised and rotated together
    y   = [a(t-1), a(t), a(t+1)] @ Wl1^T + b            the k=3 conv as ONE GEMM over (3D)
    x   = x + y * gate1 + time_bias
    r   = LayerNorm(x) * (1 + scale2) + shift2
    u   = [r(t-1), r(t), r(t+1)] @ [W1; W3]^T           both SwiGLU convs in ONE GEMM (2H, 3D)
    x   = x + ([s(t-1), s(t), s(t+1)] @ W2^T) * gate2,  s = silu(u1) * u3

Why a GEMM per conv: ``F.conv1d`` on CPU runs these k=3 convolutions 2-3x below the
matmul rate; concatenating the three shifted copies of the input (``ConvTaps``, zero at
each sequence's ends) turns the conv into one (B*N, 3C) x (3C, Cout) GEMM whose weight is
laid out once, here, as (Cout, 3C). Producers write straight into the middle third of
that buffer, so building it costs two shifted copies.

Why [q | k | v] with q and k half-split: the release's qkv rows interleave (heads, d,
q/k/v). Reordered once, q, k and v come out as contiguous slabs; within each head the q
and k dims are permuted to (even dims, odd dims). Applying the same permutation to q and
k leaves q . k and the RMSNorm unchanged, and turns RoPE on pairs (2i, 2i+1) into a
rotation of two contiguous halves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from audiox_engine.engine.cpu_gemm import packed_linear, packed_weight
from audiox_engine.engine.discover import block_layout_problem

__all__ = ["CPUDiTBlock", "ConvTaps", "unfold_conv_weight", "qkv_row_order"]


def unfold_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3) Conv1d weight -> (Cout, 3*Cin): column k*Cin + c holds W[:, c, k]."""
    if w.dim() != 3 or w.shape[2] != 3:
        raise ValueError(f"weight must be (Cout, Cin, 3), got {tuple(w.shape)}")
    return w.permute(0, 2, 1).reshape(w.shape[0], 3 * w.shape[1]).contiguous()


def qkv_row_order(num_heads: int, head_dim: int) -> torch.Tensor:
    """Row permutation of the interleaved (heads d j) qkv weight into [q | k | v].

    Each slab is head-major; q and k list each head's even dims, then its odd dims.
    """
    half_split = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    natural = torch.arange(head_dim)
    heads = torch.arange(num_heads)[:, None] * head_dim
    return torch.cat([((heads + dims[None, :]) * 3 + j).reshape(-1)
                      for j, dims in enumerate((half_split, half_split, natural))])


class ConvTaps:
    """A (B, N, 3C) buffer [x(t-1), x(t), x(t+1)] for a k=3, padding-1 conv as one GEMM.

    Write the conv input into ``center`` (a strided (B, N, C) view), then ``spread()``
    fills the two shifted thirds, zero at each sequence's first and last token.
    """

    def __init__(self, b: int, n: int, c: int, dtype: torch.dtype, device: torch.device):
        self.c = c
        self.buffer = torch.empty(b, n, 3 * c, dtype=dtype, device=device)
        self.center = self.buffer[..., c:2 * c]

    def spread(self) -> torch.Tensor:
        c, buf, mid = self.c, self.buffer, self.center
        buf[:, 1:, :c].copy_(mid[:, :-1])
        buf[:, :1, :c].zero_()
        buf[:, :-1, 2 * c:].copy_(mid[:, 1:])
        buf[:, -1:, 2 * c:].zero_()
        return buf


def _modulate_into(out: torch.Tensor, x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """out <- LayerNorm(x) * (1 + scale) + shift, math in fp32, cast on the store."""
    h = F.layer_norm(x, (x.shape[-1],), eps=eps)
    if out.dtype == h.dtype:
        return torch.addcmul(shift, h, scale_plus_one, out=out)
    return out.copy_(torch.addcmul(shift, h, scale_plus_one))


_GEMM_WEIGHTS = ("qkv_weight", "linear1_weight", "ffn_w13", "ffn_w2")


class CPUDiTBlock(nn.Module):
    """A CPU replacement for one official ``MMDitSingleBlock`` (same function).

    Holds the block's GEMM weights, laid out once: ``qkv_weight`` (3D, D) and ``qkv_bias``
    rows in [q | k | v] order, ``linear1_weight`` (D, 3D), ``ffn_w13`` (2H, 3D) (W1 rows
    then W3 rows), ``ffn_w2`` (D, 3H). The GEMMs run in these weights' dtype; everything
    between them (norms, modulation, gates, the residual stream, q/k RMSNorm and RoPE,
    attention) in fp32. bf16/fp16 weights are also packed for oneDNN on the first forward
    (``engine.cpu_gemm``; a cache beside the buffers, dropped on ``.to()`` and on copy).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        problem = block_layout_problem(block)
        if problem is not None:
            raise ValueError(f"cannot build a CPU block from this DiT block: {problem}")
        for name in ("w1", "w2", "w3"):
            if block.ffn.get_submodule(name).bias is not None:
                raise ValueError(f"cannot build a CPU block: ffn.{name} has a bias (the release has none)")
        self.dim = block.attn.qkv.in_features
        self.num_heads = int(block.attn.nheads)
        self.head_dim = self.dim // self.num_heads
        self.hidden = block.ffn.w1.out_channels
        self.norm1_eps = float(getattr(block.norm1, "eps", 1e-5))
        self.norm2_eps = float(getattr(block.norm2, "eps", 1e-5))
        self.qk_eps = float(getattr(block.attn.q_norm, "eps", 1e-6))
        with torch.no_grad():
            order = qkv_row_order(self.num_heads, self.head_dim).to(block.attn.qkv.weight.device)
            qkv_w = block.attn.qkv.weight.detach()[order].contiguous()
            qkv_b = block.attn.qkv.bias
            qkv_b = None if qkv_b is None else qkv_b.detach()[order].contiguous()
            lin1_b = block.linear1.bias
            w13 = torch.cat([unfold_conv_weight(block.ffn.w1.weight.detach()),
                             unfold_conv_weight(block.ffn.w3.weight.detach())])
            self.register_buffer("qkv_weight", qkv_w)
            self.register_buffer("qkv_bias", qkv_b)
            self.register_buffer("linear1_weight", unfold_conv_weight(block.linear1.weight.detach()))
            self.register_buffer("linear1_bias", None if lin1_b is None else lin1_b.detach().clone())
            self.register_buffer("ffn_w13", w13)
            self.register_buffer("ffn_w2", unfold_conv_weight(block.ffn.w2.weight.detach()))
        self._packed: dict[str, torch.Tensor | None] | None = None

    def _apply(self, fn, recurse=True):
        self._packed = None  # packed copies of the old weights
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_packed"] = None  # opaque oneDNN tensors cannot be copied or pickled
        return state

    @property
    def gemm_kind(self) -> str:
        """"onednn-packed" once packed weights are in use, else "aten" (F.linear)."""
        packed = self._packed
        return "onednn-packed" if packed and all(v is not None for v in packed.values()) else "aten"

    def _linear(self, x: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self._packed is None:
            self._packed = {k: packed_weight(getattr(self, k), x.shape[0] * x.shape[1]) for k in _GEMM_WEIGHTS}
        packed = self._packed[name]
        if packed is None:
            return F.linear(x, getattr(self, name), bias)
        return packed_linear(x, packed, bias)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}x{self.head_dim}, hidden={self.hidden}, "
                f"gemm_dtype={str(self.qkv_weight.dtype).replace('torch.', '')}")

    @torch.no_grad()
    def prepare_modulation(self, mod: torch.Tensor) -> torch.Tensor:
        """This block's adaLN output (B, N, 6D) -> (6, B, N, D) fp32 contiguous:
        shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2 (once per generation)."""
        b, n, six_d = mod.shape
        m = mod.reshape(b, n, 6, six_d // 6).permute(2, 0, 1, 3).to(torch.float32, copy=True).contiguous()
        m[1] += 1.0
        m[4] += 1.0
        return m

    def _attention_into(self, out: torch.Tensor, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """[q | k | v] (B, N, 3D) -> softmax attention written into out (B, N, D), math in fp32."""
        b, n, _ = qkv.shape
        h, d, dim = self.num_heads, self.head_dim, self.dim
        qk = qkv[..., :2 * dim].reshape(b, n, 2 * h, d).float()  # in place below: qkv is this call's own
        qk.mul_(torch.rsqrt(qk.square().mean(-1, keepdim=True).add_(self.qk_eps)))
        c, s = cos[:, None, :], sin[:, None, :]  # (N, 1, d/2)
        even, odd = qk.chunk(2, dim=-1)  # the half-split layout: dims 0,2,4.. then 1,3,5..
        # Rotated q and k are written head-major (B, 2H, N, d): SDPA reads contiguous heads.
        rot_heads = qk.new_empty(b, 2 * h, n, d)
        rot_even, rot_odd = rot_heads.transpose(1, 2).chunk(2, dim=-1)
        torch.mul(even, c, out=rot_even).addcmul_(odd, s, value=-1.0)
        torch.mul(odd, c, out=rot_odd).addcmul_(even, s)
        q, k = rot_heads[:, :h], rot_heads[:, h:]
        v = qkv.new_empty(b, h, n, d, dtype=torch.float32)
        v.transpose(1, 2).copy_(qkv[..., 2 * dim:].reshape(b, n, h, d))
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        out.view(b, n, h, d).copy_(a.transpose(1, 2))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, time_bias: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) tokens (any float dtype in, fp32 out); mod (6, B, N, D) from
        ``prepare_modulation``; time_bias (B, D); cos, sin (N, d/2) fp32 RoPE tables."""
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(0)
        x = x.float()
        b, n, d = x.shape
        gemm = self.qkv_weight.dtype
        h = _modulate_into(torch.empty(b, n, d, dtype=gemm, device=x.device), x, shift1, scale1, self.norm1_eps)
        qkv = self._linear(h, "qkv_weight", self.qkv_bias)
        taps = ConvTaps(b, n, d, gemm, x.device)
        self._attention_into(taps.center, qkv, cos, sin)
        y = self._linear(taps.spread(), "linear1_weight", self.linear1_bias)
        x = torch.addcmul(x, y, gate1).add_(time_bias[:, None, :])
        taps = ConvTaps(b, n, d, gemm, x.device)
        _modulate_into(taps.center, x, shift2, scale2, self.norm2_eps)
        u = self._linear(taps.spread(), "ffn_w13")  # (B, N, 2H): [w1 r | w3 r]
        u1, u3 = u.chunk(2, dim=-1)
        taps = ConvTaps(b, n, self.hidden, gemm, x.device)
        torch.mul(F.silu(u1, inplace=True), u3, out=taps.center)
        return torch.addcmul(x, self._linear(taps.spread(), "ffn_w2"), gate2)
