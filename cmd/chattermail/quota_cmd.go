package main

import (
	"context"
	"errors"
	"io"
)

// runQuota is "chattermail quota set|status".
func runQuota(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	return errors.New("quota: not available yet")
}
