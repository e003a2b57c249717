# The project's devsandbox as a sandbox image for SANDBOX_BACKEND=docker (and the image the
# Compose file runs the controller and proxy from: the same package, another command).
# Build from the repository root:
#   docker build -f deploy/docker/devsandbox.Dockerfile -t agent-sandbox/devsandbox:dev .
# The tests build it on a local Debian base with the dependencies already in it
# (scripts/build-images.sh), so nothing is fetched.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=agent-sandbox-devsandbox
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md /src/
COPY sandbox_controller /src/sandbox_controller
COPY proxy /src/proxy
RUN pip install --no-cache-dir --no-build-isolation /src && rm -rf /src \
    && install -d -m 1777 /workspace \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/agent-sandbox/snapshots
# ^ as the controller's image, the mount point of the snapshot store's volume (Compose):
# a new named volume takes its owner from here, so the controller can write archives.
# Numeric, so a runtime can check non-root without reading /etc/passwd; HOME is in the
# writable workspace because the backend mounts the root filesystem read-only. Docker
# gives that tmpfs the mode of the image's own /workspace (not its owner): 1777.
USER 10001:10001
ENV HOME=/workspace
WORKDIR /workspace
EXPOSE 8080
CMD ["python", "-m", "sandbox_controller.devsandbox", "--host", "0.0.0.0", "--port", "8080", "--workdir", "/workspace"]
