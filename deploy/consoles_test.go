package deploy_test

// The console pages in prometheus/consoles are Go templates that the demo's
// Prometheus renders (--web.console.templates), with Debian's console
// libraries (prom.lib) for the head, the number cells and the graphs. A
// typo in a query there shows as "-" or an empty graph, never as an error,
// so these tests read every PromQL expression out of the templates:
//
//   - consoleQueries parses each page with Prometheus's template function
//     names and walks the parse tree. An expression is a string that the
//     page passes to `query`, to `prom_query_drilldown (args EXPR ...)`
//     (as a literal or a printf format, whose verbs become a label value),
//     or that an action prints alone: the graphs' `expr: {{ `...` }}`,
//     which html/template writes as a JavaScript string. Any other string
//     that looks like PromQL, and any graph expression written as raw
//     JavaScript, is an error, so that no query escapes the checks;
//   - TestQueriesUseExportedMetrics checks their metric names against what
//     the edge and the origin export, and TestPromtool parses them with
//     Prometheus's own parser;
//   - TestConsoles checks the pages themselves: they exist, link each
//     other, use prom.lib's templates, and select only jobs that the demo's
//     prometheus.yml scrapes and routes that the edge's default config has.
//
// Rendering them in a real Prometheus, with data, in Chromium, is
// e2e/consoles_test.go.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"text/template"
	"text/template/parse"

	"github.com/podium-edge/podium/config"
	"gopkg.in/yaml.v3"
)

const consolesDir = "prometheus/consoles"

// consolePages are the pages the demo links; the index links the others.
var consolePages = []string{"podium.html", "podium-edge.html", "podium-sale.html"}

// promTemplateFuncs are the function names Prometheus 2.42 gives console
// templates (template/template.go, plus "tmpl" from ExpandHTML). Only the
// names matter here: parsing fails on a function that does not exist.
var promTemplateFuncs = func() template.FuncMap {
	fm := template.FuncMap{}
	for _, name := range []string{
		"query", "first", "label", "value", "strvalue", "sortByLabel", "args", "tmpl",
		"humanize", "humanize1024", "humanizeDuration", "humanizePercentage", "humanizeTimestamp",
		"toTime", "title", "toUpper", "toLower", "stripPort", "match", "reReplaceAll",
		"graphLink", "tableLink", "safeHtml", "pathPrefix", "externalURL", "parseDuration",
	} {
		fm[name] = func(...any) any { return nil }
	}
	return fm
}()

var (
	// promqlLike tells a string that may be PromQL from a label name, a
	// unit suffix or a template name: those have no brackets.
	promqlLike = regexp.MustCompile(`[({\[]`)
	// rawGraphExpr is a PromConsole.Graph expression written as JavaScript
	// text instead of a template string: the checks could not see it.
	rawGraphExpr = regexp.MustCompile("expr:\\s*(\\[\\s*)?[\"'`]")
	// formatVerb is a printf verb in a query format; it stands for a label
	// value taken from another query's result.
	formatVerb = regexp.MustCompile(`%[sdvq]`)
)

// consoleTemplateQueries parses one console page and returns its PromQL
// expressions, each with the page, line and column where it is written.
func consoleTemplateQueries(name, text string) ([]query, error) {
	tmpl, err := template.New(name).Funcs(promTemplateFuncs).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", name, err)
	}
	var qs []query
	var errs []error
	for _, tt := range tmpl.Templates() {
		if tt.Tree == nil {
			continue
		}
		tree := tt.Tree
		claimed := map[*parse.StringNode]bool{}
		where := func(n parse.Node) string {
			loc, _ := tree.ErrorContext(n)
			return loc
		}
		// exprOf reads one expression argument: a string, or a printf
		// pipeline whose format is the expression.
		exprOf := func(n parse.Node) {
			switch n := n.(type) {
			case *parse.StringNode:
				claimed[n] = true
				qs = append(qs, query{where: where(n), expr: n.Text})
				return
			case *parse.PipeNode:
				if len(n.Cmds) == 1 && len(n.Cmds[0].Args) >= 2 {
					if id, ok := n.Cmds[0].Args[0].(*parse.IdentifierNode); ok && id.Ident == "printf" {
						if f, ok := n.Cmds[0].Args[1].(*parse.StringNode); ok {
							claimed[f] = true
							qs = append(qs, query{where: where(f), expr: formatVerb.ReplaceAllString(f.Text, "x")})
							return
						}
					}
				}
			}
			errs = append(errs, fmt.Errorf("%s: a query argument the checker cannot read (%s); use a string or (printf `...` ...)", where(n), n))
		}
		isIdent := func(n parse.Node, name string) bool {
			id, ok := n.(*parse.IdentifierNode)
			return ok && id.Ident == name
		}
		var visit func(parse.Node)
		visitPipe := func(p *parse.PipeNode) {
			if p == nil {
				return
			}
			for i, c := range p.Cmds {
				switch {
				case len(c.Args) >= 2 && isIdent(c.Args[0], "query"): // query EXPR
					exprOf(c.Args[1])
				case len(c.Args) == 1 && isIdent(c.Args[0], "query") && i > 0: // printf ... | query
					exprOf(&parse.PipeNode{Cmds: []*parse.CommandNode{p.Cmds[i-1]}})
				}
				for _, a := range c.Args {
					visit(a)
				}
			}
		}
		visit = func(n parse.Node) {
			switch n := n.(type) {
			case *parse.ListNode:
				if n == nil {
					return
				}
				for _, c := range n.Nodes {
					visit(c)
				}
			case *parse.TextNode:
				if m := rawGraphExpr.Find(n.Text); m != nil {
					errs = append(errs, fmt.Errorf("%s: a graph expression written as JavaScript (%q); write it as {{ `...` }} so the checks read it", where(n), m))
				}
			case *parse.ActionNode:
				// A string printed alone is a graph expression.
				if p := n.Pipe; len(p.Decl) == 0 && len(p.Cmds) == 1 && len(p.Cmds[0].Args) == 1 {
					if s, ok := p.Cmds[0].Args[0].(*parse.StringNode); ok {
						claimed[s] = true
						qs = append(qs, query{where: where(s), expr: s.Text})
					}
				}
				visitPipe(n.Pipe)
			case *parse.TemplateNode:
				// {{ template "prom_query_drilldown" (args EXPR suffix render) }}
				if n.Name == "prom_query_drilldown" {
					ok := false
					if n.Pipe != nil && len(n.Pipe.Cmds) == 1 && len(n.Pipe.Cmds[0].Args) == 1 {
						if a, isPipe := n.Pipe.Cmds[0].Args[0].(*parse.PipeNode); isPipe && len(a.Cmds) == 1 &&
							len(a.Cmds[0].Args) >= 2 && isIdent(a.Cmds[0].Args[0], "args") {
							exprOf(a.Cmds[0].Args[1])
							ok = true
						}
					}
					if !ok {
						errs = append(errs, fmt.Errorf("%s: prom_query_drilldown without (args EXPR ...)", where(n)))
					}
				}
				visitPipe(n.Pipe)
			case *parse.IfNode:
				visitPipe(n.Pipe)
				visit(n.List)
				visit(n.ElseList)
			case *parse.RangeNode:
				visitPipe(n.Pipe)
				visit(n.List)
				visit(n.ElseList)
			case *parse.WithNode:
				visitPipe(n.Pipe)
				visit(n.List)
				visit(n.ElseList)
			case *parse.PipeNode:
				visitPipe(n)
			}
		}
		visit(tree.Root)
		// What looks like PromQL and was not read as an expression would
		// escape the checks.
		var sweep func(parse.Node)
		sweep = func(n parse.Node) {
			switch n := n.(type) {
			case *parse.ListNode:
				if n != nil {
					for _, c := range n.Nodes {
						sweep(c)
					}
				}
			case *parse.ActionNode:
				sweep(n.Pipe)
			case *parse.TemplateNode:
				if n.Pipe != nil {
					sweep(n.Pipe)
				}
			case *parse.IfNode:
				sweep(n.Pipe)
				sweep(n.List)
				sweep(n.ElseList)
			case *parse.RangeNode:
				sweep(n.Pipe)
				sweep(n.List)
				sweep(n.ElseList)
			case *parse.WithNode:
				sweep(n.Pipe)
				sweep(n.List)
				sweep(n.ElseList)
			case *parse.PipeNode:
				for _, c := range n.Cmds {
					for _, a := range c.Args {
						sweep(a)
					}
				}
			case *parse.StringNode:
				if !claimed[n] && promqlLike.MatchString(n.Text) {
					errs = append(errs, fmt.Errorf("%s: %q looks like PromQL but is not a query the checker reads", where(n), n.Text))
				}
			}
		}
		sweep(tree.Root)
	}
	return qs, errors.Join(errs...)
}

// consoleQueries returns the expressions of every console page.
func consoleQueries(t *testing.T) []query {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(consolesDir, "*.html"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no console pages in %s", consolesDir)
	}
	var qs []query
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fq, err := consoleTemplateQueries(f, string(data))
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, fq...)
	}
	return qs
}

var (
	jobMatcher   = regexp.MustCompile(`\bjob\s*(=~|=)\s*"([^"]*)"`)
	routeMatcher = regexp.MustCompile(`\broute\s*(=~|=)\s*"([^"]*)"`)
	hrefHTML     = regexp.MustCompile(`href="([a-z0-9-]+\.html)"`)
)

func TestConsoles(t *testing.T) {
	for _, p := range consolePages {
		if _, err := os.Stat(filepath.Join(consolesDir, p)); err != nil {
			t.Errorf("console page %s: %v", p, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(consolesDir, "*.html"))
	if err != nil {
		t.Fatal(err)
	}

	// Jobs the demo scrapes, and routes the edge has by default.
	var promCfg struct {
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
		} `yaml:"scrape_configs"`
	}
	data, err := os.ReadFile(promConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &promCfg); err != nil {
		t.Fatalf("%s: %v", promConfig, err)
	}
	jobs := map[string]bool{}
	for _, sc := range promCfg.ScrapeConfigs {
		jobs[sc.JobName] = true
	}
	routes := map[string]bool{}
	for _, r := range config.DefaultEdge().Routes {
		routes[r.Name] = true
	}

	for _, f := range files {
		page := filepath.Base(f)
		t.Run(page, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			text := string(data)
			qs, err := consoleTemplateQueries(f, text)
			if err != nil {
				t.Fatal(err)
			}
			if len(qs) < 10 {
				t.Errorf("only %d queries found; is the page readable?", len(qs))
			}
			// prom.lib gives the head (its JS and CSS), the time control and
			// the end of the page; the graphs need all three.
			for _, tmpl := range []string{"prom_console_head", "prom_content_head", "prom_content_tail", "tail"} {
				if !strings.Contains(text, `{{ template "`+tmpl+`"`) {
					t.Errorf("does not use prom.lib's %q", tmpl)
				}
			}
			// Every page links every other (the navigation bar).
			links := map[string]bool{}
			for _, m := range hrefHTML.FindAllStringSubmatch(text, -1) {
				links[m[1]] = true
				if _, err := os.Stat(filepath.Join(consolesDir, m[1])); err != nil {
					t.Errorf("links to %s, which is not a console page: %v", m[1], err)
				}
			}
			for _, p := range consolePages {
				if !links[p] {
					t.Errorf("does not link %s", p)
				}
			}
			for _, q := range qs {
				for _, m := range jobMatcher.FindAllStringSubmatch(q.expr, -1) {
					for _, j := range strings.Split(m[2], "|") {
						if !jobs[j] {
							t.Errorf("%s: job %q is not scraped by %s (jobs %v)", q.where, j, promConfig, jobs)
						}
					}
				}
				for _, m := range routeMatcher.FindAllStringSubmatch(q.expr, -1) {
					if m[2] == "x" { // a printf verb: the route comes from a query result
						continue
					}
					for _, r := range strings.Split(m[2], "|") {
						if !routes[r] {
							t.Errorf("%s: route %q is not a route of the edge's default config", q.where, r)
						}
					}
				}
			}
		})
	}
}

// TestConsoleQueryReader feeds the reader pages whose answer is known,
// including ones it must reject, so that a reader that finds nothing (and
// so checks nothing) fails here.
func TestConsoleQueryReader(t *testing.T) {
	page := "{{ template \"prom_query_drilldown\" (args `sum(rate(a_total[1m]))` \"/s\" \"humanize\") }}\n" +
		"{{ range query `min by (upstream) (b)` | sortByLabel \"upstream\" }}\n" +
		"  {{ template \"prom_query_drilldown\" (args (printf `c{upstream=\"%s\"}` .Labels.upstream)) }}\n" +
		"{{ end }}\n" +
		"{{ with printf `d{x=\"%s\"}` .Params.x | query }}{{ . | first | value | humanize }}{{ end }}\n" +
		"<script>new PromConsole.Graph({expr: [{{ `rate(e[1m])` }}, {{ `f` }}], name: \"[[route]]\"});</script>\n"
	qs, err := consoleTemplateQueries("page.html", page)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, q := range qs {
		got = append(got, q.expr)
	}
	want := []string{`sum(rate(a_total[1m]))`, `min by (upstream) (b)`, `c{upstream="x"}`, `d{x="x"}`, `rate(e[1m])`, `f`}
	if !slices.Equal(got, want) {
		t.Fatalf("expressions %q, want %q", got, want)
	}
	if !strings.HasPrefix(qs[2].where, "page.html:3:") {
		t.Errorf("where %q, want page.html:3:...", qs[2].where)
	}

	for _, tc := range []struct{ name, page, wantErr string }{
		{"graph expression as JavaScript", `<script>new PromConsole.Graph({expr: "rate(x[1m])"});</script>`, "written as JavaScript"},
		{"graph expression list as JavaScript", `<script>new PromConsole.Graph({expr: ['x', 'y']});</script>`, "written as JavaScript"},
		{"PromQL in a variable", "{{ $q := `sum(x)` }}{{ with query $q }}{{ end }}", "looks like PromQL"},
		{"drilldown on a variable", "{{ $q := `x` }}{{ template \"prom_query_drilldown\" (args $q) }}", "cannot read"},
		{"unknown template function", "{{ humanise 1.0 }}", `function "humanise" not defined`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := consoleTemplateQueries("bad.html", tc.page)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
