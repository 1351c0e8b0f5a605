"""2-D proof of the DMD trainer: a conditional mixture of 8 Gaussians.

8 modes on a circle, alternately owned by class 0 and class 1. A class puts
``own_class_mass`` of its mass on its own 4 modes and the rest on the other class's modes,
so the data's class accuracy is < 1 and classifier-free guidance has something to sharpen.
A small MLP flow-matching teacher is trained quickly, then distilled with
:class:`~audiox.distill.dmd.DMDTrainer` into a 4-step student.

Metrics (all computed the same way on data, teacher and student samples):
MMD to 100-step teacher samples, mass far from any mode, per-mode mass, within-mode
spread ratio vs the data, class accuracy (nearest mode's class == requested class).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import DictConfigMixin
from .dmd import DMDConfig, DMDTrainer, cfg_velocity, turbo_sample

NUM_CLASSES = 2
NUM_MODES = 8


@dataclass
class ToyConfig(DictConfigMixin):
    radius: float = 2.0
    mode_std: float = 0.2
    own_class_mass: float = 0.8
    hidden: int = 128
    teacher_steps: int = 1500
    teacher_batch: int = 512
    teacher_lr: float = 2e-3
    cond_dropout: float = 0.15
    dmd_updates: int = 1800
    dmd_batch: int = 256
    eval_samples: int = 4000
    mmd_samples: int = 1500
    """MMD uses the first this-many samples of each set (cost is quadratic)."""
    reference_steps: int = 100
    far_sigmas: float = 3.0
    seed: int = 0
    num_threads: Optional[int] = 1
    """Torch CPU threads during the run (restored after): these MLPs are far too small
    for intra-op threading, which only adds overhead on a busy machine."""
    dmd: DMDConfig = field(default_factory=lambda: DMDConfig(
        guidance_scale=1.0, critic_updates_per_generator_update=5, generator_lr=1e-3, critic_lr=1e-3,
        adam_betas=(0.0, 0.99), weight_decay=0.0, ema_decay=0.99, train_on="random_step_final_critic"))

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        d = dict(d)
        dmd = d.pop("dmd", None)
        cfg = super().from_dict(d)
        if dmd is not None:
            cfg.dmd = DMDConfig.from_dict(dmd) if isinstance(dmd, dict) else dmd
        return cfg


# ----------------------------------------------------------------------------- data
def mode_centers(cfg: ToyConfig) -> torch.Tensor:
    """(8, 2) mode centres on a circle of ``cfg.radius``."""
    ang = torch.arange(NUM_MODES, dtype=torch.float32) * (2 * math.pi / NUM_MODES)
    return cfg.radius * torch.stack([ang.cos(), ang.sin()], dim=1)


def mode_class() -> torch.Tensor:
    """(8,) class owning each mode (alternating around the circle)."""
    return torch.arange(NUM_MODES) % NUM_CLASSES


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """(B,) int -> (B, 2) float condition; the null condition is zeros."""
    return F.one_hot(labels, NUM_CLASSES).float()


def sample_data(cfg: ToyConfig, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Data for the given class labels (B,) -> (B, 2)."""
    b = labels.shape[0]
    own = mode_class()[None, :] == labels[:, None]
    w_own = cfg.own_class_mass / (NUM_MODES // NUM_CLASSES)
    w_other = (1 - cfg.own_class_mass) / (NUM_MODES - NUM_MODES // NUM_CLASSES)
    probs = torch.where(own, torch.tensor(w_own), torch.tensor(w_other))
    modes = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return mode_centers(cfg)[modes] + cfg.mode_std * torch.randn(b, 2, generator=g)


def balanced_labels(n: int) -> torch.Tensor:
    return torch.arange(n) % NUM_CLASSES


# ----------------------------------------------------------------------------- model
class ToyVelocityMLP(nn.Module):
    """v = f(z, t, cond): z (B, 2), t (B,), cond (B, 2) one-hot (zeros = null) -> (B, 2)."""

    def __init__(self, hidden: int = 128, num_freqs: int = 8, depth: int = 4):
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(num_freqs)) * math.pi / 2, persistent=False)
        in_dim = 2 + 2 * num_freqs + NUM_CLASSES
        self.blocks = nn.ModuleList([nn.Linear(in_dim, hidden)] + [nn.Linear(hidden, hidden) for _ in range(depth - 1)])
        self.out = nn.Linear(hidden, 2)

    def _inputs(self, z, t, cond):
        if z.dim() != 2 or z.shape[1] != 2:
            raise ValueError(f"z must be (B, 2), got {tuple(z.shape)}")
        if t.shape != (z.shape[0],):
            raise ValueError(f"t must be (B,) = ({z.shape[0]},), got {tuple(t.shape)}")
        if cond.shape != (z.shape[0], NUM_CLASSES):
            raise ValueError(f"cond must be (B, {NUM_CLASSES}), got {tuple(cond.shape)}")
        ang = t[:, None] * self.freqs[None, :]
        return torch.cat([z, ang.sin(), ang.cos(), cond], dim=1)

    def features(self, z, t, cond, num_blocks: int = 2) -> torch.Tensor:
        """Activations after the first ``num_blocks`` blocks, (B, hidden): the toy stand-in for
        the release's 'first 6 DiT blocks of the frozen teacher' GAN features."""
        h = self._inputs(z, t, cond)
        for blk in self.blocks[:num_blocks]:
            h = F.silu(blk(h))
        return h

    def forward(self, z, t, cond):
        h = self._inputs(z, t, cond)
        for blk in self.blocks:
            h = F.silu(blk(h))
        return self.out(h)


def train_teacher(cfg: ToyConfig, progress: bool = False) -> ToyVelocityMLP:
    """Flow-matching teacher with condition dropout (so CFG works)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model = ToyVelocityMLP(cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.teacher_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.teacher_steps)
    for _ in tqdm(range(cfg.teacher_steps), disable=not progress, desc="teacher"):
        labels = torch.randint(0, NUM_CLASSES, (cfg.teacher_batch,), generator=g)
        x0 = sample_data(cfg, labels, g)
        cond = one_hot(labels) * (torch.rand(cfg.teacher_batch, 1, generator=g) >= cfg.cond_dropout)
        t = torch.rand(cfg.teacher_batch, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        z = (1 - t[:, None]) * x0 + t[:, None] * eps
        loss = F.mse_loss(model(z, t, cond), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def euler_sample(model, noise, cond, steps: int, guidance: float = 1.0) -> torch.Tensor:
    """Teacher sampler: Euler on t = linspace(1, 0, steps + 1) with CFG.  (B, 2) -> (B, 2)."""
    ts = torch.linspace(1.0, 0.0, steps + 1)
    z = noise
    null = torch.zeros_like(cond)
    for i in range(steps):
        t = torch.full((z.shape[0],), float(ts[i]))
        z = z + float(ts[i + 1] - ts[i]) * cfg_velocity(model, z, t, cond, null, guidance)
    return z


# ----------------------------------------------------------------------------- metrics
def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0)) -> float:
    """Unbiased squared MMD with a sum of RBF kernels.  x (N, 2), y (M, 2).
    (The biased estimator has a floor of ~2 len(bandwidths) / N that would hide differences.)"""
    def k(a, b, same):
        d2 = torch.cdist(a, b).pow(2)
        total = sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
        if same:
            n = a.shape[0]
            return float((total.sum() - total.diagonal().sum()) / (n * (n - 1)))
        return float(total.mean())
    return k(x, x, True) + k(y, y, True) - 2 * k(x, y, False)


def mode_stats(cfg: ToyConfig, x: torch.Tensor) -> dict:
    """Nearest mode, mass far from all modes, per-mode mass, within-mode RMS radius."""
    d = torch.cdist(x, mode_centers(cfg))
    dist, nearest = d.min(dim=1)
    near = dist <= cfg.far_sigmas * cfg.mode_std
    per_mode = torch.bincount(nearest[near], minlength=NUM_MODES).float() / x.shape[0]
    spread = float(dist[near].pow(2).mean().sqrt()) if near.any() else float("nan")
    return {"nearest": nearest, "far_mass": float(1 - near.float().mean()), "per_mode_mass": per_mode,
            "spread": spread}


def evaluate(cfg: ToyConfig, x: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
             data_spread: float) -> dict:
    """Metrics of samples x (N, 2) drawn for labels (N,) against reference samples."""
    s = mode_stats(cfg, x)
    n = cfg.mmd_samples
    return {"mmd": mmd_rbf(x[:n], reference[:n]), "far_mass": s["far_mass"],
            "min_mode_mass": float(s["per_mode_mass"].min()), "per_mode_mass": s["per_mode_mass"].tolist(),
            "spread_ratio": s["spread"] / data_spread,
            "class_accuracy": float((mode_class()[s["nearest"]] == labels).float().mean())}


# ----------------------------------------------------------------------------- run
@dataclass
class ToyResult:
    teacher: nn.Module
    trainer: DMDTrainer
    samples: dict
    metrics: dict
    seconds: float


def distill(cfg: ToyConfig, teacher: nn.Module, dmd: Optional[DMDConfig] = None, progress: bool = False,
            checkpoint_dir: Optional[str] = None, resume: bool = False, checkpoint_every: Optional[int] = None,
            feature_fn=None, disc_head=None) -> DMDTrainer:
    """Distil ``teacher`` with the generic trainer; batches are deterministic in the step."""
    dmd = dmd if dmd is not None else cfg.dmd
    torch.manual_seed(cfg.seed + 2)
    trainer = DMDTrainer(teacher, dmd, feature_fn=feature_fn, disc_head=disc_head)
    if resume and checkpoint_dir is not None and DMDTrainer.has_checkpoint(checkpoint_dir):
        trainer.load(checkpoint_dir)

    def batch_fn(step: int):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
        labels = torch.randint(0, NUM_CLASSES, (cfg.dmd_batch,), generator=g)
        return sample_data(cfg, labels, g), one_hot(labels)

    trainer.train(batch_fn, cfg.dmd_updates, progress=progress, checkpoint_dir=checkpoint_dir,
                  checkpoint_every=checkpoint_every)
    return trainer


@torch.no_grad()
def evaluate_run(cfg: ToyConfig, teacher: nn.Module, student: nn.Module, guidance: float,
                 timesteps=(1.0, 0.75, 0.5, 0.25)) -> tuple:
    """Samples and metrics of data, teacher 4-step Euler and the 4-step student; the
    reference is the 100-step teacher at the same guidance."""
    g = torch.Generator().manual_seed(cfg.seed + 10_000)
    labels = balanced_labels(cfg.eval_samples)
    cond = one_hot(labels)
    data = sample_data(cfg, labels, g)
    data_spread = mode_stats(cfg, data)["spread"]
    reference = euler_sample(teacher, torch.randn(cfg.eval_samples, 2, generator=g), cond,
                             cfg.reference_steps, guidance)
    teacher4 = euler_sample(teacher, torch.randn(cfg.eval_samples, 2, generator=g), cond, 4, guidance)
    student4 = turbo_sample(student, torch.randn(cfg.eval_samples, 2, generator=g), cond, timesteps, g)
    samples = {"data": data, "teacher_100": reference, "teacher_4": teacher4, "student_4": student4,
               "labels": labels}
    metrics = {name: evaluate(cfg, samples[name], labels, reference, data_spread)
               for name in ("data", "teacher_100", "teacher_4", "student_4")}
    return samples, metrics


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_toy(cfg: ToyConfig, progress: bool = False, teacher: Optional[nn.Module] = None,
            checkpoint_dir: Optional[str] = None, resume: bool = False,
            checkpoint_every: Optional[int] = None) -> ToyResult:
    """Teacher (unless given), distillation, and evaluation of the student's EMA weights."""
    start = time.perf_counter()
    with torch_threads(cfg.num_threads):
        teacher = teacher if teacher is not None else train_teacher(cfg, progress)
        trainer = distill(cfg, teacher, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
                          checkpoint_every=checkpoint_every)
        samples, metrics = evaluate_run(cfg, teacher, trainer.ema, cfg.dmd.guidance_scale,
                                        cfg.dmd.student_timesteps)
    return ToyResult(teacher, trainer, samples, metrics, time.perf_counter() - start)


def plot_result(result: ToyResult, path: str) -> None:
    """Scatter of data / teacher 4-step Euler / student 4-step, coloured by class, to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("data", "teacher_100", "teacher_4", "student_4")
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.2), sharex=True, sharey=True)
    labels = result.samples["labels"]
    for ax, name in zip(axes, names):
        x = result.samples[name]
        ax.scatter(x[:, 0], x[:, 1], c=labels, s=1.5, cmap="coolwarm", alpha=0.6)
        m = result.metrics[name]
        mmd = "MMD ref" if name == "teacher_100" else f"MMD {m['mmd']:.4f}"
        ax.set_title(f"{name}\n{mmd}  far {m['far_mass']:.3f}\n"
                     f"spread x{m['spread_ratio']:.2f}  acc {m['class_accuracy']:.2f}", fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
