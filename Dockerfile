# windmill-git-sync: backs up Windmill workspaces to Git (see README.md).
#
#   docker build -t windmill-git-sync .
#
# Needs BuildKit: the default builder since Docker 23 (on Docker 20.10 set
# DOCKER_BUILDKIT=1). There is deliberately no "# syntax=" line: the builder's
# own Dockerfile frontend is used, so a build never has to pull one.
#
# Optional build arguments:
#   BASE_IMAGE     a Debian bookworm image; the official slim one by default.
#   VERSION        the version label; setup.cfg's by default (keep them equal).
#   SOURCE_URL, REVISION
#                  the repository URL and commit for the OCI labels (CI sets them).
#   PIP_INDEX_URL  a PyPI mirror. Packages are checked against the hashes in
#                  requirements/runtime.txt whatever the index.
#   NPM_REGISTRY   an npm registry mirror. Node, npm and the wmill CLI are
#                  checked against the integrity pinned below and in
#                  package-lock.json whatever the registry.
# Behind a TLS-intercepting proxy, hand its CA bundle to the build as a
# BuildKit secret. It is trusted (in addition to the usual CAs) by the steps
# that download, and never stored in any layer:
#   docker build --secret id=extra_ca,src=corp-ca.pem -t windmill-git-sync .
ARG BASE_IMAGE=debian:bookworm-slim

# --- What the runtime needs; the build stages start from it as well ---------
# No git: the service speaks Git in-process (dulwich), so neither git nor the
# Perl it pulls in is installed. Debian's packages are not pinned to versions
# (hadolint DL3008): a stable release keeps one version of each, replaced by
# its security updates, so a pinned version vanishes from the mirror and the
# build breaks exactly when an update matters.
FROM ${BASE_IMAGE} AS runtime-base
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates python3 tini; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 wgs; \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin wgs; \
    mkdir /data; chown 10001:10001 /data; chmod 0750 /data

FROM runtime-base AS build-base
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends binutils python3-venv python3-setuptools python3-wheel; \
    rm -rf /var/lib/apt/lists/*

# --- Node.js and the pinned wmill CLI -----------------------------------------
# Debian bookworm's Node (18) is too old for windmill-cli, which needs Node 20
# or newer; the npm registry carries the official Node binaries as the
# node-linux-<arch> packages. Node and npm are fetched by URL and checked
# against the integrity below; the CLI comes from package-lock.json (npm ci).
# The node binary is stripped of its symbol tables once checked: some 18 MB
# of the image that nothing reads at run time. So are the packages' source
# maps and TypeScript declarations (about 1.3 MB): node reads neither
# without --enable-source-maps; the CLI's --help then proves it still runs.
FROM build-base AS cli
ARG NPM_REGISTRY=https://registry.npmjs.org/
ARG NODE_VERSION=22.23.3
ARG NODE_INTEGRITY_X64=sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/AKR2583eYorLF/c7ng==
ARG NODE_INTEGRITY_ARM64=sha512-l3DAHZreylo+p9QXDtsOrjG2JXJqVzYXnAGmIQNOUNARcMppTO2cmewVQP+36tjJnSE+dzpMNtgW+c3oiDvXtA==
ARG NPM_VERSION=10.9.4
ARG NPM_INTEGRITY=sha512-OnUG836FwboQIbqtefDNlyR0gTHzIfwRfE3DuiNewBvnMnWEpB0VEXwBlFVgqpNzIgYo/MHh3d2Hel/pszapAA==
WORKDIR /opt/windmill-git-sync
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=extra_ca,required=false --mount=type=tmpfs,target=/tmp \
    set -eu; \
    if [ -s /run/secrets/extra_ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra_ca > /tmp/ca.pem; \
        export SSL_CERT_FILE=/tmp/ca.pem NODE_EXTRA_CA_CERTS=/tmp/ca.pem; \
    fi; \
    case "$(dpkg --print-architecture)" in \
        amd64) arch=x64; node_integrity="$NODE_INTEGRITY_X64" ;; \
        arm64) arch=arm64; node_integrity="$NODE_INTEGRITY_ARM64" ;; \
        *) echo "unsupported architecture: $(dpkg --print-architecture)" >&2; exit 1 ;; \
    esac; \
    registry="${NPM_REGISTRY%/}"; \
    fetch() { \
        python3 -c 'import base64, hashlib, sys, urllib.request; \
url, integrity, out = sys.argv[1:]; \
data = urllib.request.urlopen(url, timeout=600).read(); \
algo, _, want = integrity.partition("-"); \
got = base64.b64encode(hashlib.new(algo, data).digest()).decode(); \
sys.exit(f"{url}: integrity {algo}-{got}, expected {integrity}") if got != want else None; \
open(out, "wb").write(data)' "$@"; \
    }; \
    fetch "$registry/node-linux-$arch/-/node-linux-$arch-$NODE_VERSION.tgz" "$node_integrity" /tmp/node.tgz; \
    fetch "$registry/npm/-/npm-$NPM_VERSION.tgz" "$NPM_INTEGRITY" /tmp/npm.tgz; \
    mkdir -p /opt/node/bin /tmp/npm; \
    tar -xzf /tmp/node.tgz -C /tmp package/bin/node; \
    install -m 0755 --strip /tmp/package/bin/node /opt/node/bin/node; \
    tar -xzf /tmp/npm.tgz -C /tmp/npm --strip-components=1; \
    PATH="/opt/node/bin:$PATH" HOME=/tmp \
        node /tmp/npm/bin/npm-cli.js ci --omit=dev --no-audit --no-fund --loglevel=error \
        --registry "$registry/" --cache /tmp/npm-cache; \
    find node_modules -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' \
        -o -name '*.d.cts' \) -delete; \
    /opt/node/bin/node node_modules/windmill-cli/esm/main.js --help > /dev/null

# --- Python virtual environment from the lock file ----------------------------
FROM build-base AS python
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY requirements/runtime.txt /src/requirements/runtime.txt
RUN --mount=type=secret,id=extra_ca,required=false --mount=type=tmpfs,target=/tmp \
    set -eu; \
    if [ -s /run/secrets/extra_ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra_ca > /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-input \
        --index-url "$PIP_INDEX_URL" --require-hashes -r /src/requirements/runtime.txt
COPY pyproject.toml setup.cfg README.md /src/
COPY gitsync /src/gitsync
WORKDIR /src
# The project itself is built offline, by Debian's setuptools. Then the
# bytecode caches are made again for what the service imports only: the
# root filesystem is read-only, so those are the ones that count, and the
# rest (dulwich's porcelain and command line, pydantic's v1 shim, ...) would
# be some 7 MB of the image never read. Native extensions lose their debug
# symbols (PyYAML's alone are 2.3 MB).
RUN --mount=type=tmpfs,target=/tmp \
    set -eux; \
    python3 -c 'from setuptools import build_meta; build_meta.build_wheel("/tmp/dist")'; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-input \
        --no-index --no-deps /tmp/dist/*.whl; \
    /opt/venv/bin/pip uninstall --yes --quiet pip setuptools; \
    find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +; \
    find /opt/venv -name '*.so' -exec strip --strip-unneeded {} +; \
    /opt/venv/bin/python -c 'import importlib, pkgutil, gitsync; \
[importlib.import_module(m.name) for m in pkgutil.walk_packages(gitsync.__path__, "gitsync.") if not m.name.endswith("__main__")]; \
import waitress.channel, waitress.task, dulwich.dumb, dulwich.reflog'

# --- Runtime --------------------------------------------------------------------
FROM runtime-base
COPY --from=cli /opt/node/bin/node /usr/local/bin/node
COPY --from=cli /opt/windmill-git-sync /opt/windmill-git-sync
COPY --from=python /opt/venv /opt/venv
# TINI_SUBREAPER: zombies are still reaped when something else is PID 1 (docker run --init).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TINI_SUBREAPER=1 \
    DATA_DIR=/data \
    PORT=8080 \
    WMILL_CLI=/opt/windmill-git-sync/node_modules/windmill-cli/esm/main.js
# Numeric, so orchestrators can tell it is not root. The data volume must be
# writable by this uid: chown 10001 the host directory of a bind mount.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; h = os.environ.get('HOST') or '127.0.0.1'; h = '127.0.0.1' if h in ('0.0.0.0', '::') else h; h = '[' + h + ']' if ':' in h else h; urllib.request.urlopen('http://%s:%s/health' % (h, os.environ.get('PORT', '8080')), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["windmill-git-sync", "serve"]

# What the image is, as OCI annotations (docker inspect, registries); last, so
# a new version reuses every layer above. VERSION's default is setup.cfg's
# version (tests/test_version.py holds them equal), so a plain `docker build`
# is labelled right; CI passes SOURCE_URL and REVISION, the repository and
# commit it builds. Title, description and licence are setup.cfg's too.
ARG VERSION=0.1.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="windmill-git-sync" \
      org.opencontainers.image.description="Back up Windmill workspaces to any Git host over HTTPS, triggered by a webhook." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}"
