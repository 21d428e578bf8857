package ingest_test

import (
	"fmt"

	"github.com/chattermail/chattermail/platform/config"
	"github.com/chattermail/chattermail/services/ingest"
)

// Every copy of a post shares one Message-ID on the tenant's alias
// domain; each recipient's copy has its own mail id.
func ExampleMessageID() {
	acme := &config.Tenant{ID: "acme", AliasDomain: "example.com"}
	fmt.Println(ingest.MessageID("p-1", acme))
	// Output: p-1@example.com
}

// Addresses are compared in their normalised form (mail-rules §2).
func ExampleNormalizeAddress() {
	addr, err := ingest.NormalizeAddress("Ann.Lee@Example.ORG")
	fmt.Println(addr, err)
	_, err = ingest.NormalizeAddress("Ann <ann@example.org>")
	fmt.Println(err != nil)
	// Output:
	// ann.lee@example.org <nil>
	// true
}
