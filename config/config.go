// Package config is the YAML schema of the Podium edge: its defaults, in one
// place each, and validation whose errors name the file, the line and the key
// and say what is allowed (edge.yaml:14: healthcheck.interval: must be > 0,
// got 0s).
//
// The package is a leaf but for waitroom, whose parsers (room paths, key
// files) it uses so that a bad value is refused with its file and line; it
// imports nothing else of Podium's.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written in YAML as a Go duration string
// ("500ms", "2s", "1m30s"). A bare number is refused: "2" could mean
// seconds or nanoseconds, and a config is no place to guess.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: want a duration such as \"2s\"", n.Line)}}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration: use a number with a unit, such as \"500ms\" or \"2s\"", n.Line, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler, so /config shows "2s", not 2000000000.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// Error is a list of problems found in one config file. It is the error
// Load and LoadFile return for a config that parses but does not validate,
// so callers can show every problem at once instead of one per edit.
type Error struct {
	File     string
	Problems []Problem
}

// Problem is one invalid key.
type Problem struct {
	Line int    // 1-based line in the file, 0 when the key is absent
	Key  string // dotted path: healthcheck.interval, routes[2].match.path
	Msg  string // what is wrong and what is allowed
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		fmt.Fprintf(&b, ": %s: %s", p.Key, p.Msg)
	}
	return b.String()
}

// validator collects problems, finding each key's line in the parsed tree.
type validator struct {
	root *yaml.Node
	// dir is the config file's directory, which relative file names in
	// it (a waiting room's key_file) are read from; "" for a config not
	// loaded from a file.
	dir      string
	problems []Problem
}

// addf records a problem for the dotted key path. Keys of list items are
// written name[i] and looked up by index.
func (v *validator) addf(key, format string, args ...any) {
	v.problems = append(v.problems, Problem{Line: lineOf(v.root, key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// lineOf finds the line of a dotted key such as "routes[1].match.path" in a
// document node; when the key itself is absent it returns the line of its
// nearest present parent, and 0 when nothing of it is present.
func lineOf(root *yaml.Node, key string) int {
	if root == nil {
		return 0
	}
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(key, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			fmt.Sscanf(part[i+1:len(part)-1], "%d", &idx)
		}
		next := mappingValue(n, name)
		if next == nil {
			return line
		}
		line = keyLine(n, name)
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func keyLine(n *yaml.Node, key string) int {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i].Line
		}
	}
	return 0
}

// decodeStrict parses data into out and returns the document tree as well,
// for line lookups. Unknown keys are errors: a typo such as "intreval"
// must not silently leave the default in force.
//
// before, if set, sees the parsed tree first: a map the file sets replaces
// the default map instead of merging into it.
func decodeStrict(file string, data []byte, out any, before func(root *yaml.Node)) (*yaml.Node, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("parsing YAML file %s: %w", file, cleanYAMLError(err))
	}
	if before != nil && len(root.Content) > 0 {
		before(root.Content[0])
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return &root, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		return nil, fmt.Errorf("parsing YAML file %s: %w", file, cleanYAMLError(err))
	}
	return &root, nil
}

// cleanYAMLError rewrites yaml.v3's messages ("line 3: field foo not found in
// type config.rawEdge") into ones that speak of the file rather than of Go.
func cleanYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		if i := strings.Index(m, " not found in type "); i >= 0 {
			m = strings.Replace(m[:i], "field ", "unknown key ", 1) + " (check the spelling against the schema in README)"
		}
		m = strings.ReplaceAll(m, "!!str", "string")
		msgs = append(msgs, m)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// readFile reads a config file with an error that says what to do.
func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return data, nil
}
