package origin

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// GTIDHeader carries the GTID of a purchase's commit in its answer, and a
// client's last write in a later read that must see it.
const GTIDHeader = "X-Podium-GTID"

// SoldOutHeader says, on the answer to a purchase or a buy page, that the
// game has no seat left. The edge's waiting room reads it to stop queueing
// fans for a game they can no longer buy (proxy/waitroom.go). It is set
// only when no seat is left, never for "fewer seats left than asked".
const SoldOutHeader = "X-Podium-Sold-Out"

// GTIDCookie is GTIDHeader's twin for the pages.
const GTIDCookie = "podium_gtid"

// maxBuyBody bounds a purchase body: {"quantity": n, "email": "..."} is
// under 300 bytes with any legal email.
const maxBuyBody = 4 << 10

// writeJSON sends body (already JSON) with status.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client went away; nothing to do
}

// apiError sends {"error": msg, "request_id": ...} with status.
func apiError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if status >= 500 || status == http.StatusConflict {
		w.Header().Set("Cache-Control", "no-store")
	}
	writeJSON(w, status, jsonBody(errorBody{Error: msg, RequestID: requestID(r)}))
}

func (s *Server) apiNotFound(w http.ResponseWriter, r *http.Request) {
	apiError(w, r, http.StatusNotFound, fmt.Sprintf("no such endpoint %s; the API is GET /api/games, GET /api/games/{id}, POST /api/games/{id}/buy", r.URL.Path))
}

func (s *Server) methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		apiError(w, r, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s; use %s", r.Method, r.URL.Path, allow))
	}
}

// serverError answers a failure of the databases or of the origin itself:
// 503 with Retry-After when no database could serve, 500 otherwise.
func (s *Server) serverError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusInternalServerError, "internal error; it has been logged with the request id"
	if errors.Is(err, ErrUnavailable) {
		status, msg = http.StatusServiceUnavailable, "the ticket database is unavailable; retry in a few seconds"
		w.Header().Set("Retry-After", "2")
	}
	s.log.Warn("origin: request failed", "request_id", requestID(r), "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	if isAPI(r) {
		apiError(w, r, status, msg)
		return
	}
	s.pages.renderError(w, r, status, msg)
}

// readGTID returns the GTID a read must observe, checked against the
// cluster (cluster.checkGTID) and in canonical form: the API's header, or
// the pages' cookie. A header that is malformed or outside the cluster
// returns the message of a 400 (a client bug worth reporting); such a
// cookie is ignored, as a browser cannot fix it.
func (s *Server) readGTID(r *http.Request) (gtid, problem string) {
	if h := r.Header.Get(GTIDHeader); h != "" {
		gtid, err := s.db.checkGTID(r.Context(), h)
		var refused errGTIDRefused
		switch {
		case errors.As(err, &refused):
			return "", fmt.Sprintf("%s: %.80q %s", GTIDHeader, h, refused.msg)
		case err != nil:
			return "", GTIDHeader + ": " + err.Error()
		}
		return gtid, ""
	}
	if c, err := r.Cookie(GTIDCookie); err == nil {
		if gtid, err := s.db.checkGTID(r.Context(), c.Value); err == nil {
			return gtid, ""
		}
	}
	return "", ""
}

// The listing's times are bounded by MariaDB's DATETIME, 1000-01-01 to
// 9999-12-31 (the range the server documents as supported): outside it the
// driver cannot even encode a parameter (year 0, year 10000), and a failed
// encoding used to set every replica aside as if it had failed.
var (
	minListingTime = time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxListingTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// parseSport normalises the sport filter. A name longer than the column,
// not UTF-8, or holding a control character is a message for a 400: no
// sport is called that, and the database need not be asked.
func parseSport(raw string) (string, error) {
	sport := strings.TrimSpace(raw)
	if len(sport) > 64 {
		return "", errors.New("sport: at most 64 characters")
	}
	if !utf8.ValidString(sport) || strings.ContainsFunc(sport, unicode.IsControl) {
		return "", errors.New("sport: not a sport name; the names are those of GET /api/games, e.g. sport=Athletics")
	}
	return sport, nil
}

// listingQuery parses the listing's query string. Each problem is a message
// for a 400. What it returns is within the bounds the database can take:
// no value a client sends reaches a query that could fail because of it.
func (s *Server) listingQuery(q url.Values) (gameFilter, error) {
	f := gameFilter{Limit: DefaultPageLimit}
	sport, err := parseSport(q.Get("sport"))
	if err != nil {
		return f, err
	}
	f.Sport = sport
	if d := q.Get("date"); d != "" {
		day, err := time.Parse(time.DateOnly, d)
		if err != nil {
			return f, fmt.Errorf("date: want YYYY-MM-DD (a UTC day), got %q", d)
		}
		if day.Before(minListingTime) || day.After(maxListingTime) {
			return f, fmt.Errorf("date: want a day between %s and %s, got %q", minListingTime.Format(time.DateOnly), maxListingTime.Format(time.DateOnly), d)
		}
		f.From, f.To = day, day.AddDate(0, 0, 1)
		if f.To.After(maxListingTime) {
			f.To = time.Time{} // the last day a DATETIME holds: no upper bound needed
		}
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxPageLimit {
			return f, fmt.Errorf("limit: want an integer 1..%d, got %q", MaxPageLimit, l)
		}
		f.Limit = n
	}
	if a := q.Get("after"); a != "" {
		start, id, err := decodeCursor(a)
		if err != nil {
			return f, fmt.Errorf("after: not a cursor from a previous page's \"next\" (%w)", err)
		}
		f.AfterStart, f.AfterID = start, id
	}
	return f, nil
}

// A cursor is the (starts_at, id) of the last game of a page, opaque to
// clients so the ordering key can change without breaking their links.
func encodeCursor(g Game) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d.%d", g.StartsAt.Unix(), g.ID))
}

// decodeCursor reads a cursor back. A cursor is client input like any
// other: its time must lie in the range a DATETIME holds.
func decodeCursor(s string) (time.Time, int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return time.Time{}, 0, errors.New("malformed")
	}
	ts, id, ok := strings.Cut(string(b), ".")
	sec, err1 := strconv.ParseInt(ts, 10, 64)
	n, err2 := strconv.ParseInt(id, 10, 64)
	if !ok || err1 != nil || err2 != nil || n <= 0 {
		return time.Time{}, 0, errors.New("malformed")
	}
	if sec < minListingTime.Unix() || sec > maxListingTime.Unix() {
		return time.Time{}, 0, errors.New("time out of range")
	}
	return time.Unix(sec, 0).UTC(), n, nil
}

// gameList is the body of GET /api/games.
type gameList struct {
	Games []Game `json:"games"`
	Count int    `json:"count"`
	// Next is the URL of the following page, absent on the last one.
	Next string `json:"next,omitempty"`
}

func (s *Server) apiListGames(w http.ResponseWriter, r *http.Request) {
	gtid, problem := s.readGTID(r)
	if problem != "" {
		apiError(w, r, http.StatusBadRequest, problem)
		return
	}
	f, err := s.listingQuery(r.URL.Query())
	if err != nil {
		apiError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	games, more, err := s.db.listGames(r.Context(), gtid, f)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	body := gameList{Games: games, Count: len(games)}
	if body.Games == nil {
		body.Games = []Game{}
	}
	if more {
		q := r.URL.Query()
		q.Set("after", encodeCursor(games[len(games)-1]))
		q.Set("limit", strconv.Itoa(f.Limit))
		body.Next = "/api/games?" + q.Encode()
	}
	s.writeCacheable(w, r, gtid, jsonBody(body))
}

func (s *Server) apiGetGame(w http.ResponseWriter, r *http.Request) {
	gtid, problem := s.readGTID(r)
	if problem != "" {
		apiError(w, r, http.StatusBadRequest, problem)
		return
	}
	id, ok := parseGameID(r.PathValue("id"))
	if !ok {
		apiError(w, r, http.StatusNotFound, fmt.Sprintf("no game with id %q; ids are positive integers from GET /api/games", r.PathValue("id")))
		return
	}
	g, err := s.db.getGame(r.Context(), gtid, id)
	if isNotFound(err) {
		apiError(w, r, http.StatusNotFound, fmt.Sprintf("no game with id %d; GET /api/games lists them", id))
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	s.writeCacheable(w, r, gtid, jsonBody(g))
}

// writeCacheable sends a listing or details body with a strong ETag and a
// short max-age, or 304 when the client's copy is current. A read that
// presented a GTID is personal (it waited for the reader's own write), so
// shared caches must not keep it.
func (s *Server) writeCacheable(w http.ResponseWriter, r *http.Request, gtid string, body []byte) {
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:12]) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	if gtid != "" {
		h.Set("Cache-Control", "private, no-cache")
	} else {
		h.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(s.cfg.ListingMaxAge/time.Second)))
	}
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	ct := "application/json"
	if !isAPI(r) {
		ct = "text/html; charset=utf-8"
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(body) //nolint:errcheck
}

// etagMatch implements If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatch(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

func parseGameID(s string) (int64, bool) {
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil && id > 0
}

// buyBody is the JSON of POST /api/games/{id}/buy. Pointers tell a missing
// field from a zero one.
type buyBody struct {
	Quantity *int    `json:"quantity"`
	Email    *string `json:"email"`
}

// validateEmail returns a message for a 422, or "" when email is usable: a
// bare address (no display name), with a dotted domain, at most 254 bytes
// (RFC 5321 4.5.3.1.3).
func validateEmail(email string) string {
	if email == "" {
		return "email: required, e.g. \"fan@example.com\""
	}
	if len(email) > 254 {
		return "email: at most 254 characters"
	}
	a, err := mail.ParseAddress(email)
	if err != nil || a.Name != "" || a.Address != email {
		return fmt.Sprintf("email: %q is not an email address like fan@example.com", email)
	}
	_, domain, _ := strings.Cut(email, "@")
	if !strings.Contains(strings.Trim(domain, "."), ".") || strings.HasPrefix(domain, "[") {
		return fmt.Sprintf("email: %q needs a domain name like example.com", email)
	}
	return ""
}

// validateQuantity returns a message for a 422, or "".
func (s *Server) validateQuantity(q int) string {
	if q < 1 || q > s.cfg.MaxPerOrder {
		return fmt.Sprintf("quantity: must be 1..%d tickets per order, got %d", s.cfg.MaxPerOrder, q)
	}
	return ""
}

// validIdempotencyKey accepts 1..255 visible ASCII characters (UUIDs and the
// like), as the IETF Idempotency-Key draft's implementations do.
func validIdempotencyKey(k string) bool { return visibleASCII(k, 255) }

func (s *Server) apiBuy(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	id, ok := parseGameID(r.PathValue("id"))
	if !ok {
		apiError(w, r, http.StatusNotFound, fmt.Sprintf("no game with id %q; ids are positive integers from GET /api/games", r.PathValue("id")))
		return
	}
	// application/json alone: a browser sends text/plain, a form type or
	// no Content-Type at all to another site without asking it first (a
	// CORS preflight), so accepting those would let any page post orders.
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		msg := fmt.Sprintf("Content-Type: send application/json, got %.100q", ct)
		if ct == "" {
			msg = "Content-Type: send application/json; the request has none"
		}
		apiError(w, r, http.StatusUnsupportedMediaType, msg)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if _, sent := r.Header["Idempotency-Key"]; sent && !validIdempotencyKey(key) {
		apiError(w, r, http.StatusBadRequest, "Idempotency-Key: want 1..255 visible ASCII characters, e.g. a UUID")
		return
	}

	quantity, email, status, msg := s.decodeBuyBody(http.MaxBytesReader(w, r.Body, maxBuyBody))
	if status != 0 {
		apiError(w, r, status, msg)
		return
	}

	out, err := s.buy(r, purchaseRequest{GameID: id, Quantity: quantity, Email: email, IdempotencyKey: key, RequestID: requestID(r)})
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if out.GTID != "" {
		w.Header().Set(GTIDHeader, out.GTID)
	}
	if out.Replayed {
		w.Header().Set("Idempotency-Replayed", "true")
	}
	if out.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(out.RetryAfter))
	}
	if out.SoldOut {
		w.Header().Set(SoldOutHeader, "true")
	}
	writeJSON(w, out.Status, out.Body)
}

// decodeBuyBody reads the JSON body of a purchase: exactly one object with
// the fields quantity and email, both valid. It returns them, or the status
// (400, 413, 422) and message of the refusal. body should be bounded
// (http.MaxBytesReader) for a 413 to be told apart.
func (s *Server) decodeBuyBody(body io.Reader) (quantity int, email string, status int, msg string) {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	var b buyBody
	if err := dec.Decode(&b); err != nil {
		status, msg := decodeError(err)
		return 0, "", status, msg
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return 0, "", http.StatusBadRequest, "invalid JSON: the body must hold exactly one object, like {\"quantity\": 2, \"email\": \"fan@example.com\"}"
	}
	if b.Quantity == nil {
		return 0, "", http.StatusUnprocessableEntity, "quantity: required, an integer 1.." + strconv.Itoa(s.cfg.MaxPerOrder)
	}
	if msg := s.validateQuantity(*b.Quantity); msg != "" {
		return 0, "", http.StatusUnprocessableEntity, msg
	}
	if b.Email != nil {
		email = *b.Email
	}
	if msg := validateEmail(email); msg != "" {
		return 0, "", http.StatusUnprocessableEntity, msg
	}
	return *b.Quantity, email, 0, ""
}

// buy runs a validated purchase and counts its outcome.
func (s *Server) buy(r *http.Request, p purchaseRequest) (purchaseOutcome, error) {
	out, err := s.db.purchase(r.Context(), p)
	if err != nil {
		s.m.purchases.WithLabelValues("unavailable").Inc()
		return out, err
	}
	s.m.purchases.WithLabelValues(out.Result).Inc()
	if out.Status == http.StatusCreated && !out.Replayed {
		s.m.seatsSold.Add(float64(p.Quantity))
	}
	return out, nil
}

// decodeError turns a json.Decoder error into a status and a message that
// says what to fix.
func decodeError(err error) (int, string) {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("body too large: at most %d bytes", tooBig.Limit)
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, "invalid JSON: empty body; send {\"quantity\": 2, \"email\": \"fan@example.com\"}"
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, "invalid JSON: " + err.Error()
	case errors.As(err, &typ):
		return http.StatusBadRequest, fmt.Sprintf("invalid JSON: field %q must be %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return http.StatusBadRequest, "invalid JSON: " + strings.TrimPrefix(err.Error(), "json: ") + "; allowed fields are quantity and email"
	}
	return http.StatusBadRequest, "invalid JSON: " + err.Error()
}

func jsonKind(k string) string {
	switch k {
	case "int", "int64":
		return "an integer"
	case "string":
		return "a string"
	}
	return k
}
