// An HTTP server on cloudflare/tableflip that names its pid in every reply.
//
// SIGHUP upgrades (tableflip's documented trigger); SIGTERM stops. With -drain (the default)
// the superseded process stops accepting and finishes what it holds (http.Server.Shutdown,
// as tableflip's own HTTP example does); with -drain=false it exits as soon as the new process
// is ready, cutting whatever it holds.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	pidFile := flag.String("pid-file", "", "PID file tableflip maintains")
	delayMs := flag.Int("delay-ms", 0, "time each request takes (a `?delay=ms` query overrides it)")
	pidForm := flag.String("pid-form", "handoff", "how a reply names the pid: handoff (body pid=N), x-pid (header), colon (body pid:N)")
	drain := flag.Bool("drain", true, "finish held connections before exiting")
	drainMs := flag.Int("drain-timeout-ms", 5000, "longest drain")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("tableflip pid=%d ", os.Getpid()))

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile})
	if err != nil {
		log.Fatalln("tableflip:", err)
	}
	defer upg.Stop()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM)
		for s := range sig {
			if s == syscall.SIGTERM {
				upg.Stop()
				return
			}
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Listen("tcp", *listen)
	if err != nil {
		log.Fatalln("listen:", err)
	}
	server := http.Server{Handler: handler(*delayMs, *pidForm)}
	go server.Serve(ln)
	if err := upg.Ready(); err != nil {
		log.Fatalln("ready:", err)
	}
	log.Printf("ready pid=%d", os.Getpid())
	<-upg.Exit()
	if !*drain {
		log.Println("exiting without draining")
		os.Exit(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*drainMs)*time.Millisecond)
	defer cancel()
	if err := server.Shutdown(ctx); err != nil {
		log.Println("drain:", err)
	}
	log.Println("drained, exiting")
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
