module github.com/chattermail/chattermail/cmd/chattermail

go 1.26.0

require (
	github.com/chattermail/chattermail/platform v0.0.0
	github.com/chattermail/chattermail/proto v0.0.0
	github.com/chattermail/chattermail/services/ingest v0.0.0
	github.com/chattermail/chattermail/services/quota v0.0.0
	github.com/chattermail/chattermail/services/rewrite v0.0.0
	github.com/chattermail/chattermail/services/sender v0.0.0
)

replace (
	github.com/chattermail/chattermail/platform => ../../platform
	github.com/chattermail/chattermail/proto => ../../proto
	github.com/chattermail/chattermail/services/ingest => ../../services/ingest
	github.com/chattermail/chattermail/services/quota => ../../services/quota
	github.com/chattermail/chattermail/services/rewrite => ../../services/rewrite
	github.com/chattermail/chattermail/services/sender => ../../services/sender
)
