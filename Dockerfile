# syntax=docker/dockerfile:1
# lightmem-mcp images: the hosted MCP server (streamable HTTP on port 8000 by default).
#
#   docker build -t lightmem-mcp .                              # CPU image (target "cpu", the default)
#   docker build --build-arg BAKE_MODELS=0 -t lightmem-mcp .    # models at run time (hub or LIGHTMEM_*_PATH)
#   docker build --target npu -t lightmem-mcp:npu .             # Ascend NPU image (CANN + torch-npu)
#
#   docker run --rm lightmem-mcp token new --tenant me           # a bearer token and its tokens-file line
#   docker run --rm -p 8000:8000 -e LIGHTMEM_AUTH_TOKENS='<that line>' lightmem-mcp   # http://localhost:8000/mcp
#   docker run -i --rm --no-healthcheck -v lightmem-data:/data lightmem-mcp serve --transport stdio
#
# BAKE_MODELS=1 (default) downloads all-MiniLM-L6-v2 and LLMLingua-2
# (microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank, 709 MB) from the Hugging Face hub
# at build time into the image's hub cache and sets HF_HUB_OFFLINE=1: the container never reaches
# for the hub. BAKE_MODELS=0 leaves both out (about 0.8 GB smaller); the server then downloads them
# on first start, or reads them from LIGHTMEM_EMBEDDING_PATH / LIGHTMEM_COMPRESSION_PATH (for
# example synced from object storage, as deploy/overlays/huawei-cce does).
#
# Size (computed from an installed environment, not measured on a built image): python:3.11-slim
# ~130 MB, the virtual environment ~1.5 GB (CPU torch ~750 MB of it; the default CUDA build of torch
# would add ~4 GB of NVIDIA libraries), the two models ~0.8 GB: ~1.7 GB without models, ~2.5 GB with.

ARG PYTHON_VERSION=3.11
# CANN base images: https://github.com/Ascend/cann-container-image (tags <cann>-<chip>-<os>-<py>).
ARG CANN_IMAGE=quay.io/ascend/cann:9.0.1-910-ubuntu22.04-py3.12

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch alone from the CPU wheel index (~200 MB download instead of several GB of CUDA libraries);
# then the project, with the same pin so no dependency pulls another torch.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lightmem_mcp ./lightmem_mcp
RUN pip install "torch==${TORCH_VERSION}" . && lightmem-mcp --version

# ---------------------------------------------------------------------------------------------
# The models, in the layout of the Hugging Face hub cache, so the server finds them through its
# ordinary cache lookup (no path settings). An empty cache when BAKE_MODELS=0.
FROM build AS models
ARG BAKE_MODELS=1
ARG EMBEDDING_MODEL=sentence-transformers/all-MiniLM-L6-v2
ARG COMPRESSION_MODEL=microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank
ENV HF_HOME=/opt/hf
RUN python <<'EOF'
"""BAKE_MODELS=1: both models into the hub cache, one weights format each (safetensors where the
repository has it; no ONNX / OpenVINO copies). Otherwise an empty cache."""
import os
import sys
from pathlib import Path

from huggingface_hub import list_repo_files, snapshot_download

from lightmem_mcp.hub import cached_snapshot

Path("/opt/hf").mkdir(parents=True, exist_ok=True)
if os.environ["BAKE_MODELS"] == "1":
    for repo in (os.environ["EMBEDDING_MODEL"], os.environ["COMPRESSION_MODEL"]):
        safetensors = any(name.endswith(".safetensors") for name in list_repo_files(repo))
        weights = ["*.safetensors"] if safetensors else ["*.bin"]
        snapshot_download(repo, allow_patterns=["*.json", "*.txt", "*.model", "1_Pooling/*", *weights])
        if cached_snapshot(repo) is None:  # the lookup the server makes, offline
            sys.exit(f"{repo} is not usable from the baked cache")
EOF

# ---------------------------------------------------------------------------------------------
# Ascend NPU image: CANN from the base image, torch-npu on top of the CPU torch build of the same
# version. The NPU driver itself comes from the host (the device plugin mounts it). torch-npu must
# match both torch and the CANN version of CANN_IMAGE: see torch-npu's release notes.
FROM ${CANN_IMAGE} AS npu
# Without TORCH_DEVICE_BACKEND_AUTOLOAD=0, `import torch` loads torch_npu and fails wherever the
# driver is not mounted (this build, a CPU node); lightmem-mcp imports torch_npu itself, inside a
# try, when it looks for an NPU.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TORCH_DEVICE_BACKEND_AUTOLOAD=0
ARG TORCH_VERSION=2.13.0
ARG TORCH_NPU_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# CANN's own Python packages live in the image's interpreter, so no virtual environment here.
RUN python3 -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lightmem_mcp ./lightmem_mcp
RUN python3 -m pip install "torch==${TORCH_VERSION}" "torch-npu==${TORCH_NPU_VERSION}" . \
    && lightmem-mcp --version && rm -rf /src
# The NPU device files belong to HwHiAiUser on the nodes: run as that uid / gid (`id HwHiAiUser`
# on an NPU node; 1000 unless the driver was installed with another).
ARG NPU_UID=1000
ARG NPU_GID=1000
RUN groupadd --gid "${NPU_GID}" HwHiAiUser \
    && useradd --uid "${NPU_UID}" --gid "${NPU_GID}" --create-home HwHiAiUser \
    && mkdir /data && chown "${NPU_UID}:${NPU_GID}" /data
COPY --from=models --chown=${NPU_UID}:${NPU_GID} /opt/hf /opt/hf
ARG BAKE_MODELS=1
# DL3064 reads "TOKEN" in TOKENIZERS_PARALLELISM as a secret.
# hadolint ignore=DL3064
ENV LIGHTMEM_DATA_DIR=/data \
    HF_HOME=/opt/hf \
    HF_HUB_OFFLINE=${BAKE_MODELS} \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
WORKDIR /data
USER ${NPU_UID}:${NPU_GID}
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# CANN's environment script (its path moved between CANN releases), then the server.
ENTRYPOINT ["/bin/bash", "-c", "for f in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh; do if [ -f \"$f\" ]; then . \"$f\"; fi; done; exec lightmem-mcp \"$@\"", "lightmem-mcp"]
CMD ["serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# The CPU image; the last stage, so the default of `docker build .`.
FROM python:${PYTHON_VERSION}-slim AS cpu
RUN groupadd --gid 10001 lightmem \
    && useradd --uid 10001 --gid 10001 --create-home lightmem \
    && mkdir /data && chown lightmem:lightmem /data
COPY --from=build /opt/venv /opt/venv
# Owned by the user so that a BAKE_MODELS=0 image can fill the cache at run time.
COPY --from=models --chown=10001:10001 /opt/hf /opt/hf
ARG BAKE_MODELS=1
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LIGHTMEM_DATA_DIR=/data \
    HF_HOME=/opt/hf \
    HF_HUB_OFFLINE=${BAKE_MODELS} \
    TOKENIZERS_PARALLELISM=false
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# /healthz answers once the process serves HTTP; a stdio container has no port (--no-healthcheck).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["lightmem-mcp"]
CMD ["serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]
