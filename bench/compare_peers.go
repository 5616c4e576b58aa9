package bench

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"text/template"

	"github.com/podium-edge/podium/deploy/haproxy"
	"github.com/podium-edge/podium/deploy/nginx"
)

//go:embed podium-edge.yaml.tmpl
var podiumTemplate string

// PeerConfig is what every config template is rendered from.
type PeerConfig struct {
	// OneClient is set when all the load comes from one address with no
	// X-Forwarded-For (wrk): Podium's template then drops its per-client
	// limit on GETs, which HAProxy's and nginx's configs do not have.
	OneClient   bool
	Listen      string
	Admin       string
	Upstreams   []string
	Connections int
	Dir         string // a scratch directory the proxy may write in
	// User is the user and group ("root root") a proxy started as root
	// should keep for its workers; empty when not root.
	User string
}

// startProxy renders target's config and starts it on the proxy CPU. It
// returns the base URL to load and the process.
func (c *comparison) startProxy(name, target string, upstreams []string, oneClient bool) (string, *child, string, error) {
	listen, err := freeAddr()
	if err != nil {
		return "", nil, "", err
	}
	admin, err := freeAddr()
	if err != nil {
		return "", nil, "", err
	}
	scratch := filepath.Join(c.dir, "configs", name)
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return "", nil, "", fmt.Errorf("creating %s: %w", scratch, err)
	}
	pc := PeerConfig{OneClient: oneClient, Listen: listen, Admin: admin, Upstreams: upstreams, Connections: c.opts.Connections, Dir: scratch}
	if os.Geteuid() == 0 {
		pc.User = "root root"
	}
	var tmpl, file string
	var argv []string
	switch target {
	case TargetPodium:
		tmpl, file = podiumTemplate, "edge.yaml"
		argv = []string{c.opts.Podium, "edge", "-config", filepath.Join(scratch, file)}
	case TargetHAProxy:
		tmpl, file = haproxy.Template, "haproxy.cfg"
		// -db: stay in the foreground, no master process, so the pid we
		// start is the one that serves.
		argv = []string{c.opts.HAProxy, "-db", "-f", filepath.Join(scratch, file)}
	case TargetNginx:
		tmpl, file = nginx.Template, "nginx.conf"
		argv = []string{c.opts.Nginx, "-p", scratch, "-c", filepath.Join(scratch, file), "-e", filepath.Join(scratch, "error.log")}
	default:
		return "", nil, "", fmt.Errorf("no proxy for target %q", target)
	}
	t, err := template.New(file).Parse(tmpl)
	if err != nil {
		return "", nil, "", fmt.Errorf("parsing %s template: %w", target, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, pc); err != nil {
		return "", nil, "", fmt.Errorf("rendering %s config: %w", target, err)
	}
	cfg := filepath.Join(scratch, file)
	if err := os.WriteFile(cfg, buf.Bytes(), 0o644); err != nil {
		return "", nil, "", fmt.Errorf("writing %s: %w", cfg, err)
	}
	// The proxy must not inherit extra env meant for bench children (a
	// test's re-exec switch would turn a Podium binary into something
	// else).
	ch, err := c.start(name, c.opts.ProxyCPU, nil, argv...)
	if err != nil {
		return "", nil, cfg, err
	}
	return "http://" + listen, ch, cfg, nil
}
