package rewrite

import (
	"context"
	"testing"
)

// BenchmarkDecide measures the rule engine: decisions per second for a
// tenant with five servers, authors cycling through every step, and a
// DMARC source answering from memory (as the cache does once warm).
func BenchmarkDecide(b *testing.B) {
	r := compile(b, tenantFrom(b, base+`    dkim: [{domain: signed.example, key_file: k.pem}]
    servers:
      - {name: partners, sequence: 10, host: h, from_filter: 'partner.example, ceo@bigcorp.example, yahoo.com'}
      - {name: own, sequence: 20, host: h, from_filter: 'example.com, example.net'}
      - {name: marketing, sequence: 30, host: h, from_filter: news@example.org}
      - {name: relay, sequence: 40, host: h}
      - {name: backup, sequence: 50, host: h, from_filter: backup.example}
`))
	var authors []Author
	for _, s := range []string{
		"Bob <bob@example.com>",            // author domain, own domain: no lookup
		"Alice <alice@gmail.com>",          // notification domain
		"Paula <p@partner.example>",        // author domain, DMARC none
		"The CEO <CEO@BigCorp.example>",    // author address
		"Yolanda <y@yahoo.com>",            // DMARC reject: mitigation
		"Jérôme <jerome@éxample.fr>",       // non-ASCII, encoded word
		"Sig <s@signed.example>",           // not matched by any filter
		"\"Quoted, Name\" <q@example.net>", // quoting
	} {
		authors = append(authors, author(b, s))
	}
	dm := memoryDMARC{"yahoo.com": {Domain: "yahoo.com", Record: "_dmarc.yahoo.com", Policy: PolicyReject, Percent: 100}}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := r.Decide(ctx, authors[i%len(authors)], dm, DNSFailureError); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// memoryDMARC answers from a map, like a warm cache.
type memoryDMARC map[string]DMARCPolicy

func (m memoryDMARC) Policy(_ context.Context, d string) (DMARCPolicy, error) {
	if p, ok := m[d]; ok {
		return p, nil
	}
	return DMARCPolicy{Domain: d}, nil
}
