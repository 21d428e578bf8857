// Package proto holds chattermail's protobuf event definitions; the
// generated Go code is in package chattermailv1 under chattermail/v1.
package proto
