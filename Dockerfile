# syntax=docker/dockerfile:1
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jsonexporter ./jsonexporter
COPY schemas ./schemas
RUN python -m venv /opt/jsonexporter \
    && /opt/jsonexporter/bin/pip install --no-cache-dir .

FROM python:3.12-slim
COPY --from=build /opt/jsonexporter /opt/jsonexporter
COPY examples/queue-stats.yml /etc/jsonexporter/config.yml
ENV PATH=/opt/jsonexporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65534:65534
EXPOSE 7979
HEALTHCHECK --interval=30s --timeout=3s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7979/-/healthy', timeout=2)"]
ENTRYPOINT ["jsonexporter"]
CMD ["serve", "--config.file", "/etc/jsonexporter/config.yml"]
