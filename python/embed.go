// Package python holds the gantry_metrics Python package for Go code. The
// package lives here, beside its pyproject.toml, so that `pip install
// ./python` works; Go's embed cannot reach a parent directory, so this file
// embeds it for agent/pyhelper, which ships it to every job.
package python

import "embed"

// PackageName is the Python package's import name, and its directory in
// Package.
const PackageName = "gantry_metrics"

// Package holds the package's modules, gantry_metrics/*.py: no tests, no
// build or bytecode files. (A glob, unlike a directory, also takes
// __init__.py; TestEmbedsEveryModule catches a module the glob misses.)
//
//go:embed gantry_metrics/*.py
var Package embed.FS
