package testenv

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNSServer is an authoritative DNS server on a loopback UDP and TCP port,
// answering from records set by the test. Names it has no record for get
// NXDOMAIN; names with records of other types get NOERROR with no data.
type DNSServer struct {
	addr string

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case FQDN
	fail    map[string]bool
	drop    map[string]bool
	queries map[string]int
}

// DNS starts a DNS server serving records, each in zone-file syntax, for
// example `_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject"`. It stops
// when the test ends.
func DNS(tb testing.TB, records ...string) *DNSServer {
	tb.Helper()
	s := &DNSServer{fail: map[string]bool{}, drop: map[string]bool{}, queries: map[string]int{}}
	if err := s.set(records); err != nil {
		tb.Fatal(err)
	}
	pc, ln, err := listenUDPAndTCP()
	if err != nil {
		tb.Fatal(err)
	}
	s.addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: ln, Handler: s}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	tb.Cleanup(func() {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
	})
	return s
}

// Addr is the server's "host:port", on UDP and TCP.
func (s *DNSServer) Addr() string { return s.addr }

// Set replaces every record with records (zone-file syntax); it panics on
// a record that does not parse, which is a mistake in the test.
func (s *DNSServer) Set(records ...string) {
	if err := s.set(records); err != nil {
		panic(err)
	}
}

func (s *DNSServer) set(records []string) error {
	m := map[string][]dns.RR{}
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			return err
		}
		name := strings.ToLower(rr.Header().Name)
		m[name] = append(m[name], rr)
	}
	s.mu.Lock()
	s.records = m
	s.mu.Unlock()
	return nil
}

// Fail makes every question about name answer SERVFAIL.
func (s *DNSServer) Fail(name string) {
	s.mu.Lock()
	s.fail[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Drop makes every question about name go unanswered (a timeout).
func (s *DNSServer) Drop(name string) {
	s.mu.Lock()
	s.drop[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// Queries is how many questions about name the server received.
func (s *DNSServer) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[strings.ToLower(dns.Fqdn(name))]
}

// ServeDNS implements dns.Handler.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	s.queries[name]++
	drop, fail := s.drop[name], s.fail[name]
	rrs, known := s.records[name]
	s.mu.Unlock()
	if drop {
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	switch {
	case fail:
		m.Rcode = dns.RcodeServerFailure
	case !known:
		m.Rcode = dns.RcodeNameError
	default:
		m.Answer = s.answer(rrs, q.Qtype)
	}
	_ = w.WriteMsg(m)
}

// answer returns the records of qtype among rrs, following CNAMEs to other
// names the server knows (up to 8 links), as a recursive resolver would.
func (s *DNSServer) answer(rrs []dns.RR, qtype uint16) []dns.RR {
	var out []dns.RR
	for range 8 {
		var next string
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == qtype:
				out = append(out, dns.Copy(rr))
			case rr.Header().Rrtype == dns.TypeCNAME && qtype != dns.TypeCNAME:
				out = append(out, dns.Copy(rr))
				next = strings.ToLower(rr.(*dns.CNAME).Target)
			}
		}
		if next == "" {
			break
		}
		s.mu.Lock()
		rrs = s.records[next]
		s.mu.Unlock()
	}
	return out
}

// listenUDPAndTCP binds a UDP and a TCP socket on the same free loopback
// port; the port the UDP socket got may be taken for TCP, so it tries a
// few ports.
func listenUDPAndTCP() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, lastErr
}
