// Package nginx holds the nginx configuration that `podium bench compare`
// renders for each side-by-side run (text/template, fields of
// bench.PeerConfig). Kept here, beside the other deployment files, so an
// operator can read exactly what Podium was compared against.
package nginx

import _ "embed"

// Template is nginx.conf.tmpl.
//
//go:embed nginx.conf.tmpl
var Template string
