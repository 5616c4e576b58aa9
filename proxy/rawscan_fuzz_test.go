package proxy

import (
	"bufio"
	"bytes"
	"strconv"
	"testing"

	"github.com/valyala/fasthttp"
)

// rawScanSeeds are the smuggling corpus of hygiene_test.go and
// framing_test.go, and CL/TE variants around them: obs-fold, bare LF,
// control bytes, case, whitespace, duplicates, leading zeros, overflow.
var rawScanSeeds = []string{
	// hygiene_test.go: TestMalformedRequestsNeverReachUpstream, TestValidFramingIsForwarded
	"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi",
	"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhey",
	"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
	"Content-Length: 2, 3\r\n\r\nhey",
	"Content-Length: abc\r\n\r\nhey",
	"Content-Length: -1\r\n\r\n",
	"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
	"X\nY: z\r\n\r\n",
	"Transfer-Encoding:  CHUNKED \r\n\r\n2\r\nhi\r\n0\r\n\r\n",
	"Content-Length: 2\r\n\r\nhi",
	// framing_test.go: TestFramingErrorsRejectedBeforeBody
	"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
	"Transfer-Encoding: chunkedx\r\n\r\n5\r\nhel",
	"Transfer-Encoding: identity\r\n\r\nhel",
	"Content-Length : 20\r\n\r\nhel",
	"Content-Length: 20, 20\r\n\r\nhel",
	"Content-Length: 2O\r\n\r\nhel",
	"Content-Length: \r\n\r\nhel",
	"Expect: 100-continue\r\nContent-Length: 20\r\nTransfer-Encoding: chunked\r\n\r\n",
	// Variants.
	"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"transfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding:\tchunked\t\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: chunked\r\n\r\n",
	"Transfer-Encoding: \"chunked\"\r\n\r\n",
	"Transfer-Encoding: chunked;x=1\r\n\r\n",
	"Transfer-Encoding: x\r\n chunked\r\n\r\n",              // obs-fold
	"X-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n",       // obs-fold hiding a name
	"X-Pad: a\r\n\tContent-Length: 5\r\n\r\nhello",          // the same with a tab
	"Transfer-Encoding: chunked\n\n0\n\n",                   // bare LF
	"Content-Length: 5\nTransfer-Encoding: chunked\r\n\r\n", // mixed line ends
	"Content-Length: 5\rTransfer-Encoding: chunked\r\n\r\n", // bare CR
	"Transfer-Encoding\x00: chunked\r\n\r\n",                // NUL in the name
	"Transfer-Encoding: chun\x00ked\r\n\r\n",                // NUL in the value
	"Transfer_Encoding: chunked\r\n\r\n",                    // underscore
	"Transfer-Encoding\t: chunked\r\n\r\n",                  // tab before the colon
	" Transfer-Encoding: chunked\r\n\r\n",                   // leading space
	"Content-Length: 007\r\n\r\n1234567",                    // leading zeros
	"Content-Length: +5\r\n\r\nhello",                       // a sign
	"Content-Length: 5 \r\n\r\nhello",                       // trailing space
	"Content-Length: 99999999999999999999\r\n\r\n",          // overflow
	"Content-Length: 5\r\nContent-Length: 05\r\n\r\nhello",  // equal, spelt differently
	"Content-Length: 1\r\nX-Long: " + string(bytes.Repeat([]byte("a"), 300)) + "\r\n\r\na",
	"Connection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"Content-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n", // a request after the body
	// Bytes that only Unicode calls space or case: field names and
	// values are ASCII (RFC 9110 §5.1, §5.5; OWS is SP and HTAB).
	"Tran\u017ffer-Encoding: chunked\r\n\r\n0\r\n\r\n", // ſ folds to s
	"Transfer-Encoding: chun\u212aed\r\n\r\n0\r\n\r\n", // the Kelvin sign folds to k
	"Content-Length: 5\r\nTran\u017ffer-Encoding: chunked\r\n\r\nhello",
	"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: \x0cchunked\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: chunked\u00a0\r\n\r\n0\r\n\r\n",
	"Transfer-Encoding: \u0085chunked\r\n\r\n0\r\n\r\n",
	"Content-Length: 5\u00a0\r\n\r\nhello",
	"Content-Length:\x0b5\r\n\r\nhello",
}

// FuzzRawScan: the raw header scan behind the smuggling checks (rawScan)
// never panics, and wherever it and fasthttp's parser both accept a
// request, they agree on its framing: chunked, a Content-Length of the
// same value, or no body. A request whose framing the edge reads one way
// and fasthttp (which reads the body and forwards it) another is the
// smuggling the scan is there to stop.
func FuzzRawScan(f *testing.F) {
	for _, s := range rawScanSeeds {
		for _, line := range []string{"POST /api/games/1/buy HTTP/1.1\r\nHost: edge\r\n", "GET / HTTP/1.1\r\nHost: edge\r\n", "POST / HTTP/1.0\r\n"} {
			f.Add([]byte(line + s))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s rawScan
		s.scan(b) // any bytes at all, not only what fasthttp accepts
		var h fasthttp.RequestHeader
		if err := h.Read(bufio.NewReader(bytes.NewReader(b))); err != nil {
			return
		}
		s = rawScan{}
		s.scan(h.RawHeaders())
		if s.smuggling() != "" {
			return // refused with 400 before anything reads a body
		}
		got := h.ContentLength()
		switch {
		case s.transferEncoding > 0:
			if got != -1 {
				t.Fatalf("the scan reads chunked, fasthttp reads Content-Length %d:\n%q", got, b)
			}
		case s.contentLengths > 0:
			want, err := strconv.ParseInt(string(s.contentLength), 10, 64)
			if err != nil || int64(got) != want {
				t.Fatalf("the scan reads Content-Length %q, fasthttp %d:\n%q", s.contentLength, got, b)
			}
		default:
			if got != 0 && got != -2 {
				t.Fatalf("the scan reads no body, fasthttp reads Content-Length %d:\n%q", got, b)
			}
		}
	})
}
