package ingest

import (
	"context"

	"github.com/chattermail/chattermail/platform/bus"
)

// HandleDelivery runs the POSTS handler on d, as Run does for each
// delivery, so tests can replay a redelivery exactly.
func (s *Service) HandleDelivery(ctx context.Context, d *bus.Delivery) error {
	return s.handle(ctx, d)
}
