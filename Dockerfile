# syntax=docker/dockerfile:1
# One image for both components:
#   controller:  cinder-csi controller ...   (runs as the default user 10001)
#   node plugin: cinder-csi node ...         (the DaemonSet runs it as root, privileged)
#
# Build:  docker build -t registry.example.com/cinder-csi:0.1.0 .
# For releases, pin the base image by digest too: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: build the project's wheel and install it, with its dependencies, into /opt/venv.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (pyproject's readme is README.md).
COPY pyproject.toml README.md ./
COPY cinder_csi ./cinder_csi

# The generated CSI stubs (cinder_csi/csi/*_pb2*.py) are committed, so the build needs no
# protoc. Dependencies come as manylinux wheels: no compiler in this stage either.
RUN python -m venv /opt/venv \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && /opt/venv/bin/pip install --no-cache-dir /dist/cinder_csi-*.whl \
    && /opt/venv/bin/cinder-csi version

# ---------------------------------------------------------------------------------------
# final: the runtime and the node plugin's host tools, nothing to build with.
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cinder-csi" \
      org.opencontainers.image.description="CSI driver and provisioner for OpenStack Cinder, drop-in compatible with cinder.csi.openstack.org" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="cinder-csi" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# Host tools of the node plugin: mkfs.ext4/ext3 + resize2fs (e2fsprogs), mkfs.xfs +
# xfs_growfs (xfsprogs), blkid/blockdev/losetup (util-linux; mount/umount come with the
# base image), udevadm (udev).
# DL3008: versions are not pinned on purpose. Debian replaces the bookworm versions with each
# security update and drops the old ones from the mirror, so a pinned list breaks the build
# within weeks; reproducibility comes from the pinned base image instead, and a rebuild
# picks up security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends e2fsprogs xfsprogs util-linux udev \
    && rm -rf /var/lib/apt/lists/*

# The unprivileged default user (the controller Deployment also asks for 10001).
RUN groupadd --system --gid 10001 cinder-csi \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin cinder-csi

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001

# Kubernetes uses the manifests' liveness probes (/healthz on --http-endpoint), which only
# exist when that flag is given; a Docker HEALTHCHECK could not know the port and would be
# ignored by kubelet anyway.
HEALTHCHECK NONE

ENTRYPOINT ["cinder-csi"]
CMD ["--help"]
