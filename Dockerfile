# DiffuBias Studio for GPU hosts: the web app (default) and the `diffubias` CLI.
#
#   docker build -t diffubias-studio .
#   docker run --gpus all -p 7860:7860 \
#       -v diffubias-workspace:/data/workspace -v "$HOME/.cache/huggingface:/data/huggingface" \
#       diffubias-studio --auth me:secret
#
# Arguments after the image name are added to the app's (see `diffubias-studio --help`); run the
# CLI with `--entrypoint diffubias`. docs/guide/gpus.md#docker has the details.
#
# The base image's torch must be requirements.txt's torch (2.14.1, whose PyPI wheel is built for
# CUDA 13.0); tests/test_packaging.py checks the tag. Another base: --build-arg BASE_IMAGE=...
# (it needs Python >= 3.11 and torch 2.14.1, or pip installs the PyPI wheel on top).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/data/huggingface \
    DIFFUBIAS_CACHE=/data/workspace/cache \
    DIFFUBIAS_MODELS=/opt/diffubias/models

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/diffubias

# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them;
# torch and torchvision are already in the base image and stay as they are.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements-runtime.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements-runtime.txt \
    && rm /tmp/requirements-runtime.txt

COPY app.py ./
COPY diffubias ./diffubias
COPY storage ./storage
COPY ui ./ui
# the project's own small models (a few MB), the defaults on the built-in datasets
COPY models ./models
RUN python -m pip install --no-cache-dir --no-deps . \
    && diffubias --help > /dev/null \
    && diffubias-studio --help > /dev/null

# A non-root user owns the two volumes: the workspace (database, uploads, runs, built-in dataset
# cache) and the Hugging Face cache (model weights; mount a pre-filled one to run offline). Its
# uid should own the host folders you bind-mount: --build-arg STUDIO_UID=$(id -u).
ARG STUDIO_UID=1000
RUN if getent passwd "${STUDIO_UID}" > /dev/null; then \
        userdel --remove "$(getent passwd "${STUDIO_UID}" | cut -d: -f1)"; \
    fi \
    && useradd --create-home --uid "${STUDIO_UID}" --user-group studio \
    && mkdir -p /data/workspace /data/huggingface \
    && chown -R studio:studio /data
USER ${STUDIO_UID}
WORKDIR /data/workspace
VOLUME ["/data/workspace", "/data/huggingface"]

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]

ENTRYPOINT ["diffubias-studio", "--host", "0.0.0.0", "--port", "7860", "--workspace", "/data/workspace"]
CMD []
