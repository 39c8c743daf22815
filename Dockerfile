# syntax=docker/dockerfile:1
# Build stage: the Rust toolchain plus cmake (pingora builds zlib-ng with it).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin portcullis --example echo_upstream \
 && cp target/release/portcullis target/release/examples/echo_upstream /usr/local/bin/

# Runtime stage: a small Debian with only the binaries, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin portcullis \
 && mkdir -p /data /etc/portcullis && chown portcullis /data
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/echo_upstream /usr/local/bin/
COPY config/default.toml /etc/portcullis/portcullis.toml
ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml \
    PORTCULLIS_DATA_DIR=/data \
    PORTCULLIS_SERVER__LISTEN=0.0.0.0:8000 \
    PORTCULLIS_SERVER__ADMIN_LISTEN=0.0.0.0:9400
USER portcullis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000 9400
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["portcullis", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["serve"]
