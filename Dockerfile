# The serving image: app code + one ONNX model, served by Granian (app/serve.py) as a non-root user.
# Built with networking disabled: dependencies come from build/wheelhouse (prepared on the
# host for the image's platform), the model from build/model (fetched and verified).
# Sources some wheels ship beside their compiled modules (simdjson's 7 MB of C++, Cython
# files) are dropped: nothing reads them at run time.
# Order matters for the inner loop: everything that changes rarely comes first, then the
# model, then the code, then the few per-build values (revision, labels) in two steps, so
# a code change rebuilds one COPY and two metadata steps.
ARG BASE_IMAGE=python:3.11-slim@sha256:78b39ef14d8e2b4d71f8dc304f1328c37df95fe0ef99477c2ae6bd3d03784553

FROM ${BASE_IMAGE} AS dependencies
COPY requirements/image.lock /tmp/image.lock
COPY build/wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --disable-pip-version-check \
      --require-hashes --find-links=/tmp/wheelhouse --requirement /tmp/image.lock \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && find /opt/venv/lib -type f \( -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' \
      -o -name '*.pyx' -o -name '*.pxd' \) -delete

FROM ${BASE_IMAGE}
# A fixed numeric uid lets Kubernetes' runAsNonRoot check the user without a passwd lookup.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent app
COPY --from=dependencies /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/opt/model \
    PORT=8080
WORKDIR /opt/service
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["python3", "-m", "app.serve"]
USER 10001:10001
# Model before code: a code-only change reuses the model layer.
COPY build/model/model.onnx build/model/metadata.json /opt/model/
COPY modelship_serving/ /opt/service/modelship_serving/
COPY app/ /opt/service/app/

ARG GIT_REVISION=unknown
ARG APP_VERSION=0.0.0
ARG IMAGE_TITLE=""
ARG IMAGE_SOURCE=""
ARG IMAGE_CREATED=""
ARG MODEL_NAME=""
ARG MODEL_VERSION=""
ARG MODEL_SHA256=""
ARG IMAGE_INPUTS=""
ENV GIT_REVISION=${GIT_REVISION} \
    APP_VERSION=${APP_VERSION}
LABEL org.opencontainers.image.title="${IMAGE_TITLE}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.created="${IMAGE_CREATED}" \
      org.opencontainers.image.version="${APP_VERSION}" \
      ai.modelship.model.name="${MODEL_NAME}" \
      ai.modelship.model.version="${MODEL_VERSION}" \
      ai.modelship.model.sha256="${MODEL_SHA256}" \
      ai.modelship.inputs="${IMAGE_INPUTS}"
