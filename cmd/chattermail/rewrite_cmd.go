package main

import (
	"context"
	"errors"
	"io"
)

// runRewrite is "chattermail rewrite explain".
func runRewrite(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	return errors.New("rewrite: not available yet")
}
