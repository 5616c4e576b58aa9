package origin

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// The parsers of untrusted input, fuzzed (STYLE.md habit 15). Their seed
// corpora hold the attacks of issue 22, so that under plain `go test` they
// run as regression tests; `go test -run '^$' -fuzz=FuzzX -fuzztime=30s
// ./origin/` explores from there. None needs the database.

// fuzzServer is a Server with the default config and nothing else: enough
// for the parsers, which touch no database.
func fuzzServer() *Server { return &Server{cfg: Config{}.withDefaults()} }

// FuzzBuyBody: the JSON of POST /api/games/{id}/buy. Whatever the bytes,
// the answer is an order that passes every check, or a 400, 413 or 422 with
// a message; never a panic.
func FuzzBuyBody(f *testing.F) {
	for _, seed := range []string{
		`{"quantity": 2, "email": "fan@example.com"}`,
		`{"quantity": 2, "email": "victim@example.com"}`, // issue 22.2's cross-site order, as JSON
		`{"quantity": 9, "email": "greedy@example.com"}`, // past the per-buyer limit (22.2d)
		`{"quantity": 1, "email": "a@example.com"} {}`,
		`{"quantity": 1, "email": "a@example.com", "seat": "A1"}`,
		`{"quantity": "1", "email": "a@example.com"}`,
		`{"quantity": 1e400, "email": "a@example.com"}`,
		`{"quantity": -9223372036854775808, "email": "a@example.com"}`,
		`{"quantity": 1, "email": "Fan <fan@example.com>"}`,
		`{"quantity": 1, "email": "a@example.com\r\nBcc: b@example.com"}`,
		`{"quantity": 1, "email": "\u0000@example.com"}`,
		`{"quantity": 1, "email": "fan@[127.0.0.1]"}`,
		`{"quantity": 1, "email": "` + strings.Repeat("a", 250) + `@example.com"}`,
		`{"quantity": 1, "email": "a@example.com", "x": "` + strings.Repeat("x", 5000) + `"}`,
		`{"quantity":`, ``, `[1, 2]`, `null`, `{"QUANTITY": 1, "Email": "a@example.com"}`,
		"\xff\xfe{}",
	} {
		f.Add([]byte(seed))
	}
	s := fuzzServer()
	f.Fuzz(func(t *testing.T, body []byte) {
		q, email, status, msg := s.decodeBuyBody(http.MaxBytesReader(nil, io.NopCloser(bytes.NewReader(body)), maxBuyBody))
		switch status {
		case 0:
			if msg != "" || s.validateQuantity(q) != "" || validateEmail(email) != "" {
				t.Fatalf("accepted %q: quantity %d, email %q, message %q", body, q, email, msg)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
			if msg == "" {
				t.Fatalf("refused %q with %d and no message", body, status)
			}
			jsonBody(errorBody{Error: msg, RequestID: "r"}) // the answer can be written
		default:
			t.Fatalf("%q: status %d", body, status)
		}
	})
}

// FuzzBuyForm: the buy form's POST body and the visitor cookie beside it.
// The fields read into an order that passes every check or a message for
// the fan; a form token is accepted only when it is the one this key signed
// for this game and visitor.
func FuzzBuyForm(f *testing.F) {
	key := []byte(strings.Repeat("k", 32))
	now := time.Unix(1_780_000_000, 0)
	visitorID := "AAAAAAAAAAAAAAAAAAAAAA"
	good := signFormToken(key, 7, now, visitorID)
	for _, seed := range []struct{ body, cookie string }{
		{"quantity=2&email=fan%40example.com&idempotency_key=k1&form_token=" + url.QueryEscape(good), visitorID},
		// Issue 22.2: the cross-site form, with no token, or an attacker's.
		{"quantity=2&email=victim%40example.com", ""},
		{"quantity=2&email=victim%40example.com&form_token=" + url.QueryEscape(signFormToken(key, 7, now, "BBBBBBBBBBBBBBBBBBBBBB")), visitorID},
		{"quantity=2&email=victim%40example.com&form_token=1.%25%25%25%25", visitorID},
		// The good token spelled otherwise: one spelling per token.
		{"quantity=2&email=fan%40example.com&form_token=%2B" + url.QueryEscape(good), visitorID},
		{"quantity=2&email=fan%40example.com&form_token=0" + url.QueryEscape(good), visitorID},
		{"quantity=2&email=victim%40example.com&form_token=99999999999999999999." + strings.Repeat("A", 22), visitorID},
		{"quantity=2&email=victim%40example.com&form_token=-1." + strings.Repeat("A", 22), visitorID},
		{"quantity=99999999999999999999&email=a%40example.com", visitorID},
		{"quantity=-1&email=a%40example.com", visitorID},
		{"quantity=+2&email=a%40example.com", visitorID},
		{"quantity=2&email=a%40example.com%0D%0ABcc%3A+b%40example.com", visitorID},
		{"quantity=2&email=a%40example.com&idempotency_key=has+space", visitorID},
		{"quantity=2&quantity=3&email=a%40example.com&email=b%40example.com", visitorID},
		{"%zz=1&;=;", "\x00"},
	} {
		f.Add(seed.body, seed.cookie)
	}
	s := fuzzServer()
	f.Fuzz(func(t *testing.T, body, cookie string) {
		fields, err := url.ParseQuery(body)
		if err != nil {
			return // ParseForm refuses it: a 400 with the form again
		}
		in := s.readBuyForm(fields)
		if in.Problem == "" {
			if s.validateQuantity(in.Quantity) != "" || validateEmail(in.Email) != "" || (in.Key != "" && !validIdempotencyKey(in.Key)) {
				t.Fatalf("accepted %q: %+v", body, in)
			}
		}
		if checkFormToken(key, in.Token, 7, cookie, now) == nil {
			// Accepted: then it is, byte for byte, the token this key signs
			// for this game and visitor at its issue time, and that time
			// is within the window.
			ts, _, _ := strings.Cut(in.Token, ".")
			sec, err := strconv.ParseInt(ts, 10, 64)
			issued := time.Unix(sec, 0)
			if err != nil || signFormToken(key, 7, issued, cookie) != in.Token || !validVisitorID(cookie) ||
				now.Sub(issued) > formTokenTTL || issued.Sub(now) > formTokenSkew {
				t.Fatalf("token %q for visitor %q accepted", in.Token, cookie)
			}
		}
	})
}

// FuzzListingQuery: the query string of GET /api/games (and the sport of
// /games). What it accepts lies within the bounds the database takes, so
// that no client value can make a replica's query fail (issue 22.3).
func FuzzListingQuery(f *testing.F) {
	cursor := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, seed := range []string{
		"limit=97", "sport=Athletics&date=2024-08-04", "after=" + cursor("1721826000.2") + "&limit=100",
		// Issue 22.3's attacks.
		"date=0000-01-01", "date=9999-12-31", "date=10000-01-01", "date=0999-12-31",
		"after=" + cursor("4611686018427387904.1"), "after=" + cursor("9223372036854775807.1"),
		"after=" + cursor("-62167219200.1"), "after=" + cursor("253402300800.1"), "after=" + cursor("-9223372036854775808.1"),
		"after=" + cursor("1721826000.0"), "after=" + cursor("1721826000.-1"), "after=" + cursor("."), "after=%21%21",
		"sport=%FF%FE", "sport=Judo%00", "sport=" + strings.Repeat("x", 65), "sport=%E2%80%AE",
		"limit=0", "limit=501", "limit=-1", "limit=99999999999999999999", "limit=1e3",
		"date=2024-02-30", "date=2024-8-4", "date=+2024-08-04",
	} {
		f.Add(seed)
	}
	s := fuzzServer()
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := s.listingQuery(q)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("%q: refused without a message", raw)
			}
			return
		}
		inRange := func(tm time.Time) bool {
			return tm.IsZero() || (!tm.Before(minListingTime) && !tm.After(maxListingTime))
		}
		if !inRange(flt.From) || !inRange(flt.To) || (flt.AfterID != 0 && !inRange(flt.AfterStart)) {
			t.Fatalf("%q: accepted times out of range: %+v", raw, flt)
		}
		if flt.Limit < 1 || flt.Limit > MaxPageLimit || flt.AfterID < 0 {
			t.Fatalf("%q: accepted %+v", raw, flt)
		}
		if len(flt.Sport) > 64 || !utf8.ValidString(flt.Sport) || strings.ContainsFunc(flt.Sport, unicode.IsControl) {
			t.Fatalf("%q: accepted sport %q", raw, flt.Sport)
		}
		if flt.AfterID != 0 {
			// A cursor read back encodes to one that reads the same.
			st, id, err := decodeCursor(encodeCursor(Game{StartsAt: flt.AfterStart, ID: flt.AfterID}))
			if err != nil || !st.Equal(flt.AfterStart) || id != flt.AfterID {
				t.Fatalf("%q: cursor does not round-trip: %v %d %v", raw, st, id, err)
			}
		}
	})
}

// FuzzGTID: the X-Podium-GTID header and podium_gtid cookie. What parseGTID
// accepts formats back to a canonical text that parses to the same
// position, with at most one component per domain; the checks against the
// cluster's position never panic.
func FuzzGTID(f *testing.F) {
	for _, seed := range []string{
		"0-1-42", "0-1-42,1-2-7", "007-01-0042",
		// Issue 22.4's attacks: a domain the cluster lacks, a position from
		// the future, numbers past their types, a domain twice.
		"99-1-1", "0-1-1,99-1-1", "0-1-18446744073709551615", "0-1-18446744073709551616",
		"4294967296-1-1", "0-4294967296-1", "0-1-1,0-1-2",
		"1; DROP TABLE games", "0-1-42, 1-2-7", "-1-1-1", "0-1-+1", "0-1-1,", strings.Repeat("0-1-1,", 16) + "0-1-1",
	} {
		f.Add(seed)
	}
	var pos primaryPosition
	pos.merge(gtidPos{{Domain: 0, Server: 1, Seq: 100}})
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseGTID(raw)
		if err != nil {
			if validGTID(raw) {
				t.Fatalf("%q: validGTID disagrees with parseGTID", raw)
			}
			return
		}
		if len(p) == 0 || len(p) > maxGTIDDomains {
			t.Fatalf("%q: %d components", raw, len(p))
		}
		seen := map[uint32]bool{}
		for _, c := range p {
			if seen[c.Domain] {
				t.Fatalf("%q: domain %d twice", raw, c.Domain)
			}
			seen[c.Domain] = true
		}
		canon := p.String()
		again, err := parseGTID(canon)
		if err != nil || again.String() != canon {
			t.Fatalf("%q: canonical %q parses to %v, %v", raw, canon, again, err)
		}
		if strings.ContainsFunc(canon, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '-' || r == ',') }) {
			t.Fatalf("%q: canonical form %q holds other characters", raw, canon)
		}
		pos.covers(p)
	})
}
