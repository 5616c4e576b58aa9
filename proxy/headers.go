package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// rawScan is what one pass over the client's raw request headers finds:
// the framing headers as the client sent them (before fasthttp normalises
// them), and the tokens of Connection.
type rawScan struct {
	contentLengths   int // how many Content-Length fields
	contentLength    []byte
	clConflict       bool // two Content-Length fields with different values
	clInvalid        bool // a Content-Length that is not all digits
	transferEncoding int  // how many Transfer-Encoding fields
	teInvalid        bool // any coding other than exactly "chunked"
	spaceBeforeColon bool // "Name : value", forbidden by RFC 9112 §5.1
	connTokens       [8][]byte
	nConnTokens      int
	hop              uint16 // bit i set: hopByHop[i] is present
	expect           bool
	fwd              uint8 // fwdFor, fwdProto, fwdHost, fwdRequestID: present
}

// Bits of rawScan.fwd.
const (
	fwdFor uint8 = 1 << iota
	fwdProto
	fwdHost
	fwdRequestID
)

var fwdHeaders = [...]struct {
	name []byte
	bit  uint8
}{
	{[]byte("x-forwarded-for"), fwdFor},
	{[]byte("x-forwarded-proto"), fwdProto},
	{[]byte("x-forwarded-host"), fwdHost},
	{[]byte("x-request-id"), fwdRequestID},
}

// smuggling returns why a request's framing is ambiguous, or "" when it is
// not. The checks follow RFC 9112 §6.1 and §6.3: a request with both
// Transfer-Encoding and Content-Length, a transfer coding other than
// chunked (case-insensitive, optional whitespace ignored), conflicting
// Content-Length values, or whitespace between a field name and its colon
// is answered 400 and the connection closed, since a downstream parser may
// read its boundaries differently (the classic CL.TE and TE.CL attacks).
func (s *rawScan) smuggling() string {
	switch {
	case s.spaceBeforeColon:
		return "whitespace between a header name and its colon"
	case s.transferEncoding > 0 && s.contentLengths > 0:
		return "both Transfer-Encoding and Content-Length"
	case s.transferEncoding > 1:
		return "more than one Transfer-Encoding header"
	case s.teInvalid:
		return "a Transfer-Encoding other than chunked"
	case s.clConflict:
		return "conflicting Content-Length values"
	case s.clInvalid:
		return "a Content-Length that is not a number"
	}
	return ""
}

var (
	hdrContentLength    = []byte("content-length")
	hdrTransferEncoding = []byte("transfer-encoding")
	tokChunked          = []byte("chunked")
)

// scan parses raw header bytes ("Name: value\r\n" lines). It allocates
// nothing; the slices it keeps point into raw.
func (s *rawScan) scan(raw []byte) {
	for len(raw) > 0 {
		var line []byte
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			line, raw = raw, nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		if c := name[len(name)-1]; c == ' ' || c == '\t' {
			s.spaceBeforeColon = true
			name = bytes.TrimRight(name, " \t")
		}
		switch {
		case bytes.EqualFold(name, hdrContentLength):
			s.contentLengths++
			s.scanContentLength(value)
		case bytes.EqualFold(name, hdrTransferEncoding):
			s.transferEncoding++
			if !bytes.EqualFold(value, tokChunked) {
				s.teInvalid = true
			}
		case bytes.EqualFold(name, hdrExpect):
			s.expect = true
		default:
			if len(name) > 2 && (name[0] == 'x' || name[0] == 'X') && name[1] == '-' {
				for _, f := range fwdHeaders {
					if bytes.EqualFold(name, f.name) {
						s.fwd |= f.bit
					}
				}
				continue
			}
			i := hopIndex(name)
			if i < 0 {
				continue
			}
			s.hop |= 1 << i
			if i == hopConnection {
				n := s.nConnTokens
				s.nConnTokens += len(splitTokens(value, s.connTokens[n:n]))
			}
		}
	}
}

// scanContentLength checks one Content-Length field; "5, 5" is one value
// repeated (RFC 9110 §8.6), "5, 6" a conflict.
func (s *rawScan) scanContentLength(value []byte) {
	for len(value) > 0 {
		var v []byte
		v, value = nextToken(value)
		if !allDigits(v) {
			s.clInvalid = true
			continue
		}
		if s.contentLength != nil && !bytes.Equal(s.contentLength, v) {
			s.clConflict = true
		}
		s.contentLength = v
	}
	if s.contentLength == nil {
		s.clInvalid = true // an empty value
	}
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// hopByHop are the headers that describe one connection, not the message
// (RFC 9110 §7.6.1, and the de-facto ones Go's httputil also drops). They
// are removed both ways, together with every header Connection names.
var hopByHop = [...]string{
	"Connection",
	"Proxy-Connection", // non-standard, sent by old clients
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Upgrade",
}

const hopConnection = 0 // index of Connection in hopByHop

var hdrExpect = []byte("expect")

// hopIndex returns name's index in hopByHop, or -1.
func hopIndex(name []byte) int {
	for i, h := range hopByHop {
		if len(h) == len(name) && bytes.EqualFold(name, []byte(h)) {
			return i
		}
	}
	return -1
}

// headerDeleter is satisfied by fasthttp's RequestHeader and ResponseHeader.
type headerDeleter interface {
	Del(key string)
	DelBytes(key []byte)
}

// stripHopByHop deletes the hop-by-hop headers marked present in mask and
// the headers the Connection tokens name. Deleting only what is there
// matters: each Del is a scan of the whole header, and a typical request
// has none of them (the profile showed 15% of the handler spent here).
func stripHopByHop(h headerDeleter, mask uint16, tokens [][]byte) {
	for _, t := range tokens {
		h.DelBytes(t)
	}
	for i := range hopByHop {
		if mask&(1<<i) != 0 {
			h.Del(hopByHop[i])
		}
	}
}

// responseHopMask finds which hop-by-hop headers a response carries, in one
// pass, and the Connection tokens.
func responseHopMask(h *fasthttp.ResponseHeader, toks [][]byte) (uint16, [][]byte) {
	var mask uint16
	for k, v := range h.All() {
		if i := hopIndex(k); i >= 0 {
			mask |= 1 << i
			if i == hopConnection {
				toks = splitTokens(v, toks)
			}
		}
	}
	return mask, toks
}

// nextToken splits the first element off a comma-separated field value
// (RFC 9110 §5.6.1), trimmed of whitespace; it may be empty.
func nextToken(v []byte) (tok, rest []byte) {
	tok, rest, _ = bytes.Cut(v, []byte{','})
	return bytes.TrimSpace(tok), rest
}

// splitTokens appends the non-empty elements of a comma-separated value to
// dst, up to dst's capacity, without allocating.
func splitTokens(v []byte, dst [][]byte) [][]byte {
	for len(v) > 0 {
		var tok []byte
		tok, v = nextToken(v)
		if len(tok) > 0 && len(dst) < cap(dst) {
			dst = append(dst, tok)
		}
	}
	return dst
}
