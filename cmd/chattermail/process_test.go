package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/testenv"
)

// The separate programs, built once per test binary.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func buildServices(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "chattermail-bin-")
		if buildErr != nil {
			return
		}
		for _, s := range []string{"ingest", "rewrite", "quota", "sender"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, s), "github.com/chattermail/chattermail/services/"+s+"/cmd/"+s)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", s, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// service is one chattermail program running as its own OS process.
type service struct {
	name  string
	args  []string
	env   []string
	admin string
	cmd   *exec.Cmd
	logs  *logBuffer
}

func (s *service) start(t *testing.T) {
	t.Helper()
	s.cmd = exec.Command(filepath.Join(buildServices(t), s.name), s.args...)
	s.cmd.Env = append(os.Environ(), s.env...)
	s.cmd.Env = append(s.cmd.Env, "ADMIN_ADDR="+s.admin)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if s.cmd.ProcessState != nil {
			return errors.New(s.name + " exited")
		}
		resp, err := http.Get("http://" + s.admin + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s /readyz = %d", s.name, resp.StatusCode)
		}
		return nil
	})
}

// kill ends the process abruptly, as a crash or an OOM kill would.
func (s *service) kill() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

func (s *service) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.kill()
	}
}

// startProcesses runs ingest, rewrite, quota and sender as four OS
// processes on d's bus and returns the HTTP API's base URL and the sender.
func startProcesses(t *testing.T, d *deps) (string, *service) {
	t.Helper()
	logs := newLogBuffer(t)
	httpAddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	common := []string{"NATS_URL=" + d.natsURL, "CHATTERMAIL_CONFIG=" + d.configPath, "LOG_LEVEL=debug", "DNS_SERVERS=" + d.dns.Addr()}
	svcs := []*service{
		{name: "ingest", env: append([]string{"HTTP_ADDR=" + httpAddr}, common...)},
		{name: "rewrite", env: common},
		{name: "quota", env: append([]string{"REDIS_URL=redis://" + d.redisAddr + "/0"}, common...)},
		{name: "sender", env: common, args: []string{"-ack-wait", "2s", "-retry-base", "200ms"}},
	}
	for _, s := range svcs {
		s.admin = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
		s.logs = logs
		s.start(t)
		t.Cleanup(s.stop)
	}
	return "http://" + httpAddr, svcs[3]
}

func TestPostReachesFollowersAcrossProcesses(t *testing.T) {
	d := startDeps(t)
	base, _ := startProcesses(t, d)
	code, a := post(t, base, testAPIKey, samplePost)
	if code != 202 {
		t.Fatalf("POST /v1/posts = %d %+v, want 202", code, a)
	}
	checkSampleDelivery(t, d, a)
}

// TestSenderKilledMidDeliveryDeliversOnce kills the sender while it is
// inside an SMTP transaction (the capture holds RCPT until released),
// starts it again, and expects both mails exactly once.
func TestSenderKilledMidDeliveryDeliversOnce(t *testing.T) {
	d := startDeps(t)
	release := make(chan struct{})
	inRcpt := make(chan struct{}, 16)
	d.capture.SetReject(func(_, _ string) error {
		inRcpt <- struct{}{}
		<-release
		return nil
	})
	base, sender := startProcesses(t, d)
	code, a := post(t, base, testAPIKey, samplePost)
	if code != 202 {
		t.Fatalf("POST /v1/posts = %d %+v, want 202", code, a)
	}
	select {
	case <-inRcpt:
	case <-time.After(60 * time.Second):
		t.Fatal("the sender never reached RCPT")
	}
	sender.kill()
	sender.start(t)
	close(release)
	checkSampleDelivery(t, d, a)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = d.capture.Wait(ctx, 3) // a late duplicate would show up here
	if n := len(d.capture.Messages()); n != 2 {
		t.Errorf("captured %d mails after the restart, want exactly 2", n)
	}
}
