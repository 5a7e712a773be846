FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install --no-cache-dir .
COPY config ./config
ENV RELAY_HOST=0.0.0.0 RELAY_PORT=8080
EXPOSE 8080
USER nobody
CMD ["relay", "serve"]
