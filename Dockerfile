# syntax=docker/dockerfile:1.7
#
# Images for `courier` (the proxy) and `courier-cp` (the bundled xDS control plane), one target each:
#
#   docker build --target courier    --build-arg COURIER_GIT_REV="$(git rev-parse --short=12 HEAD)" -t courier .
#   docker build --target courier-cp --build-arg COURIER_GIT_REV="$(git rev-parse --short=12 HEAD)" -t courier-cp .
#
# `courier-debug` / `courier-cp-debug` add busybox (sh, wget) for debugging and the chart's
# `drain.mode: admin` preStop hook. `.git` is not in the build context (.dockerignore): the git
# revision that `--version` and /server_info show comes from the COURIER_GIT_REV build-arg, which
# the binaries' build.rs reads ("unknown" without it).
#
# glibc match: the builder is Debian 12 bookworm (glibc 2.36) and the runtime is distroless
# cc-debian12 (bookworm's glibc, libgcc_s, ca-certificates), running as uid/gid 65532 (nonroot).

ARG RUST_VERSION=1.95
ARG DISTROLESS=gcr.io/distroless/cc-debian12

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
ARG COURIER_GIT_REV=""
ENV COURIER_GIT_REV=${COURIER_GIT_REV} \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
COPY . .
# The registry and target caches only speed up rebuilds; the binaries are copied out of the cache
# mount into /out so that the next stages can COPY them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin courier --bin courier-cp \
 && mkdir -p /out \
 && cp target/release/courier target/release/courier-cp /out/ \
 && /out/courier --version \
 && /out/courier-cp --version

FROM ${DISTROLESS}:nonroot AS courier
COPY --from=build /out/courier /usr/local/bin/courier
USER 65532:65532
# 9901 admin (the chart binds it to loopback), 19001 the chart's ready listener, 10000 a listener.
EXPOSE 9901 19001 10000
ENTRYPOINT ["/usr/local/bin/courier"]
CMD ["-c", "/etc/courier/bootstrap.yaml"]

FROM ${DISTROLESS}:nonroot AS courier-cp
COPY --from=build /out/courier-cp /usr/local/bin/courier-cp
USER 65532:65532
EXPOSE 18000 18001
ENTRYPOINT ["/usr/local/bin/courier-cp"]
CMD ["--listen", "0.0.0.0:18000", "--resources", "/etc/courier-cp/resources.yaml", "--admin", "0.0.0.0:18001"]

FROM ${DISTROLESS}:debug-nonroot AS courier-cp-debug
COPY --from=build /out/courier-cp /usr/local/bin/courier-cp
USER 65532:65532
EXPOSE 18000 18001
ENTRYPOINT ["/usr/local/bin/courier-cp"]
CMD ["--listen", "0.0.0.0:18000", "--resources", "/etc/courier-cp/resources.yaml", "--admin", "0.0.0.0:18001"]

FROM ${DISTROLESS}:debug-nonroot AS courier-debug
COPY --from=build /out/courier /usr/local/bin/courier
USER 65532:65532
EXPOSE 9901 19001 10000
ENTRYPOINT ["/usr/local/bin/courier"]
CMD ["-c", "/etc/courier/bootstrap.yaml"]

# The last stage is what a plain `docker build .` produces: the proxy.
FROM courier
