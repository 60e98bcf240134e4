"""PyTorch side of rotor's `vqvae_small` CPU benchmark (bench/vqvae_small.toml): taming-transformers'
own Encoder/Decoder (ch 64, ch_mult [1, 2, 2], one ResnetBlock per level, attention at 16x16,
z_channels 64), 1x1 quant/post-quant convs, and vector-quantize-pytorch's VectorQuantize (1024 codes
of width 64, EMA decay 0.8, rotation trick), MSE + commitment loss, AdamW lr 2e-4 (no weight decay),
batch 8 of 64x64 RGB in [-1, 1], on CPU with 2 threads (set --threads). `--workload f16 --device cuda`:
taming's f16 VQGAN autoencoder (bench/vqgan_f16.toml) on the GPU, for scripts/gpu-check.sh.

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

# Workloads: rotor's bench/vqvae_small.toml (CPU) and bench/vqgan_f16.toml (GPU, taming's f16
# VQGAN autoencoder), as (taming ddconfig, batch).
WORKLOADS = {
    "vqvae_small": (dict(ch=64, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1,
                         attn_resolutions=[16], dropout=0.0, resamp_with_conv=True, in_channels=3,
                         resolution=64, z_channels=64, double_z=False), 8),
    "f16": (dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                 attn_resolutions=[16], dropout=0.0, resamp_with_conv=True, in_channels=3,
                 resolution=256, z_channels=256, double_z=False), 8),
}


class VqVae(nn.Module):
    def __init__(self, ddconfig):
        super().__init__()
        z = ddconfig["z_channels"]
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(z, z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)
        self.quantize = VectorQuantize(dim=z, codebook_size=1024, decay=0.8, commitment_weight=1.0,
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
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="vqvae_small")
    p.add_argument("--device", default="cpu", help="cpu or cuda (eager, float32)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ddconfig, batch = WORKLOADS[a.workload]
    dev = torch.device(a.device)
    model = VqVae(ddconfig).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    res = ddconfig["resolution"]
    cuda = dev.type == "cuda"
    if cuda:
        # float32 as rotor computes it (no TF32 tensor-core shortcut).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def step():
        x = torch.rand(batch, 3, res, res, device=dev) * 2 - 1
        opt.zero_grad()
        rec, idx, commit = model(x)
        loss = (rec - x).pow(2).mean() + commit
        loss.backward()
        opt.step()
        # On the GPU, no per-step host sync (PyTorch at its best); the round is timed to a sync.
        return None if cuda else loss.item()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    rates = []
    for _ in range(a.rounds):
        t0 = time.time()
        for _ in range(a.steps):
            step()
        sync()
        rates.append(a.steps / (time.time() - t0))
    med = sorted(rates)[len(rates) // 2]
    print(json.dumps(dict(workload=a.workload, impl="pytorch", device=a.device, batch=batch,
                          steps_per_s=round(med, 3), rounds=[round(r, 3) for r in rates],
                          threads=a.threads, torch=torch.__version__)), flush=True)


if __name__ == "__main__":
    main()
