#!/usr/bin/env python3
"""Writes trainer/tests/data/init_from/: a real PyTorch (Lightning-style) checkpoint of a tiny
taming `VQModel`, for the `model.init_from` tests (trainer/tests/init_from.rs).

The key layout is built here from taming-transformers' `Encoder` / `Decoder` / `VQModel` module
tree (taming/modules/diffusionmodules/model.py, taming/models/vqgan.py), independently of rotor,
so the test checks rotor's taming names against taming's; values are seeded random. Output:

    taming_tiny.ckpt   torch.save({"state_dict": {...}, "epoch": 3, "global_step": 1000})
    expected.json      the file's sha256, the config it fits, a few probe values (the first four
                       values of some tensors) and every tensor's sum

Run with the peer venv (torch):  .venv-peer/bin/python scripts/make-init-from-fixture.py
"""

import hashlib
import json
import os
from collections import OrderedDict

import torch

# The tiny vq_model of the test (trainer/tests/init_from.rs `config`): taming's ddconfig keys.
# The one trainer/tests/training.rs trains with the VQGAN objective.
DDCONFIG = dict(
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    resolution=16,
    in_channels=3,
    out_ch=3,
    z_channels=8,
    double_z=False,
)
EMBED_DIM = 8
N_EMBED = 32
# Every tensor is a view into one shared random storage at its own offset, so the file stays
# small (torch.save writes a storage once) while each tensor has its own values; it also has
# the reader honour storage offsets, as checkpoints with tied or split tensors need.
STORAGE = 40_000

OUT = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "data", "init_from")


def conv(keys, name, cin, cout, k):
    keys[f"{name}.weight"] = (cout, cin, k, k)
    keys[f"{name}.bias"] = (cout,)


def norm(keys, name, c):
    keys[f"{name}.weight"] = (c,)
    keys[f"{name}.bias"] = (c,)


def resnet(keys, name, cin, cout):
    # taming ResnetBlock with temb_channels = 0: no temb_proj; nin_shortcut when widths differ.
    norm(keys, f"{name}.norm1", cin)
    conv(keys, f"{name}.conv1", cin, cout, 3)
    norm(keys, f"{name}.norm2", cout)
    conv(keys, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        conv(keys, f"{name}.nin_shortcut", cin, cout, 1)


def attn(keys, name, c):
    norm(keys, f"{name}.norm", c)
    for p in ("q", "k", "v", "proj_out"):
        conv(keys, f"{name}.{p}", c, c, 1)


def vqmodel_keys(d, embed_dim, n_embed):
    keys = OrderedDict()
    ch, mult, nrb = d["ch"], d["ch_mult"], d["num_res_blocks"]
    levels = len(mult)
    # Encoder.
    conv(keys, "encoder.conv_in", d["in_channels"], ch, 3)
    res = d["resolution"]
    in_mult = [1] + mult
    block_in = ch
    for i in range(levels):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            resnet(keys, f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in d["attn_resolutions"]:
                attn(keys, f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(keys, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    resnet(keys, "encoder.mid.block_1", block_in, block_in)
    attn(keys, "encoder.mid.attn_1", block_in)
    resnet(keys, "encoder.mid.block_2", block_in, block_in)
    norm(keys, "encoder.norm_out", block_in)
    z = d["z_channels"]
    conv(keys, "encoder.conv_out", block_in, 2 * z if d["double_z"] else z, 3)
    # Decoder.
    block_in = ch * mult[-1]
    res = d["resolution"] // 2 ** (levels - 1)
    conv(keys, "decoder.conv_in", z, block_in, 3)
    resnet(keys, "decoder.mid.block_1", block_in, block_in)
    attn(keys, "decoder.mid.attn_1", block_in)
    resnet(keys, "decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(levels)):
        block_out = ch * mult[i]
        for j in range(nrb + 1):
            resnet(keys, f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in d["attn_resolutions"]:
                attn(keys, f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(keys, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm(keys, "decoder.norm_out", block_in)
    conv(keys, "decoder.conv_out", block_in, d["out_ch"], 3)
    # VQModel.
    keys["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv(keys, "quant_conv", z, embed_dim, 1)
    conv(keys, "post_quant_conv", embed_dim, z, 1)
    return keys


def main():
    g = torch.Generator().manual_seed(20240917)
    storage = torch.randn(STORAGE, generator=g) * 0.05
    state = OrderedDict()
    for i, (name, shape) in enumerate(vqmodel_keys(DDCONFIG, EMBED_DIM, N_EMBED).items()):
        n = 1
        for s in shape:
            n *= s
        offset = (i * 7919) % (STORAGE - n + 1)
        state[name] = storage[offset : offset + n].view(shape)
    # A couple of loss tensors (a discriminator's first conv): rotor's model load skips `loss.*`.
    state["loss.discriminator.main.0.weight"] = torch.randn((8, 3, 4, 4), generator=g)
    state["loss.discriminator.main.0.bias"] = torch.zeros(8)
    state["loss.logvar"] = torch.zeros(())
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "taming_tiny.ckpt")
    torch.save(
        {
            "epoch": 3,
            "global_step": 1000,
            "pytorch-lightning_version": "1.0.8",
            "state_dict": state,
        },
        path,
    )
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    probes = {
        k: state[k].flatten()[:4].tolist()
        for k in (
            "encoder.conv_in.weight",
            "quantize.embedding.weight",
            "encoder.down.1.block.0.nin_shortcut.weight",
            "decoder.mid.attn_1.proj_out.bias",
            "decoder.conv_out.bias",
        )
    }
    expected = {
        "file": "taming_tiny.ckpt",
        "sha256": sha,
        "ddconfig": DDCONFIG,
        "embed_dim": EMBED_DIM,
        "n_embed": N_EMBED,
        "model_tensors": sum(1 for k in state if not k.startswith("loss.")),
        "loss_tensors": sum(1 for k in state if k.startswith("loss.")),
        "probes": probes,
        # Every tensor's sum (float64), to check each value the reader returns.
        "sums": {k: float(t.double().sum()) for k, t in state.items()},
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    n = sum(t.numel() for t in state.values())
    print(f"wrote {path}: {len(state)} tensors, {n} values, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
