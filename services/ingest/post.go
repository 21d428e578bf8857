package ingest

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/chattermail/chattermail/platform/bus"
	"github.com/chattermail/chattermail/platform/config"
	cmv1 "github.com/chattermail/chattermail/proto/chattermail/v1"
	"github.com/chattermail/chattermail/services/ingest/internal/kvkey"
	"github.com/chattermail/chattermail/services/ingest/threads"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Subtypes of a post with a meaning in fan-out (mail-rules §6).
const (
	// SubtypeComment is a discussion message; it is the default subtype.
	SubtypeComment = "comment"
	// SubtypeNote is an internal note: it only goes to internal partners.
	SubtypeNote = "note"
)

// Limits of a post's fields.
const (
	// MaxIdempotencyKeyLen is the longest idempotency key accepted.
	MaxIdempotencyKeyLen = 255
	// MaxModelLen is the longest thread.model accepted, in bytes.
	MaxModelLen = 128
	// MaxThreadIDLen is the longest thread.id accepted, in bytes.
	MaxThreadIDLen = 256
)

// ErrInvalidPost wraps every reason a post is refused: the HTTP API
// answers 422 with it, the POSTS consumer dead-letters the post with it.
var ErrInvalidPost = errors.New("ingest: invalid post")

var (
	postIDRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,99}$`)
	userTokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// encodeID renders ids: lower-case base32 without padding, so an id is
// made of [a-z2-7] and is a valid NATS subject token and KV key fragment.
func encodeID(b []byte) string { return kvkey.Encode(b) }

// newPostID returns a random post id: 16 random bytes, 26 characters of
// [a-z2-7].
func newPostID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return encodeID(b[:])
}

// postIDForKey derives the post id of a post carrying an idempotency key:
// the first 16 bytes of SHA-256(tenant, key), so that every retry of the
// same post, whether it comes through HTTP or the bus, gets the same id.
func postIDForKey(tenant, key string) string {
	sum := sha256.Sum256([]byte("idempotency\x00" + tenant + "\x00" + key))
	return encodeID(sum[:16])
}

// postIDForDelivery derives the id of a post published on the bus without
// post id or idempotency key from its stream sequence and payload, which
// do not change when the message is redelivered.
func postIDForDelivery(tenant string, seq uint64, data []byte) string {
	h := sha256.New()
	h.Write([]byte("delivery\x00" + tenant + "\x00" + strconv.FormatUint(seq, 10) + "\x00"))
	h.Write(data)
	return encodeID(h.Sum(nil)[:16])
}

// shortHash is 10 bytes of SHA-256 of s: 16 characters of [a-z2-7].
func shortHash(s string) string { return kvkey.Short(s) }

// MessageID returns the RFC 5322 Message-ID, without angle brackets, that
// every copy of post postID carries: "<post id>@<alias domain>"
// (mail-rules §6: all copies of one message share one Message-ID).
func MessageID(postID string, t *config.Tenant) string {
	return postID + "@" + t.AliasDomain
}

// MailID returns the id of one recipient's copy of a post: the post id, a
// dash and a short hash of the tenant and the recipient's normalised
// address (see NormalizeAddress). It is made of [a-z0-9-] only, because it
// becomes a JetStream KV key, and it is the same every time the post is
// fanned out again.
func MailID(tenant, postID, normalizedAddr string) string {
	return postID + "-" + shortHash(tenant+"\x00"+normalizedAddr)
}

// InboxUser returns the user token of an inbox notification for p, the
// last token of events.inbox.<tenant>.<user>: the partner id when it is a
// valid subject token (1-64 of A-Z, a-z, 0-9, '_', '-'); "id-" and a short
// hash of the partner id when it is not; "email-" and a short hash of the
// normalised address when the partner has no id. A short hash is the
// first 10 bytes of SHA-256 in lower-case base32 without padding.
func InboxUser(p *cmv1.Partner) string {
	if id := p.GetPartnerId(); id != "" {
		if userTokenRE.MatchString(id) {
			return id
		}
		return "id-" + shortHash(id)
	}
	addr, err := NormalizeAddress(p.GetEmail())
	if err != nil {
		addr = p.GetEmail()
	}
	return "email-" + shortHash(addr)
}

// NormalizeAddress checks that s is exactly one plain address (an
// addr-spec such as bob@example.com, without display name, CR, LF or NUL)
// and returns its matching form (mail-rules §2): the domain lower-cased,
// the local part lower-cased only when it is ASCII. The normalised form is
// for comparing addresses; mail still goes to the address as written.
func NormalizeAddress(s string) (string, error) { return kvkey.NormalizeAddress(s) }

// Validate checks everything a post must satisfy before it is fanned out,
// and returns an error wrapping ErrInvalidPost that names the field and
// the problem:
//
//   - tenant is a valid tenant id (the configuration is checked apart);
//   - post_id, when set, is 1-100 characters of a-z, 0-9 and '-';
//   - thread.model (at most 128 bytes) and thread.id (at most 256 bytes)
//     are set, without control characters;
//   - author.email and every follower's and recipient's email are exactly
//     one plain address without CR, LF or NUL (mail-rules §4), and no
//     partner name holds CR, LF or NUL;
//   - there is a subject or a body; the subject is one line; bodies hold no
//     NUL;
//   - subtype, parent_message_id and idempotency_key are well formed.
func Validate(p *cmv1.ChatterPost) error {
	if err := validate(p); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalidPost, err)
	}
	return nil
}

func validate(p *cmv1.ChatterPost) error {
	if p.GetTenant() == "" {
		return errors.New("tenant is required")
	}
	if bus.ValidTenant(p.GetTenant()) != nil {
		return fmt.Errorf("tenant %q must be 1-64 characters of a-z, 0-9, '-' or '_'", p.GetTenant())
	}
	if id := p.GetPostId(); id != "" && !postIDRE.MatchString(id) {
		return fmt.Errorf("post_id %q must be 1-100 characters of a-z, 0-9 and '-', starting with a letter or digit", id)
	}
	if err := checkThread(p.GetThread()); err != nil {
		return err
	}
	if p.GetAuthor() == nil {
		return errors.New("author is required")
	}
	if err := checkPartner("author", p.GetAuthor()); err != nil {
		return err
	}
	for i, f := range p.GetFollowers() {
		field := "followers[" + strconv.Itoa(i) + "].partner"
		if f.GetPartner() == nil {
			return errors.New(field + " is required")
		}
		if err := checkPartner(field, f.GetPartner()); err != nil {
			return err
		}
	}
	for i, r := range p.GetRecipients() {
		if err := checkPartner("recipients["+strconv.Itoa(i)+"]", r); err != nil {
			return err
		}
	}
	if strings.TrimSpace(p.GetSubject()) == "" && strings.TrimSpace(p.GetBodyText()) == "" &&
		strings.TrimSpace(p.GetBodyHtml()) == "" {
		return errors.New("a subject or a body (body_text, body_html) is required")
	}
	if hasLineBreak(p.GetSubject()) {
		return errors.New("subject must be one line, without CR, LF or NUL")
	}
	if strings.ContainsRune(p.GetBodyText(), 0) || strings.ContainsRune(p.GetBodyHtml(), 0) {
		return errors.New("body_text and body_html must not contain NUL")
	}
	if st := p.GetSubtype(); len(st) > 64 || hasControl(st) || strings.ContainsRune(st, ' ') {
		return fmt.Errorf("subtype %q must be at most 64 characters without spaces or control characters", st)
	}
	if id := p.GetParentMessageId(); id != "" && !validMessageID(id) {
		return fmt.Errorf("parent_message_id %q must be a Message-ID like abc@example.com (angle brackets optional)", id)
	}
	if err := checkIdempotencyKey(p.GetIdempotencyKey()); err != nil {
		return errors.New("idempotency_key " + err.Error())
	}
	return nil
}

// checkThread checks a thread reference: model and id set, within their
// lengths, without control characters.
func checkThread(th *cmv1.ThreadRef) error {
	switch {
	case th == nil:
		return errors.New("thread is required")
	case strings.TrimSpace(th.GetModel()) == "":
		return errors.New("thread.model is required")
	case strings.TrimSpace(th.GetId()) == "":
		return errors.New("thread.id is required")
	case hasControl(th.GetModel()):
		return errors.New("thread.model must not contain control characters")
	case hasControl(th.GetId()):
		return errors.New("thread.id must not contain control characters")
	case len(th.GetModel()) > MaxModelLen:
		return fmt.Errorf("thread.model must be at most %d bytes", MaxModelLen)
	case len(th.GetId()) > MaxThreadIDLen:
		return fmt.Errorf("thread.id must be at most %d bytes", MaxThreadIDLen)
	case hasLineBreak(th.GetDisplayName()):
		return errors.New("thread.display_name must not contain CR, LF or NUL")
	}
	return nil
}

func checkPartner(field string, pt *cmv1.Partner) error {
	if _, err := NormalizeAddress(pt.GetEmail()); err != nil {
		return fmt.Errorf("%s.email %v", field, err)
	}
	if hasLineBreak(pt.GetName()) {
		return fmt.Errorf("%s.name must not contain CR, LF or NUL", field)
	}
	if hasControl(pt.GetPartnerId()) {
		return fmt.Errorf("%s.partner_id must not contain control characters", field)
	}
	return nil
}

// checkIdempotencyKey accepts an empty key or 1-255 printable ASCII
// characters.
func checkIdempotencyKey(k string) error {
	if len(k) > MaxIdempotencyKeyLen {
		return fmt.Errorf("is longer than %d characters", MaxIdempotencyKeyLen)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return errors.New("must be printable ASCII")
		}
	}
	return nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}

func hasLineBreak(s string) bool { return strings.ContainsAny(s, "\r\n\x00") }

// trimMessageID drops the angle brackets around a Message-ID, if any.
func trimMessageID(id string) string {
	if strings.HasPrefix(id, "<") && strings.HasSuffix(id, ">") {
		id = id[1 : len(id)-1]
	}
	return id
}

// validMessageID accepts an RFC 5322 msg-id (§3.6.4), with or without its
// angle brackets: id-left "@" id-right, printable ASCII without spaces or
// angle brackets.
func validMessageID(id string) bool {
	id = trimMessageID(id)
	at := strings.LastIndexByte(id, '@')
	if at <= 0 || at == len(id)-1 || len(id) > 998 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= 0x20 || c > 0x7e || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// recipient is one person a post notifies.
type recipient struct {
	partner *cmv1.Partner
	// addr is the normalised address, the key of deduplication.
	addr string
	// inbox is true for an internal follower who wants in-app
	// notifications instead of email.
	inbox bool
}

// recipients lists whom a valid post notifies (mail-rules §6), given the
// thread's followers after the post's own followers were merged in: the
// active followers subscribed to the post's subtype, in the order they
// followed, then the partners the post names. Each address appears once,
// the first occurrence winning; an inactive follower's address is never
// notified, not even when named; the author is left out unless
// NotifyAuthor; a note only reaches internal partners. Internal followers
// with the inbox preference are marked for an in-app notification;
// external partners always get email. Suppressed addresses are left to
// the caller.
func recipients(p *cmv1.ChatterPost, followers []threads.Follower) []recipient {
	subtype := p.GetSubtype()
	if subtype == "" {
		subtype = SubtypeComment
	}
	excluded := map[string]bool{}
	for _, f := range followers {
		if !f.Active {
			if a, err := NormalizeAddress(f.Email); err == nil {
				excluded[a] = true
			}
		}
	}
	if !p.GetNotifyAuthor() {
		if a, err := NormalizeAddress(p.GetAuthor().GetEmail()); err == nil {
			excluded[a] = true
		}
	}
	seen := make(map[string]bool, len(followers)+len(p.GetRecipients()))
	out := make([]recipient, 0, len(followers)+len(p.GetRecipients()))
	add := func(pt *cmv1.Partner, inbox bool) {
		addr, err := NormalizeAddress(pt.GetEmail())
		if err != nil || excluded[addr] || seen[addr] {
			return
		}
		if subtype == SubtypeNote && !pt.GetInternal() {
			return
		}
		seen[addr] = true
		out = append(out, recipient{partner: pt, addr: addr, inbox: inbox && pt.GetInternal()})
	}
	for _, f := range followers {
		if !f.Active {
			continue
		}
		if len(f.Subtypes) > 0 && !slices.Contains(f.Subtypes, subtype) {
			continue
		}
		add(&cmv1.Partner{Name: f.Name, Email: f.Email, PartnerId: f.PartnerID, Internal: f.Internal}, f.Preference == threads.PreferenceInbox)
	}
	for _, r := range p.GetRecipients() {
		add(r, false)
	}
	return out
}

// followerOf converts a follower carried by a post into a thread
// follower.
func followerOf(f *cmv1.Follower) threads.Follower {
	pref := threads.PreferenceEmail
	if f.GetPreference() == cmv1.NotificationPreference_NOTIFICATION_PREFERENCE_INBOX {
		pref = threads.PreferenceInbox
	}
	pt := f.GetPartner()
	return threads.Follower{
		Email: pt.GetEmail(), Name: pt.GetName(), PartnerID: pt.GetPartnerId(), Internal: pt.GetInternal(),
		Preference: pref, Subtypes: slices.Clone(f.GetSubtypes()), Active: !f.GetInactive(),
	}
}

func nowpb(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
