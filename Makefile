# chattermail: the same targets CI runs (.ci/run calls "make ci").
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

BIN      := $(CURDIR)/.bin
MODULES   = $(shell go list -m -f '{{.Dir}}')
SERVICES := ingest rewrite quota sender
GOTEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: all run build build-modules test vet fmt-check proto proto-check bench clean ci

all: build

## run: start the whole system locally (embedded NATS, every service, SMTP capture)
run:
	go run ./cmd/chattermail dev -config examples/dev.yaml

## build: build chattermail and every service into ./bin
build:
	@mkdir -p bin
	go build -o bin/chattermail ./cmd/chattermail
	@for s in $(SERVICES); do echo "go build -o bin/$$s ./services/$$s/cmd/$$s"; go build -o bin/$$s ./services/$$s/cmd/$$s; done

## test: formatting, vet, the proto staleness check and go test -race over every module
test: fmt-check vet proto-check build-modules
	@for d in $(MODULES); do echo "== go test $$d"; (cd $$d && go test $(GOTEST_FLAGS) ./...); done

## build-modules: every module builds on its own (GOWORK=off), as container builds do
build-modules:
	@for d in $(MODULES); do (cd $$d && GOWORK=off go build ./...); done

vet:
	@for d in $(MODULES); do (cd $$d && go vet ./...); done

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

$(BIN)/buf: tools/buf/go.mod tools/buf/go.sum
	cd tools/buf && GOWORK=off go build -o $(BIN)/buf github.com/bufbuild/buf/cmd/buf

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

## bench: end-to-end throughput and latency through the real pipeline
bench:
	cd cmd/chattermail && go test -run '^$$' -bench BenchmarkPipeline -benchtime 1x -count 5 -timeout 20m .

ci: test

clean:
	rm -rf bin .bin
