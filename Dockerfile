# One image for every Chirp process (web app, workers, migrations); the
# compose file picks the command.
FROM python:3.11-slim

# uv from PyPI, like everywhere else in this project.
RUN pip install --no-cache-dir uv

# The venv lives outside /app so the source COPY below can never shadow it.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CHIRP_HOST=0.0.0.0

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY . .
RUN uv sync --frozen --no-dev

# Run unprivileged; var/ is the only place Chirp itself writes to.
RUN useradd --system --create-home --home-dir /home/chirp chirp \
    && mkdir -p /app/var && chown chirp /app/var
USER chirp

EXPOSE 8000
CMD ["chirp", "serve"]
