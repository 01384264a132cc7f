# First version (issue 2): the app and CLI on a Python base. PyPI's torch 2.14.1 wheel for
# Linux x86_64 bundles CUDA, so `docker run --gpus all` uses the GPU. Issue 7 hardens this
# (CUDA base, healthcheck, hadolint in CI).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/data/huggingface \
    DIFFUBIAS_CACHE=/data/cache

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 1000 studio && mkdir -p /data && chown studio /data
USER studio
VOLUME ["/data"]
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--workspace", "/data/workspace"]
