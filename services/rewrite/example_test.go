package rewrite_test

import (
	"context"
	"fmt"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/services/rewrite"
)

// Worked example 2 of mail-rules §10: an external author on a tenant whose
// only server sends for its own domain goes out as the notification
// address, with the author's name.
func ExampleRules_Decide() {
	cfg, err := config.Parse([]byte(`
tenants:
  acme:
    alias_domain: example.com
    servers: [{name: S1, host: smtp.example.com, from_filter: example.com}]
`), "")
	if err != nil {
		panic(err)
	}
	rules, err := rewrite.CompileTenant(cfg.Tenant("acme"))
	if err != nil {
		panic(err)
	}
	author, err := rewrite.ParseAuthor("", "Alice <alice@gmail.com>")
	if err != nil {
		panic(err)
	}
	d, err := rules.Decide(context.Background(), author, nil, rewrite.DNSFailureError)
	if err != nil {
		panic(err)
	}
	fmt.Println(d.From.GetHeader())
	fmt.Println(d.EnvelopeFrom, d.From.GetServer(), d.From.GetStep())
	// Output:
	// "Alice" <notifications@example.com>
	// bounce@example.com S1 FROM_STEP_NOTIFICATION_DOMAIN
}
