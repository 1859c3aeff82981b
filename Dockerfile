# syntax=docker/dockerfile:1
# kevents container image: a statically linked kevents (musl) on distroless static, as user 65534,
# with no shell and no package manager. The binary is built by scripts/static-build.sh, the script
# `make static` runs and the tests exercise (tests/static_binary.rs); kevents-lab is not shipped.
#   docker build -t kevents:dev .          (make image)
# Needs a Docker engine (BuildKit). The development machine of this repository has none.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/static-build.sh ./scripts/static-build.sh
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=kevents-target \
    ./scripts/static-build.sh --arch amd64 --out /out/kevents

# distroless static: CA certificates, /etc/passwd with nobody (65534), tzdata; nothing to exec.
# Pin it by digest in production (docker buildx imagetools inspect gcr.io/distroless/static-debian12).
FROM gcr.io/distroless/static-debian12 AS runtime
COPY --from=build /out/kevents /usr/local/bin/kevents
USER 65534:65534
EXPOSE 9102
ENTRYPOINT ["/usr/local/bin/kevents"]
CMD ["run", "--config", "/etc/kevents/kevents.yaml"]
