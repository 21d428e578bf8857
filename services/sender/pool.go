package sender

import (
	"context"
	"sync"
	"time"
)

// pool keeps SMTP sessions open between mails, per destination (a pool
// key: address, TLS mode, and the tenant and login for a tenant's own
// server), and caps how many sessions a destination has at once, idle and
// busy together (like Postfix's default_destination_concurrency_limit).
//
// A worker acquires a slot of the destination, takes an idle session or
// opens one, and puts the session back (or closes it) before releasing
// the slot. Idle sessions are closed with QUIT after idleTimeout.
//
// A pool is safe for concurrent use.
type pool struct {
	limit       int
	idleTimeout time.Duration
	quitTimeout time.Duration

	mu     sync.Mutex
	dests  map[string]*destination
	closed bool
}

// destination is one pool key's slots and idle sessions.
type destination struct {
	key   string
	slots chan struct{}
	idle  []*session // most recently used last
}

func newPool(limit int, idleTimeout, quitTimeout time.Duration) *pool {
	return &pool{limit: limit, idleTimeout: idleTimeout, quitTimeout: quitTimeout, dests: map[string]*destination{}}
}

// acquire waits for a free slot of destination key, or for ctx to end.
func (p *pool) acquire(ctx context.Context, key string) (*destination, error) {
	p.mu.Lock()
	d := p.dests[key]
	if d == nil {
		d = &destination{key: key, slots: make(chan struct{}, p.limit)}
		p.dests[key] = d
	}
	p.mu.Unlock()
	select {
	case d.slots <- struct{}{}:
		return d, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// release frees the slot acquire took.
func (p *pool) release(d *destination) { <-d.slots }

// takeIdle returns d's most recently used idle session that has not been
// idle too long, or nil; the ones idle too long are closed.
func (p *pool) takeIdle(d *destination) *session {
	now := time.Now()
	var stale []*session
	var ss *session
	p.mu.Lock()
	for len(d.idle) > 0 {
		last := d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		if now.Sub(last.idleSince) < p.idleTimeout {
			ss = last
			break
		}
		stale = append(stale, last)
	}
	p.mu.Unlock()
	for _, s := range stale {
		go s.quit(p.quitTimeout, true)
	}
	return ss
}

// put keeps ss for the next mail to d; after close, it quits ss instead.
func (p *pool) put(d *destination, ss *session) {
	// What happens while no mail uses the session (QUIT at close)
	// belongs to no mail's transcript.
	ss.use(&transcript{truncated: true})
	ss.idleSince = time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ss.quit(p.quitTimeout, true)
		return
	}
	d.idle = append(d.idle, ss)
	p.mu.Unlock()
}

// reap closes the sessions idle longer than idleTimeout.
func (p *pool) reap() {
	now := time.Now()
	var stale []*session
	p.mu.Lock()
	for _, d := range p.dests {
		keep := d.idle[:0]
		for _, ss := range d.idle {
			if now.Sub(ss.idleSince) >= p.idleTimeout {
				stale = append(stale, ss)
			} else {
				keep = append(keep, ss)
			}
		}
		clear(d.idle[len(keep):])
		d.idle = keep
	}
	p.mu.Unlock()
	quitAll(stale, p.quitTimeout)
}

// run reaps idle sessions until ctx is done, then closes the pool.
func (p *pool) run(ctx context.Context) {
	t := time.NewTicker(max(p.idleTimeout/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.close()
			return
		case <-t.C:
			p.reap()
		}
	}
}

// close quits every idle session; sessions still in use are quit when
// they are put back.
func (p *pool) close() {
	var all []*session
	p.mu.Lock()
	p.closed = true
	for _, d := range p.dests {
		all = append(all, d.idle...)
		d.idle = nil
	}
	p.mu.Unlock()
	quitAll(all, p.quitTimeout)
}

// idleCount is the number of idle sessions (tests, metrics).
func (p *pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, d := range p.dests {
		n += len(d.idle)
	}
	return n
}

func quitAll(ss []*session, timeout time.Duration) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.quit(timeout, true)
		}()
	}
	wg.Wait()
}
