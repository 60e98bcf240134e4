#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine (which has no Rust toolchain and no
# network) into gpu-check/: the launch binary, the quantizers' and models' golden test
# executables and the estimators bench, all with --features cuda in the stripped `gpu-check`
# profile, gzipped. Carry gpu-check/ and data/photos (scripts/fetch-data.sh) to the machine:
#
#   scripts/gpu-check-build.sh [--features cuda|wgpu]
#   # on the GPU machine, from the repository root:
#   scripts/gpu-check.sh --out "$OUT/gpu-check.json"
#
# The bundle must stay under the device tool's 64 MiB for everything carried; its size is
# printed at the end.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
features=cuda
if [ "${1:-}" = "--features" ]; then features="${2:?--features needs cuda or wgpu}"; fi
case "$features" in cuda|wgpu) ;; *) echo "gpu-check-build: --features cuda or wgpu" >&2; exit 2 ;; esac
out="$root/gpu-check"
rm -rf "$out" && mkdir -p "$out"
msgs="$(mktemp)"
trap 'rm -f "$msgs"' EXIT
cargo build --profile gpu-check --features "$features" --bin launch --message-format=json-render-diagnostics > "$msgs"
cargo test --profile gpu-check --features "$features" --test golden --no-run --message-format=json-render-diagnostics >> "$msgs"
cargo build --profile gpu-check --features "$features" --bench estimators --message-format=json-render-diagnostics >> "$msgs"
python3 - "$msgs" "$out" <<'PY'
import json, os, shutil, sys
msgs, out = sys.argv[1], sys.argv[2]
want = {("launch", "bin"): "launch", ("quantizers", "golden"): "quantizers-golden",
        ("models", "golden"): "models-golden", ("quantizers", "estimators"): "estimators"}
found = {}
for line in open(msgs):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    pkg = m["package_id"].split("#")[0].rstrip("/").split("/")[-1].split("@")[0]
    name = m["target"]["name"]
    key = (pkg, "bin") if name == "launch" and "bin" in m["target"]["kind"] else (pkg, name)
    if key in want:
        found[want[key]] = m["executable"]
missing = sorted(set(want.values()) - set(found))
if missing:
    sys.exit(f"gpu-check-build: not built: {missing}")
for name, path in found.items():
    shutil.copy(path, os.path.join(out, name))
PY
gzip -9 "$out"/launch "$out"/quantizers-golden "$out"/models-golden "$out"/estimators
# The PyTorch side of the throughput step (the GPU image has torch, einops and numpy, not these).
python3 -m pip download -q --no-deps -d "$out/wheels" taming-transformers==0.0.1 \
  vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 \
  torch-einops-utils==0.2.0
du -ch "$out"/* | sed 's/^/gpu-check-build: /'

# What a device run carries: the tracked files, gpu-check/ and data/photos, 64 MiB at most.
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
bundle=$(du -sb "$out" | cut -f1)
photos=$(du -sb data/photos 2>/dev/null | cut -f1 || echo 0)
total=$(( tracked + bundle + ${photos:-0} ))
echo "gpu-check-build: a device run carries $(mib "$total") MiB: tracked files $(mib "$tracked"), gpu-check/ $(mib "$bundle"), data/photos $(mib "${photos:-0}")"
lpips=models/tests/golden/lpips_vgg16_random.safetensors
if [ "$total" -gt $(( 64 * 1048576 )) ]; then
  cat <<EOF
gpu-check-build: over the device tool's 64 MiB. The largest tracked file is the LPIPS golden case
  ($lpips, $(mib "$(du -b "$lpips" | cut -f1)") MiB; the GPU check does not need it). Untrack it for the device run, then restore:
    git rm -q --cached $lpips && echo /$lpips >> .git/info/exclude
    # run: scripts/gpu-check.sh --out \$OUT/gpu-check.json   carry: gpu-check, data/photos
    git reset -q -- $lpips && sed -i '\#^/$lpips\$#d' .git/info/exclude
EOF
fi
