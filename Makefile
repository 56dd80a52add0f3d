# Gantry — run `make demo` to see it work, `make test` to check it.
GO        ?= go
BIN       := $(CURDIR)/bin
PROTO_GEN := $(shell $(GO) list -m -f '{{.Version}}' google.golang.org/protobuf 2>/dev/null)
# go-nvml's C headers use deprecated declarations; their warnings are noise.
export CGO_CFLAGS ?= -O2 -Wno-deprecated-declarations

.PHONY: all build test unit e2e lint demo proto bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The README's test command: lint, then every test with the race detector.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...

unit:
	$(GO) test -race -count=1 -short ./...

e2e:
	$(GO) test -race -count=1 -v -timeout 15m ./e2e/...

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$bad" ]; then echo "gofmt needed on:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

demo: build
	./scripts/demo.sh

# Gantry measured against its raw limits (bbolt, raft) and real peers (etcd,
# Mosquitto) on real processes; writes bench/results.md and bench/results.json.
# Not part of CI. Installs the peers from Debian when missing.
# BENCH_QUICK=1: ~1-minute smoke run; BENCH_SCALE=N: N× sizes and durations.
bench: build
	./bench/install-peers.sh
	$(GO) build -o $(BIN)/gantry-bench ./bench/cmd/gantry-bench
	$(BIN)/gantry-bench -bin $(BIN) -out bench

# Regenerate the committed protobuf code with protoc (Debian's
# protobuf-compiler) and protoc-gen-go at the go.mod version.
proto:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTO_GEN)
	protoc -I proto --plugin=protoc-gen-go=$(BIN)/protoc-gen-go \
		--go_out=proto/gantrypb --go_opt=paths=source_relative proto/gantry.proto

clean:
	rm -rf $(BIN)
