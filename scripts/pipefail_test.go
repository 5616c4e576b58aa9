// Package scripts holds the shell scripts that install and run Podium's
// stack; its tests check the scripts themselves.
package scripts

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// earlyExit matches a pipe into a reader that may stop reading before the
// writer is done: `| head`, `| grep -q`, `| grep -m N`, `| grep -l`. Under
// `set -o pipefail` the writer then dies of SIGPIPE and the whole pipeline
// fails with 141, on a timing that depends on the writer's output size and
// scheduling: `scripts/consul.sh build` failed about 1 run in 8 that way on
// a fresh machine (`consul version | head -1`).
var earlyExit = regexp.MustCompile(`\|\s*(head\b|grep\s+(-[a-zA-Z]*[qlm]|--quiet|--max-count|--files-with-matches))`)

// TestNoEarlyExitPipesUnderPipefail audits every shell script in the
// repository that turns pipefail on.
func TestNoEarlyExitPipesUnderPipefail(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "-C", root, "ls-files", "*.sh", ".ci/run", ".githooks/*").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	files := strings.Fields(string(out))
	if len(files) < 5 {
		t.Fatalf("found only %d scripts (%v); the audit would check nothing", len(files), files)
	}
	checked := 0
	for _, f := range files {
		body, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), "pipefail") {
			continue
		}
		checked++
		for _, hit := range earlyExitLines(string(body)) {
			t.Errorf("%s:%d: a pipe into a reader that exits early fails under pipefail (SIGPIPE, exit 141); use a command substitution: %s", f, hit.line, hit.text)
		}
	}
	if checked == 0 {
		t.Fatal("no script sets pipefail; the audit checked nothing")
	}
}

type scriptLine struct {
	line int
	text string
}

// earlyExitLines returns the lines of a script, comments left out, that pipe
// into an early-exiting reader.
func earlyExitLines(script string) []scriptLine {
	var hits []scriptLine
	sc := bufio.NewScanner(strings.NewReader(script))
	for n := 1; sc.Scan(); n++ {
		code := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(code, "#") {
			continue
		}
		if earlyExit.MatchString(code) {
			hits = append(hits, scriptLine{n, code})
		}
	}
	return hits
}

// TestEarlyExitPattern keeps the audit honest: it must find the lines that
// failed before, and pass the forms that replaced them.
func TestEarlyExitPattern(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{`"$bin" version | head -1 >&2`, true},
		{`dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")`, true},
		{`if ! apt-cache policy mariadb-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then`, true},
		{`x | grep -m1 foo`, true},
		{`x | grep --quiet foo`, true},
		{`x |head -c 10`, true},
		{`random_password() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }`, false},
		{`v=$("$bin" version)`, false},
		{`out=$(git ls-files | grep -v vendor)`, false},
		{`# "$bin" version | head -1`, false},
	} {
		got := len(earlyExitLines(tc.line)) > 0
		if got != tc.want {
			t.Errorf("%q: flagged %v, want %v", tc.line, got, tc.want)
		}
	}
}

// TestFirstLineWithoutHead runs the exact form consul.sh uses against a
// writer that prints far more than a pipe holds: with `| head -1` under
// pipefail this fails every time; the command substitution never does.
func TestFirstLineWithoutHead(t *testing.T) {
	const writer = `seq -f 'Consul v1.15.4 (line %g)' 100000`
	for _, tc := range []struct {
		name, script string
		ok           bool
	}{
		{"pipe into head", `set -euo pipefail; ` + writer + ` | head -1`, false},
		{"command substitution", `set -euo pipefail; v=$(` + writer + `); echo "${v%%$'\n'*}"`, true},
	} {
		out, err := exec.Command("bash", "-c", tc.script).Output()
		if got := err == nil; got != tc.ok {
			t.Errorf("%s: succeeded %v, want %v (err %v)", tc.name, got, tc.ok, err)
		}
		if tc.ok && strings.TrimSpace(string(out)) != "Consul v1.15.4 (line 1)" {
			t.Errorf("%s: printed %q, want the first line", tc.name, out)
		}
	}
}
