"""PyTorch side of rotor's `vqvae_small` CPU benchmark (bench/vqvae_small.toml): taming-transformers'
own Encoder/Decoder (ch 64, ch_mult [1, 2, 2], one ResnetBlock per level, attention at 16x16,
z_channels 64), 1x1 quant/post-quant convs, and vector-quantize-pytorch's VectorQuantize (1024 codes
of width 64, EMA decay 0.8, rotation trick), MSE + commitment loss, AdamW lr 2e-4 (no weight decay),
batch 8 of 64x64 RGB in [-1, 1], on CPU with 2 threads (set --threads).

    python3 -m venv .venv-peer && .venv-peer/bin/pip install torch vector-quantize-pytorch numpy
    .venv-peer/bin/pip install --no-deps taming-transformers
    .venv-peer/bin/python bench/taming_vqvae.py [--rounds 3] [--steps 20]

Prints one JSON line like rotor's `cargo bench -p trainer --bench cpu_step`: the median over rounds
of steps/s. Inputs are uniform noise drawn each step (rotor decodes photos on loader threads,
off the step's path; the step's cost does not depend on pixel values)."""
import argparse, json, time

import torch
import torch.nn as nn
from taming.modules.diffusionmodules.model import Decoder, Encoder
from vector_quantize_pytorch import VectorQuantize

DDCONFIG = dict(ch=64, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=[16],
                dropout=0.0, resamp_with_conv=True, in_channels=3, resolution=64, z_channels=64,
                double_z=False)


class VqVae(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder(**DDCONFIG)
        self.decoder = Decoder(**DDCONFIG)
        self.quant_conv = nn.Conv2d(64, 64, 1)
        self.post_quant_conv = nn.Conv2d(64, 64, 1)
        self.quantize = VectorQuantize(dim=64, codebook_size=1024, decay=0.8, commitment_weight=1.0,
                                       rotation_trick=True, accept_image_fmap=True)

    def forward(self, x):
        h = self.quant_conv(self.encoder(x))
        q, idx, commit = self.quantize(h)
        return self.decoder(self.post_quant_conv(q)), idx, commit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = VqVae()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)

    def step():
        x = torch.rand(8, 3, 64, 64) * 2 - 1
        opt.zero_grad()
        rec, idx, commit = model(x)
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
    print(json.dumps(dict(workload="vqvae_small", impl="pytorch", batch=8, steps_per_s=round(med, 3),
                          rounds=[round(r, 3) for r in rates], threads=a.threads,
                          torch=torch.__version__)), flush=True)


if __name__ == "__main__":
    main()
