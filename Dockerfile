# syntax=docker/dockerfile:1
# One image, three binaries: dedupe-admission (the webhook Deployment), dedupe-pruner (the
# CronJob), and dedupe-claims (the operators' CLI, run in the webhook's pod with `kubectl exec`
# or the kubectl-dedupe plugin). The Helm chart runs each by its path under /usr/local/bin.
#
#   docker build -t ghcr.io/proompteng/orchestration-dedupe:0.1.0 .

# Build: the toolchain the project is built and tested with (workspace MSRV 1.89), on
# Debian bookworm: the same glibc as the runtime image below.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The commit orchestration_dedupe_build_info reports (.dockerignore keeps .git out of the
# context, so pass it; `unknown` otherwise):
#   docker build --build-arg DEDUPE_BUILD_COMMIT=$(git rev-parse --short HEAD) .
ARG DEDUPE_BUILD_COMMIT=
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dedupe-admission -p dedupe-pruner -p dedupe-claims \
 && install -D -m 0755 target/release/dedupe-admission /out/dedupe-admission \
 && install -D -m 0755 target/release/dedupe-pruner /out/dedupe-pruner \
 && install -D -m 0755 target/release/dedupe-claims /out/dedupe-claims

# Run: distroless (glibc, libgcc, CA certificates; no shell, no package manager), non-root.
# The binaries use rustls with ring: no OpenSSL needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dedupe-admission /usr/local/bin/dedupe-admission
COPY --from=build /out/dedupe-pruner /usr/local/bin/dedupe-pruner
COPY --from=build /out/dedupe-claims /usr/local/bin/dedupe-claims
# Numeric, so the kubelet can check runAsNonRoot; the chart runs as the same 65532.
USER 65532:65532
EXPOSE 10250 9090
ENTRYPOINT ["/usr/local/bin/dedupe-admission"]
