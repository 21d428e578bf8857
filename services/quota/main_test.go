package quota

import (
	"context"
	"io"
	"log"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
)

// logger silences go-redis's own connection log, which the tests that stop
// redis-server on purpose fill with "connection refused".
type quietRedis struct{ l *log.Logger }

func (q quietRedis) Printf(_ context.Context, format string, v ...any) { q.l.Printf(format, v...) }

func TestMain(m *testing.M) {
	redis.SetLogger(quietRedis{log.New(io.Discard, "", 0)})
	os.Exit(m.Run())
}
