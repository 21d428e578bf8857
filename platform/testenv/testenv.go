// Package testenv starts the real things chattermail's tests run against:
// an in-process NATS server with JetStream and a redis-server on a free
// port. Nothing here talks to services started by hand.
//
// A missing redis-server binary fails the test: it is a dependency of the
// suite (.ci/run installs it), never a reason to skip.
package testenv

import (
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS starts an in-process NATS server with JetStream stored under a
// temporary folder and returns it; it is shut down when the test ends.
func NATS(tb testing.TB) *server.Server {
	tb.Helper()
	return NATSAt(tb, tb.TempDir(), -1)
}

// NATSAt starts a NATS server storing JetStream under dir, on port (-1 for
// a random one). Restarting on the same dir and port keeps the streams.
func NATSAt(tb testing.TB, dir string, port int) *server.Server {
	tb.Helper()
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoSigs:    true,
		NoLog:     true,
	})
	if err != nil {
		tb.Fatalf("testenv: nats: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatal("testenv: nats did not start")
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// Redis starts redis-server on a free loopback port with persistence off
// and returns its address (host:port). It is stopped when the test ends.
func Redis(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("testenv: redis-server is required (apt-get install redis-server): %v", err)
	}
	port := FreePort(tb)
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", tb.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		tb.Fatalf("testenv: start redis-server: %v", err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	Eventually(tb, 10*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return addr
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Eventually calls check until it returns nil or timeout passes, then
// fails the test with check's last error. It polls instead of sleeping a
// guessed time.
func Eventually(tb testing.TB, timeout time.Duration, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("testenv: not true after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
