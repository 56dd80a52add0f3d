// Package baseline holds the raw-limit micro-benchmarks that `make bench`
// sets beside Gantry's hot-path benchmarks: the same work done with the
// plain library underneath (encoding/json for parsing and encoding, bbolt
// for the spool and the store), so each hot path's ns/op and allocs/op come
// with the cost of the floor it is built on. The benchmarks are in
// baseline_test.go; this package has no other code.
package baseline
