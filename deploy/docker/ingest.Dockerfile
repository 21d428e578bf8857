# Image of the ingest service: HTTP API, NATS intake, fan-out, inbound SMTP
# (services/ingest/cmd/ingest). The build context is the repository root:
#
#   make images                      # every image, tagged $(IMAGE_REGISTRY)/<name>:$(IMAGE_TAG)
#   docker build -f deploy/docker/ingest.Dockerfile -t chattermail/ingest .
#
# The module builds with GOWORK=off: its replace directives find the local
# modules (platform, proto) in the context, as in the workspace. The binary
# is static (CGO_ENABLED=0) and runs as distroless "nonroot" (65532).
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM docker.io/library/golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ENV GOWORK=off CGO_ENABLED=0
WORKDIR /src
# Modules first: the download layer stays cached until a go.mod or go.sum changes.
COPY proto/go.mod proto/go.sum proto/
COPY platform/go.mod platform/go.sum platform/
COPY services/ingest/go.mod services/ingest/go.sum services/ingest/
RUN cd services/ingest && go mod download
COPY proto/ proto/
COPY platform/ platform/
COPY services/ingest/ services/ingest/
RUN cd services/ingest && GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/ingest ./cmd/ingest

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/ingest /usr/local/bin/ingest
USER 65532:65532
EXPOSE 9090 8080 2525
ENTRYPOINT ["/usr/local/bin/ingest"]
