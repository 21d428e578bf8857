# Image of the sender service: MIME, DKIM, SMTP delivery
# (services/sender/cmd/sender). The build context is the repository root:
#
#   make images                      # every image, tagged $(IMAGE_REGISTRY)/<name>:$(IMAGE_TAG)
#   docker build -f deploy/docker/sender.Dockerfile -t chattermail/sender .
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
COPY services/sender/go.mod services/sender/go.sum services/sender/
RUN cd services/sender && go mod download
COPY proto/ proto/
COPY platform/ platform/
COPY services/sender/ services/sender/
RUN cd services/sender && GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w" -o /out/sender ./cmd/sender

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/sender /usr/local/bin/sender
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/sender"]
