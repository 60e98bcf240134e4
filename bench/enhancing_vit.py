"""PyTorch side of rotor's `vit_small` CPU benchmark (bench/vit_small.toml): enhancing-transformers'
own ViTEncoder / ViTDecoder (enhancing/modules/stage1/layers.py, imported from a checkout of
thuanz123/enhancing-transformers given by --enhancing or $ENHANCING_DIR; nothing of it is copied
here), pre_quant / post_quant Linear layers and vector-quantize-pytorch's VectorQuantize (1024
codes of width 32, cosine similarity, EMA codebook (decay 0.8), rotation trick), MSE + quantizer loss,
AdamW (0.9, 0.99) wd 1e-4, batch 8 of 64x64 RGB in [-1, 1], on CPU with 2 threads (--threads).

    .venv-peer/bin/pip install torch vector-quantize-pytorch numpy einops
    git clone https://github.com/thuanz123/enhancing-transformers   # on a machine with network
    ENHANCING_DIR=enhancing-transformers .venv-peer/bin/python bench/enhancing_vit.py [--rounds 3]

Prints one JSON line like rotor's `cargo bench -p trainer --bench cpu_step`: the median over
rounds of steps/s. Inputs are uniform noise drawn each step (the step's cost does not depend on
pixel values)."""
import argparse, importlib.util, json, os, sys, time

import torch
import torch.nn as nn
from vector_quantize_pytorch import VectorQuantize

CFG = dict(image_size=64, patch_size=8, dim=256, depth=4, heads=4, mlp_dim=1024, dim_head=64,
           embed_dim=32, codebook_size=1024, batch=8)


def enhancing_layers(root):
    path = os.path.join(root, "enhancing", "modules", "stage1", "layers.py")
    if not os.path.isfile(path):
        sys.exit(f"no {path}: point --enhancing / ENHANCING_DIR at a checkout of "
                 "thuanz123/enhancing-transformers")
    # enhancing's position table uses `np.float`, removed in NumPy 1.24: give it back the builtin
    # it aliased (the same float64 table results).
    import numpy as np
    if not hasattr(np, "float"):
        np.float = float
    spec = importlib.util.spec_from_file_location("enhancing_stage1_layers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class VitVq(nn.Module):
    def __init__(self, layers, c):
        super().__init__()
        self.encoder = layers.ViTEncoder(image_size=c["image_size"], patch_size=c["patch_size"],
                                         dim=c["dim"], depth=c["depth"], heads=c["heads"],
                                         mlp_dim=c["mlp_dim"], dim_head=c["dim_head"])
        self.decoder = layers.ViTDecoder(image_size=c["image_size"], patch_size=c["patch_size"],
                                         dim=c["dim"], depth=c["depth"], heads=c["heads"],
                                         mlp_dim=c["mlp_dim"], dim_head=c["dim_head"])
        self.pre_quant = nn.Linear(c["dim"], c["embed_dim"])
        self.post_quant = nn.Linear(c["embed_dim"], c["dim"])
        self.quantize = VectorQuantize(dim=c["embed_dim"], codebook_size=c["codebook_size"],
                                       use_cosine_sim=True, rotation_trick=True,
                                       decay=0.8, commitment_weight=1.0)

    def forward(self, x):
        h = self.pre_quant(self.encoder(x))
        q, _, qloss = self.quantize(h)
        return self.decoder(self.post_quant(q)), qloss.sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--enhancing", default=os.environ.get("ENHANCING_DIR", "enhancing-transformers"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = VitVq(enhancing_layers(a.enhancing), CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4)
    b, s = CFG["batch"], CFG["image_size"]

    def step():
        x = torch.rand(b, 3, s, s) * 2 - 1
        rec, qloss = model(x)
        loss = (rec - x).pow(2).mean() + qloss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates = []
    for _ in range(a.rounds):
        for _ in range(a.warmup):
            step()
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        rates.append(a.steps / (time.perf_counter() - t))
    rates.sort()
    print(json.dumps({"workload": "vit_small", "impl": "pytorch", "batch": b,
                      "steps_per_s": round(rates[len(rates) // 2], 3),
                      "rounds": [round(r, 3) for r in rates], "threads": a.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
