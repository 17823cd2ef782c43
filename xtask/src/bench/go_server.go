// The server of the bench's Go scenario (xtask/src/bench/services.rs): an
// uninstrumented net/http server answering "ok" to GET /items/<id>, each
// keep-alive connection served by its own goroutine.
//
//	go_server <port>
package main

import (
	"net/http"
	"os"
	"time"
)

func main() {
	http.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Addr: "127.0.0.1:" + os.Args[1], IdleTimeout: 120 * time.Second}
	panic(srv.ListenAndServe())
}
