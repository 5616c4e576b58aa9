package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// smokeBodyLimit caps what one smoke check reads: the first listing page is
// about 27 KB at limit=100; the smoke asks for 5 games.
const smokeBodyLimit = 1 << 20

// runSmoke is `podium smoke`: a deployer's quick check of a running stack.
// It reads only (unless -write), takes seconds, prints one row per check and
// fails when any check fails.
func runSmoke(args []string) error {
	return smoke(context.Background(), args, os.Stdout, os.Stderr)
}

// smokeCheck is one row of the smoke table.
type smokeCheck struct {
	name   string
	status int
	took   time.Duration
	err    error
	detail string
}

func smoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podium smoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	edge := fs.String("edge", "", "edge base `URL`, e.g. http://127.0.0.1:8080 (required)")
	origins := fs.String("origins", "", "comma-separated origin base `URLs` whose /ping to check directly, e.g. http://127.0.0.1:9001,http://127.0.0.1:9002")
	write := fs.Bool("write", false, "also buy one ticket through the edge (with an Idempotency-Key) on the game given by -game")
	game := fs.Int64("game", 0, "game `id` for the detail check and for -write's purchase (default: the first game of the listing)")
	email := fs.String("email", "", "email of -write's purchase (default: smoke+<unix time>@podium.example, a new buyer each run, as the origin caps seats per buyer)")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on each request")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: podium smoke -edge URL [-origins URL,URL,...] [-write -game ID]\n\n"+
			"Checks a running stack: GET /ping on the edge and on each origin, one listing\n"+
			"(/api/games) and one game (/api/games/{id}) through the edge. Nothing is written\n"+
			"unless -write, which buys one ticket. Exits non-zero when any check fails.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags only; see podium smoke -h)", fs.Arg(0))
	}
	edgeURL, err := smokeBaseURL("-edge", *edge)
	if err != nil {
		return err
	}
	var originURLs []string
	if *origins != "" {
		for _, o := range strings.Split(*origins, ",") {
			u, err := smokeBaseURL("-origins", strings.TrimSpace(o))
			if err != nil {
				return err
			}
			originURLs = append(originURLs, u)
		}
	}
	if *write && *game <= 0 {
		return errors.New("-write needs -game ID: name the game the smoke may buy a ticket for")
	}
	// One connection per target is plenty, and no proxy from the
	// environment: a smoke test must reach exactly the URLs it was given.
	client := &http.Client{
		Timeout:   *timeout,
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is an answer to report, not to follow
		},
	}
	defer client.CloseIdleConnections()
	s := &smoker{ctx: ctx, client: client}

	s.ping("edge "+edgeURL+"/ping", edgeURL)
	for _, o := range originURLs {
		s.ping("origin "+o+"/ping", o)
	}
	first := s.listing(edgeURL)
	id := *game
	if id <= 0 {
		id = first
	}
	if id > 0 {
		s.detail(edgeURL, id)
	} else {
		s.add(smokeCheck{name: "edge GET /api/games/{id}", err: errors.New("no game to read: the listing failed or was empty (or pass -game ID)")})
	}
	if *write {
		if *email == "" {
			*email = fmt.Sprintf("smoke+%d@podium.example", time.Now().UnixNano())
		}
		s.buy(edgeURL, id, *email)
	}

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tTIME\tRESULT")
	failed := 0
	for _, c := range s.checks {
		status := "-"
		if c.status != 0 {
			status = strconv.Itoa(c.status)
		}
		result := "ok"
		if c.detail != "" {
			result = "ok: " + c.detail
		}
		if c.err != nil {
			failed++
			result = "FAIL: " + c.err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.name, status, c.took.Round(100*time.Microsecond), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed (see the table above)", failed, len(s.checks))
	}
	return nil
}

// smokeBaseURL checks that raw is an absolute http(s) URL and returns it
// without a trailing slash.
func smokeBaseURL(flagName, raw string) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("%s is required: the base URL, e.g. http://127.0.0.1:8080", flagName)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%s %q is not a base URL: want http://host:port", flagName, raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

// smoker runs checks one after another and keeps their rows. Not safe for
// concurrent use.
type smoker struct {
	ctx    context.Context
	client *http.Client
	checks []smokeCheck
}

func (s *smoker) add(c smokeCheck) { s.checks = append(s.checks, c) }

// do sends one request and reads a bounded body.
func (s *smoker) do(req *http.Request) (status int, body []byte, took time.Duration, err error) {
	req.Header.Set("User-Agent", "podium-smoke")
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			err = fmt.Errorf("nothing listens at %s: is it running, and is the URL right? (%w)", req.URL.Host, err)
		}
		return 0, nil, time.Since(start), err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, smokeBodyLimit))
	return resp.StatusCode, body, time.Since(start), err
}

func (s *smoker) get(name, rawURL string) (smokeCheck, []byte) {
	c := smokeCheck{name: name}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		c.err = err
		return c, nil
	}
	var body []byte
	c.status, body, c.took, c.err = s.do(req)
	if c.err == nil && c.status != http.StatusOK {
		c.err = fmt.Errorf("want 200, got %d: %s", c.status, smokeSnippet(body))
	}
	return c, body
}

func (s *smoker) ping(name, base string) {
	c, body := s.get(name, base+"/ping")
	if c.err == nil && strings.TrimSpace(string(body)) != "pong" {
		c.err = fmt.Errorf("want pong, got %s", smokeSnippet(body))
	}
	s.add(c)
}

// smokeGame is the part of a game the smoke relies on; the full shape is
// origin/schema/game.json, checked by the contract tests.
type smokeGame struct {
	ID        int64  `json:"id"`
	Event     string `json:"event"`
	Capacity  *int64 `json:"capacity"`
	Remaining *int64 `json:"remaining"`
}

func (g smokeGame) check() error {
	switch {
	case g.ID <= 0 || g.Event == "" || g.Capacity == nil || g.Remaining == nil:
		return fmt.Errorf("game lacks id, event, capacity or remaining: %+v", g)
	case *g.Remaining < 0 || *g.Remaining > *g.Capacity:
		return fmt.Errorf("game %d has %d seats left of %d", g.ID, *g.Remaining, *g.Capacity)
	}
	return nil
}

// listing reads the first five games and returns the first id (0 on failure).
func (s *smoker) listing(base string) int64 {
	c, body := s.get("edge GET /api/games?limit=5", base+"/api/games?limit=5")
	var page struct {
		Games []smokeGame `json:"games"`
		Count *int        `json:"count"`
	}
	if c.err == nil {
		if err := json.Unmarshal(body, &page); err != nil {
			c.err = fmt.Errorf("not a listing: %v: %s", err, smokeSnippet(body))
		} else if page.Count == nil || *page.Count != len(page.Games) || len(page.Games) == 0 {
			c.err = fmt.Errorf("want a non-empty page whose count matches its games, got %d games: %s", len(page.Games), smokeSnippet(body))
		} else {
			for _, g := range page.Games {
				if err := g.check(); err != nil {
					c.err = err
					break
				}
			}
		}
	}
	var first int64
	if c.err == nil {
		first = page.Games[0].ID
		c.detail = fmt.Sprintf("%d games", len(page.Games))
	}
	s.add(c)
	return first
}

func (s *smoker) detail(base string, id int64) {
	c, body := s.get(fmt.Sprintf("edge GET /api/games/%d", id), fmt.Sprintf("%s/api/games/%d", base, id))
	if c.err == nil {
		var g smokeGame
		if err := json.Unmarshal(body, &g); err != nil {
			c.err = fmt.Errorf("not a game: %v: %s", err, smokeSnippet(body))
		} else if err := g.check(); err != nil {
			c.err = err
		} else if g.ID != id {
			c.err = fmt.Errorf("asked for game %d, got game %d", id, g.ID)
		} else {
			c.detail = fmt.Sprintf("%q, %d of %d seats left", g.Event, *g.Remaining, *g.Capacity)
		}
	}
	s.add(c)
}

// buy purchases one ticket with a fresh Idempotency-Key, so that the edge
// may retry it safely and a retried smoke never buys twice by accident.
func (s *smoker) buy(base string, id int64, email string) {
	c := smokeCheck{name: fmt.Sprintf("edge POST /api/games/%d/buy", id)}
	defer func() { s.add(c) }()
	var key [12]byte
	_, _ = rand.Read(key[:]) // never fails (crypto/rand documents it)
	payload, _ := json.Marshal(map[string]any{"quantity": 1, "email": email})
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, fmt.Sprintf("%s/api/games/%d/buy", base, id), bytes.NewReader(payload))
	if err != nil {
		c.err = err
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "smoke-"+hex.EncodeToString(key[:]))
	var body []byte
	c.status, body, c.took, c.err = s.do(req)
	if c.err != nil {
		return
	}
	if c.status != http.StatusCreated {
		c.err = fmt.Errorf("want 201, got %d: %s", c.status, smokeSnippet(body))
		return
	}
	var order struct {
		OrderID int64    `json:"order_id"`
		Tickets []string `json:"tickets"`
	}
	if err := json.Unmarshal(body, &order); err != nil || order.OrderID <= 0 || len(order.Tickets) != 1 {
		c.err = fmt.Errorf("want an order with one ticket, got %s", smokeSnippet(body))
		return
	}
	c.detail = fmt.Sprintf("order %d, ticket %s", order.OrderID, order.Tickets[0])
}

// smokeSnippet shortens a body for a table cell.
func smokeSnippet(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	if s == "" {
		return "(empty body)"
	}
	return strconv.Quote(s)
}
