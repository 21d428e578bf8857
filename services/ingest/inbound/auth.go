package inbound

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/mail"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/chattermail/chattermail/platform/domains"
	"github.com/chattermail/chattermail/platform/resolver"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
)

// Authenticator evaluates SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC
// 7489) for an inbound message and renders the verdicts as an
// Authentication-Results value (RFC 8601). It never fails: DNS trouble
// becomes a temperror verdict.
type Authenticator struct {
	// DNS answers every lookup.
	DNS resolver.Resolver
	// ServID is the authserv-id of the Authentication-Results value
	// (RFC 8601 §2.5); default "chattermail".
	ServID string
	// Timeout bounds the whole evaluation; default 10s.
	Timeout time.Duration
}

// Authentication is the outcome for one message.
type Authentication struct {
	// SPF is the SPF result for the envelope sender (or HELO when empty).
	SPF spf.Result
	// DKIMPass lists the d= domains of the signatures that verified.
	DKIMPass []string
	// DMARC is pass, fail, none (no policy) or temperror.
	DMARC string
	// From is the From header's address.
	From string
	// Results is the Authentication-Results value.
	Results string
}

// AuthenticatedSender is the From address when DMARC passed, else "":
// only then does the domain vouch for the From header (RFC 7489 §3.1).
func (a *Authentication) AuthenticatedSender() string {
	if a.DMARC == authres.ResultPass {
		return a.From
	}
	return ""
}

// Check evaluates raw, received from ip after HELO helo with envelope
// sender mailFrom.
func (au *Authenticator) Check(ctx context.Context, raw []byte, ip net.IP, helo, mailFrom string) *Authentication {
	timeout := au.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	a := &Authentication{DMARC: "none"}
	var results []authres.Result

	// SPF (RFC 7208 §2.4: the HELO identity when MAIL FROM is empty).
	spfDomain := domains.Of(mailFrom)
	if ip != nil {
		a.SPF, _ = spf.CheckHostWithSender(ip, helo, mailFrom,
			spf.WithResolver(resolver.NetStyle{R: au.DNS}), spf.WithContext(ctx))
	} else {
		a.SPF = spf.None
	}
	if spfDomain == "" {
		spfDomain = helo
	}
	results = append(results, &authres.SPFResult{Value: authres.ResultValue(a.SPF), From: mailFrom, Helo: helo})

	// DKIM.
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			txt, _, err := au.DNS.TXT(ctx, name)
			return txt, err
		},
		MaxVerifications: 5,
	})
	switch {
	case err != nil:
		results = append(results, &authres.DKIMResult{Value: authres.ResultPermError, Reason: err.Error()})
	case len(verifs) == 0:
		results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
	}
	for _, v := range verifs {
		switch {
		case v.Err == nil:
			a.DKIMPass = append(a.DKIMPass, strings.ToLower(v.Domain))
			results = append(results, &authres.DKIMResult{Value: authres.ResultPass, Domain: v.Domain})
		case dkim.IsTempFail(v.Err):
			results = append(results, &authres.DKIMResult{Value: authres.ResultTempError, Domain: v.Domain, Reason: v.Err.Error()})
		default:
			results = append(results, &authres.DKIMResult{Value: authres.ResultFail, Domain: v.Domain, Reason: v.Err.Error()})
		}
	}

	// DMARC: relaxed or strict alignment of a passing identifier with the
	// From domain (RFC 7489 §3.1), under the domain's policy (§6.6.3).
	if msg, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		if from, err := mail.ParseAddress(msg.Header.Get("From")); err == nil {
			a.From = strings.ToLower(from.Address)
		}
	}
	fromDomain := domains.Of(a.From)
	if fromDomain != "" {
		rec, err := au.lookupDMARC(ctx, fromDomain)
		switch {
		case errors.Is(err, resolver.ErrTemporary):
			a.DMARC = authres.ResultTempError
		case err != nil:
			a.DMARC = "none"
		default:
			spfAligned := a.SPF == spf.Pass && domains.Aligned(spfDomain, fromDomain, rec.SPFAlignment == dmarc.AlignmentStrict)
			dkimAligned := false
			for _, d := range a.DKIMPass {
				dkimAligned = dkimAligned || domains.Aligned(d, fromDomain, rec.DKIMAlignment == dmarc.AlignmentStrict)
			}
			a.DMARC = authres.ResultFail
			if spfAligned || dkimAligned {
				a.DMARC = authres.ResultPass
			}
		}
		results = append(results, &authres.DMARCResult{Value: authres.ResultValue(a.DMARC), From: fromDomain})
	}
	servID := au.ServID
	if servID == "" {
		servID = "chattermail"
	}
	a.Results = authres.Format(servID, results)
	return a
}

func (au *Authenticator) lookupDMARC(ctx context.Context, domain string) (*dmarc.Record, error) {
	names := []string{"_dmarc." + domain}
	if org := domains.Organizational(domain); org != domain {
		names = append(names, "_dmarc."+org)
	}
	var lastErr error = resolver.ErrNotFound
	for _, name := range names {
		txts, _, err := au.DNS.TXT(ctx, name)
		if err != nil {
			if errors.Is(err, resolver.ErrTemporary) {
				return nil, err
			}
			lastErr = err
			continue
		}
		for _, t := range txts {
			if strings.HasPrefix(t, "v=DMARC1") {
				return dmarc.Parse(t)
			}
		}
	}
	return nil, lastErr
}
