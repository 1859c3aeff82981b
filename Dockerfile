# syntax=docker/dockerfile:1
# kevents container image: a statically linked kevents (musl) on distroless static, as user 65534,
# with no shell and no package manager, for linux/amd64 and linux/arm64. The binary is built by
# scripts/static-build.sh, the script `make static` runs and the tests exercise
# (tests/static_binary.rs); kevents-lab is not shipped.
#   docker build -t kevents:dev .          (make image: this machine's platform)
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/kevents:<tag> --push .
# The build stage runs on the builder's own platform and cross-compiles for the target one, so no
# stage runs under emulation. Needs a Docker engine (BuildKit); the development machine of this
# repository has none.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG BUILDARCH
# musl-gcc compiles ring's C and assembly for the builder's own architecture; Debian's cross gcc
# with its headers for the other one (see scripts/static-build.sh).
RUN case "$BUILDARCH" in \
        amd64) cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
        arm64) cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
        *) echo "unsupported build platform: $BUILDARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools $cross \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other members (test kit, lab) must be present for cargo to read the workspace;
# only the product is built.
COPY testkit ./testkit
COPY lab ./lab
COPY scripts/static-build.sh ./scripts/static-build.sh
# The execution profile the script lays the binary out by (scripts/pgo-profile.sh makes it).
COPY pgo ./pgo
# amd64 or arm64: the platform the image is for. Declared here so the layers above are shared.
ARG TARGETARCH
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=kevents-target \
    ./scripts/static-build.sh --arch "$TARGETARCH" --out /out/kevents

# distroless static: CA certificates, /etc/passwd with nobody (65534), tzdata; nothing to exec.
# Pin it by digest in production (docker buildx imagetools inspect gcr.io/distroless/static-debian12).
FROM gcr.io/distroless/static-debian12 AS runtime
COPY --from=build /out/kevents /usr/local/bin/kevents
USER 65534:65534
EXPOSE 9102
ENTRYPOINT ["/usr/local/bin/kevents"]
CMD ["run", "--config", "/etc/kevents/kevents.yaml"]
