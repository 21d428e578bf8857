module github.com/chattermail/chattermail/services/sender

go 1.26.0

require (
	github.com/chattermail/chattermail/platform v0.0.0
	github.com/chattermail/chattermail/proto v0.0.0
)

replace (
	github.com/chattermail/chattermail/platform => ../../platform
	github.com/chattermail/chattermail/proto => ../../proto
)
