package quote_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chattermail/chattermail/services/ingest/inbound/quote"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/inbound/replies")

// sharedCorpus is /work/shared/corpus/replies seen from this package:
// the repository root is four levels up, the shared folder beside it.
const sharedCorpus = "../../../../../shared/corpus/replies"

// TestSharedCorpusSaysHello reads the real replies of seven clients (AOL,
// Apple Mail, Hotmail, iPhone, Sparrow, Thunderbird, Yahoo) in place: each
// must give "Hello" from its text part and from its HTML part.
func TestSharedCorpusSaysHello(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(sharedCorpus, "*.eml"))
	if len(files) != 7 {
		t.Fatalf("found %d replies in %s, want 7", len(files), sharedCorpus)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			r, err := quote.Extract(raw)
			if err != nil {
				t.Fatal(err)
			}
			if r.Text != "Hello" || r.FromText != "Hello" {
				t.Errorf("Extract(%s).FromText = %q, want %q", f, r.FromText, "Hello")
			}
			if strings.Contains(string(raw), "text/html") && r.FromHTML != "Hello" {
				t.Errorf("Extract(%s).FromHTML = %q, want %q", f, r.FromHTML, "Hello")
			}
		})
	}
}

// TestRepliesGolden strips every reply of testdata/inbound/replies and
// compares with its .golden file (text part, then HTML part).
func TestRepliesGolden(t *testing.T) {
	files, _ := filepath.Glob("../../testdata/inbound/replies/*.eml")
	if len(files) < 8 {
		t.Fatalf("found %d replies, want at least 8", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			r, err := quote.Extract(raw)
			if err != nil {
				t.Fatal(err)
			}
			got := "text:\n" + r.FromText + "\n\nhtml:\n" + r.FromHTML + "\n"
			golden := strings.TrimSuffix(f, ".eml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("Extract(%s) = %q, want %q", f, got, want)
			}
		})
	}
}

func TestText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Thanks!\n\nOn Mon, 2 Apr 2012 at 09:00, Bob <bob@example.com> wrote:\n> Hi", "Thanks!"},
		{"Thanks!\n\nOn Mon, 2 Apr 2012 at 09:00, Bob <bob@example.com>\nwrote:\n> Hi", "Thanks!"},
		{"On Mon, Bob wrote:\n> question one?\nanswer one\n> question two?\nanswer two", "answer one\nanswer two"},
		{"Fine.\n-- \nAnn\nACME", "Fine."},
		{"Fine.\r\n\r\nSent from my iPhone", "Fine."},
		{"Ok\n\n________________________________\nFrom: Bob\nSent: Monday\nTo: Ann\nSubject: x\n\nHi", "Ok"},
		{"Ok\n\nFrom: Bob <bob@example.com>\nSent: Monday, April 2, 2012 5:49 PM\nTo: Ann\nSubject: Test\n\nHi", "Ok"},
		{"Ok\n-----Original Message-----\nHi", "Ok"},
		{"Le lun. 2 avr. 2012 à 09:00, Bob <bob@example.com> a écrit :\n> Salut\nBonjour", "Bonjour"},
		{"bad \xff byte\x00", "bad \uFFFD byte"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := quote.Text(tt.in); got != tt.want {
			t.Errorf("Text(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHTML(t *testing.T) {
	tests := []struct{ in, want string }{
		{`<div dir="ltr">Sounds good<br></div><br><div class="gmail_quote"><div class="gmail_attr">On Mon, Bob wrote:</div><blockquote>Hi</blockquote></div>`, "Sounds good"},
		{`<p>Ok</p><div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> Bob</div><div>Hi</div>`, "Ok"},
		{`<p>A &amp; B</p><blockquote type="cite">old</blockquote><p>after</p>`, "A & B\n\nafter"},
		{`<html><head><style>p{}</style></head><body>Yes<div class="gmail_signature">Ann</div></body></html>`, "Yes"},
	}
	for _, tt := range tests {
		if got := quote.HTML(tt.in); got != tt.want {
			t.Errorf("HTML(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestToHTML(t *testing.T) {
	if got, want := quote.ToHTML("a <b>\nc\n\nd"), "<p>a &lt;b&gt;<br>c</p><p>d</p>"; got != want {
		t.Errorf("ToHTML = %q, want %q", got, want)
	}
}
