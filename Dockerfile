# One image for every Maestro process: `maestro api` (the default), `maestro worker` and
# `maestro db upgrade`. Configuration comes only from MAESTRO_* environment variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Steps run as this user. The data directory, with the local copies of the artifact store's
# objects (models, checkpoints, code packages), belongs to it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/maestro maestro \
    && mkdir -p /var/lib/maestro/artifact-cache \
    && chown -R maestro:maestro /var/lib/maestro

# Only what `pip install .` needs: the project metadata (its readme included) and packages.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maestro ./maestro
COPY api ./api
COPY workers ./workers
COPY examples ./examples
# The source goes once installed, so that nothing imports it instead of the installed copy.
RUN pip install . && rm -rf /src/*

ENV MAESTRO_DATA_DIR=/var/lib/maestro \
    MAESTRO_API__HOST=0.0.0.0
WORKDIR /var/lib/maestro
USER maestro

EXPOSE 8000
ENTRYPOINT ["maestro"]
CMD ["api"]
