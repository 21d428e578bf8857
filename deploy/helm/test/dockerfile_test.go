package test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// images are the Dockerfiles of deploy/docker and the module each builds.
var images = map[string]string{
	"ingest":      "services/ingest",
	"rewrite":     "services/rewrite",
	"quota":       "services/quota",
	"sender":      "services/sender",
	"chattermail": "cmd/chattermail",
}

// TestDockerfiles checks the Dockerfiles without a container engine (CI
// has none): a static build (CGO_ENABLED=0, GOWORK=off) of a package that
// exists, every local module the service's go.mod replaces copied into the
// build stage (else GOWORK=off cannot build it), nothing copied that
// .dockerignore leaves out of the context, and a final stage on distroless
// static running as non-root.
func TestDockerfiles(t *testing.T) {
	r := root(t)
	ignore := dockerignore(t, r)
	for name, module := range images {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(r, "deploy", "docker", name+".Dockerfile")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			stages := parseDockerfile(string(b))
			if len(stages) != 2 {
				t.Fatalf("%d stages, want a build stage and a final one", len(stages))
			}
			build, final := stages[0], stages[1]
			if !strings.Contains(build.from, "golang:") {
				t.Errorf("build stage FROM %s, want a golang image", build.from)
			}
			all := strings.Join(build.lines, "\n")
			for _, want := range []string{"CGO_ENABLED=0", "GOWORK=off", "go build"} {
				if !strings.Contains(all, want) {
					t.Errorf("build stage lacks %s", want)
				}
			}
			var copied []string
			for _, l := range build.lines {
				args, ok := strings.CutPrefix(l, "COPY ")
				if !ok || strings.HasPrefix(args, "--from") {
					continue
				}
				f := strings.Fields(args)
				for _, src := range f[:len(f)-1] {
					src = strings.TrimSuffix(src, "/")
					if _, err := os.Stat(filepath.Join(r, src)); err != nil {
						t.Errorf("COPY %s: %v", src, err)
					}
					if ignored(ignore, src) {
						t.Errorf("COPY %s: .dockerignore leaves it out of the context", src)
					}
					copied = append(copied, src)
				}
			}
			for _, mod := range append([]string{module}, localModules(t, r, module)...) {
				whole := slices.ContainsFunc(copied, func(c string) bool { return c == mod || strings.HasPrefix(mod, c+"/") })
				if !whole || !slices.Contains(copied, mod+"/go.mod") {
					t.Errorf("module %s (needed by %s) is not copied whole and by its go.mod first: COPY sources %v", mod, module, copied)
				}
			}
			pkg := regexp.MustCompile(`go build .* -o /out/\S+ (\S+)`).FindStringSubmatch(all)
			if pkg == nil {
				t.Fatalf("no go build -o /out/<name> <package>")
			}
			if _, err := os.Stat(filepath.Join(r, module, filepath.FromSlash(pkg[1]), "main.go")); err != nil {
				t.Errorf("go build %s in %s: %v", pkg[1], module, err)
			}
			if !strings.HasPrefix(final.from, "gcr.io/distroless/static") || !strings.HasSuffix(final.from, ":nonroot") {
				t.Errorf("final stage FROM %s, want gcr.io/distroless/static…:nonroot", final.from)
			}
			user := ""
			for _, l := range final.lines {
				if u, ok := strings.CutPrefix(l, "USER "); ok {
					user = u
				}
			}
			if user != "65532:65532" && user != "nonroot:nonroot" && user != "nonroot" {
				t.Errorf("final stage USER %q, want the non-root 65532", user)
			}
			if !slices.ContainsFunc(final.lines, func(l string) bool { return strings.HasPrefix(l, "ENTRYPOINT [\"/usr/local/bin/"+name+"\"]") }) {
				t.Errorf("final stage lacks ENTRYPOINT [\"/usr/local/bin/%s\"]", name)
			}
		})
	}
}

type stage struct {
	from  string
	lines []string
}

// parseDockerfile splits a Dockerfile into stages of instructions, with
// continuation lines joined and comments dropped.
func parseDockerfile(s string) []stage {
	var stages []stage
	var cur strings.Builder
	flush := func() {
		l := strings.TrimSpace(cur.String())
		cur.Reset()
		if l == "" {
			return
		}
		if from, ok := strings.CutPrefix(l, "FROM "); ok {
			f := strings.Fields(from)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			stages = append(stages, stage{from: f[0]})
			return
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, l)
		}
	}
	for _, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") {
			continue
		}
		if c, ok := strings.CutSuffix(t, "\\"); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(t)
		flush()
	}
	flush()
	return stages
}

// localModules are the folders of the local modules a module's go.mod
// replaces, directly or through them, relative to the repository root.
func localModules(t *testing.T, root, module string) []string {
	t.Helper()
	seen := map[string]bool{}
	var walk func(string)
	walk = func(mod string) {
		b, err := os.ReadFile(filepath.Join(root, mod, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`=>\s*(\.\.?/\S*)`).FindAllStringSubmatch(string(b), -1) {
			dep := filepath.ToSlash(filepath.Clean(filepath.Join(mod, m[1])))
			if !seen[dep] {
				seen[dep] = true
				walk(dep)
			}
		}
	}
	walk(module)
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// dockerignore reads the patterns of the root's .dockerignore.
func dockerignore(t *testing.T, root string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			if strings.HasPrefix(l, "!") {
				t.Fatalf(".dockerignore: exceptions (%s) are not understood by this test", l)
			}
			patterns = append(patterns, strings.TrimPrefix(l, "/"))
		}
	}
	return patterns
}

// ignored tells whether a .dockerignore pattern excludes path or a folder
// above it. "**/" matches any number of folders.
func ignored(patterns []string, path string) bool {
	parts := strings.Split(path, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		for _, pat := range patterns {
			if ok, _ := filepath.Match(pat, p); ok {
				return true
			}
			if rest, ok := strings.CutPrefix(pat, "**/"); ok {
				if ok, _ := filepath.Match(rest, parts[i]); ok {
					return true
				}
			}
		}
	}
	return false
}
