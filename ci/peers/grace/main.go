// An HTTP server on facebookgo/grace (gracehttp) that names its pid in every reply.
//
// gracehttp's documented signals: SIGUSR2 starts a new process that inherits the listener and,
// once it serves, sends SIGTERM to its parent; SIGTERM (or SIGINT) stops gracefully, finishing
// held requests (httpdown's stop timeout: one minute).
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/facebookgo/grace/gracehttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	delayMs := flag.Int("delay-ms", 0, "time each request takes (a `?delay=ms` query overrides it)")
	pidForm := flag.String("pid-form", "handoff", "how a reply names the pid: handoff (body pid=N), x-pid (header), colon (body pid:N)")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("grace pid=%d ", os.Getpid()))
	server := &http.Server{Addr: *listen, Handler: handler(*delayMs, *pidForm)}
	if err := gracehttp.Serve(server); err != nil {
		log.Fatalln(err)
	}
}

// handler answers every request with the pid, after `delay` ms.
func handler(delay int, form string) http.Handler {
	pid := os.Getpid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := delay
		if q := r.URL.Query().Get("delay"); q != "" {
			fmt.Sscan(q, &d)
		}
		time.Sleep(time.Duration(d) * time.Millisecond)
		w.Header().Set("Content-Type", "text/plain")
		switch form {
		case "x-pid":
			w.Header().Set("X-PID", fmt.Sprint(pid))
			fmt.Fprintln(w, "ok")
		case "colon":
			fmt.Fprintf(w, "pid:%d\n", pid)
		default:
			fmt.Fprintf(w, "pid=%d\n", pid)
		}
	})
}
