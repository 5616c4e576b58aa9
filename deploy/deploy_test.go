package deploy_test

// These tests keep the alert rules, the dashboard and the console pages
// (consoles_test.go reads their queries) honest:
//
//   - promtool (Debian's prometheus package) checks the rule files and the
//     demo's scrape config, runs the alert unit tests, and parses every
//     dashboard query with Prometheus's own parser;
//   - every alert has a firing and a quiet case in alerts_test.yml;
//   - every metric name a rule or a dashboard query reads is one that the
//     edge or the origin really exports, taken from their live registries
//     after driving real requests through them (no name lists copied from
//     the source, which would drift).
//
// PromQL is read with Prometheus's own parser (promql/parser, the one the
// server and promtool run), so a query that does not parse, or hands a
// function the wrong type (rate of an instant vector), fails here with the
// query's place; the names checked are those of the selectors it found.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/origin"
	"github.com/podium-edge/podium/proxy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/valyala/fasthttp"
	"gopkg.in/yaml.v3"
)

const (
	alertsFile    = "prometheus/alerts.yml"
	alertTestFile = "prometheus/alerts_test.yml"
	promConfig    = "prometheus/prometheus.yml"
	dashboardFile = "grafana/podium.json"
)

// promtool returns the path of promtool, failing the test (never skipping
// it) when it is not installed.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found in PATH (%v): run scripts/deps.sh obs, which installs Debian's prometheus package", err)
	}
	return p
}

func TestPromtool(t *testing.T) {
	bin := promtool(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"check rules", []string{"check", "rules", alertsFile}},
		{"test rules", []string{"test", "rules", alertTestFile}},
		{"check config", []string{"check", "config", promConfig}},
		{"dashboard queries parse", []string{"check", "rules", dashboardAsRules(t)}},
		{"console queries parse", []string{"check", "rules", queriesAsRules(t, "console", consoleQueries(t))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, tc.args...).CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(tc.args, " "), err, out)
			}
			if !bytes.Contains(out, []byte("SUCCESS")) {
				t.Fatalf("promtool %s printed no SUCCESS:\n%s", strings.Join(tc.args, " "), out)
			}
		})
	}
}

// grafanaVar matches a Grafana variable reference: $name or ${name...}.
var grafanaVar = regexp.MustCompile(`\$(\{[^}]*\}|\w+)`)

// dashboardAsRules writes every dashboard query as a recording rule in a
// temporary rule file, so that promtool parses it too (promtool has no
// offline "check query"), with Grafana's variables replaced as
// grafanaToPromQL does.
func dashboardAsRules(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := dashboardQueries(dashboardFile, data)
	if err != nil {
		t.Fatal(err)
	}
	for i, q := range qs {
		qs[i].expr = grafanaToPromQL(q.expr)
	}
	return queriesAsRules(t, "dashboard", qs)
}

// grafanaToPromQL replaces Grafana's variables by what they stand for:
// the interval variables by durations, the others, which the dashboard
// uses in label matchers, by a regular expression that matches anything.
func grafanaToPromQL(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		switch strings.Trim(v, "${}") {
		case "__rate_interval", "__interval":
			return "1m"
		case "__range":
			return "1h"
		}
		return ".*"
	})
}

// recordNameRune is what a recording rule's name cannot hold.
var recordNameRune = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// queriesAsRules writes qs as the recording rules of one group in a
// temporary rule file, for `promtool check rules` to parse. Each rule is
// named NAME:<where the query was found>:<i>, so that promtool's error
// names the panel or the console line.
func queriesAsRules(t *testing.T, name string, qs []query) string {
	t.Helper()
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, q := range qs {
		where := strings.Trim(recordNameRune.ReplaceAllString(q.where, "_"), "_")
		rules = append(rules, rule{Record: fmt.Sprintf("%s:%s:%d", name, where, i), Expr: q.expr})
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": name, "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+"_rules.yml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// ruleFile is the part of a Prometheus rule file these tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T, path string) ruleFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no rule groups", path)
	}
	return rf
}

// TestAlertsAreDocumentedAndTested checks what promtool does not: every
// alert has a severity the on-call rota knows, a summary and a
// description, and alerts_test.yml tests it both firing and quiet.
func TestAlertsAreDocumentedAndTested(t *testing.T) {
	alerts := readRules(t, alertsFile)
	data, err := os.ReadFile(alertTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTests []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(data, &tf); err != nil {
		t.Fatalf("parsing %s: %v", alertTestFile, err)
	}
	if !slices.Contains(tf.RuleFiles, "alerts.yml") {
		t.Errorf("%s: rule_files does not load alerts.yml", alertTestFile)
	}
	firing, quiet := map[string]int{}, map[string]int{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTests {
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	n := 0
	for _, g := range alerts.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if sev := r.Labels["severity"]; sev != "page" && sev != "ticket" {
				t.Errorf("alert %s: severity %q, want page or ticket", r.Alert, sev)
			}
			if len(r.Annotations["summary"]) < 20 || len(r.Annotations["description"]) < 80 {
				t.Errorf("alert %s: needs a summary and a description that says where to look first", r.Alert)
			}
			if firing[r.Alert] == 0 {
				t.Errorf("alert %s: no test in %s where it fires", r.Alert, alertTestFile)
			}
			if quiet[r.Alert] == 0 {
				t.Errorf("alert %s: no test in %s where it stays quiet", r.Alert, alertTestFile)
			}
		}
	}
	if n < 10 {
		t.Fatalf("%s: only %d alerts", alertsFile, n)
	}
}

// query is one PromQL expression and where it was found, for messages.
type query struct {
	where string
	expr  string
}

// ruleQueries returns the expressions of path's rules and the names it
// records.
func ruleQueries(t *testing.T, path string) (qs []query, recorded []string) {
	for _, g := range readRules(t, path).Groups {
		for _, r := range g.Rules {
			name := r.Record
			if name == "" {
				name = "alert " + r.Alert
			} else {
				recorded = append(recorded, r.Record)
			}
			qs = append(qs, query{where: fmt.Sprintf("%s: %s", path, name), expr: r.Expr})
		}
	}
	return qs, recorded
}

// labelValuesQuery matches Grafana's label_values(selector, label) variable
// query; only the selector is PromQL.
var labelValuesQuery = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// dashboardQueries returns every PromQL expression of a Grafana dashboard:
// the panels' targets (nested rows included) and the query variables.
func dashboardQueries(path string, data []byte) ([]query, error) {
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	type panel struct {
		Title   string            `json:"title"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	}
	var qs []query
	var walk func([]json.RawMessage) error
	walk = func(raw []json.RawMessage) error {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				return fmt.Errorf("parsing %s: panel: %w", path, err)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					return fmt.Errorf("%s: panel %q target %s has no expr", path, p.Title, tg.RefID)
				}
				qs = append(qs, query{where: fmt.Sprintf("%s: panel %q target %s", path, p.Title, tg.RefID), expr: tg.Expr})
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d.Panels); err != nil {
		return nil, err
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// The query is a string in old dashboards, {"query": "..."} in new.
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				return nil, fmt.Errorf("%s: variable %s: query is neither a string nor {query}", path, v.Name)
			}
			q = obj.Query
		}
		if m := labelValuesQuery.FindStringSubmatch(q); m != nil {
			q = m[1]
		}
		qs = append(qs, query{where: fmt.Sprintf("%s: variable %s", path, v.Name), expr: q})
	}
	return qs, nil
}

// promql is Prometheus's PromQL parser with its default options: the
// functions and syntax a stock Prometheus server accepts.
var promql = parser.NewParser(parser.Options{})

// metricNames returns the names of the series expr selects: the vector
// selectors Prometheus's parser finds, by name or by an exact __name__
// matcher. Grafana variables are first replaced by what they stand for
// (grafanaToPromQL); an expression that does not parse is an error.
func metricNames(expr string) ([]string, error) {
	e, err := promql.ParseExpr(grafanaToPromQL(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if name == "" && m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name != "" {
			names = append(names, name)
		}
		return nil
	})
	return names, nil
}

// prometheusSeries are series Prometheus itself writes for every target
// or rule, not exported by Podium's code.
var prometheusSeries = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true, "ALERTS": true, "ALERTS_FOR_STATE": true}

// catalog is what the code exports: family name → type, plus a fallback
// for descriptors registered but not yet observed.
type catalog struct {
	families   map[string]dto.MetricType
	registered func(name string) bool // may be nil
	recorded   map[string]bool
}

// known reports whether a query may select name: a family that was
// gathered (with _bucket/_sum/_count for histograms and _sum/_count for
// summaries), a registered descriptor with no series yet, a recording rule,
// or a series Prometheus writes itself.
func (c *catalog) known(name string) bool {
	if prometheusSeries[name] || c.recorded[name] {
		return true
	}
	if _, ok := c.families[name]; ok {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suf)
		if !ok {
			continue
		}
		switch c.families[base] {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			return true
		case dto.MetricType_SUMMARY:
			return suf != "_bucket"
		}
	}
	return !strings.Contains(name, ":") && c.registered != nil && c.registered(name)
}

// unknownMetrics returns the names expr selects that the catalog does not
// know.
func (c *catalog) unknownMetrics(expr string) ([]string, error) {
	names, err := metricNames(expr)
	if err != nil {
		return nil, err
	}
	var bad []string
	for _, n := range names {
		if !c.known(n) && !slices.Contains(bad, n) {
			bad = append(bad, n)
		}
	}
	return bad, nil
}

func addFamilies(dst map[string]dto.MetricType, mfs []*dto.MetricFamily) {
	for _, mf := range mfs {
		dst[mf.GetName()] = mf.GetType()
	}
}

// registeredIn reports whether reg holds a descriptor named name, by
// registering a probe gauge of that name: the registry refuses a second
// descriptor with a registered name (and different help or labels). A
// probe that registers is removed again.
func registeredIn(reg *prometheus.Registry) func(string) bool {
	return func(name string) bool {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "deploy_test probe " + name})
		err := reg.Register(g)
		if err == nil {
			reg.Unregister(g)
			return false
		}
		var are prometheus.AlreadyRegisteredError
		return errors.As(err, &are) || strings.Contains(err.Error(), "same fully-qualified name")
	}
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// edgeMetrics builds a real edge over one real loopback upstream, sends it
// requests that reach the upstream, hit the cache and hit a rate limit,
// records health checks, and gathers its registry. The registry is
// returned too, for descriptors that no request observed, and so are the
// gathered families, for their series (histogram buckets, route labels).
func edgeMetrics(t *testing.T) (map[string]dto.MetricType, func(string) bool, []*dto.MetricFamily) {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" {
			io.WriteString(w, "pong")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"games":[]}`)
	}))
	t.Cleanup(up.Close)
	addr := strings.TrimPrefix(up.URL, "http://")

	cfg := config.DefaultEdge()
	cfg.Discovery.Static = []config.StaticUpstream{{Addr: addr, Weight: 1}}
	cfg.AccessLog.Enabled = false
	buy := cfg.RateLimits["buy"]
	buy.Rate, buy.Burst = 0.001, 1 // the second purchase is refused
	cfg.RateLimits["buy"] = buy
	p, err := proxy.New(cfg, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.Pool().Update([]balancer.Config{{Addr: addr}})
	hosts := p.Pool().Hosts()
	if len(hosts) != 1 {
		t.Fatalf("pool holds %d hosts, want 1", len(hosts))
	}
	h := hosts[0]
	h.SetHealthy(true, time.Now())
	p.ObserveProbe(h, time.Millisecond, nil)
	p.ObserveProbe(h, time.Millisecond, errors.New("deploy_test: a failed probe"))
	p.Metrics().ObserveChange(h, true)

	send := func(method, uri string) int {
		var req fasthttp.Request
		req.Header.SetMethod(method)
		req.SetRequestURI(uri)
		req.Header.SetHost("podium.test")
		if method == fasthttp.MethodPost {
			req.Header.SetContentType("application/json")
			req.SetBodyString(`{"quantity":1,"email":"fan@example.com"}`)
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
		p.Handle(&ctx)
		return ctx.Response.StatusCode()
	}
	got := []int{
		send("GET", "/api/games"), // miss: fetched from the upstream
		send("GET", "/api/games"), // hit
		send("POST", "/api/games/1/buy"),
		send("POST", "/api/games/1/buy"), // over the buy policy
	}
	if want := []int{200, 200, 200, 429}; !slices.Equal(got, want) {
		t.Fatalf("edge answered %v, want %v: the exercise did not reach the paths whose metrics it gathers", got, want)
	}
	mfs, err := p.Metrics().Registry.Gather()
	if err != nil {
		t.Fatalf("gathering the edge registry: %v", err)
	}
	fams := map[string]dto.MetricType{}
	addFamilies(fams, mfs)
	return fams, registeredIn(p.Metrics().Registry), mfs
}

// originMetrics builds a real origin whose databases are a loopback port
// nobody listens on (origin.New dials nothing), runs its database health
// checks and sends it a listing, a purchase and a ping (all 503, after the
// purchase was retried), then reads its /metrics page. Series that only a
// working database produces (db_reads_total, gtid_waits_total) are not
// there, so the rules and the dashboard do not use them yet.
func originMetrics(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	dsn := "podium:podium@tcp(" + dead + ")/podium"
	s, err := origin.New(origin.Config{
		PrimaryDSN:      dsn,
		ReplicaDSNs:     []string{dsn},
		DialTimeout:     200 * time.Millisecond,
		PurchaseTimeout: 3 * time.Second,
		PurchaseRetries: 1,
	}, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.CheckDatabases(ctx)

	serve := func(method, target, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, target, strings.NewReader(body))
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		return w
	}
	for _, c := range []struct{ method, target, body string }{
		{"GET", "/ping", ""},
		{"GET", "/api/games", ""},
		{"POST", "/api/games/1/buy", `{"quantity":1,"email":"fan@example.com"}`},
	} {
		if w := serve(c.method, c.target, c.body); w.Code != http.StatusServiceUnavailable {
			t.Fatalf("origin without a database: %s %s answered %d, want 503: %s", c.method, c.target, w.Code, w.Body)
		}
	}
	w := serve("GET", "/metrics", "")
	if w.Code != http.StatusOK {
		t.Fatalf("origin /metrics: %d", w.Code)
	}
	fams := map[string]dto.MetricType{}
	sc := bufio.NewScanner(w.Body)
	for sc.Scan() {
		// "# TYPE name counter|gauge|histogram|summary|untyped"
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
			continue
		}
		typ, ok := dto.MetricType_value[strings.ToUpper(f[3])]
		if !ok {
			t.Fatalf("origin /metrics: unknown type in %q", sc.Text())
		}
		fams[f[2]] = dto.MetricType(typ)
	}
	if _, ok := fams["podium_origin_purchases_total"]; !ok {
		t.Fatalf("origin /metrics has no podium_origin_purchases_total after a purchase attempt:\n%s", w.Body)
	}
	return fams
}

func TestQueriesUseExportedMetrics(t *testing.T) {
	edge, registered, _ := edgeMetrics(t)
	orig := originMetrics(t)
	cat := &catalog{families: map[string]dto.MetricType{}, registered: registered, recorded: map[string]bool{}}
	for n, typ := range edge {
		cat.families[n] = typ
	}
	for n, typ := range orig {
		cat.families[n] = typ
	}

	var qs []query
	qs, rec := ruleQueries(t, alertsFile)
	for _, r := range rec {
		cat.recorded[r] = true
	}
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	dq, err := dashboardQueries(dashboardFile, data)
	if err != nil {
		t.Fatal(err)
	}
	if len(dq) < 30 {
		t.Fatalf("%s: only %d queries found; is the dashboard readable?", dashboardFile, len(dq))
	}
	qs = append(qs, dq...)
	cq := consoleQueries(t)
	if len(cq) < 60 {
		t.Fatalf("%s: only %d queries found; are the console pages readable?", consolesDir, len(cq))
	}
	qs = append(qs, cq...)

	used := map[string]bool{}
	for _, q := range qs {
		bad, err := cat.unknownMetrics(q.expr)
		if err != nil {
			t.Errorf("%s: %v in %q", q.where, err, q.expr)
			continue
		}
		for _, b := range bad {
			t.Errorf("%s: metric %q is not exported by the edge or the origin (nor recorded by a rule)", q.where, b)
		}
		names, _ := metricNames(q.expr)
		for _, n := range names {
			used[n] = true
		}
	}
	// Guard against a reader that silently finds nothing.
	for _, must := range []string{"podium_edge_requests_total", "podium_edge_request_duration_seconds_bucket", "podium_origin_purchases_total", "slo:podium_sli_errors:ratio_rate1h",
		"go_sql_idle_connections"} { // only the consoles read the idle connections
		if !used[must] {
			t.Errorf("no query reads %s: the rules, the dashboard or the consoles lost it, or metricNames stopped seeing names", must)
		}
	}
	if testing.Verbose() {
		var ns []string
		for n := range used {
			ns = append(ns, n)
		}
		sort.Strings(ns)
		t.Logf("%d queries read %d names: %s", len(qs), len(ns), strings.Join(ns, " "))
	}
}

// TestCheckerReportsUnknownMetrics feeds the checker queries whose answer
// is known, including ones it must reject, so that a checker that accepts
// everything fails here.
func TestCheckerReportsUnknownMetrics(t *testing.T) {
	cat := &catalog{
		families: map[string]dto.MetricType{
			"podium_edge_requests_total":                    dto.MetricType_COUNTER,
			"podium_edge_upstream_request_duration_seconds": dto.MetricType_HISTOGRAM,
			"podium_edge_upstream_up":                       dto.MetricType_GAUGE,
		},
		registered: func(n string) bool { return n == "podium_edge_ratelimit_rejected_total" },
		recorded:   map[string]bool{"slo:podium_sli_errors:ratio_rate5m": true},
	}
	for _, tc := range []struct {
		name, expr string
		want       []string
	}{
		{"known counter", `sum by (route) (rate(podium_edge_requests_total{code=~"5.."}[5m]))`, nil},
		{"histogram series", `histogram_quantile(0.99, sum by (le, upstream) (rate(podium_edge_upstream_request_duration_seconds_bucket[$__rate_interval])))`, nil},
		{"registered, not yet observed", `rate(podium_edge_ratelimit_rejected_total[5m])`, nil},
		{"recording rule", `slo:podium_sli_errors:ratio_rate5m{slo="x"} > 14.4 * 0.001`, nil},
		{"Prometheus's own up", `up{job="podium-edge"} == 0 or absent(up{job="podium-edge"})`, nil},
		{"unknown metric in a dashboard query", `sum(rate(podium_edge_requests_totl{instance=~"$edge"}[$__rate_interval]))`, []string{"podium_edge_requests_totl"}},
		{"unknown after a binary operator", `podium_edge_upstream_up == 0 and on (upstream) podium_edge_upstream_weight`, []string{"podium_edge_upstream_weight"}},
		{"_bucket of a counter", `rate(podium_edge_requests_total_bucket[5m])`, []string{"podium_edge_requests_total_bucket"}},
		{"_count of a gauge", `podium_edge_upstream_up_count`, []string{"podium_edge_upstream_up_count"}},
		{"unrecorded rule name", `slo:podium_sli_errors:ratio_rate3d > 1`, []string{"slo:podium_sli_errors:ratio_rate3d"}},
		{"label values and label lists are not metrics", `sum by (podium_fake) (podium_edge_upstream_up{upstream="podium_fake_total"}) / ignoring (podium_x) group_left (podium_y) podium_edge_upstream_up`, nil},
		{"bare unknown name", `podium_origin_db_pool_in_use`, []string{"podium_origin_db_pool_in_use"}},
		{"offset and numbers", `podium_edge_upstream_up offset 1h > 1e3`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cat.unknownMetrics(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("unknownMetrics(%q) = %q, want %q", tc.expr, got, tc.want)
			}
		})
	}
	// The same check through the dashboard reader: a fake dashboard with an
	// unknown metric in a nested panel and in a variable.
	fake := []byte(`{"panels":[{"type":"row","title":"r","panels":[{"title":"p","targets":[{"refId":"A","expr":"rate(podium_fake_total[5m])"}]}]}],
		"templating":{"list":[{"name":"edge","type":"query","query":{"query":"label_values(podium_fake_gauge, instance)"}}]}}`)
	qs, err := dashboardQueries("fake.json", fake)
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	for _, q := range qs {
		b, err := cat.unknownMetrics(q.expr)
		if err != nil {
			t.Fatal(err)
		}
		bad = append(bad, b...)
	}
	if want := []string{"podium_fake_total", "podium_fake_gauge"}; !slices.Equal(bad, want) {
		t.Fatalf("fake dashboard: unknown %q, want %q", bad, want)
	}
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`a_total`, []string{"a_total"}},
		{`sum without (instance) (rate(a_total{x="}", y=~"b|c"}[5m] offset 1h))`, []string{"a_total"}},
		{`label_replace(a, "dst", "$1", "src", "(.*)")`, []string{"a"}},
		{`a / on (i) group_left (j) b unless c`, []string{"a", "b", "c"}},
		{`rate(a[${__rate_interval}]) * on (instance) b{instance=~"$edge"}`, []string{"a", "b"}},
		{"# a comment\nlevel:metric:op5m", []string{"level:metric:op5m"}},
		{`max_over_time(a[1h:5m])`, []string{"a"}},
		{`{__name__="a_total", x="y"}`, []string{"a_total"}},
	} {
		got, err := metricNames(tc.expr)
		if err != nil {
			t.Fatalf("metricNames(%q): %v", tc.expr, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
	// Malformed expressions, and one that parses but applies rate to an
	// instant vector, which only a real parser's type check refuses.
	for _, bad := range []string{`a{x="y"`, `rate(a[5m)`, `a{x="y}`, `sum(rate(a[5m])`, `rate(a)`, `histogram_quantile(0.99, a[5m])`} {
		if _, err := metricNames(bad); err == nil {
			t.Errorf("metricNames(%q): no error for a malformed expression", bad)
		}
	}
}

// TestDashboardModel checks what Grafana needs to import the dashboard
// anywhere: a stable uid, a schema version Grafana 10/11 reads without
// migrating, and every panel and target on the ${datasource} variable.
func TestDashboardModel(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID           string `json:"uid"`
		Title         string `json:"title"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Datasource *struct {
					UID string `json:"uid"`
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want 36..41", d.SchemaVersion)
	}
	hasDS := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			hasDS = true
		}
	}
	if !hasDS {
		t.Error(`no templated "datasource" variable of type prometheus`)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: duplicate id %d", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource must be {prometheus, ${datasource}}", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no queries", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: a target not on ${datasource}", p.Title)
			}
		}
	}
	if abs, err := filepath.Abs(dashboardFile); err == nil {
		t.Logf("import %s in Grafana (Dashboards → New → Import)", abs)
	}
}

// TestRegisteredProbe pins the fallback for descriptors that no request has
// observed yet, on a fresh edge built from the embedded default config: the
// request counter (a custom collector with no series until a request) is
// found, a made-up name is not, and probing leaves the registry as it was.
func TestRegisteredProbe(t *testing.T) {
	p, err := proxy.New(config.DefaultEdge(), quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	reg := p.Metrics().Registry
	before, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range before {
		if mf.GetName() == "podium_edge_requests_total" {
			t.Fatal("a fresh edge already has request series; the probe test needs an unobserved descriptor")
		}
	}
	probe := registeredIn(reg)
	for name, want := range map[string]bool{
		"podium_edge_requests_total":                    true,
		"podium_edge_upstream_request_duration_seconds": true,
		"podium_edge_requests_totl":                     false,
		"podium_origin_db_pool_in_use":                  false,
	} {
		if got := probe(name); got != want {
			t.Errorf("registered(%s) = %v, want %v", name, got, want)
		}
	}
	after, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("probing changed the registry: %d families before, %d after", len(before), len(after))
	}
}

// latencySelector matches a selector of the edge's request-duration
// histogram in a rule, and labelMatcher one label matcher inside it.
var (
	latencySelector = regexp.MustCompile(`(podium_[a-z_]+_duration_seconds_(?:bucket|count))\{([^}]*)\}`)
	labelMatcher    = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
)

// TestLatencySLIsReadEdgeBuckets checks what promtool and the name check
// cannot: a latency SLI whose le="..." is not a bucket boundary of the
// histogram, or whose route regexp names a route that does not exist,
// selects no series, so the SLI has no value and its alerts never fire,
// silently. Every *_latency recording rule must read the edge's
// podium_edge_request_duration_seconds (what fans feel, cache hits
// included), with the SLO's threshold as a real bucket of the histogram the
// edge exports and exactly the SLO's routes of the embedded default config,
// the same on the bucket and the count.
func TestLatencySLIsReadEdgeBuckets(t *testing.T) {
	_, _, mfs := edgeMetrics(t)
	bounds := map[string]bool{} // le values as the exposition format writes them
	var boundList []float64     // the same, in order, for messages
	routesSeen := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "podium_edge_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, b := range m.GetHistogram().GetBucket() {
				le := strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)
				if !bounds[le] {
					boundList = append(boundList, b.GetUpperBound())
				}
				bounds[le] = true
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" {
					routesSeen[l.GetValue()] = true
				}
			}
		}
	}
	// edgeMetrics sent a listing miss and hit and two purchases.
	if !routesSeen["api_games"] || !routesSeen["buy"] {
		t.Fatalf("podium_edge_request_duration_seconds has series for routes %v, want api_games and buy (observed for every request)", routesSeen)
	}
	routes := map[string]bool{}
	for _, r := range config.DefaultEdge().Routes {
		routes[r.Name] = true
	}

	want := map[string]struct {
		le     string
		routes []string
	}{
		"listing_latency":  {"0.25", []string{"api_game", "api_games", "game", "games"}},
		"purchase_latency": {"1", []string{"buy", "buy_page"}},
	}
	windows := map[string]int{}
	for _, g := range readRules(t, alertsFile).Groups {
		for _, r := range g.Rules {
			slo := r.Labels["slo"]
			if r.Record == "" || !strings.HasSuffix(slo, "_latency") {
				continue
			}
			where := fmt.Sprintf("%s: %s{slo=%q}", alertsFile, r.Record, slo)
			w, ok := want[slo]
			if !ok {
				t.Errorf("%s: unknown latency SLO; add it to this test with its threshold and routes", where)
				continue
			}
			windows[slo]++
			var sawBucket, sawCount bool
			for _, sel := range latencySelector.FindAllStringSubmatch(r.Expr, -1) {
				name, matchers := sel[1], sel[2]
				if !strings.HasPrefix(name, "podium_edge_request_duration_seconds_") {
					t.Errorf("%s reads %s: the latency SLIs are measured at the edge (podium_edge_request_duration_seconds)", where, name)
					continue
				}
				var le string
				var rs []string
				for _, m := range labelMatcher.FindAllStringSubmatch(matchers, -1) {
					switch {
					case m[1] == "le" && m[2] == "=":
						le = m[3]
					case m[1] == "route" && m[2] == "=~":
						rs = strings.Split(m[3], "|")
					default:
						t.Errorf("%s: unexpected matcher %s in %s", where, m[0], sel[0])
					}
				}
				for _, rt := range rs {
					if !routes[rt] {
						t.Errorf("%s: route %q is not a route of the default config", where, rt)
					}
				}
				slices.Sort(rs)
				if !slices.Equal(rs, w.routes) {
					t.Errorf("%s: %s selects routes %q, want %q", where, name, rs, w.routes)
				}
				switch {
				case strings.HasSuffix(name, "_bucket"):
					sawBucket = true
					if le != w.le {
						t.Errorf("%s: bucket le=%q, want %q", where, le, w.le)
					}
					if !bounds[le] {
						t.Errorf("%s: le=%q is not a bucket of podium_edge_request_duration_seconds (buckets %v): the SLI would select nothing", where, le, boundList)
					}
				case le != "":
					t.Errorf("%s: le matcher on %s", where, name)
				default:
					sawCount = true
				}
			}
			if !sawBucket || !sawCount {
				t.Errorf("%s: want a podium_edge_request_duration_seconds_bucket and a _count selector in %q", where, r.Expr)
			}
		}
	}
	for slo := range want {
		if windows[slo] != 6 {
			t.Errorf("%s: %d recording rules, want 6 (5m, 30m, 1h, 2h, 6h, 1d)", slo, windows[slo])
		}
	}
}
