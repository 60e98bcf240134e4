#!/usr/bin/env bash
# rotor vs PyTorch training-step speed on this CPU, measured in one run (issue 6).
#
#   bench/compare.sh            # both workloads
#
# Needs the Fashion-MNIST and sample photos (./scripts/fetch-data.sh) and a Python environment
# with torch, vector-quantize-pytorch and taming-transformers (bench/README.md); PEER_PYTHON
# points at its interpreter (default .venv-peer/bin/python), PEER_FASHION at the Fashion-MNIST
# peer script (default ../shared/peers/fashion_vq.py), ENHANCING_DIR at a checkout of
# thuanz123/enhancing-transformers for the ViT-VQGAN workload (skipped, saying so, without one).
# Prints every JSON line, then one summary line per workload with both steps/s and rotor's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PEER_PYTHON:-.venv-peer/bin/python}
FASHION=${PEER_FASHION:-../shared/peers/fashion_vq.py}
if [ ! -x "$PY" ]; then
  echo "no PyTorch environment at $PY (see bench/README.md, or set PEER_PYTHON)" >&2
  exit 1
fi
if [ ! -f "$FASHION" ]; then
  echo "no Fashion-MNIST peer script at $FASHION (set PEER_FASHION)" >&2
  exit 1
fi
[ -f data/videos/vtest.avi ] || ./scripts/fetch-data.sh
# The video workload reads the sample videos as frame shards.
if [ ! -f data/prepared/videos/manifest.json ]; then
  cargo run -q --release -p launch -- prepare-video --src data/videos --out data/prepared/videos --size 64
fi
cargo bench -q -p trainer --bench cpu_step --no-run
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench -q -p trainer --bench cpu_step -- --rounds 3 | grep '^{' | tee -a "$out"
# The peer trains rotation then STE; its rotation line is the comparison.
"$PY" "$FASHION" data/fashion-mnist/train-images-idx3-ubyte.gz 300 2>/dev/null \
  | grep '"rotation"' | tee -a "$out"
"$PY" bench/taming_vqvae.py --rounds 3 2>/dev/null | grep '^{' | tee -a "$out"
"$PY" bench/tats_conv3d.py --rounds 3 2>/dev/null | grep '^{' | tee -a "$out"
if [ -f "${ENHANCING_DIR:-enhancing-transformers}/enhancing/modules/stage1/layers.py" ]; then
  "$PY" bench/enhancing_vit.py --rounds 3 2>/dev/null | grep '^{' | tee -a "$out"
else
  echo "vit_small: no enhancing-transformers checkout (set ENHANCING_DIR): PyTorch side skipped" >&2
fi
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rotor = {r["workload"]: r["steps_per_s"] for r in rows if r.get("impl") == "rotor"}
torch = {r["workload"]: r["steps_per_s"] for r in rows if r.get("impl") == "pytorch"}
torch.update({"peer_fashion_vq": r["iters_per_s"] for r in rows if r.get("method") == "rotation"})
for w, s in rotor.items():
    t = torch.get(w)
    ratio = round(s / t, 3) if t else None
    print(json.dumps({"workload": w, "rotor_steps_per_s": s, "pytorch_steps_per_s": t and round(t, 3),
                      "ratio": ratio}))
PY
