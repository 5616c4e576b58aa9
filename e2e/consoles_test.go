package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"gopkg.in/yaml.v3"
)

// TestConsoles opens the demo's dashboard the way a person does: a real
// Prometheus serves deploy/prometheus/consoles with Debian's console
// libraries, scraping a real stack (startStack: edge, three origins,
// MariaDB primary and replicas) that has just had traffic, and headless
// Chromium loads each page, waits for its graphs and takes a full-page
// screenshot. A page fails on a template error (Prometheus answers 500
// with "error executing template"), a missing heading, a graph that did not
// draw, or numbers that are not the stack's (requests per route, upstreams
// up, sales, databases usable).
func TestConsoles(t *testing.T) {
	chromiumPath(t)
	promBin := prometheusPath(t)
	libs := consoleLibraries(t)

	s := startStack(t)
	prom := startPrometheus(t, s, promBin, libs)
	// Every target scraped once before the traffic, so that rates have a
	// sample from before it.
	prom.waitFor(t, `count(up{job=~"podium-edge|podium-origin"} == 1) == 4`, "edge and three origins scraped")
	consoleTraffic(t, s)
	for _, c := range []struct{ expr, what string }{
		{`sum(rate(podium_edge_requests_total{route="api_games"}[1m])) > 0`, "listing requests through the edge"},
		{`sum(podium_edge_requests_total{route="buy", code="201"}) > 0 and sum(podium_edge_requests_total{route="buy", code="409"}) > 0`, "a sale and a sold-out answer at the edge"},
		{`sum(podium_origin_seats_sold_total) > 0`, "seats sold by the origins"},
		{`count(podium_origin_db_up == 1) > 0`, "the origins' database checks"},
		// What the overview's counts read, in the last scrape.
		{`sum(min by (upstream) (podium_edge_upstream_up)) == 3 and count(min by (upstream) (podium_edge_upstream_up)) == 3`, "the edge's three upstreams up"},
	} {
		prom.waitFor(t, c.expr, c.what)
	}

	b := newBrowser(t)
	shots := os.Getenv("PODIUM_E2E_CONSOLE_SHOTS")
	if shots == "" {
		shots = artifactsDir
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, pg := range []struct {
		file, shot string
		h1         string
		h2         []string
		check      func(t *testing.T, b *browser)
	}{
		{"podium.html", "overview", "Podium", []string{"Service levels", "Alerts firing"}, checkOverview},
		{"podium-edge.html", "edge", "Edge", []string{"Requests by route", "Cache", "Rate limits and load shedding", "Upstreams"}, checkEdgePage},
		{"podium-sale.html", "sale", "Ticket sale", []string{"Purchases", "Databases", "Origins"}, checkSalePage},
	} {
		t.Run(pg.file, func(t *testing.T) {
			page := prom.url + "/consoles/" + pg.file
			// A template error is a 500 whose body names it.
			resp, body := s.get(t, page)
			if resp.StatusCode != http.StatusOK || templateError.Match(body) {
				t.Fatalf("GET %s: %d\n%.600s", page, resp.StatusCode, body)
			}
			pb := &browser{t: t, ctx: b.ctx}
			// The last minute (the time control's own bookmark): the
			// traffic across the width, for a screenshot a person can read.
			pb.run("opening "+pg.file,
				chromedp.Navigate(page+"#pctc"+url.QueryEscape(`{"duration":60,"endTime":0}`)),
				chromedp.WaitVisible(`h1`, chromedp.ByQuery))
			graphs := pb.waitGraphs(prom)
			p := pb.page()
			if templateError.MatchString(p.Text) {
				t.Fatalf("%s shows a template error: %.600s", pg.file, p.Text)
			}
			if !strings.HasPrefix(p.Title, "Podium") || strings.TrimSpace(p.H1) != pg.h1 {
				t.Errorf("%s: title %q, h1 %q; want Podium…, %q", pg.file, p.Title, p.H1, pg.h1)
			}
			var h2s []string
			pb.run("reading the section headings", chromedp.Evaluate(
				`[...document.querySelectorAll('h2')].map(h => h.textContent.trim())`, &h2s))
			for _, want := range pg.h2 {
				if !slices.Contains(h2s, want) {
					t.Errorf("%s: no section %q (sections %q)", pg.file, want, h2s)
				}
			}
			var nav []string
			pb.run("reading the navigation", chromedp.Evaluate(
				`[...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))`, &nav))
			for _, want := range []string{"podium.html", "podium-edge.html", "podium-sale.html"} {
				if !slices.Contains(nav, want) {
					t.Errorf("%s: the navigation does not link %s (links %q)", pg.file, want, nav)
				}
			}
			if len(graphs) < 2 {
				t.Errorf("%s: %d graphs, want the page's graphs", pg.file, len(graphs))
			}
			pg.check(t, pb)
			pb.fullScreenshot(filepath.Join(shots, fmt.Sprintf("%d-console-%s.png", 10+i, pg.shot)))
		})
	}

	// Without a #pctc bookmark a page opens on the pages' own default
	// range, 15 minutes (prom.lib's is an hour).
	b.run("opening the overview on its default range",
		chromedp.Navigate(prom.url+"/consoles/podium.html"),
		chromedp.WaitVisible(`#prom_graph_duration`, chromedp.ByQuery))
	var duration string
	b.run("reading the time range", chromedp.Value(`#prom_graph_duration`, &duration, chromedp.ByQuery))
	if duration != "15m" {
		t.Errorf("the overview opens on %q, want the pages' default 15m", duration)
	}
}

// templateError is what Prometheus writes when a console template fails
// to parse or to run (a missing template, a query that does not parse).
var templateError = regexp.MustCompile(`error (executing|parsing) template|error parsing template files`)

// prometheusPath is Debian's prometheus binary.
func prometheusPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found in PATH (%v): install Debian's prometheus package (scripts/deps.sh obs)", err)
	}
	return p
}

// consoleLibraries is the directory holding prom.lib and menu.lib:
// PODIUM_PROM_CONSOLE_LIBRARIES, or where Debian's prometheus package puts
// them (as examples, under /usr/share/doc).
func consoleLibraries(t *testing.T) string {
	t.Helper()
	dirs := []string{"/usr/share/doc/prometheus/examples/console_libraries", "/etc/prometheus/console_libraries", "/usr/share/prometheus/console_libraries"}
	if d := os.Getenv("PODIUM_PROM_CONSOLE_LIBRARIES"); d != "" {
		dirs = []string{d}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "prom.lib")); err == nil {
			return d
		}
	}
	t.Fatalf("no prom.lib in %v: install Debian's prometheus package (scripts/deps.sh obs); "+
		"where /usr/share/doc is not installed (dpkg path-exclude), set PODIUM_PROM_CONSOLE_LIBRARIES "+
		"to a directory with Prometheus's console_libraries", dirs)
	return ""
}

// promServer is a Prometheus started by startPrometheus.
type promServer struct {
	url    string
	proc   *proc
	client *http.Client
}

// startPrometheus runs Prometheus on a free loopback port with the demo's
// config (deploy/prometheus/prometheus.yml: its jobs and rules) pointed at
// this stack, and the console pages.
func startPrometheus(t *testing.T, s *stack, bin, libs string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, prometheusConfig(t, s), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePorts(t, 1)[0])
	p := &promServer{url: "http://" + addr, client: s.client}
	p.proc = s.start(t, "prometheus", bin,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--web.console.templates="+filepath.Join(repoRoot, "deploy", "prometheus", "consoles"),
		"--web.console.libraries="+libs,
	)
	s.waitFor(t, p.proc, p.url+"/-/ready", 60*time.Second)
	return p
}

// prometheusConfig is the demo's prometheus.yml with this stack's targets
// (whatever service discovery the demo uses, static here), rule files made
// absolute, and a 2 s scrape and evaluation interval instead of 5 s.
func prometheusConfig(t *testing.T, s *stack) []byte {
	t.Helper()
	src := filepath.Join(repoRoot, "deploy", "prometheus", "prometheus.yml")
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	hostport := func(u string) string { return strings.TrimPrefix(u, "http://") }
	var origins []any
	for _, u := range s.originURLs {
		origins = append(origins, hostport(u))
	}
	targets := map[string][]any{
		"podium-edge":   {hostport(s.adminURL)},
		"podium-origin": origins,
	}
	global, _ := cfg["global"].(map[string]any)
	if global == nil {
		global = map[string]any{}
		cfg["global"] = global
	}
	global["scrape_interval"], global["scrape_timeout"], global["evaluation_interval"] = "2s", "2s", "2s"
	if rf, ok := cfg["rule_files"].([]any); ok {
		for i, f := range rf {
			if name, ok := f.(string); ok && !filepath.IsAbs(name) {
				rf[i] = filepath.Join(filepath.Dir(src), name)
			}
		}
	}
	scs, _ := cfg["scrape_configs"].([]any)
	jobs := 0
	for _, sc := range scs {
		m, _ := sc.(map[string]any)
		job, _ := m["job_name"].(string)
		tg, ok := targets[job]
		if !ok {
			t.Fatalf("%s: job %q is new to this test; give it the stack's targets in prometheusConfig", src, job)
		}
		for k := range m {
			if strings.HasSuffix(k, "_sd_configs") || k == "static_configs" {
				delete(m, k)
			}
		}
		m["static_configs"] = []any{map[string]any{"targets": tg}}
		jobs++
	}
	if jobs != len(targets) {
		t.Fatalf("%s: %d scrape jobs, want podium-edge and podium-origin", src, jobs)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// query runs an instant query and returns the number of series it gave.
func (p *promServer) query(expr string) (int, error) {
	resp, err := p.client.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("%s: %w", resp.Status, err)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s: %s", resp.Status, r.Error)
	}
	return len(r.Data.Result), nil
}

// waitFor polls expr until it selects something, for at most 60 s.
func (p *promServer) waitFor(t *testing.T, expr, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		n, err := p.query(expr)
		if err == nil && n > 0 {
			return
		}
		last = fmt.Sprintf("%d series, error %v", n, err)
		time.Sleep(500 * time.Millisecond)
	}
	p.proc.tail(t, 20)
	t.Fatalf("Prometheus: no %s after 60 s (%s: %s)", what, expr, last)
}

// consoleTraffic gives the pages something to show, all through the edge
// unless said: listing and game pages (misses, then hits), a sold-out
// session (bought out on an origin), purchases that sell, one refused as
// sold out, a malformed one and one for a game that does not exist,
// repeated over about 10 s so that Prometheus scrapes them in steps.
func consoleTraffic(t *testing.T, s *stack) {
	t.Helper()
	buy, soldOut := pickGames(t, s)
	sellOut(t, s, soldOut)
	codes := map[string]int{}
	purchase := func(id int64, body string) {
		resp, b := s.do(t, http.MethodPost, fmt.Sprintf("%s/api/games/%d/buy", s.edgeURL, id), body)
		codes[strconv.Itoa(resp.StatusCode)]++
		if resp.StatusCode >= 500 {
			t.Fatalf("purchase of game %d through the edge: %d %.200s", id, resp.StatusCode, b)
		}
	}
	for round := range 16 {
		for _, path := range []string{"/api/games", "/games", fmt.Sprintf("/api/games/%d", buy), fmt.Sprintf("/games/%d", buy)} {
			if resp, b := s.get(t, s.edgeURL+path); resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s through the edge: %d %.200s", path, resp.StatusCode, b)
			}
		}
		purchase(buy, `{"quantity":1,"email":"console@podium.example"}`)
		if round%4 == 0 {
			purchase(soldOut, `{"quantity":1,"email":"late@podium.example"}`)
			purchase(buy, `{"quantity":"two"}`)
			purchase(99999, `{"quantity":1,"email":"lost@podium.example"}`)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if codes["201"] == 0 || codes["409"] == 0 {
		t.Fatalf("purchases through the edge answered %v, want 201s and 409s", codes)
	}
	t.Logf("traffic: purchases through the edge answered %v", codes)
}

// graphState is one PromConsole.Graph on a page and how it ended.
type graphState struct {
	ID    string   `json:"id"`
	State string   `json:"state"` // drawn, loading, or the graph's error text
	Exprs []string `json:"exprs"`
}

// waitGraphs waits (at most 30 s) until every graph of the page is drawn
// or has given up, and fails the test for those that did not draw; each
// graph's expressions are also run as instant queries, for a clear message
// when one does not parse (the graph then spins forever).
func (b *browser) waitGraphs(p *promServer) []graphState {
	b.t.Helper()
	var gs []graphState
	deadline := time.Now().Add(30 * time.Second)
	for {
		b.run("reading the graphs", chromedp.Evaluate(`PromConsole._graph_registry.map(g => {
			const td = g.graphTd, err = td.querySelector('.prom_graph_error');
			return {id: g.params.node.id, exprs: g.params.expr,
				state: td.querySelector('svg') ? 'drawn' : err ? err.textContent : 'loading'};
		})`, &gs))
		pending := 0
		for _, g := range gs {
			if g.State == "loading" {
				pending++
			}
		}
		if pending == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, g := range gs {
		if g.State == "drawn" {
			continue
		}
		for _, e := range g.Exprs {
			if _, err := p.query(e); err != nil {
				b.t.Errorf("graph #%s: %s: %v", g.ID, e, err)
			}
		}
		b.t.Errorf("graph #%s is %q, want drawn with the stack's data (%q)", g.ID, g.State, g.Exprs)
	}
	return gs
}

// fullScreenshot saves the whole page as a PNG, taken in a window as tall
// as the page (at most 8000 px): a plain full-page capture would paint
// prom.lib's time control, fixed to the window's bottom, mid-page. The
// graphs redraw on the resize; the window is 1280×900 again afterwards.
func (b *browser) fullScreenshot(path string) {
	b.t.Helper()
	var h int64
	b.run("measuring the page", chromedp.Evaluate(`document.documentElement.scrollHeight`, &h))
	h = min(max(h, 900), 8000)
	var png []byte
	b.run("taking a screenshot",
		chromedp.EmulateViewport(1280, h),
		chromedp.Sleep(500*time.Millisecond),
		chromedp.CaptureScreenshot(&png),
		chromedp.EmulateViewport(1280, 900))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot: %v", err)
		return
	}
	b.t.Logf("screenshot %s", path)
}

// cells returns the text of the cells of the rows of the table sel.
func (b *browser) cells(sel string) [][]string {
	b.t.Helper()
	var rows [][]string
	b.run("reading "+sel, chromedp.Evaluate(fmt.Sprintf(`[...document.querySelectorAll(%q)].map(
		tr => [...tr.querySelectorAll('td')].map(td => td.textContent.trim()))`, sel), &rows))
	return rows
}

// leadingNumber is the number a prom_query_drilldown cell starts with, and
// humanize's k or M after it.
var leadingNumber = regexp.MustCompile(`^(-?[0-9.]+(?:e[-+]?[0-9]+)?)([kM]?)`)

// cellNumber reads a cell that prom_query_drilldown rendered ("12", "2.5k",
// "0.333/s").
func cellNumber(s string) (float64, bool) {
	m := leadingNumber.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, false
	}
	switch m[2] {
	case "k":
		v *= 1e3
	case "M":
		v *= 1e6
	}
	return v, true
}

// rowValue finds the row whose first cell is label and reads its column
// col as a number.
func rowValue(t *testing.T, rows [][]string, label string, col int) float64 {
	t.Helper()
	for _, r := range rows {
		if len(r) > col && r[0] == label {
			v, ok := cellNumber(r[col])
			if !ok {
				t.Errorf("row %q: column %d is %q, not a number", label, col, r[col])
			}
			return v
		}
	}
	t.Errorf("no row %q in %q", label, rows)
	return 0
}

func checkOverview(t *testing.T, b *browser) {
	rows := b.cells(`#card-edge tr`)
	if got := rowText(rows, "Edges up"); got != "1 / 1" {
		t.Errorf("overview: edges up %q, want 1 / 1", got)
	}
	if got := rowText(rows, "Upstreams up"); got != "3 / 3" {
		t.Errorf("overview: upstreams up %q, want 3 / 3", got)
	}
	sale := b.cells(`#card-sale tr`)
	if got := rowText(sale, "Origins up"); got != "3 / 3" {
		t.Errorf("overview: origins up %q, want 3 / 3", got)
	}
	if got := rowText(sale, "Databases usable"); got != "3 / 3" {
		t.Errorf("overview: databases usable %q, want 3 / 3", got)
	}
	if v := rowValue(t, sale, "Seats sold since the origins started", 1); v < 500 {
		t.Errorf("overview: %v seats sold, want at least the 500 of the sold-out session", v)
	}
	var slos [][]string
	for _, r := range b.cells(`#slo-table tr`) {
		if len(r) > 0 { // the header row has no td
			slos = append(slos, r)
		}
	}
	if len(slos) != 4 {
		t.Errorf("overview: SLO table rows %q, want the four SLOs", slos)
	}
}

// rowText is the second cell of the row whose first cell is label.
func rowText(rows [][]string, label string) string {
	for _, r := range rows {
		if len(r) > 1 && r[0] == label {
			return strings.Join(strings.Fields(r[1]), " ")
		}
	}
	return fmt.Sprintf("(no row %q)", label)
}

func checkEdgePage(t *testing.T, b *browser) {
	routes := b.cells(`#routes tr`)
	if v := rowValue(t, routes, "api_games", 1); v <= 0 {
		t.Errorf("edge: api_games at %v requests/s, want the listing traffic", v)
	}
	if v := rowValue(t, routes, "buy", 2); v <= 0 {
		t.Errorf("edge: buy at %v 4xx/s, want the sold-out and malformed purchases", v)
	}
	ups := b.cells(`tr.podium-upstream`)
	if len(ups) != 3 {
		t.Errorf("edge: upstream rows %q, want the three origins", ups)
	}
	for _, u := range ups {
		if len(u) != 2 || u[1] != "up" {
			t.Errorf("edge: upstream row %q, want up", u)
		}
	}
}

func checkSalePage(t *testing.T, b *browser) {
	answers := b.cells(`#answers tr`)
	if v := rowValue(t, answers, "201 sold", 2); v < 1 {
		t.Errorf("sale: %v sales in 15 minutes, want the test's", v)
	}
	if v := rowValue(t, answers, "409 sold out (or the same Idempotency-Key in flight)", 2); v < 1 {
		t.Errorf("sale: %v sold-out answers in 15 minutes, want the test's", v)
	}
	dbs := b.cells(`#databases tr`)
	roles := map[string]int{}
	for _, d := range dbs {
		if len(d) == 0 { // the header row
			continue
		}
		if len(d) != 4 {
			t.Errorf("sale: database row %q", d)
			continue
		}
		roles[d[0]]++
		if d[2] != "yes" {
			t.Errorf("sale: database %s %s usable %q, want yes", d[0], d[1], d[2])
		}
		if d[0] == "replica" {
			if v, ok := cellNumber(d[3]); !ok || v < 0 || v > 5 {
				t.Errorf("sale: replica %s lag %q, want a few seconds at most", d[1], d[3])
			}
		}
	}
	if roles["primary"] != 1 || roles["replica"] != 2 {
		t.Errorf("sale: databases %v, want a primary and two replicas", roles)
	}
}
