# syntax=docker/dockerfile:1
# The controller and the proxy image: `sandbox-controller serve` (default) or `... proxy`.

# Build stage: wheels for the project and every dependency, so the runtime stage needs
# no compiler and no network.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
# A numeric uid, so the kubelet can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --gid 10001 sandbox \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sandbox \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/agent-sandbox/snapshots
# ^ the mount point of the snapshot store's volume (Compose): a new named volume takes
# its owner from here, so the controller (uid 10001) can write its archives.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["sandbox-controller"]
CMD ["serve"]
