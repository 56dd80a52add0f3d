# Gantry — run `make demo` to see it work, `make test` to check it.
GO        ?= go
BIN       := $(CURDIR)/bin
# The protoc that generated the committed proto/gantrypb (Debian bookworm's
# protobuf-compiler). Its version is written into the generated header, so
# with another protoc CI's diff check would fail on the header alone, or a
# real difference would hide among header changes: make proto refuses it.
PROTOC_VERSION := 3.21.12
# go-nvml's C headers use deprecated declarations; their warnings are noise.
export CGO_CFLAGS ?= -O2 -Wno-deprecated-declarations
# Each target checks every module as committed, with its own go.mod and
# go.sum: a developer's go.work would merge their build lists and hide a
# stale go.mod.
export GOWORK := off

# The repository's Go modules. The benchmark (and, inside it, the log-store
# comparison) and the end-to-end tests have their own go.mod so that their
# dependencies (MQTT and Raft-store peers, chromedp) stay out of the
# product's build graph; `go test ./...` at the root covers the root module
# only, so the targets below visit each module.
MODULES := . bench bench/logstore e2e

.PHONY: all build test test-deps unit e2e lint demo proto bench clean dashboard-vendor

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The README's test command: check what the tests need, and as root install
# what is missing (scripts/test-deps.sh; anyone else gets the list and the
# apt-get line, and no test runs), lint, then every test with the race
# detector. A failing module does not stop the others: every failure is
# reported. Lint runs from the recipe, not as a prerequisite, so that even
# under make -j it starts only once the tools are known to be there.
test: test-deps
	@$(MAKE) --no-print-directory lint
	fail=0; for m in $(MODULES); do \
	  echo "== $$m"; (cd $$m && $(GO) test -race -count=1 -timeout 20m ./...) || fail=1; \
	done; exit $$fail

# As root: install what the tests need. Otherwise: say what is missing.
# (scripts/test-deps.sh --check only ever checks.)
test-deps:
	./scripts/test-deps.sh

unit:
	fail=0; for m in $(MODULES); do \
	  echo "== $$m"; (cd $$m && $(GO) test -race -count=1 -short ./...) || fail=1; \
	done; exit $$fail

e2e:
	cd e2e && $(GO) test -race -count=1 -v -timeout 15m ./...

# gofmt over every tracked file (all modules); go vet and a tidy go.mod
# and go.sum in each module.
lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$bad" ]; then echo "gofmt needed on:"; echo "$$bad"; exit 1; fi
	@# A module missing from MODULES would go untested and unlinted.
	@found=$$(git ls-files go.mod '*/go.mod' | xargs -n1 dirname | sort); \
	want=$$(printf '%s\n' $(MODULES) | sort); \
	if [ "$$found" != "$$want" ]; then \
	  echo "MODULES ($(MODULES)) differs from the tracked go.mod files' directories:" $$found; exit 1; fi
	fail=0; for m in $(MODULES); do \
	  (cd $$m && $(GO) vet ./...) || fail=1; \
	  (cd $$m && $(GO) mod tidy -diff) || { echo "$$m: go.mod/go.sum not tidy: run go mod tidy there"; fail=1; }; \
	done; exit $$fail

demo: build
	./scripts/demo.sh

# Gantry measured against its raw limits (bbolt, raft) and real peers (etcd,
# Mosquitto) on real processes; writes bench/results.md and bench/results.json.
# Not part of CI. Installs the peers from Debian when missing.
# BENCH_QUICK=1: ~1-minute smoke run; BENCH_SCALE=N: N× sizes and durations.
bench: build
	./bench/install-peers.sh
	cd bench && $(GO) build -o $(BIN)/gantry-bench ./cmd/gantry-bench
	$(BIN)/gantry-bench -bin $(BIN) -out bench

# Regenerate the committed protobuf code with protoc $(PROTOC_VERSION) and
# protoc-gen-go built inside the root module, so at the version go.mod pins
# for the runtime library and checked against go.sum.
proto:
	@have=$$(protoc --version 2>/dev/null); \
	if [ "$$have" != "libprotoc $(PROTOC_VERSION)" ]; then \
	  echo "make proto: needs protoc $(PROTOC_VERSION) (Debian bookworm's protobuf-compiler), found: $${have:-no protoc on PATH}" >&2; \
	  exit 1; \
	fi
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	protoc -I proto --plugin=protoc-gen-go=$(BIN)/protoc-gen-go \
		--go_out=proto/gantrypb --go_opt=paths=source_relative proto/gantry.proto

# Refresh the dashboard's vendored browser code (uPlot) from the versions
# controller/dashboard/web/package-lock.json pins: npm ci checks each
# tarball against the lockfile's integrity hash, then web/vendor.mjs copies
# the files into the embedded assets and records their SHA-256 in
# controller/dashboard/vendor.json. Commit all three; go build and make test
# need no npm (TestVendoredFilesMatchLockfile checks they agree). To move to
# another uPlot: npm install --save-exact uplot@X in web/, then this target.
dashboard-vendor:
	cd controller/dashboard/web && npm ci --no-audit --no-fund && node vendor.mjs

clean:
	rm -rf $(BIN)
