package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// artifactsDir holds one PNG per browser step (gitignored).
const artifactsDir = "artifacts"

// chromiumPath is Debian's chromium; PODIUM_CHROMIUM overrides it.
func chromiumPath(t testing.TB) string {
	t.Helper()
	p := os.Getenv("PODIUM_CHROMIUM")
	if p == "" {
		p = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(p); err != nil {
		t.Fatalf("Chromium not found at %s (%v): install it with e2e/install-chromium.sh "+
			"(apt-get install -y chromium), or set PODIUM_CHROMIUM to a Chromium binary", p, err)
	}
	return p
}

// browser is one headless Chromium with a fresh profile.
type browser struct {
	t   *testing.T
	ctx context.Context
}

// newBrowser starts Chromium with the flags above and extra (for example
// JavaScript off: chromedp.Flag("blink-settings", "scriptEnabled=false")).
func newBrowser(t *testing.T, extra ...chromedp.ExecAllocatorOption) *browser {
	t.Helper()
	// Not t.TempDir: Chromium's helper processes may still write to the
	// profile for a moment after the browser is closed, and TempDir's
	// cleanup would fail the test on that.
	profile, err := os.MkdirTemp("", "podium-e2e-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// The machine has no internet: without these Chromium keeps
		// dialling Google's update, sync and safe-browsing hosts.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	}
	opts = append(opts, extra...)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		_ = chromedp.Cancel(ctx) // closes the browser and waits for it
		cancelCtx()
		cancelAlloc()
		for range 20 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("could not remove the Chromium profile %s", profile)
	})
	if err := os.MkdirAll(artifactsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The first Run starts Chromium and ties it to the context it is given,
	// so it must get ctx itself, not run's per-step timeout (whose cancel
	// would close the browser). A watchdog bounds the start instead.
	started := make(chan error, 1)
	go func() { started <- chromedp.Run(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting Chromium: %v", err)
		}
	case <-time.After(30 * time.Second):
		cancelCtx()
		t.Fatal("starting Chromium: no answer after 30 s")
	}
	return &browser{t: t, ctx: ctx}
}

// run runs actions with a bound, failing the test with what was being done.
func (b *browser) run(what string, actions ...chromedp.Action) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		b.screenshot("failed-" + sanitize(what))
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

func sanitize(s string) string {
	return strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(s), "-"), "-")
}

// screenshot saves the viewport as artifacts/NAME.png.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	var png []byte
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, chromedp.CaptureScreenshot(&png)); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(artifactsDir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
	}
}

// markPage tags the current document, so that waitNewPage can tell the
// page a click leads to from the one it was clicked on (both may hold the
// element a step waits for, e.g. the buy form and its refusal).
func markPage() chromedp.Action {
	return chromedp.Evaluate(`document.documentElement.dataset.e2eOld = "1"`, nil)
}

// waitNewPage waits for a document without markPage's tag that shows sel.
func waitNewPage(sel string) chromedp.Action {
	return chromedp.WaitVisible(`html:not([data-e2e-old]) `+sel, chromedp.ByQuery)
}

// page is what a step reads off the page the browser shows.
type page struct {
	URL, Title, H1, Text string
}

func (b *browser) page() page {
	b.t.Helper()
	var p page
	b.run("reading the page", chromedp.Evaluate(`({
		URL: location.href, Title: document.title,
		H1: (document.querySelector('h1') || {}).textContent || '',
		Text: document.body ? document.body.innerText : ''})`, &p))
	return p
}

// mustBeSitePage fails when the browser shows its own error page (a
// chrome-error:// document) or a page that is not one of Podium's.
func (b *browser) mustBeSitePage(p page, wantH1 string) {
	b.t.Helper()
	if strings.HasPrefix(p.URL, "chrome-error:") || strings.Contains(p.Text, "ERR_") {
		b.t.Fatalf("the browser shows its own error page at %s: %.300s", p.URL, p.Text)
	}
	if !strings.Contains(p.Title, "Podium") && !strings.Contains(p.Text, "Podium") {
		b.t.Errorf("page %s is not one of Podium's (title %q): %.300s", p.URL, p.Title, p.Text)
	}
	if wantH1 != "" && strings.TrimSpace(p.H1) != wantH1 {
		b.t.Errorf("page %s: h1 %q, want %q; text: %.300s", p.URL, p.H1, wantH1, p.Text)
	}
}

// listedSeats reads the "Seats left" cell of game id on the /games page.
func (b *browser) listedSeats(id int64) string {
	b.t.Helper()
	var seats string
	b.run(fmt.Sprintf("reading the seats of game %d on the listing", id), chromedp.Evaluate(fmt.Sprintf(`(() => {
		const a = document.querySelector('a[href="/games/%d"]');
		if (!a) return 'no such row';
		a.scrollIntoView({block: 'center'});
		return a.closest('tr').querySelectorAll('td.num')[0].textContent.trim();
	})()`, id), &seats))
	return seats
}

// testBrowser walks the site through the edge as a fan does.
func testBrowser(t *testing.T, s *stack, buyGame, soldOutGame int64) {
	b := newBrowser(t)
	edge := s.edgeURL

	// 1. The listing.
	b.run("opening /games", chromedp.Navigate(edge+"/games"), chromedp.WaitVisible(`h1`, chromedp.ByQuery))
	b.mustBeSitePage(b.page(), "All sessions")
	before := b.listedSeats(buyGame)
	seatsBefore, err := strconv.Atoi(before)
	if err != nil {
		t.Fatalf("seats left of game %d on /games: %q, want a number", buyGame, before)
	}
	b.screenshot("01-listing")

	// 2. One game, reached by its link.
	b.run("opening the game from the listing",
		markPage(),
		chromedp.Click(fmt.Sprintf(`a[href="/games/%d"]`, buyGame), chromedp.ByQuery),
		waitNewPage(`a.button`))
	p := b.page()
	b.mustBeSitePage(p, "")
	if !strings.HasSuffix(p.URL, fmt.Sprintf("/games/%d", buyGame)) || !strings.Contains(p.Text, "Seats left") {
		t.Fatalf("game page: %s: %.400s", p.URL, p.Text)
	}
	b.screenshot("02-game")

	// 3. The form: two tickets.
	b.run("opening the buy form",
		markPage(),
		chromedp.Click(`a.button`, chromedp.ByQuery),
		waitNewPage(`#quantity`),
		chromedp.SetValue(`#quantity`, "2", chromedp.ByQuery),
		chromedp.SetValue(`#email`, "fan@podium.example", chromedp.ByQuery))
	b.mustBeSitePage(b.page(), "Buy tickets")
	b.screenshot("03-buy-form")
	// Replicas on loopback catch up in milliseconds, so the listing would
	// show the purchase with or without the podium_gtid cookie. With
	// replication paused, it shows it only through the cookie: the origin
	// waits for the purchase's GTID on a replica, times out, and reads
	// from the primary.
	resume := s.pauseReplication(t)
	b.run("submitting the form",
		markPage(),
		chromedp.Click(`form button[type=submit]`, chromedp.ByQuery),
		waitNewPage(`ul.tickets`))
	p = b.page()
	b.mustBeSitePage(p, "Your tickets")
	var tickets []string
	b.run("reading the ticket numbers", chromedp.Evaluate(
		`[...document.querySelectorAll('ul.tickets li')].map(li => li.textContent.trim())`, &tickets))
	ticketRE := regexp.MustCompile(fmt.Sprintf(`^PAR24-%04d-\d{8}-0[12]$`, buyGame))
	if len(tickets) != 2 || tickets[0] == tickets[1] {
		t.Errorf("confirmation lists tickets %q, want two distinct", tickets)
	}
	for _, tk := range tickets {
		if !ticketRE.MatchString(tk) {
			t.Errorf("ticket number %q does not match %s", tk, ticketRE)
		}
	}
	if !strings.Contains(p.Text, "2 tickets") {
		t.Errorf("confirmation does not say 2 tickets: %.400s", p.Text)
	}
	b.screenshot("04-confirmation")

	// 4. The listing again. The browser may still hold its own copy
	// (max-age=2), so the fan reloads, which revalidates with the edge: the
	// purchase went through this edge, which purged its cached /games, and
	// the origin reads at or after the purchase (the podium_gtid cookie),
	// so the drop shows at once.
	b.run("opening /games after the purchase",
		markPage(), chromedp.Click(`a[href="/games"]`, chromedp.ByQuery), waitNewPage(`h1`),
		markPage(), chromedp.Reload(), waitNewPage(`h1`))
	b.mustBeSitePage(b.page(), "All sessions")
	if got := b.listedSeats(buyGame); got != strconv.Itoa(seatsBefore-2) {
		t.Errorf("seats left of game %d after buying 2: %q, want %d (without the podium_gtid cookie's wait, a paused replica answers)", buyGame, got, seatsBefore-2)
	}
	b.screenshot("05-listing-after-purchase")
	// Not vacuous: without the GTID, the same read is stale, so the
	// replicas really were behind while the browser read.
	if seats := originSeats(t, s, buyGame); seats != int64(seatsBefore) {
		t.Errorf("game %d read from an origin without the GTID while replication is paused: %d seats left, want the stale %d", buyGame, seats, seatsBefore)
	}
	resume()
	if seats := originSeats(t, s, buyGame); seats != int64(seatsBefore-2) {
		t.Errorf("game %d read from an origin once the replicas caught up: %d seats left, want %d", buyGame, seats, seatsBefore-2)
	}

	// 5. A session that sells out while the fan fills the form: the form
	// comes back with a clear message, and nothing is sold.
	b.run("opening the buy form of the game about to sell out",
		chromedp.Navigate(fmt.Sprintf("%s/games/%d/buy", edge, soldOutGame)),
		chromedp.WaitVisible(`#quantity`, chromedp.ByQuery),
		chromedp.SetValue(`#quantity`, "1", chromedp.ByQuery),
		chromedp.SetValue(`#email`, "late@podium.example", chromedp.ByQuery))
	sellOut(t, s, soldOutGame)
	b.run("submitting the form for a sold-out game",
		markPage(),
		chromedp.Click(`form button[type=submit]`, chromedp.ByQuery),
		waitNewPage(`p.error`))
	p = b.page()
	b.mustBeSitePage(p, "Buy tickets")
	if !strings.Contains(p.Text, "sold out") {
		t.Errorf("sold-out purchase: no clear message: %.500s", p.Text)
	}
	if strings.Contains(p.Text, "Your tickets") {
		t.Errorf("sold-out purchase shows a confirmation: %.500s", p.Text)
	}
	b.screenshot("06-sold-out")

	// 6. An unknown game: the site's own 404.
	b.run("opening an unknown game", chromedp.Navigate(edge+"/games/99999"), chromedp.WaitVisible(`h1`, chromedp.ByQuery))
	p = b.page()
	b.mustBeSitePage(p, "Page not found")
	if !strings.Contains(p.Text, "There is no session 99999") {
		t.Errorf("404 page: %.300s", p.Text)
	}
	if resp, _ := s.get(t, edge+"/games/99999"); resp.StatusCode != 404 {
		t.Errorf("GET /games/99999 via the edge: %d, want 404", resp.StatusCode)
	}
	b.screenshot("07-not-found")
}

// originSeats reads a game's seats left from an origin directly, without
// a GTID: what a replica in rotation holds.
func originSeats(t *testing.T, s *stack, id int64) int64 {
	t.Helper()
	resp, body := s.get(t, fmt.Sprintf("%s/api/games/%d", s.originURLs[0], id))
	var g struct{ Remaining *int64 }
	if err := json.Unmarshal(body, &g); resp.StatusCode != 200 || err != nil || g.Remaining == nil {
		t.Fatalf("GET /api/games/%d from an origin: %d %.200s", id, resp.StatusCode, body)
	}
	return *g.Remaining
}

// testBrowserOriginsDown stops every origin and checks that the browser
// gets the edge's own error page for what it never cached, and the stale
// listing (X-Cache: STALE) for what it did: never a browser error page.
func testBrowserOriginsDown(t *testing.T, s *stack) {
	// A last good copy of the listing, fetched as a first-time visitor.
	if resp, body := s.get(t, s.edgeURL+"/games"); resp.StatusCode != 200 {
		t.Fatalf("GET /games before the outage: %d %.200s", resp.StatusCode, body)
	}
	b := newBrowser(t)
	s.stopOrigins(t)

	// Wait (bounded) until the edge no longer reaches any origin: a page it
	// never cached then gets its error page.
	uncached := s.edgeURL + "/games/7"
	deadline := time.Now().Add(20 * time.Second)
	status := 0
	for time.Now().Before(deadline) {
		resp, _ := s.get(t, uncached)
		if status = resp.StatusCode; status >= 500 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if status != 502 && status != 503 && status != 504 {
		t.Fatalf("GET /games/7 with every origin stopped: %d, want 502, 503 or 504", status)
	}
	b.run("opening an uncached page with every origin down", chromedp.Navigate(uncached), chromedp.WaitVisible(`h1`, chromedp.ByQuery))
	p := b.page()
	b.mustBeSitePage(p, "")
	if !strings.Contains(p.Text, "The ticket service is") || !strings.Contains(p.Text, "Back to the games") {
		t.Errorf("origins down: not the edge's error page: %.400s", p.Text)
	}
	b.screenshot("08-origins-down-error-page")

	// /games was cached fresh for its 2 s TTL before the outage; once that
	// has run out, the edge has only its last good copy to serve.
	resp, _ := s.get(t, s.edgeURL+"/games")
	for i := 0; i < 50 && resp.Header.Get("X-Cache") == "HIT"; i++ {
		time.Sleep(200 * time.Millisecond)
		resp, _ = s.get(t, s.edgeURL+"/games")
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "STALE" {
		t.Errorf("GET /games with every origin stopped: %d X-Cache %q, want 200 STALE", resp.StatusCode, resp.Header.Get("X-Cache"))
	}
	b.run("opening /games with every origin down", chromedp.Navigate(s.edgeURL+"/games"), chromedp.WaitVisible(`h1`, chromedp.ByQuery))
	p = b.page()
	b.mustBeSitePage(p, "")
	if p.H1 != "All sessions" && !strings.Contains(p.Text, "The ticket service is") {
		t.Errorf("/games with every origin down: neither the stale listing nor the error page: %.400s", p.Text)
	}
	b.screenshot("09-origins-down-listing")
}
