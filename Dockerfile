# syntax=docker/dockerfile:1.7
# windmill-git-sync: backs up Windmill workspaces to Git (see README.md).
#
# BASE_IMAGE is an official image by default; tests may point it at a local
# copy. An optional extra CA bundle (corporate TLS-intercepting proxies) can
# be given as a BuildKit secret:  --secret id=extra_ca,src=corp-ca.pem
ARG BASE_IMAGE=debian:bookworm-slim
ARG NODE_VERSION=22.23.3

# --- Node.js and the pinned wmill CLI -------------------------------------
FROM ${BASE_IMAGE} AS cli
ARG NODE_VERSION
RUN --mount=type=secret,id=extra_ca,required=false \
    set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates npm; \
    rm -rf /var/lib/apt/lists/*
WORKDIR /opt/windmill-git-sync
COPY package.json package-lock.json ./
# Debian's Node is too old for windmill-cli (it needs Node >= 20); the npm
# registry ships the official Node binaries as node-linux-<arch> packages.
RUN --mount=type=secret,id=extra_ca,required=false \
    set -eux; \
    if [ -s /run/secrets/extra_ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/extra_ca; fi; \
    case "$(dpkg --print-architecture)" in \
      amd64) arch=x64 ;; arm64) arch=arm64 ;; *) echo "unsupported architecture"; exit 1 ;; \
    esac; \
    npm install --no-save --no-audit --no-fund --prefix /opt/node "node-linux-${arch}@${NODE_VERSION}"; \
    mkdir -p /opt/node/bin; \
    cp "/opt/node/node_modules/node-linux-${arch}/bin/node" /opt/node/bin/node; \
    rm -rf /opt/node/node_modules /opt/node/package*.json; \
    npm ci --omit=dev --no-audit --no-fund --loglevel=error; \
    /opt/node/bin/node node_modules/windmill-cli/esm/main.js --help >/dev/null

# --- Python virtual environment from the lock file --------------------------
FROM ${BASE_IMAGE} AS python
RUN --mount=type=secret,id=extra_ca,required=false \
    set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates python3 python3-venv; \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/runtime.txt requirements/runtime.txt
RUN --mount=type=secret,id=extra_ca,required=false \
    set -eux; \
    if [ -s /run/secrets/extra_ca ]; then export PIP_CERT=/run/secrets/extra_ca; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes \
        -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=extra_ca,required=false \
    set -eux; \
    if [ -s /run/secrets/extra_ca ]; then export PIP_CERT=/run/secrets/extra_ca; fi; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps .

# --- Runtime -----------------------------------------------------------------
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates git python3 tini; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin wgs; \
    mkdir -p /data; chown wgs:wgs /data
COPY --from=cli /opt/node/bin/node /usr/local/bin/node
COPY --from=cli /opt/windmill-git-sync /opt/windmill-git-sync
COPY --from=python /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    PORT=8080 \
    WMILL_CLI=/opt/windmill-git-sync/node_modules/windmill-cli/esm/main.js
USER wgs
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["windmill-git-sync", "serve"]
