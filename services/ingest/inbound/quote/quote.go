// Package quote extracts what a person wrote in an email reply: it strips
// the quoted message, the quote header that introduces it and the
// signature (mail-rules §7), from plain text and from HTML.
//
// It knows the styles of the common clients:
//
//   - Gmail, Apple Mail, iPhone, Thunderbird, Sparrow: an attribution line
//     ("On <date>, <name> wrote:", possibly split over two lines, also in
//     French, German, Spanish, Italian and Dutch) followed by "> " lines,
//     and in HTML a <blockquote> or <div class="gmail_quote">;
//   - Outlook and Exchange: "-----Original Message-----", an underscore
//     rule, or a "From: … Sent: … To: … Subject:" block, and in HTML
//     <div id="divRplyFwdMsg">, <div id="appendonsend"> or an <hr>;
//   - Yahoo and AOL: "----- Original Message -----";
//   - signatures: a "-- " line (the usenet delimiter, RFC 3676 §4.3), "Sent
//     from my iPhone" and similar mobile footers.
//
// Top-posted replies keep what is above the quote; inline (interleaved)
// replies keep every unquoted line and drop the quoted ones. The result is
// always valid UTF-8 without NUL. The caller keeps the full original.
package quote

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

var (
	// wroteRE is a one-line attribution ("On Tue, Apr 3, 2012 at 4:19 PM,
	// bob <bob@example.com> wrote:").
	wroteRE = regexp.MustCompile(`(?i)^(on|le|am|el|il|op|den)\s.*\b(wrote|a écrit|schrieb|escribió|ha scritto|scritto|schreef|skrev)\s*:?\s*$`)
	// wroteStartRE is the first line of an attribution split in two.
	wroteStartRE = regexp.MustCompile(`(?i)^(on|le|am|el|il|op)\s.*\d`)
	// wroteEndRE is the second line of an attribution split in two.
	wroteEndRE = regexp.MustCompile(`(?i)\b(wrote|a écrit|schrieb|escribió|scritto|schreef)\s*:\s*$`)
	// originalRE is Outlook's, Yahoo's and AOL's separator.
	originalRE = regexp.MustCompile(`(?i)^-{2,}\s*(original message|message d'origine|ursprüngliche nachricht|mensaje original|forwarded message)\s*-{2,}$`)
	// ruleRE is Outlook's underscore rule before the original headers.
	ruleRE = regexp.MustCompile(`^_{20,}$`)
	// forwardedRE is Apple Mail's forward marker.
	forwardedRE = regexp.MustCompile(`(?i)^begin forwarded message:$`)
	// headerRE is one line of an Outlook header block.
	headerRE = regexp.MustCompile(`(?i)^\*?(from|de|von|sent|envoyé|gesendet|date|to|à|an|cc|subject|objet|betreff)\s*:\*?\s`)
	// mobileRE is a mobile client's signature line.
	mobileRE = regexp.MustCompile(`(?i)^(sent from my|sent from (outlook|yahoo|mail)|get outlook for|envoyé de mon|von meinem .* gesendet|sent with sparrow)\b`)
	// sigRE is the signature delimiter "-- " (RFC 3676 §4.3), also when a
	// client dropped its trailing space.
	sigRE = regexp.MustCompile(`^--\s*$`)
)

// Text returns what the author wrote in a plain-text reply body.
func Text(body string) string {
	lines := splitLines(body)
	var out []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		t := strings.TrimSpace(l)
		if sigRE.MatchString(l) || mobileRE.MatchString(t) || originalRE.MatchString(t) ||
			ruleRE.MatchString(t) || forwardedRE.MatchString(t) || outlookBlock(lines, i) {
			break
		}
		if n := attribution(lines, i); n > 0 {
			// Inline replies go on after the quote; a quote that is not
			// marked with '>' runs to the end.
			next := nextNonBlank(lines, i+n)
			if next < 0 || !strings.HasPrefix(strings.TrimSpace(lines[next]), ">") {
				break
			}
			i += n - 1
			continue
		}
		if strings.HasPrefix(t, ">") {
			continue
		}
		out = append(out, strings.TrimRight(l, " \t"))
	}
	return tidy(out)
}

// attribution reports how many lines (1 or 2) of an attribution start at
// lines[i], or 0.
func attribution(lines []string, i int) int {
	t := strings.TrimSpace(lines[i])
	if wroteRE.MatchString(t) {
		return 1
	}
	if i+1 < len(lines) && wroteStartRE.MatchString(t) && wroteEndRE.MatchString(strings.TrimSpace(lines[i+1])) {
		return 2
	}
	return 0
}

// outlookBlock reports whether an Outlook header block ("From:" then
// "Sent:" or "Date:", and "To:" or "Subject:") starts at lines[i].
func outlookBlock(lines []string, i int) bool {
	m := headerRE.FindStringSubmatch(strings.TrimSpace(lines[i]))
	if m == nil {
		return false
	}
	switch strings.ToLower(m[1]) {
	case "from", "de", "von":
	default:
		return false
	}
	n := 1
	for j := i + 1; j < len(lines) && j < i+6; j++ {
		if headerRE.MatchString(strings.TrimSpace(lines[j])) {
			n++
		}
	}
	return n >= 3
}

func nextNonBlank(lines []string, i int) int {
	for ; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "" {
			return i
		}
	}
	return -1
}

// splitLines normalises line ends, non-breaking spaces, NUL and invalid
// UTF-8, and splits.
func splitLines(s string) []string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = strings.NewReplacer("\r\n", "\n", "\r", "\n", "\u00a0", " ", "\x00", "").Replace(s)
	return strings.Split(s, "\n")
}

// tidy drops leading and trailing blank lines and runs of more than one
// blank line.
func tidy(lines []string) string {
	var b strings.Builder
	blank := false
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			blank = b.Len() > 0
			continue
		}
		if blank {
			b.WriteString("\n\n")
		} else if b.Len() > 0 {
			b.WriteByte('\n')
		}
		blank = false
		b.WriteString(l)
	}
	return b.String()
}
