"""PyTorch side of rotor's `video_3dconv` CPU benchmark (bench/video_3dconv.toml): rotor's 3-D conv
VQGAN generator (models/src/conv3d_vq_model.rs, TATS-style) written in PyTorch layer for layer:
conv_first 3x3x3; per level a strided conv (kernel 4 where the stride is 2, 3 elsewhere, symmetric
zero padding) and a residual block (GroupNorm eps 1e-6 + SiLU + 3x3x3 conv, twice); GroupNorm + SiLU;
1x1x1 pre/post-VQ convs around vector-quantize-pytorch's VectorQuantize (1024 codes of width 64,
EMA decay 0.8, rotation trick) on the latent as a map [B, E, t*h, w]; decoder GroupNorm + SiLU, per
level nearest upsampling + 3x3x3 conv + two residual blocks; conv_last 3x3x3. MSE + commitment
loss, AdamW lr 2e-4 (no weight decay), batch 4 clips of 8 frames 64x64 in [-1, 1], CPU, 2 threads.

    .venv-peer/bin/python bench/tats_conv3d.py [--rounds 3] [--steps 10]

Prints one JSON line like rotor's `cargo bench -p trainer --bench cpu_step -- --workload video`:
the median over rounds of steps/s, and the parameter count (rotor's must be the same)."""
import argparse, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize

FRAMES, SIDE, BATCH = 8, 64, 4
N_HIDDENS, DOWNSAMPLE, EMBED, GROUPS = 16, (2, 4, 4), 64, 16


def conv(ci, co, k, s=(1, 1, 1)):
    return nn.Conv3d(ci, co, k, stride=s, padding=tuple((kk - ss) // 2 for kk, ss in zip(k, s)))


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, c, eps=1e-6)
        self.conv1 = conv(c, c, (3, 3, 3))
        self.norm2 = nn.GroupNorm(GROUPS, c, eps=1e-6)
        self.conv2 = conv(c, c, (3, 3, 3))

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Conv3dVq(nn.Module):
    def __init__(self):
        super().__init__()
        remaining = [int(math.log2(d)) for d in DOWNSAMPLE]
        levels = max(remaining)
        self.factors = []
        for _ in range(levels):
            self.factors.append(tuple(2 if r > 0 else 1 for r in remaining))
            remaining = [max(r - 1, 0) for r in remaining]
        self.conv_first = conv(3, N_HIDDENS, (3, 3, 3))
        self.down = nn.ModuleList()
        ci = N_HIDDENS
        for i, f in enumerate(self.factors):
            co = N_HIDDENS << (i + 1)
            k = tuple(4 if s == 2 else 3 for s in f)
            self.down.append(nn.ModuleList([conv(ci, co, k, f), Res(co)]))
            ci = co
        top = ci
        self.enc_norm = nn.GroupNorm(GROUPS, top, eps=1e-6)
        self.pre = conv(top, EMBED, (1, 1, 1))
        self.quantize = VectorQuantize(dim=EMBED, codebook_size=1024, decay=0.8,
                                       commitment_weight=1.0, rotation_trick=True,
                                       accept_image_fmap=True)
        self.post = conv(EMBED, top, (1, 1, 1))
        self.dec_norm = nn.GroupNorm(GROUPS, top, eps=1e-6)
        self.up = nn.ModuleList()
        self.up_factors = []
        for i in range(levels):
            co = N_HIDDENS << (levels - i)
            self.up.append(nn.ModuleList([conv(ci, co, (3, 3, 3)), Res(co), Res(co)]))
            self.up_factors.append(self.factors[levels - 1 - i])
            ci = co
        self.conv_last = conv(ci, 3, (3, 3, 3))

    def forward(self, x):  # x: [B, C, T, H, W]
        h = self.conv_first(x)
        for d, r in self.down:
            h = r(d(h))
        z = self.pre(F.silu(self.enc_norm(h)))
        b, e, t, hh, ww = z.shape
        q, idx, commit = self.quantize(z.reshape(b, e, t * hh, ww))
        h = F.silu(self.dec_norm(self.post(q.reshape(b, e, t, hh, ww))))
        for (c, r1, r2), f in zip(self.up, self.up_factors):
            h = r2(r1(c(F.interpolate(h, scale_factor=f, mode="nearest"))))
        return self.conv_last(h), commit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Conv3dVq()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)

    def step():
        x = torch.rand(BATCH, 3, FRAMES, SIDE, SIDE) * 2 - 1
        opt.zero_grad()
        rec, commit = model(x)
        loss = (rec - x).pow(2).mean() + commit
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    rates = []
    for _ in range(a.rounds):
        t0 = time.time()
        for _ in range(a.steps):
            step()
        rates.append(a.steps / (time.time() - t0))
    med = sorted(rates)[len(rates) // 2]
    params = sum(p.numel() for n, p in model.named_parameters() if "quantize" not in n)
    print(json.dumps(dict(workload="video_3dconv", impl="pytorch", batch=BATCH,
                          steps_per_s=round(med, 3), rounds=[round(r, 3) for r in rates],
                          threads=a.threads, params_without_codebook=params,
                          torch=torch.__version__)), flush=True)


if __name__ == "__main__":
    main()
