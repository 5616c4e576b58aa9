package origin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// staticAsset is one file under /static/, served by its fingerprinted name.
type staticAsset struct {
	body  []byte
	ctype string
	etag  string
}

// pages holds the parsed templates and the fingerprinted static assets.
// Immutable after newPages; safe for concurrent use.
type pages struct {
	tmpl map[string]*template.Template
	// assets maps a fingerprinted name (style.1a2b3c4d5e6f.css) to its file;
	// urls maps the file's own name to its /static/ URL.
	assets map[string]staticAsset
	urls   map[string]string
}

// Fingerprinted names let /static/ answers be cached for a year
// (immutable): a changed file gets a new name, so no cache ever serves the
// old one under the new page.
func newPages() (*pages, error) {
	p := &pages{tmpl: map[string]*template.Template{}, assets: map[string]staticAsset{}, urls: map[string]string{}}
	err := fs.WalkDir(staticFiles, "static", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := staticFiles.ReadFile(name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		fp := hex.EncodeToString(sum[:6])
		base := path.Base(name)
		ext := path.Ext(base)
		fpName := strings.TrimSuffix(base, ext) + "." + fp + ext
		ctype := mime.TypeByExtension(ext)
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		p.assets[fpName] = staticAsset{body: body, ctype: ctype, etag: `"` + fp + `"`}
		p.urls[base] = "/static/" + fpName
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("loading static assets: %w", err)
	}
	funcs := template.FuncMap{
		"asset": func(name string) (string, error) {
			u, ok := p.urls[name]
			if !ok {
				return "", fmt.Errorf("no static asset %q", name)
			}
			return u, nil
		},
		"money": money,
		"clock": func(t time.Time) string { return t.UTC().Format("15:04") },
		"day":   func(t time.Time) string { return t.UTC().Format("Monday 2 January 2006") },
		"seats": func(g Game) template.HTML {
			switch {
			case g.Remaining == 0:
				return `<span class="soldout">Sold out</span>`
			case g.Remaining*10 < g.Capacity:
				return template.HTML(`<span class="few">` + strconv.FormatInt(g.Remaining, 10) + `</span>`)
			}
			return template.HTML(strconv.FormatInt(g.Remaining, 10))
		},
		"mul": func(a int64, b int) int64 { return a * int64(b) },
	}
	layout, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("parsing layout template: %w", err)
	}
	for _, name := range []string{"games", "game", "buy", "confirmation", "error"} {
		t, err := template.Must(layout.Clone()).ParseFS(templateFiles, "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parsing template %s: %w", name, err)
		}
		p.tmpl[name] = t
	}
	return p, nil
}

// money formats an amount in cents: "85.00 EUR".
func money(cents int64, currency string) string {
	return fmt.Sprintf("%d.%02d %s", cents/100, cents%100, currency)
}

// pageData is what every template gets; each page uses its own fields.
type pageData struct {
	RequestID string
	// games
	Sport  string
	Sports []string
	Days   []dayGroup
	Total  int
	// game, buy, confirmation
	Game Game
	// Key is the form's Idempotency-Key, Token its anti-forgery token.
	Key      string
	Token    string
	Quantity int
	Email    string
	Error    string
	Max      int
	Order    Order
	// error
	Title   string
	Message string
	GameID  int64
}

type dayGroup struct {
	Key   string // 2024-08-04, for the anchor
	Title string
	Games []Game
}

// render executes a page into a buffer first, so that a template error
// becomes a clean 500 instead of half a page.
func (p *pages) render(w http.ResponseWriter, r *http.Request, status int, name string, d pageData) {
	d.RequestID = requestID(r)
	var buf bytes.Buffer
	if err := p.tmpl[name].ExecuteTemplate(&buf, "layout", d); err != nil {
		panic(fmt.Sprintf("rendering page %s: %v", name, err)) // the middleware answers 500 and logs it
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	w.Write(buf.Bytes()) //nolint:errcheck
}

func (p *pages) renderError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	p.renderErrorFor(w, r, status, msg, 0)
}

func (p *pages) renderErrorFor(w http.ResponseWriter, r *http.Request, status int, msg string, gameID int64) {
	w.Header().Set("Cache-Control", "no-store")
	title := http.StatusText(status)
	switch status {
	case http.StatusNotFound:
		title = "Page not found"
	case http.StatusInternalServerError:
		title = "Something went wrong"
	case http.StatusServiceUnavailable:
		title = "Tickets are briefly unavailable"
	case http.StatusConflict:
		title = "Not enough seats"
	case http.StatusForbidden:
		title = "Request refused"
	}
	p.render(w, r, status, "error", pageData{Title: title, Message: msg, GameID: gameID})
}

func (p *pages) serveStatic(w http.ResponseWriter, r *http.Request) {
	a, ok := p.assets[r.PathValue("name")]
	if !ok {
		p.renderError(w, r, http.StatusNotFound, "There is no such file. Static files have a fingerprint in their name; the pages link the current ones.")
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	h.Set("ETag", a.etag)
	if etagMatch(r.Header.Get("If-None-Match"), a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.Write(a.body) //nolint:errcheck
}

func (s *Server) pageNotFound(w http.ResponseWriter, r *http.Request) {
	if isAPI(r) {
		s.apiNotFound(w, r)
		return
	}
	s.pages.renderError(w, r, http.StatusNotFound, fmt.Sprintf("There is no page at %s.", r.URL.Path))
}

// pageGameLimit bounds the all-sessions page: the whole Paris programme is
// 624 sessions; a runaway table must not render an unbounded page.
const pageGameLimit = 5000

func (s *Server) pageGames(w http.ResponseWriter, r *http.Request) {
	gtid, _ := s.readGTID(r)
	sport, err := parseSport(r.URL.Query().Get("sport"))
	if err != nil {
		s.pages.renderError(w, r, http.StatusBadRequest, "There is no such sport; pick one from the list on /games.")
		return
	}
	games, _, err := s.db.listGames(r.Context(), gtid, gameFilter{Sport: sport, Limit: pageGameLimit})
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	sports, err := s.db.listSports(r.Context(), gtid)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d := pageData{Sport: sport, Sports: sports, Total: len(games)}
	for _, g := range games {
		key := g.StartsAt.Format(time.DateOnly)
		if n := len(d.Days); n == 0 || d.Days[n-1].Key != key {
			d.Days = append(d.Days, dayGroup{Key: key, Title: g.StartsAt.Format("Monday 2 January")})
		}
		d.Days[len(d.Days)-1].Games = append(d.Days[len(d.Days)-1].Games, g)
	}
	s.renderCacheable(w, r, gtid, "games", d)
}

// renderCacheable renders a page and sends it with an ETag and the
// listing's short max-age, like the API's listing.
func (s *Server) renderCacheable(w http.ResponseWriter, r *http.Request, gtid, name string, d pageData) {
	d.RequestID = ""
	var buf bytes.Buffer
	if err := s.pages.tmpl[name].ExecuteTemplate(&buf, "layout", d); err != nil {
		panic(fmt.Sprintf("rendering page %s: %v", name, err))
	}
	s.writeCacheable(w, r, gtid, buf.Bytes())
}

// gameFromPath reads the {id} game, answering 404 or 5xx pages itself when
// it cannot; ok is false then.
func (s *Server) gameFromPath(w http.ResponseWriter, r *http.Request, gtid string) (Game, bool) {
	id, ok := parseGameID(r.PathValue("id"))
	if !ok {
		s.pages.renderError(w, r, http.StatusNotFound, fmt.Sprintf("There is no session %q.", r.PathValue("id")))
		return Game{}, false
	}
	g, err := s.db.getGame(r.Context(), gtid, id)
	if isNotFound(err) {
		s.pages.renderError(w, r, http.StatusNotFound, fmt.Sprintf("There is no session %d.", id))
		return Game{}, false
	}
	if err != nil {
		s.serverError(w, r, err)
		return Game{}, false
	}
	return g, true
}

func (s *Server) pageGame(w http.ResponseWriter, r *http.Request) {
	gtid, _ := s.readGTID(r)
	g, ok := s.gameFromPath(w, r, gtid)
	if !ok {
		return
	}
	s.renderCacheable(w, r, gtid, "game", pageData{Game: g})
}

func (s *Server) pageBuyForm(w http.ResponseWriter, r *http.Request) {
	gtid, _ := s.readGTID(r)
	g, ok := s.gameFromPath(w, r, gtid)
	if !ok {
		return
	}
	if g.SoldOut {
		w.Header().Set(SoldOutHeader, "true")
	}
	s.renderBuyForm(w, r, http.StatusOK, pageData{Game: g, Quantity: 1})
}

// renderBuyForm renders the buy form with a fresh Idempotency-Key, so that a
// double click or a reload of the POST replays the first answer instead of
// buying twice, and a fresh token bound to the visitor (formtoken.go).
// Never cached: both are this render's own.
func (s *Server) renderBuyForm(w http.ResponseWriter, r *http.Request, status int, d pageData) {
	key, err := s.forms.keyFor(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	d.Key = newRequestID()
	d.Token = signFormToken(key, d.Game.ID, time.Now(), ensureVisitor(w, r))
	d.Max = s.cfg.MaxPerOrder
	w.Header().Set("Cache-Control", "no-store")
	s.pages.render(w, r, status, "buy", d)
}

// buyFormInput is what the buy form posted, read and checked.
type buyFormInput struct {
	// Quantity is the number entered, or 1 when it was not a number.
	Quantity int
	Email    string
	// Key is the form's Idempotency-Key, "" if it sent none; Token its
	// anti-forgery token, checked by checkFormToken.
	Key, Token string
	// Problem says, for the fan, what to correct; "" when the order may
	// go ahead.
	Problem string
}

// readBuyForm reads the buy form's fields. Like decodeBuyBody for the API,
// it is the one reader of this untrusted input.
func (s *Server) readBuyForm(fields url.Values) buyFormInput {
	in := buyFormInput{Quantity: 1, Email: strings.TrimSpace(fields.Get("email")),
		Key: fields.Get("idempotency_key"), Token: fields.Get("form_token")}
	q, err := strconv.Atoi(strings.TrimSpace(fields.Get("quantity")))
	switch {
	case err != nil:
		in.Problem = fmt.Sprintf("Enter how many tickets you want, 1 to %d.", s.cfg.MaxPerOrder)
	case s.validateQuantity(q) != "":
		in.Quantity = q
		in.Problem = fmt.Sprintf("You can buy 1 to %d tickets per order.", s.cfg.MaxPerOrder)
	default:
		in.Quantity = q
		if msg := validateEmail(in.Email); msg != "" {
			in.Problem = "Enter a valid email address, like fan@example.com."
		}
	}
	if in.Problem == "" && in.Key != "" && !validIdempotencyKey(in.Key) {
		in.Problem = "The form has expired; please submit it again."
	}
	return in
}

// maxFormBody bounds the buy form's POST body.
const maxFormBody = 8 << 10

func (s *Server) pageBuy(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	gtid, _ := s.readGTID(r)
	g, ok := s.gameFromPath(w, r, gtid)
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	form := pageData{Game: g, Quantity: 1}
	if err := r.ParseForm(); err != nil {
		form.Error = "The form could not be read; please fill it in again."
		s.renderBuyForm(w, r, http.StatusBadRequest, form)
		return
	}
	in := s.readBuyForm(r.PostForm)
	form.Email, form.Quantity = in.Email, in.Quantity
	formKey, err := s.forms.keyFor(r.Context())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if err := checkFormToken(formKey, in.Token, g.ID, visitor(r), time.Now()); err != nil {
		// Forged, or merely old: either way the fan gets the form again,
		// filled in, with a token that works, and nothing was bought.
		s.log.Info("origin: buy form refused", "request_id", requestID(r), "game", g.ID, "reason", err)
		form.Error = "This form has expired or did not come from this site, so nothing was bought. Check your order and submit it again."
		s.renderBuyForm(w, r, http.StatusForbidden, form)
		return
	}
	form.Error = in.Problem
	if form.Error != "" {
		s.renderBuyForm(w, r, http.StatusUnprocessableEntity, form)
		return
	}

	out, err := s.buy(r, purchaseRequest{GameID: g.ID, Quantity: in.Quantity, Email: in.Email, IdempotencyKey: in.Key, RequestID: requestID(r)})
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if out.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(out.RetryAfter))
	}
	if out.SoldOut {
		w.Header().Set(SoldOutHeader, "true")
	}
	if out.GTID != "" {
		// Read-your-writes for the next pages: they wait for this commit.
		http.SetCookie(w, &http.Cookie{Name: GTIDCookie, Value: out.GTID, Path: "/", MaxAge: 300,
			HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: overTLS(r)})
	}
	switch out.Status {
	case http.StatusCreated:
		var o Order
		if err := json.Unmarshal(out.Body, &o); err != nil {
			s.serverError(w, r, fmt.Errorf("decoding stored order: %w", err))
			return
		}
		s.pages.render(w, r, http.StatusCreated, "confirmation", pageData{Game: g, Order: o})
	case http.StatusNotFound:
		s.pages.renderError(w, r, http.StatusNotFound, fmt.Sprintf("There is no session %d.", g.ID))
	default:
		var e errorBody
		json.Unmarshal(out.Body, &e) //nolint:errcheck // a stored body is always an errorBody here
		if e.Remaining != nil {
			g.Remaining = *e.Remaining
			g.SoldOut = g.Remaining == 0
		}
		form.Game = g
		form.Error = e.Error
		if e.Remaining != nil && *e.Remaining == 0 {
			form.Error = "Sorry, this session has just sold out."
		} else if e.Remaining != nil && *e.Remaining == 1 {
			form.Error = "Only 1 seat is left; choose 1 ticket."
		} else if e.Remaining != nil {
			form.Error = fmt.Sprintf("Only %d seats are left; choose %d or fewer.", *e.Remaining, *e.Remaining)
		}
		switch e.Code {
		case "limit_per_buyer":
			form.Error = fmt.Sprintf("One buyer may hold at most %d tickets for this session, and %s has reached that or would pass it with this order.", s.cfg.MaxPerBuyer, form.Email)
		case "idempotency_keys_per_hour":
			form.Error = "There have been too many orders from this email address in the last hour. Please try again later."
		}
		s.renderBuyForm(w, r, out.Status, form)
	}
}
