# The step image: what every lifecycle pod runs (`mlcycle step <name> ...`).
# The pod spec names it through MLCYCLE_IMAGE. Debian bookworm ships Python 3.11.
#   docker build -t mlcycle-step .                                  # CPU torch
#   docker build -t mlcycle-step:gpu --build-arg TORCH_VARIANT=cu128 .   # CUDA torch for GPU pods
FROM debian:bookworm-slim

ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    MLCYCLE_PROJECT_DIR=/opt/mlcycle

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin mlcycle \
 && python3 -m venv /opt/venv

WORKDIR /opt/mlcycle
COPY requirements.txt ./
RUN pip install --upgrade pip \
 && pip install torch==2.13.0 --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
 && pip install -r requirements.txt \
 && if [ "$TORCH_VARIANT" != "cpu" ]; then \
      pip uninstall -y onnxruntime && pip install "onnxruntime-gpu==1.32.0"; \
    fi

COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY operators ./operators
COPY feature_repo ./feature_repo
COPY include ./include
COPY dags ./dags
RUN pip install --no-deps . && chown -R mlcycle:mlcycle /opt/mlcycle

USER 10001
ENTRYPOINT []
CMD ["mlcycle", "--help"]
