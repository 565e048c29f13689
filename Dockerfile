# Builds the three gpuq binaries (gpuq, gpuq-dispatcher, gpuq-worker) into one image.
# For real GPU hosts, base the runtime stage on an nvidia/cuda runtime image and run
# with the NVIDIA container toolkit (`--gpus all`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release --workspace --bins \
 && mkdir -p /out \
 && cp target/release/gpuq target/release/gpuq-dispatcher target/release/gpuq-worker /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY config/gpuq.example.toml /etc/gpuq/gpuq.toml
ENV GPUQ_CONFIG=/etc/gpuq/gpuq.toml
# The dispatcher finds gpuq-worker next to itself.
ENTRYPOINT ["/usr/local/bin/gpuq-dispatcher"]
