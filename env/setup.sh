#!/usr/bin/env bash
# Create .venv, install the pins, register the `apq` Jupyter kernel inside the venv and make
# Fashion-MNIST available. Idempotent: a second run with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.apq-setup-stamp
want=$(cat env/requirements.txt env/setup.sh pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "setup: .venv is up to date"
else
  echo "setup: installing pinned packages into $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -r env/requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, torchvision, papermill, nbval" \
    || { echo "setup: install failed (see messages above)"; exit 1; }
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name apq --display-name "Python (apq)" >/dev/null
  echo "$want" > "$STAMP"
fi
# The kernel spec lives inside the venv; re-register if it was removed.
[ -f "$VENV/share/jupyter/kernels/apq/kernel.json" ] || \
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name apq --display-name "Python (apq)" >/dev/null

# JupyterLab as `make lab` opens it: new notebooks and consoles on the `apq` kernel, and no
# "get notified about Jupyter news?" pop-up nor update checks (both would reach the network).
mkdir -p "$VENV/share/jupyter/lab/settings" "$VENV/etc/jupyter"
cat > "$VENV/share/jupyter/lab/settings/overrides.json" <<'JSON'
{
  "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}
}
JSON
# (the server reads only extension switches from jupyter_server_config.d/, so the main file)
cat > "$VENV/etc/jupyter/jupyter_server_config.json" <<'JSON'
{"MultiKernelManager": {"default_kernel_name": "apq"}}
JSON

# The package itself, editable (pyproject.toml): `import apq_lib` from any working directory
# (notebooks run in notebooks/) and the console entry points (apq-reproduce, ...).
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$SITE/apq_suite.pth"                      # the path file of older set-ups
if ! "$VENV/bin/python" -c "import apq_lib, sys; sys.exit(0 if apq_lib.__file__.startswith('$PWD/') else 1)" 2>/dev/null \
   || [ ! -x "$VENV/bin/apq-reproduce" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
fi

# Dataset: APQ_DATA_DIR, else Debian's package (installed here when root with apt), else
# torchvision downloads it on first use.
FM=/usr/share/datasets/fashion-mnist
if [ -z "${APQ_DATA_DIR:-}" ] && [ ! -f "$FM/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || \
      echo "setup: apt could not install dataset-fashion-mnist; torchvision will download it"
  else
    echo "setup: Fashion-MNIST not found; set APQ_DATA_DIR or let torchvision download it"
  fi
fi
echo "setup: done"
