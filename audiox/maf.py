"""The Multimodal Adaptive Fusion block (``MAF_Block``), as the release computes it.

Expert queries (64 per modality) cross-attend to the gated concatenation of the three
modalities' tokens, are refined by a small pre-norm transformer, and come back as one
broadcast vector per modality, added through learned bypass gates (init -10, so an
untrained block is close to the identity).

Argument order quirk: the release calls ``maf_block(text, video, audio)`` into a
signature named ``(video_tokens, text_tokens, audio_tokens)`` and concatenates the
outputs in dict order. So the parameters named ``*_v`` act on the *text* tokens, and
the 384 output tokens are ``[text', video', audio']``. :func:`fuse_modalities` does that
call; keep the names as they are so that checkpoints load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MAFConfig

__all__ = ["MAF_Block", "fuse_modalities"]


class MAF_Block(nn.Module):  # noqa: N801 - official name, it is in the checkpoint keys' owner
    def __init__(self, cfg: MAFConfig):
        super().__init__()
        cfg.validate()
        dim = cfg.dim
        self.dim = dim
        self.num_experts_per_modality = cfg.num_experts_per_modality
        self.gating_network = nn.Sequential(nn.Linear(dim * 3, dim), nn.GELU(), nn.Linear(dim, 3), nn.Sigmoid())
        self.unified_experts = nn.Parameter(torch.randn(3 * cfg.num_experts_per_modality, dim))
        self.cross_attn = nn.MultiheadAttention(dim, cfg.num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=cfg.num_heads,
            dim_feedforward=int(dim * cfg.mlp_ratio),
            activation=F.gelu,
            batch_first=True,
            norm_first=True,
        )
        self.fusion_transformer = nn.TransformerEncoder(layer, num_layers=cfg.num_fusion_layers, enable_nested_tensor=False)
        self.norm_v2 = nn.LayerNorm(dim)
        self.norm_t2 = nn.LayerNorm(dim)
        self.norm_a2 = nn.LayerNorm(dim)
        self.bypass_gate_v = nn.Parameter(torch.tensor(-10.0))
        self.bypass_gate_t = nn.Parameter(torch.tensor(-10.0))
        self.bypass_gate_a = nn.Parameter(torch.tensor(-10.0))
        nn.init.zeros_(self.cross_attn.out_proj.weight)
        nn.init.zeros_(self.cross_attn.out_proj.bias)

    def forward(
        self, video_tokens: torch.Tensor, text_tokens: torch.Tensor, audio_tokens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Three ``(B, N_i, D)`` token sets -> dict ``video, text, audio`` of the same shapes.

        Names follow the release's signature; see the module docstring for what it is
        actually called with.
        """
        b = video_tokens.shape[0]
        inputs = (video_tokens, text_tokens, audio_tokens)
        for name, tok in zip(("video", "text", "audio"), inputs):
            if tok.dim() != 3 or tok.shape[0] != b or tok.shape[-1] != self.dim:
                raise ValueError(f"MAF {name} tokens must be (B={b}, N, {self.dim}), got {tuple(tok.shape)}")
        pooled = torch.cat([tok.mean(dim=1) for tok in inputs], dim=1)
        gates = self.gating_network(pooled)  # (B, 3)
        context = torch.cat([tok * gates[:, i, None, None] for i, tok in enumerate(inputs)], dim=1)
        experts = self.unified_experts.unsqueeze(0).expand(b, -1, -1)
        info, _ = self.cross_attn(experts, context, context, need_weights=False)
        fused = self.fusion_transformer(self.norm1(experts + info))
        refine = [grp.mean(dim=1) for grp in fused.chunk(3, dim=1)]
        norms = (self.norm_v2, self.norm_t2, self.norm_a2)
        gates_b = (self.bypass_gate_v, self.bypass_gate_t, self.bypass_gate_a)
        out = [tok + torch.sigmoid(g) * norm(r).unsqueeze(1) for tok, g, norm, r in zip(inputs, gates_b, norms, refine)]
        return {"video": out[0], "text": out[1], "audio": out[2]}


def fuse_modalities(
    maf: MAF_Block, video: torch.Tensor, text: torch.Tensor, audio: torch.Tensor
) -> torch.Tensor:
    """Conditioner outputs -> the DiT's ``cross_attn_cond`` (B, 384, D), as the release.

    Reproduces the release's call ``maf_block(text, video, audio)`` and its dict-order
    concatenation: the result is ``[text', video', audio']``.
    """
    refined = maf(text, video, audio)
    return torch.cat(list(refined.values()), dim=1)
