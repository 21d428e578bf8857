# Image of the chattermail command (cmd/chattermail): the operator tools
# (dkim keygen, domain check, quota status/set/clear, rewrite explain) and
# "chattermail dev". The build context is the repository root:
#
#   make images
#   docker build -f deploy/docker/chattermail.Dockerfile -t chattermail/chattermail .
#   docker run --rm chattermail/chattermail domain check --config /config/chattermail.yaml
#
# The module builds with GOWORK=off: its replace directives find every
# local module in the context. Static (CGO_ENABLED=0), runs as distroless
# "nonroot" (65532) in its home folder.
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM docker.io/library/golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ENV GOWORK=off CGO_ENABLED=0
WORKDIR /src
# Modules first: the download layer stays cached until a go.mod or go.sum changes.
COPY proto/go.mod proto/go.sum proto/
COPY platform/go.mod platform/go.sum platform/
COPY services/ingest/go.mod services/ingest/go.sum services/ingest/
COPY services/rewrite/go.mod services/rewrite/go.sum services/rewrite/
COPY services/quota/go.mod services/quota/go.sum services/quota/
COPY services/sender/go.mod services/sender/go.sum services/sender/
COPY cmd/chattermail/go.mod cmd/chattermail/go.sum cmd/chattermail/
RUN cd cmd/chattermail && go mod download
COPY proto/ proto/
COPY platform/ platform/
COPY services/ services/
COPY cmd/chattermail/ cmd/chattermail/
RUN cd cmd/chattermail && GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/chattermail .

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/chattermail /usr/local/bin/chattermail
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/chattermail"]
