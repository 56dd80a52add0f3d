package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// Output formats of the read commands' -o flag.
const (
	outTable = "table"
	outJSON  = "json"
	outYAML  = "yaml"
)

// addOutputFlag registers -o/--output on a read command; what a command
// writes for json and yaml is the API's own object, so scripts can rely
// on docs/ARCHITECTURE.md's field names.
func addOutputFlag(cmd *cobra.Command, p *string, what string) {
	cmd.Flags().StringVarP(p, "output", "o", outTable, "table, json or yaml ("+what+")")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(
		[]string{outTable, outJSON, outYAML}, cobra.ShellCompDirectiveNoFileComp))
}

// checkOutput refuses an unknown -o value before anything is asked of the
// controller.
func checkOutput(format string) error {
	switch format {
	case outTable, outJSON, outYAML:
		return nil
	}
	return &exitError{code: exitUsage, err: fmt.Errorf("--output %q: want table, json or yaml", format)}
}

// writeData writes v as indented JSON or as YAML. YAML is made from the
// JSON encoding, so that both have the API's field names (the apiv1 types
// carry json tags only) and keys in the same order.
func writeData(w io.Writer, format string, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // "<" in a log line stays "<"
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode %s: %w", format, err)
	}
	if format == outJSON {
		_, err := w.Write(buf.Bytes())
		return err
	}
	// JSON is YAML: parsed into a node tree it keeps its key order; the
	// flow style JSON has is cleared so that the encoder writes block YAML
	// (quoting strings only where a plain scalar would read otherwise).
	var doc yaml.Node
	if err := yaml.Unmarshal(buf.Bytes(), &doc); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	blockStyle(&doc)
	ye := yaml.NewEncoder(w)
	ye.SetIndent(2)
	if err := ye.Encode(&doc); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	return ye.Close()
}

func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}
