package ingest

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"google.golang.org/protobuf/proto"
)

func TestNormalizeAddress(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "bob@example.com", want: "bob@example.com"},
		{in: "Bob@EXAMPLE.com", want: "bob@example.com"},
		{in: "BOB.Smith+tag@Mail.Example.COM", want: "bob.smith+tag@mail.example.com"},
		// A non-ASCII local part keeps its case (mail-rules §2).
		{in: "Jöhn@Example.com", want: "Jöhn@example.com"},
		{in: "", wantErr: true},
		{in: "bob", wantErr: true},
		{in: "@example.com", wantErr: true},
		{in: "Bob <bob@example.com>", wantErr: true},
		{in: "bob@example.com, ann@example.com", wantErr: true},
		{in: "bob@example.com\r\nBcc: eve@evil.test", wantErr: true},
		{in: "bob@example.com\n", wantErr: true},
		{in: "bob\x00@example.com", wantErr: true},
		{in: " bob@example.com", wantErr: true},
		{in: `"fake@x.com" <a@y.com>`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := NormalizeAddress(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("NormalizeAddress(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeAddress(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func validPost() *cmv1.ChatterPost {
	return &cmv1.ChatterPost{
		Tenant:   "acme",
		Thread:   &cmv1.ThreadRef{Model: "crm.lead", Id: "42", DisplayName: "Big deal"},
		Author:   &cmv1.Partner{Name: "Bob", Email: "bob@example.com"},
		Subject:  "Hello",
		BodyText: "Hi all",
		Followers: []*cmv1.Follower{
			{Partner: &cmv1.Partner{Name: "Ann", Email: "ann@example.org"}},
		},
		Recipients: []*cmv1.Partner{{Email: "dan@example.net"}},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *cmv1.ChatterPost)
		// wantErr is a fragment of the error; empty means valid.
		wantErr string
	}{
		{name: "valid", change: func(*cmv1.ChatterPost) {}},
		{name: "html body only", change: func(p *cmv1.ChatterPost) { p.Subject, p.BodyText, p.BodyHtml = "", "", "<p>x</p>" }},
		{name: "subject only", change: func(p *cmv1.ChatterPost) { p.BodyText = "" }},
		{name: "parent with brackets", change: func(p *cmv1.ChatterPost) { p.ParentMessageId = "<abc@example.com>" }},
		{name: "post id", change: func(p *cmv1.ChatterPost) { p.PostId = "abc-123" }},
		{name: "no tenant", change: func(p *cmv1.ChatterPost) { p.Tenant = "" }, wantErr: "tenant is required"},
		{name: "bad tenant", change: func(p *cmv1.ChatterPost) { p.Tenant = "Acme.Corp" }, wantErr: "tenant"},
		{name: "bad post id", change: func(p *cmv1.ChatterPost) { p.PostId = "ABC/1" }, wantErr: "post_id"},
		{name: "no thread", change: func(p *cmv1.ChatterPost) { p.Thread = nil }, wantErr: "thread is required"},
		{name: "no thread model", change: func(p *cmv1.ChatterPost) { p.Thread.Model = "" }, wantErr: "thread.model is required"},
		{name: "no thread id", change: func(p *cmv1.ChatterPost) { p.Thread.Id = " " }, wantErr: "thread.id is required"},
		{name: "thread id with newline", change: func(p *cmv1.ChatterPost) { p.Thread.Id = "4\n2" }, wantErr: "thread.id"},
		{name: "no author", change: func(p *cmv1.ChatterPost) { p.Author = nil }, wantErr: "author is required"},
		{name: "no author email", change: func(p *cmv1.ChatterPost) { p.Author.Email = "" }, wantErr: "author.email is required"},
		{name: "author with display name", change: func(p *cmv1.ChatterPost) { p.Author.Email = "Bob <bob@example.com>" }, wantErr: "author.email"},
		{name: "two authors", change: func(p *cmv1.ChatterPost) { p.Author.Email = "bob@example.com, eve@example.com" }, wantErr: "author.email"},
		{name: "author with CRLF", change: func(p *cmv1.ChatterPost) { p.Author.Email = "bob@example.com\r\nBcc: x@y.z" }, wantErr: "CR, LF or NUL"},
		{name: "author name with LF", change: func(p *cmv1.ChatterPost) { p.Author.Name = "Bob\nBcc: x@y.z" }, wantErr: "author.name"},
		{name: "follower without partner", change: func(p *cmv1.ChatterPost) { p.Followers[0].Partner = nil }, wantErr: "followers[0].partner is required"},
		{name: "bad follower email", change: func(p *cmv1.ChatterPost) { p.Followers[0].Partner.Email = "ann" }, wantErr: "followers[0].partner.email"},
		{name: "bad recipient email", change: func(p *cmv1.ChatterPost) { p.Recipients[0].Email = "dan@" }, wantErr: "recipients[0].email"},
		{name: "no subject no body", change: func(p *cmv1.ChatterPost) { p.Subject, p.BodyText = " ", "" }, wantErr: "a subject or a body"},
		{name: "two-line subject", change: func(p *cmv1.ChatterPost) { p.Subject = "Hi\r\nBcc: x@y.z" }, wantErr: "subject must be one line"},
		{name: "NUL in body", change: func(p *cmv1.ChatterPost) { p.BodyText = "a\x00b" }, wantErr: "NUL"},
		{name: "subtype with space", change: func(p *cmv1.ChatterPost) { p.Subtype = "a note" }, wantErr: "subtype"},
		{name: "bad parent message id", change: func(p *cmv1.ChatterPost) { p.ParentMessageId = "no at sign" }, wantErr: "parent_message_id"},
		{name: "long idempotency key", change: func(p *cmv1.ChatterPost) { p.IdempotencyKey = strings.Repeat("k", 256) }, wantErr: "idempotency_key"},
		{name: "idempotency key with newline", change: func(p *cmv1.ChatterPost) { p.IdempotencyKey = "a\nb" }, wantErr: "idempotency_key"},
	}
	for _, tt := range tests {
		p := validPost()
		tt.change(p)
		err := Validate(p)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("Validate(%s) = %v, want nil", tt.name, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("Validate(%s) = %v, want an error containing %q", tt.name, err, tt.wantErr)
		case tt.wantErr != "" && !errors.Is(err, ErrInvalidPost):
			t.Errorf("Validate(%s) = %v, want it to wrap ErrInvalidPost", tt.name, err)
		}
	}
}

func TestRecipients(t *testing.T) {
	internal := func(name, email, id string) *cmv1.Partner {
		return &cmv1.Partner{Name: name, Email: email, PartnerId: id, Internal: true}
	}
	external := func(email string) *cmv1.Partner { return &cmv1.Partner{Email: email} }
	follow := func(p *cmv1.Partner) *cmv1.Follower { return &cmv1.Follower{Partner: p} }
	inbox := func(p *cmv1.Partner) *cmv1.Follower {
		return &cmv1.Follower{Partner: p, Preference: cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX}
	}
	author := &cmv1.Partner{Name: "Bob", Email: "bob@example.com", Internal: true}

	tests := []struct {
		name      string
		post      *cmv1.ChatterPost
		wantMail  []string
		wantInbox []string
	}{
		{
			name: "author among followers is left out",
			post: &cmv1.ChatterPost{Author: author, Followers: []*cmv1.Follower{
				follow(external("ann@example.org")), follow(internal("Bob", "BOB@Example.COM", "1")), follow(internal("Carl", "carl@example.com", "3")),
			}},
			wantMail: []string{"ann@example.org", "carl@example.com"},
		},
		{
			name: "notify_author keeps the author",
			post: &cmv1.ChatterPost{Author: author, NotifyAuthor: true, Followers: []*cmv1.Follower{
				follow(author), follow(external("ann@example.org")),
			}},
			wantMail: []string{"bob@example.com", "ann@example.org"},
		},
		{
			name: "followers and recipients are deduplicated by normalised address, the last follower update winning",
			post: &cmv1.ChatterPost{Author: author,
				Followers:  []*cmv1.Follower{follow(external("Ann@Example.ORG")), follow(external("ann@example.org"))},
				Recipients: []*cmv1.Partner{external("ANN@EXAMPLE.ORG"), external("dan@example.net"), external("Dan@example.net")},
			},
			wantMail: []string{"ann@example.org", "dan@example.net"},
		},
		{
			name: "a note only reaches internal partners",
			post: &cmv1.ChatterPost{Author: author, Subtype: SubtypeNote,
				Followers:  []*cmv1.Follower{follow(internal("Carl", "carl@example.com", "3")), follow(external("ann@example.org"))},
				Recipients: []*cmv1.Partner{external("dan@example.net"), internal("Erin", "erin@example.com", "5")},
			},
			wantMail: []string{"carl@example.com", "erin@example.com"},
		},
		{
			name: "inbox preference applies to internal followers only",
			post: &cmv1.ChatterPost{Author: author, Followers: []*cmv1.Follower{
				inbox(internal("Carl", "carl@example.com", "3")), inbox(external("ann@example.org")),
			}},
			wantMail:  []string{"ann@example.org"},
			wantInbox: []string{"carl@example.com"},
		},
		{
			name: "an inactive follower is not notified, even when named",
			post: &cmv1.ChatterPost{Author: author,
				Followers:  []*cmv1.Follower{{Partner: external("ann@example.org"), Inactive: true}, follow(external("cy@example.org"))},
				Recipients: []*cmv1.Partner{external("Ann@example.org")},
			},
			wantMail: []string{"cy@example.org"},
		},
		{
			name: "a follower subscribed to other subtypes is skipped unless named",
			post: &cmv1.ChatterPost{Author: author,
				Followers: []*cmv1.Follower{
					{Partner: external("ann@example.org"), Subtypes: []string{"stage_change"}},
					{Partner: external("cy@example.org"), Subtypes: []string{"stage_change", "comment"}},
					{Partner: external("dan@example.net"), Subtypes: []string{"stage_change"}},
				},
				Recipients: []*cmv1.Partner{external("dan@example.net")},
			},
			wantMail: []string{"cy@example.org", "dan@example.net"},
		},
		{
			name:     "a named recipient without followers",
			post:     &cmv1.ChatterPost{Author: author, Recipients: []*cmv1.Partner{external("dan@example.net")}},
			wantMail: []string{"dan@example.net"},
		},
		{name: "nobody to notify", post: &cmv1.ChatterPost{Author: author, Followers: []*cmv1.Follower{follow(author)}}},
	}
	for _, tt := range tests {
		// The post's followers are merged into the thread first, as
		// fan-out does.
		var th threads.Thread
		for _, f := range tt.post.GetFollowers() {
			if _, _, err := th.Follow(followerOf(f), time.Now(), false); err != nil {
				t.Fatal(err)
			}
		}
		var gotMail, gotInbox []string
		for _, r := range recipients(tt.post, th.Followers) {
			if r.inbox {
				gotInbox = append(gotInbox, r.partner.GetEmail())
			} else {
				gotMail = append(gotMail, r.partner.GetEmail())
			}
		}
		if !slices.Equal(gotMail, tt.wantMail) || !slices.Equal(gotInbox, tt.wantInbox) {
			t.Errorf("recipients(%s) = mail %q inbox %q, want mail %q inbox %q", tt.name, gotMail, gotInbox, tt.wantMail, tt.wantInbox)
		}
	}
}

var kvKeyRE = regexp.MustCompile(`^[a-z0-9-]+$`)

func TestIDs(t *testing.T) {
	id := newPostID()
	if len(id) != 26 || !postIDRE.MatchString(id) || !kvKeyRE.MatchString(id) {
		t.Errorf("newPostID() = %q, want 26 characters of [a-z2-7]", id)
	}
	if other := newPostID(); other == id {
		t.Errorf("newPostID() = %q twice, want random ids", id)
	}

	k1 := postIDForKey("acme", "order-1")
	if again := postIDForKey("acme", "order-1"); again != k1 {
		t.Errorf("postIDForKey(acme, order-1) = %q then %q, want the same id", k1, again)
	}
	if other := postIDForKey("globex", "order-1"); other == k1 {
		t.Errorf("postIDForKey(globex, order-1) = %q, want it to differ from acme's", other)
	}
	if len(k1) != 26 || !kvKeyRE.MatchString(k1) {
		t.Errorf("postIDForKey(acme, order-1) = %q, want 26 characters of [a-z2-7]", k1)
	}

	d1 := postIDForDelivery("acme", 7, []byte("x"))
	for _, other := range []string{postIDForDelivery("acme", 8, []byte("x")), postIDForDelivery("acme", 7, []byte("y"))} {
		if other == d1 {
			t.Errorf("postIDForDelivery gives %q for different deliveries", d1)
		}
	}
	if again := postIDForDelivery("acme", 7, []byte("x")); again != d1 {
		t.Errorf("postIDForDelivery(acme, 7, x) = %q then %q, want the same id", d1, again)
	}

	m := MailID("acme", "p-1", "ann@example.org")
	if !strings.HasPrefix(m, "p-1-") || !kvKeyRE.MatchString(m) || len(m) != len("p-1-")+16 {
		t.Errorf("MailID(acme, p-1, ann@example.org) = %q, want p-1- and 16 characters of [a-z2-7]", m)
	}
	if other := MailID("acme", "p-1", "carl@example.com"); other == m {
		t.Errorf("MailID gives %q for two recipients", m)
	}
	if other := MailID("globex", "p-1", "ann@example.org"); other == m {
		t.Errorf("MailID gives %q for two tenants", m)
	}

	tenant := &config.Tenant{ID: "acme", AliasDomain: "example.com"}
	if got := MessageID("p-1", tenant); got != "p-1@example.com" {
		t.Errorf("MessageID(p-1, acme) = %q, want p-1@example.com", got)
	}
}

func TestInboxUser(t *testing.T) {
	tests := []struct {
		in   *cmv1.Partner
		want string // exact, or a prefix ending in '-'
	}{
		{in: &cmv1.Partner{PartnerId: "7", Email: "carl@example.com"}, want: "7"},
		{in: &cmv1.Partner{PartnerId: "user_7-A", Email: "carl@example.com"}, want: "user_7-A"},
		{in: &cmv1.Partner{PartnerId: "res.partner,7", Email: "carl@example.com"}, want: "id-"},
		{in: &cmv1.Partner{Email: "carl@example.com"}, want: "email-"},
	}
	token := regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	for _, tt := range tests {
		got := InboxUser(tt.in)
		ok := got == tt.want || strings.HasSuffix(tt.want, "-") && strings.HasPrefix(got, tt.want)
		if !ok || !token.MatchString(got) {
			t.Errorf("InboxUser(%v) = %q, want %q (a subject token)", tt.in, got, tt.want)
		}
	}
	a := InboxUser(&cmv1.Partner{Email: "Carl@EXAMPLE.com"})
	if b := InboxUser(&cmv1.Partner{Email: "carl@example.com"}); a != b {
		t.Errorf("InboxUser(Carl@EXAMPLE.com) = %q, InboxUser(carl@example.com) = %q, want the same token", a, b)
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc ", "abc", true},
		{"BEARER  abc", "abc", true},
		{"", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Basic YWJjOmRlZg==", "", false},
		{"abc", "", false},
	}
	for _, tt := range tests {
		got, ok := bearerToken(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("bearerToken(%q) = %q, %v, want %q, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestValidMessageID(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"abc@example.com", true},
		{"<abc@example.com>", true},
		{"abc.def$1@[127.0.0.1]", true},
		{"abc", false},
		{"abc@", false},
		{"@example.com", false},
		{"a b@example.com", false},
		{"<a>b@example.com>", false},
		{"abc@example.com\r\n", false},
	}
	for _, tt := range tests {
		if got := validMessageID(tt.in); got != tt.want {
			t.Errorf("validMessageID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// Validate must not change the post it checks.
func TestValidateDoesNotModify(t *testing.T) {
	p := validPost()
	want := proto.Clone(p)
	_ = Validate(p)
	if !proto.Equal(p, want) {
		t.Errorf("Validate changed the post: %v, want %v", p, want)
	}
}
