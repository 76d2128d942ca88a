package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Paging of RetrievePropertiesEx, as vCenter does it. govmomi 0.24.2 ignores
// options.maxObjects and has no ContinueRetrievePropertiesEx or
// CancelRetrievePropertiesEx. The harness lets the simulator build the whole
// answer, cuts its <objects> elements (copied verbatim: each value element
// declares its own XMLSchema-instance prefix) into pages of maxObjects
// (or -page-cap, whichever is smaller), and keeps the rest in memory behind an
// opaque token that belongs to the session and the collector that asked.

// maxPagedResults bounds the unread results kept in memory; the oldest is
// dropped first (its token then answers InvalidArgument).
const maxPagedResults = 1000

type pagedResult struct {
	seq       uint64
	session   string // session cookie value
	collector types.ManagedObjectReference
	pageSize  int
	rest      [][]byte // <objects>...</objects> elements not yet returned
}

type pager struct {
	mu      sync.Mutex
	seq     uint64
	results map[string]*pagedResult // by token
}

func newPager() *pager {
	return &pager{results: map[string]*pagedResult{}}
}

func newToken() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "deskpool-vcsim-page-" + hex.EncodeToString(b[:])
}

// store keeps res and returns its new token.
func (p *pager) store(res *pagedResult) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.results) >= maxPagedResults {
		oldest := ""
		for t, r := range p.results {
			if oldest == "" || r.seq < p.results[oldest].seq {
				oldest = t
			}
		}
		delete(p.results, oldest)
	}
	p.seq++
	res.seq = p.seq
	tok := newToken()
	p.results[tok] = res
	return tok
}

// take removes and returns the result of a token, if it exists and belongs to
// this session and collector.
func (p *pager) take(token, session string, collector types.ManagedObjectReference) *pagedResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	res, ok := p.results[token]
	if !ok || res.session != session || res.collector != collector {
		return nil
	}
	delete(p.results, token)
	return res
}

// effectiveLimit: maxObjects (<= 0 means unset), capped by -page-cap.
func (h *harness) effectiveLimit(maxObjects int32) int {
	limit := int(maxObjects)
	if limit < 0 {
		limit = 0
	}
	if c := h.opts.pageCap; c > 0 && (limit == 0 || limit > c) {
		limit = c
	}
	return limit
}

// paging handles RetrievePropertiesEx (when a page limit applies),
// ContinueRetrievePropertiesEx and CancelRetrievePropertiesEx. Returns false
// to let the simulator answer unchanged. The session is already checked.
func (h *harness) paging(w http.ResponseWriter, r *http.Request, name string, body []byte) bool {
	if name != "RetrievePropertiesEx" && name != "ContinueRetrievePropertiesEx" && name != "CancelRetrievePropertiesEx" {
		return false
	}
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		return false
	}
	session := ""
	if c, err := r.Cookie(soap.SessionCookieName); err == nil {
		session = c.Value
	}

	switch req := method.Body.(type) {
	case *types.RetrievePropertiesEx:
		limit := h.effectiveLimit(req.Options.MaxObjects)
		hidden := h.inaccessibleVMs()
		if limit == 0 && len(hidden) == 0 {
			return false
		}
		rec := httptest.NewRecorder()
		h.inner.ServeHTTP(rec, r)
		objs, ok := splitObjects(rec.Body.Bytes())
		if rec.Code != http.StatusOK || !ok {
			copyResponse(w, rec)
			return true
		}
		if len(hidden) > 0 {
			objs = markMissing(objs, hidden, configPaths(req.SpecSet))
		}
		if limit == 0 || len(objs) <= limit {
			writeOK(w, retrieveResultXML(name, "", objs))
			return true
		}
		tok := h.pages.store(&pagedResult{session: session, collector: req.This, pageSize: limit, rest: objs[limit:]})
		writeOK(w, retrieveResultXML(name, tok, objs[:limit]))
		return true

	case *types.ContinueRetrievePropertiesEx:
		res := h.pages.take(req.Token, session, req.This)
		if res == nil {
			writeInvalidArgument(w, "token")
			return true
		}
		n := res.pageSize
		if n > len(res.rest) {
			n = len(res.rest)
		}
		page := res.rest[:n]
		res.rest = res.rest[n:]
		tok := ""
		if len(res.rest) > 0 {
			tok = h.pages.store(res)
		}
		writeOK(w, retrieveResultXML(name, tok, page))
		return true

	case *types.CancelRetrievePropertiesEx:
		if h.pages.take(req.Token, session, req.This) == nil {
			writeInvalidArgument(w, "token")
			return true
		}
		writeOK(w, `<CancelRetrievePropertiesExResponse xmlns="urn:vim25"></CancelRetrievePropertiesExResponse>`)
		return true
	}
	return false
}

// splitObjects returns the bytes of each <objects> element of
// Envelope/Body/*Response/returnval. ok is false when the answer has another
// shape (a fault, or a returnval with other children such as a token).
func splitObjects(body []byte) (objs [][]byte, ok bool) {
	d := xml.NewDecoder(bytes.NewReader(body))
	var path []string
	start := int64(-1)
	for {
		off := d.InputOffset()
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, false
		}
		switch t := tok.(type) {
		case xml.StartElement:
			path = append(path, t.Name.Local)
			switch len(path) {
			case 2:
				if t.Name.Local != "Body" {
					return nil, false
				}
			case 4:
				if t.Name.Local != "returnval" {
					return nil, false
				}
			case 5:
				if t.Name.Local != "objects" {
					return nil, false
				}
				start = off
			}
		case xml.EndElement:
			if len(path) == 0 {
				return nil, false
			}
			if len(path) == 5 && start >= 0 {
				objs = append(objs, body[start:d.InputOffset()])
				start = -1
			}
			path = path[:len(path)-1]
		}
	}
	return objs, true
}

// retrieveResultXML: a RetrieveResult in WSDL order (token, then objects).
func retrieveResultXML(method, token string, objs [][]byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<%sResponse xmlns="urn:vim25"><returnval>`, method)
	if token != "" {
		b.WriteString(`<token>` + xmlEscape(token) + `</token>`)
	}
	for _, o := range objs {
		b.Write(o)
	}
	fmt.Fprintf(&b, `</returnval></%sResponse>`, method)
	return b.String()
}

func writeInvalidArgument(w http.ResponseWriter, prop string) {
	writeFault(w, "A specified parameter was not correct: "+prop,
		`<InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>`+
			xmlEscape(prop)+`</invalidProperty></InvalidArgumentFault>`)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// inaccessibleVMs: the morefs of VMs made inaccessible (POST /vms/inaccessible).
func (h *harness) inaccessibleVMs() map[string]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]bool, len(h.hiddenConfig))
	for ref := range h.hiddenConfig {
		out[ref.Value] = true
	}
	return out
}

var (
	objVM      = regexp.MustCompile(`<obj type="VirtualMachine">([^<]*)</obj>`)
	configProp = regexp.MustCompile(`<propSet><name>config[^<]*</name>.*?</propSet>`)
)

// configPaths: the config.* properties asked of VirtualMachines.
func configPaths(specs []types.PropertyFilterSpec) []string {
	var out []string
	for _, s := range specs {
		for _, ps := range s.PropSet {
			if ps.Type != "VirtualMachine" {
				continue
			}
			for _, p := range ps.PathSet {
				if p == "config" || strings.HasPrefix(p, "config.") {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// markMissing answers the config.* properties of inaccessible VMs as vCenter does, in
// missingSet with a fault, where 0.24.2 leaves them out (config is nil).
func markMissing(objs [][]byte, hidden map[string]bool, paths []string) [][]byte {
	out := make([][]byte, len(objs))
	for i, o := range objs {
		m := objVM.FindSubmatch(o)
		end := bytes.LastIndex(o, []byte("</objects>"))
		if m == nil || !hidden[string(m[1])] || end < 0 {
			out[i] = o
			continue
		}
		rest := configProp.ReplaceAll(o[:end], nil)
		b := append([]byte{}, rest...)
		for _, p := range paths {
			path := xmlEscape(p)
			b = append(b, `<missingSet><path>`+path+`</path><fault><fault xsi:type="InvalidProperty"><name>`+
				path+`</name></fault><localizedMessage>the VM's configuration cannot be read: its datastore is inaccessible</localizedMessage></fault></missingSet>`...)
		}
		out[i] = append(b, o[end:]...)
	}
	return out
}
