package quote

import (
	"html"
	"strings"

	nethtml "golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// cut is the line HTML rendering emits where a client's quote starts; Text
// stops there.
const cut = "________________________________"

// HTML returns what the author wrote in an HTML reply body, as plain text.
// Quote containers are removed before the text is extracted: <blockquote>,
// Gmail's div.gmail_quote, Outlook's #divRplyFwdMsg, #appendonsend and
// <hr>, Thunderbird's .moz-cite-prefix and signature containers
// (.gmail_signature, .moz-signature, #Signature); the text then goes
// through Text. Unparseable HTML gives what could be read.
func HTML(body string) string {
	doc, err := nethtml.Parse(strings.NewReader(body))
	if err != nil {
		return Text(body)
	}
	var b strings.Builder
	stop := false
	var walk func(n *nethtml.Node)
	walk = func(n *nethtml.Node) {
		if stop {
			return
		}
		switch n.Type {
		case nethtml.TextNode:
			b.WriteString(collapse(n.Data))
			return
		case nethtml.CommentNode, nethtml.DoctypeNode:
			return
		case nethtml.ElementNode:
			switch n.DataAtom {
			case atom.Head, atom.Style, atom.Script, atom.Title:
				return
			case atom.Blockquote:
				b.WriteString("\n")
				return
			case atom.Hr:
				b.WriteString("\n" + cut + "\n")
				stop = true
				return
			case atom.Br:
				b.WriteString("\n")
				return
			}
			id, class := attr(n, "id"), " "+attr(n, "class")+" "
			switch {
			case id == "divRplyFwdMsg" || id == "appendonsend" || strings.Contains(class, " gmail_quote ") ||
				strings.Contains(class, " yahoo_quoted ") || strings.Contains(class, " moz-cite-prefix "):
				b.WriteString("\n" + cut + "\n")
				stop = true
				return
			case id == "Signature" || strings.Contains(class, " gmail_signature ") || strings.Contains(class, " moz-signature "):
				return
			}
		}
		block := n.Type == nethtml.ElementNode && isBlock(n.DataAtom)
		if block {
			b.WriteString("\n")
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
		if block {
			b.WriteString("\n")
		}
	}
	walk(doc)
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return Text(strings.Join(lines, "\n"))
}

// ToHTML renders stripped text as simple HTML paragraphs, escaped.
func ToHTML(text string) string {
	if text == "" {
		return ""
	}
	var b strings.Builder
	for _, p := range strings.Split(text, "\n\n") {
		b.WriteString("<p>")
		b.WriteString(strings.ReplaceAll(html.EscapeString(p), "\n", "<br>"))
		b.WriteString("</p>")
	}
	return b.String()
}

func attr(n *nethtml.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// collapse folds runs of white space (non-breaking spaces included) into
// one space, as a browser renders text.
func collapse(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		if s == "" {
			return ""
		}
		return " "
	}
	out := strings.Join(f, " ")
	if r := s[0]; r == ' ' || r == '\t' || r == '\n' || r == '\r' {
		out = " " + out
	}
	if r := s[len(s)-1]; r == ' ' || r == '\t' || r == '\n' || r == '\r' {
		out += " "
	}
	return out
}

func isBlock(a atom.Atom) bool {
	switch a {
	case atom.P, atom.Div, atom.Li, atom.Ul, atom.Ol, atom.Tr, atom.Table, atom.H1, atom.H2, atom.H3,
		atom.H4, atom.H5, atom.H6, atom.Pre, atom.Section, atom.Article, atom.Header, atom.Footer, atom.Body:
		return true
	}
	return false
}
