package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/gantry-ml/gantry/controller/apiv1"
)

// maxSpecBytes bounds a spec file; a job spec is a few lines, and reading a
// multi-gigabyte file passed by mistake would only hang the CLI.
const maxSpecBytes = 1 << 20

// ParseSpec reads a YAML job spec. Unknown keys are errors, so a typo such
// as "max_durration" fails here instead of silently running without a limit.
// Durations accept "30s", "1h30m" or a number of seconds (apiv1.Duration's
// yaml.v2-style unmarshaler, which yaml/v3 still honours).
func ParseSpec(data []byte) (apiv1.JobSpec, error) {
	f, err := parseSpecFile(data)
	return f.JobSpec, err
}

// specFile is a spec file: the API's spec plus what only the CLI reads.
type specFile struct {
	apiv1.JobSpec `yaml:",inline"`
	// Code is the local directory shipped as the job's code, relative to
	// the spec file; "none" ships nothing. Unset: the spec file's
	// directory, unless workdir names an absolute path on the host.
	Code *string `yaml:"code"`
}

func parseSpecFile(data []byte) (specFile, error) {
	var spec specFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&spec); err != nil {
		if errors.Is(err, io.EOF) {
			return specFile{}, errors.New("spec is empty")
		}
		return specFile{}, explainSpecError(err, reflect.TypeOf(spec))
	}
	// A second document would be ignored by the server; say so instead.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return specFile{}, errors.New("spec holds more than one YAML document")
	}
	return spec, nil
}

// LoadSpec reads and parses the spec file at path. A spec without a name
// is named after its file ("train.yaml" → "train"), so `gantry ps` shows
// something recognisable.
func LoadSpec(path string) (apiv1.JobSpec, error) {
	f, err := loadSpecFile(path)
	return f.JobSpec, err
}

func loadSpecFile(path string) (specFile, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return specFile{}, fmt.Errorf("spec file %s: no such file", path)
	}
	if err != nil {
		return specFile{}, fmt.Errorf("read spec: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSpecBytes+1))
	if err != nil {
		return specFile{}, fmt.Errorf("read spec %s: %w", path, err)
	}
	if len(data) > maxSpecBytes {
		return specFile{}, fmt.Errorf("spec %s is larger than %d bytes", path, maxSpecBytes)
	}
	spec, err := parseSpecFile(data)
	if err != nil {
		return specFile{}, fmt.Errorf("spec %s: %w", path, err)
	}
	if spec.Name == "" {
		base := filepath.Base(path)
		spec.Name = strings.TrimSuffix(base, filepath.Ext(base))
	}
	return spec, nil
}
