package origin

import (
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The buy form carries a token that proves the POST comes from a form this
// site rendered for this browser: a signed double-submit token (OWASP's
// "signed double-submit cookie"). The browser holds a random visitor id in
// an HttpOnly cookie (VisitorCookie); the form holds
// HMAC(key, game, issue time, visitor id). A page on another site can make
// the browser POST, but cannot read the cookie or the form, so it cannot
// produce a token that matches; a token fetched by the attacker's own
// server is bound to the attacker's visitor id, not the victim's.
//
// The token is the second check; the first refuses what browsers mark as
// cross-site (Server.sameOrigin). It is on the form alone: /games/{id}/buy
// is no-store already (each render carries a fresh Idempotency-Key), so a
// per-visitor token costs no caching, while /games/{id}, which the edge
// caches, carries none and stays the same for everyone.
//
// The key is shared by every origin of the cluster, since a form rendered
// by one origin may be posted through the edge to another: it is
// Config.FormSecret when set, else the form_token row of origin_secrets,
// which migration 0003 creates once with random bytes.
const (
	// VisitorCookie holds the random id that form tokens are bound to.
	VisitorCookie = "podium_visitor"
	// formTokenTTL is how long a rendered form may be submitted; an older
	// one is answered with a fresh form to submit again.
	formTokenTTL = 2 * time.Hour
	// formTokenSkew is how far in the future an issue time may be: origins'
	// clocks differ a little.
	formTokenSkew = time.Minute
	// visitorIDLen is the length of a visitor id: 16 random bytes in
	// unpadded base64url.
	visitorIDLen = 22
	// formMACLen is the bytes of HMAC-SHA256 a token keeps: 128 bits.
	formMACLen = 16
)

// errFormToken is every refusal of a form token: which check failed is
// logged, not told to the client.
var errFormToken = errors.New("form token refused")

// formTokens issues and checks buy form tokens. The key is loaded once, on
// first use, and kept. Safe for concurrent use; must not be copied.
type formTokens struct {
	// load returns the key when none is kept yet.
	load func(context.Context) ([]byte, error)

	mu  sync.Mutex
	key []byte // nil until loaded
}

func (f *formTokens) keyFor(ctx context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.key == nil {
		key, err := f.load(ctx)
		if err != nil {
			return nil, err
		}
		f.key = key
	}
	return f.key, nil
}

// formMAC is the token's signature over what it binds.
func formMAC(key []byte, game, issued int64, visitor string) []byte {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "podium buy form v1\x00%d\x00%d\x00%s", game, issued, visitor)
	return m.Sum(nil)[:formMACLen]
}

// signFormToken returns the token of a form for game, issued at issued,
// for visitor: "<unix seconds>.<base64url MAC>".
func signFormToken(key []byte, game int64, issued time.Time, visitor string) string {
	sec := issued.Unix()
	return strconv.FormatInt(sec, 10) + "." + base64.RawURLEncoding.EncodeToString(formMAC(key, game, sec, visitor))
}

// checkFormToken reports whether token is one this key signed for game and
// visitor, issued within formTokenTTL before now (and no more than
// formTokenSkew after). The error says which check failed, for the log.
func checkFormToken(key []byte, token string, game int64, visitor string, now time.Time) error {
	if !validVisitorID(visitor) {
		return fmt.Errorf("%w: no visitor cookie", errFormToken)
	}
	ts, mac, ok := strings.Cut(token, ".")
	if !ok || len(ts) == 0 || len(ts) > 12 || len(mac) != base64.RawURLEncoding.EncodedLen(formMACLen) {
		return fmt.Errorf("%w: malformed", errFormToken)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || strconv.FormatInt(sec, 10) != ts {
		// One spelling per token: no sign, no leading zeros.
		return fmt.Errorf("%w: malformed", errFormToken)
	}
	got, err := base64.RawURLEncoding.DecodeString(mac)
	if err != nil {
		return fmt.Errorf("%w: malformed", errFormToken)
	}
	if !hmac.Equal(got, formMAC(key, game, sec, visitor)) {
		return fmt.Errorf("%w: signature does not match this game and visitor", errFormToken)
	}
	issued := time.Unix(sec, 0)
	if now.Sub(issued) > formTokenTTL {
		return fmt.Errorf("%w: expired (issued %s)", errFormToken, issued.UTC().Format(time.RFC3339))
	}
	if issued.Sub(now) > formTokenSkew {
		return fmt.Errorf("%w: issued in the future (%s)", errFormToken, issued.UTC().Format(time.RFC3339))
	}
	return nil
}

// validVisitorID accepts what newVisitorID makes.
func validVisitorID(id string) bool {
	if len(id) != visitorIDLen {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(id)
	return err == nil
}

func newVisitorID() string {
	var b [16]byte
	crand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// visitor returns r's visitor id, or "" when it has no valid one.
func visitor(r *http.Request) string {
	if c, err := r.Cookie(VisitorCookie); err == nil && validVisitorID(c.Value) {
		return c.Value
	}
	return ""
}

// ensureVisitor returns r's visitor id, making one and setting its cookie
// on w when r has none. The cookie lasts for the browser session: a form
// is bound to it for formTokenTTL at most. HttpOnly (no script needs it),
// SameSite=Lax (a cross-site POST does not carry it), Secure over TLS.
func ensureVisitor(w http.ResponseWriter, r *http.Request) string {
	if id := visitor(r); id != "" {
		return id
	}
	id := newVisitorID()
	http.SetCookie(w, &http.Cookie{Name: VisitorCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: overTLS(r)})
	return id
}

// formSecret reads the cluster's form key from origin_secrets, on any
// database that answers (the row is replicated).
func (c *cluster) formSecret(ctx context.Context) ([]byte, error) {
	var secret []byte
	err := c.read(ctx, "", func(ctx context.Context, db querier) error {
		return db.QueryRowContext(ctx, "SELECT secret FROM origin_secrets WHERE name = 'form_token'").Scan(&secret)
	})
	if isNotFound(err) || (err == nil && len(secret) < 16) {
		return nil, errors.New("reading the form key: origin_secrets has no form_token row of 16 bytes or more; run the migrations (podium origin migrate) or set -form-secret")
	}
	if err != nil {
		return nil, fmt.Errorf("reading the form key: %w", err)
	}
	return secret, nil
}
