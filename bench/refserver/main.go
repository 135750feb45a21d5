// Command refserver is the floor bench/compare.py measures Gantry against: a minimal net/http server that
// answers each captured request URI with the exact bytes Gantry answered it with (status, content type,
// ETag, body), plus a fresh X-Request-Id per response as Gantry sends. No routing beyond one map lookup, no
// logging, no work: what this machine can do for this kind of request.
//
//	refserver -addr 127.0.0.1:18080 -manifest captured/manifest.json
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
)

type entry struct {
	URI         string `json:"uri"`
	Status      int    `json:"status"`
	ContentType string `json:"content_type"`
	ETag        string `json:"etag"`
	BodyFile    string `json:"body_file"`
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address")
	manifest := flag.String("manifest", "manifest.json", "JSON list of captured responses")
	flag.Parse()

	raw, err := os.ReadFile(*manifest)
	if err != nil {
		log.Fatal(err)
	}
	var entries []entry
	if err := json.Unmarshal(raw, &entries); err != nil {
		log.Fatal(err)
	}
	routes := make(map[string]response, len(entries))
	for _, e := range entries {
		body, err := os.ReadFile(filepath.Join(filepath.Dir(*manifest), e.BodyFile))
		if err != nil {
			log.Fatal(err)
		}
		h := http.Header{}
		h.Set("Content-Type", e.ContentType)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		if e.ETag != "" {
			h.Set("Etag", e.ETag)
		}
		routes[e.URI] = response{e.Status, h, body}
	}

	var seq atomic.Uint64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, ok := routes[r.RequestURI]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		for k, v := range resp.header {
			h[k] = v
		}
		h["X-Request-Id"] = []string{strconv.FormatUint(seq.Add(1), 16)}
		w.WriteHeader(resp.status)
		w.Write(resp.body)
	})
	log.Fatal(http.ListenAndServe(*addr, handler))
}
