# The Compose deployment's egress guard: iptables and deploy/docker/egress-guard.sh.
# Build from deploy/docker:  docker build -f egress-guard.Dockerfile -t agent-sandbox/egress-guard .
# (The tests build it on their local Debian base; BASE_IMAGE says which.)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN command -v iptables >/dev/null 2>&1 || { apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*; }
COPY egress-guard.sh /usr/local/bin/egress-guard
ENTRYPOINT ["sh", "/usr/local/bin/egress-guard"]
