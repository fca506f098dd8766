# De-Confusion ML backend for Label Studio.
# Build: docker build -t deconfusion .        Run: see docker-compose.yml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/data \
    PORT=9090 \
    WORKERS=1 \
    THREADS=8

WORKDIR /app
# DejaVu: evidence images draw class names in any script
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY ml_backend ./ml_backend
COPY label_studio_config ./label_studio_config

VOLUME /data
EXPOSE 9090
# One gunicorn worker: without REDIS_URL analyses run on an in-process thread, and a
# single process guarantees one analysis per project. Scale with REDIS_URL + `worker` services.
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:${PORT} --workers ${WORKERS} --threads ${THREADS} --timeout 120 'ml_backend.service:app_from_env()'"]
