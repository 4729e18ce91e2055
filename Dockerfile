# Caption-only public app on port 8000, as a non-root user.
#   docker build -t captioner . && docker run -p 8000:8000 captioner
# Caption-only needs no token (nothing can change state); it answers to localhost and IP
# addresses: reached by a DNS name, add `--allowed-host NAME` to the command. With training:
#   docker run -p 8000:8000 -e CAPTIONER_TOKEN=$(openssl rand -hex 16) captioner \
#     captioner serve --host 0.0.0.0 --port 8000 --data-root /data
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# CPU-only PyTorch keeps the image small (the default wheel bundles CUDA).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3" "torchvision>=0.18"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --create-home --uid 10001 app
USER app
# Export the encoder to ONNX once at build time so the first request is fast.
RUN python -c "from captioner import Captioner; Captioner.load().caption([__import__('PIL.Image').Image.new('RGB', (64, 64))])"
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["captioner", "serve", "--host", "0.0.0.0", "--port", "8000", "--disable-training"]
