// Package haproxy holds the HAProxy configuration that `podium bench
// compare` renders for each side-by-side run (text/template, fields of
// bench.PeerConfig). Kept here, beside the other deployment files, so an
// operator can read exactly what Podium was compared against.
package haproxy

import _ "embed"

// Template is haproxy.cfg.tmpl.
//
//go:embed haproxy.cfg.tmpl
var Template string
