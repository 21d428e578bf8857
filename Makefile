# chattermail: the same targets CI runs (.ci/run calls "make ci").
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

BIN      := $(CURDIR)/.bin
MODULES   = $(shell go list -m -f '{{.Dir}}')
SERVICES := ingest rewrite quota sender
GOTEST_FLAGS ?= -race -count=1 -timeout 15m
# The chart's test module runs in helm-check (with helm built first), not twice.
TEST_MODULES  = $(filter-out $(CURDIR)/deploy/helm/test,$(MODULES))

# The Helm chart and the values files helm-check lints and renders.
HELM_CHART  := deploy/helm/chattermail
HELM_VALUES := $(sort $(wildcard deploy/helm/values/*.yaml))
# APIs of optional operators, so the ServiceMonitor and ScaledObject render.
HELM_API_VERSIONS := --api-versions monitoring.coreos.com/v1 --api-versions keda.sh/v1alpha1

# Container images (deploy/docker/<name>.Dockerfile, context: the repository root).
IMAGES           := $(SERVICES) chattermail
IMAGE_REGISTRY   ?= ghcr.io/chattermail
IMAGE_TAG        ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)

.PHONY: all run build build-modules test vet fmt-check proto proto-check bench clean ci helm-check images

all: build

## run: start the whole system locally (embedded NATS, every service, SMTP capture)
run:
	go run ./cmd/chattermail dev -config examples/dev.yaml

## build: build chattermail and every service into ./bin
build:
	@mkdir -p bin
	go build -o bin/chattermail ./cmd/chattermail
	@for s in $(SERVICES); do echo "go build -o bin/$$s ./services/$$s/cmd/$$s"; go build -o bin/$$s ./services/$$s/cmd/$$s; done

## test: formatting, vet, the proto staleness check, the Helm chart (helm-check) and go test -race over every module
test: fmt-check vet proto-check build-modules helm-check
	@for d in $(TEST_MODULES); do echo "== go test $$d"; (cd $$d && go test $(GOTEST_FLAGS) ./...); done

## helm-check: helm lint --strict and helm template over every values file, then the chart's Go test (deploy/helm/test)
helm-check: $(BIN)/helm
	@for v in $(HELM_VALUES); do \
	  echo "== helm lint --strict / helm template -f $$v"; \
	  $(BIN)/helm lint --strict --quiet $(HELM_CHART) -f $$v; \
	  $(BIN)/helm template chattermail $(HELM_CHART) --namespace chattermail -f $$v $(HELM_API_VERSIONS) >/dev/null; \
	done
	cd deploy/helm/test && HELM=$(BIN)/helm go test -count=1 -timeout 5m ./...

## images: build the image of every service and of the chattermail CLI with docker or podman (CONTAINER_ENGINE, IMAGE_REGISTRY, IMAGE_TAG)
images:
	@test -n "$(CONTAINER_ENGINE)" || { echo "images: neither docker nor podman found; set CONTAINER_ENGINE"; exit 1; }
	@for i in $(IMAGES); do \
	  echo "$(CONTAINER_ENGINE) build -f deploy/docker/$$i.Dockerfile -t $(IMAGE_REGISTRY)/$$i:$(IMAGE_TAG) ."; \
	  $(CONTAINER_ENGINE) build --build-arg VERSION=$(IMAGE_TAG) -f deploy/docker/$$i.Dockerfile -t $(IMAGE_REGISTRY)/$$i:$(IMAGE_TAG) . ; \
	done

## build-modules: every module builds on its own (GOWORK=off), as container builds do
build-modules:
	@for d in $(MODULES); do (cd $$d && GOWORK=off go build ./...); done

vet:
	@for d in $(MODULES); do (cd $$d && go vet ./...); done

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

$(BIN)/buf: tools/buf/go.mod tools/buf/go.sum
	cd tools/buf && GOWORK=off go build -o $(BIN)/buf github.com/bufbuild/buf/cmd/buf

# helm, from the Go module proxy at the version pinned in tools/helm/go.mod,
# with the ldflags of helm's own release builds: its version, and the
# Kubernetes version (that of its client-go) that "helm template" and
# "helm lint" assume.
$(BIN)/helm: tools/helm/go.mod tools/helm/go.sum
	cd tools/helm && v=$$(GOWORK=off go list -m -f '{{.Version}}' helm.sh/helm/v3) && \
	k=$$(GOWORK=off go list -m -f '{{.Version}}' k8s.io/client-go) && k=$${k#v0.} && k=$${k%%.*} && \
	GOWORK=off CGO_ENABLED=0 go build -trimpath -o $(BIN)/helm \
	  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$$v \
	    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$$k \
	    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$$k" \
	  helm.sh/helm/v3/cmd/helm

.bin/helm: $(BIN)/helm

$(BIN)/protoc-gen-go: proto/go.mod
	cd proto && GOWORK=off go build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go

## proto: lint and regenerate the Go code from proto/
proto: $(BIN)/buf $(BIN)/protoc-gen-go
	cd proto && PATH=$(BIN):$$PATH buf lint && PATH=$(BIN):$$PATH buf generate

## proto-check: fail when the checked-in generated code is stale or lint fails
proto-check: $(BIN)/buf $(BIN)/protoc-gen-go
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cd proto && PATH=$(BIN):$$PATH buf lint && PATH=$(BIN):$$PATH buf generate -o $$tmp && \
	for f in $$(cd $$tmp && find . -name '*.pb.go'); do \
	  diff -u $$f $$tmp/$$f >/dev/null || { echo "proto: $$f is stale; run make proto"; diff -u $$f $$tmp/$$f | head -20; exit 1; }; \
	done; echo "proto: generated code is up to date"

## bench: end-to-end throughput and latency through the real pipeline, then the sender alone (DKIM RSA-2048/Ed25519/none, with and without connection reuse) and the cost of one DKIM signature
bench:
	cd cmd/chattermail && go test -run '^$$' -bench BenchmarkPipeline -benchtime 1x -count 5 -timeout 20m .
	cd services/sender && go test -run '^$$' -bench 'BenchmarkSender' -benchtime 1x -count 5 -timeout 20m .
	cd services/sender && go test -run '^$$' -bench 'BenchmarkSign' -count 5 -timeout 10m .

ci: test

clean:
	rm -rf bin .bin
