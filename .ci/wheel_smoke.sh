#!/usr/bin/env bash
# CI: build latentgen's wheel, install it in a fresh venv and train a debug=fdr experiment from an
# empty directory outside the repository: the installed package must bring its own config tree.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
: "${LATENTGEN_DATA_DIR:?set LATENTGEN_DATA_DIR to the folder that holds mnist/}"
work="$(mktemp -d "${TMPDIR:-/tmp}/latentgen-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
pip_install() { "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

# Build from the files git would ship (no build/ or *.egg-info left in the working tree).
mkdir "$work/src"
(cd "$repo" && git ls-files -co --exclude-standard | while IFS= read -r f; do [ -f "$f" ] && echo "$f"; done \
  | tar -cf - -T -) | tar -xf - -C "$work/src"
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/latentgen-*.whl)"
echo "== built $(basename "$wheel")"

# The config tree is inside the package, and nothing but latentgen is installed at the top level.
python3 - "$wheel" <<'EOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
experiments = [n for n in names if n.startswith("latentgen/conf/experiment/") and n.endswith(".yaml")]
tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
missing = [n for n in ("latentgen/conf/train.yaml", "latentgen/launch/pipeline.py") if n not in names]
if missing or not experiments or tops != ["latentgen"]:
    sys.exit(f"wheel: missing {missing}, {len(experiments)} experiment configs, top-level entries {tops}")
print(f"== wheel holds {len(names)} files, {len(experiments)} experiment configs, top level {tops}")
EOF

# A fresh venv: torch first (pip takes the local CPU build of this version), then the wheel.
python3 -m venv "$work/venv"
pip_install "torch==2.13.0"
pip_install "$wheel"
"$work/venv/bin/latentgen-launch" --help > /dev/null

# Train from an empty directory outside the repository, with the real data.
mkdir "$work/run"
cd "$work/run"
env -u PYTHONPATH -u LATENTGEN_CONFIG_DIR -u LATENTGEN_LOG_DIR WANDB_MODE=offline WANDB_SILENT=true \
  "$work/venv/bin/python" -m latentgen.train +experiment=vqvae_mnist debug=fdr extras.print_config=false
conf_dir="$(env -u PYTHONPATH "$work/venv/bin/python" -c 'from latentgen.utils.resolvers import CONF_DIR; print(CONF_DIR)')"
case "$conf_dir" in
  "$work/venv/"*) ;;
  *) echo "the installed latentgen reads $conf_dir, not its own config tree" >&2; exit 1 ;;
esac
runs=(logs/debug/runs/*/.hydra/config.yaml)
[ -f "${runs[0]}" ] || { echo "no run dir under $work/run/logs/debug/runs" >&2; exit 1; }
echo "== wheel smoke test passed: config tree $conf_dir, run ${runs[0]%/.hydra/config.yaml}"
