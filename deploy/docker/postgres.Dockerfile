# Only for the tests, which have no registry: Debian's PostgreSQL with an entry point that
# honours the official image's POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB and PGDATA.
# A deployment uses the official image (deploy/compose/docker-compose.yml: POSTGRES_IMAGE).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
RUN install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
USER postgres
EXPOSE 5432
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint"]
