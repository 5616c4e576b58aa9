package proxy

import (
	"bytes"
	"errors"

	"github.com/valyala/fasthttp"
)

// The request path is parsed once, here, into one normal form, and that
// form is what the edge routes, rate-limits, keys, purges and forwards
// (STYLE habit 15). Two readings are a cache-poisoning attack: an edge
// that routes and keys on fasthttp's decoded path, in which %2F is '/',
// but forwards the path as the client wrote it, lets the origin's router
// (Go's ServeMux) read /api%2Fgames as one segment and answer 404, and
// stores that 404 as the listing of /api/games for every fan.
//
// The normal form is RFC 3986 §6.2.2's syntax-based normalisation plus
// merged slashes, as Envoy does with normalize_path and merge_slashes:
//
//   - percent-encoded unreserved characters (ALPHA, DIGIT, "-", ".", "_",
//     "~") are decoded: /%61pi/games is /api/games;
//   - every other percent-encoding keeps its encoding, in upper-case hex:
//     %3b is %3B, %C3%A9 stays encoded;
//   - bytes that may not appear raw in a path ("<", "{", non-ASCII, ...)
//     are percent-encoded, as a browser would have sent them;
//   - "." and ".." segments are removed (RFC 3986 §5.2.4), after the
//     decoding, so /api/games/%2e%2e/games is /api/games; ".." never
//     climbs above the root;
//   - empty segments are dropped: //api//games is /api/games; a trailing
//     slash is kept (/api/games/ is another resource).
//
// Some encodings have no one reading that every server shares, and are
// refused with 400 rather than normalised either way:
//
//   - %2F and %5C (an encoded slash or backslash): one segment to Go's
//     ServeMux, Express or Rails, two to servers that decode first (nginx
//     without a URI in proxy_pass, Tomcat with ALLOW_ENCODED_SLASH). Envoy
//     leaves the choice to path_with_escaped_slashes_action and recommends
//     REJECT_REQUEST or UNESCAPE_AND_REDIRECT where upstreams may differ;
//     decoding them would change what the origin routes, and keeping them
//     would let a rule the edge applies per path (the buy rate limit on
//     /api/games/*/buy, purges) be stepped around by an origin that
//     decodes.
//   - %3F and %23 ("?" and "#" in a segment): the edge must not guess
//     whether a server splits the query there.
//   - %00-%1F and %7F (control bytes, NUL among them): no path of this
//     service has one, and a decoded CR/LF or NUL is how logs and headers
//     are forged downstream.
//   - a raw backslash: Cloudflare and browsers read it as "/", Go's
//     ServeMux as a character of the segment.
//   - a "%" not followed by two hex digits: Go's net/http refuses it, and
//     fasthttp keeps it as a literal "%"; there is no shared reading.
//
// No request of this service's API, pages or static assets needs any of
// them; a 400 tells a client that does what to fix.

// Path errors, answered with 400. Their text follows "malformed request: ".
var (
	errPathEncodedSlash = errors.New("the path holds an encoded slash or backslash (%2F, %5C), which the edge does not forward; send the path with plain slashes")
	errPathEncodedDelim = errors.New("the path holds an encoded '?' or '#' (%3F, %23), which the edge does not forward")
	errPathControl      = errors.New("the path holds an encoded control character (%00-%1F, %7F)")
	errPathBackslash    = errors.New(`the path holds a backslash; use "/" between segments`)
	errPathBadEscape    = errors.New("the path holds a '%' that is not followed by two hex digits; send '%' as %25")
	errPathNotAbsolute  = errors.New("the request target is not an absolute path")
)

// Byte classes of a path (RFC 3986 §3.3).
const (
	pcRaw     = iota // may appear as it is: pchar other than "%", or "/"
	pcEncode         // may not appear raw, but means one thing: percent-encode it
	pcReject         // backslash, control bytes: refuse
	pcPercent        // "%": an escape follows
	pcDelim          // "?" and "#": cannot be in a path fasthttp parsed; refuse
)

var pathClass = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case c < 0x20 || c == 0x7f || c == '\\':
			t[c] = pcReject
		case c == '%':
			t[c] = pcPercent
		case c == '?' || c == '#':
			t[c] = pcDelim
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			bytes.IndexByte([]byte("-._~!$&'()*+,;=:@/"), byte(c)) >= 0:
			t[c] = pcRaw
		default: // space, '"', '<', '>', '^', '`', '{', '|', '}', and every byte >= 0x80
			t[c] = pcEncode
		}
	}
	return t
}()

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

const upperHex = "0123456789ABCDEF"

// normalizePath appends the normal form of src, a request path as the
// client sent it (without its query), to dst, or returns an error saying
// why the path is refused. An empty src is "/". It allocates nothing when
// dst has room, and normalizing its own output returns it unchanged.
func normalizePath(dst, src []byte) ([]byte, error) {
	if inNormalForm(src) {
		return append(dst, src...), nil
	}
	if len(src) == 0 {
		return append(dst, '/'), nil
	}
	if src[0] != '/' {
		return dst, errPathNotAbsolute
	}
	base := len(dst)
	trailing := false // the last segment was empty, "." or "..": the path ends in "/"
	for i := 0; i < len(src); {
		i++ // the '/' before this segment
		if i < len(src) && src[i] == '/' {
			trailing = i == len(src)-1
			continue // an empty segment: "//" is "/"
		}
		start := len(dst)
		dst = append(dst, '/')
		for ; i < len(src) && src[i] != '/'; i++ {
			c := src[i]
			switch pathClass[c] {
			case pcRaw:
				dst = append(dst, c)
			case pcEncode:
				dst = append(dst, '%', upperHex[c>>4], upperHex[c&15])
			case pcReject:
				if c == '\\' {
					return dst[:base], errPathBackslash
				}
				return dst[:base], errPathControl
			case pcDelim:
				return dst[:base], errPathEncodedDelim
			case pcPercent:
				if i+2 >= len(src) {
					return dst[:base], errPathBadEscape
				}
				hi, ok1 := unhex(src[i+1])
				lo, ok2 := unhex(src[i+2])
				if !ok1 || !ok2 {
					return dst[:base], errPathBadEscape
				}
				i += 2
				switch v := hi<<4 | lo; {
				case unreserved(v):
					dst = append(dst, v)
				case v == '/' || v == '\\':
					return dst[:base], errPathEncodedSlash
				case v == '?' || v == '#':
					return dst[:base], errPathEncodedDelim
				case v < 0x20 || v == 0x7f:
					return dst[:base], errPathControl
				default:
					dst = append(dst, '%', upperHex[v>>4], upperHex[v&15])
				}
			}
		}
		seg := dst[start+1:]
		switch {
		case len(seg) == 0: // the path ends in "/"
			dst = dst[:start]
			trailing = true
		case len(seg) == 1 && seg[0] == '.':
			dst = dst[:start]
			trailing = true
		case len(seg) == 2 && seg[0] == '.' && seg[1] == '.':
			dst = dst[:start]
			if j := bytes.LastIndexByte(dst[base:], '/'); j >= 0 {
				dst = dst[:base+j]
			}
			trailing = true
		default:
			trailing = false
		}
	}
	if len(dst) == base || trailing {
		dst = append(dst, '/')
	}
	return dst, nil
}

// inNormalForm reports, in one quick pass, that p is certainly in normal
// form: absolute, no escapes, no byte to encode or refuse, no "//", and no
// segment that starts with a dot (which might be "." or ".."). Most paths
// clients send are; the others take normalizePath's longer way.
func inNormalForm(p []byte) bool {
	if len(p) == 0 || p[0] != '/' {
		return false
	}
	prev := byte(0)
	for _, c := range p {
		if pathClass[c] != pcRaw || prev == '/' && (c == '/' || c == '.') {
			return false
		}
		prev = c
	}
	return true
}

// requestPath normalises the request's path (normalizePath) and makes the
// request carry that form from here on: URI().PathOriginal() returns it,
// and it is what transport.Upstream.Do forwards (DisablePathNormalizing).
// It returns the normal form; buf is room for it. When the client sent the path in
// normal form already, as clients do, it costs one pass over the path and
// changes nothing.
func requestPath(req *fasthttp.Request, buf []byte) ([]byte, error) {
	uri := req.URI()
	raw := uri.PathOriginal()
	if inNormalForm(raw) {
		return raw, nil
	}
	norm, err := normalizePath(buf[:0], raw)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(norm, raw) {
		uri.SetPathBytes(norm)
	}
	return norm, nil
}

// normalPath is the request's normalised path, once Handle's requestPath
// has run: what the request was routed by and is keyed and forwarded by.
func normalPath(req *fasthttp.Request) []byte { return req.URI().PathOriginal() }
