package test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// tenantsFileKeys reads the YAML keys of the tenants file from the source
// of platform/config (the yaml tags of its structs), so the chart's schema
// and the file it renders are checked against what the services accept,
// without importing the services' modules. The result is keyed by struct
// name: Config, Tenant, Server, DKIMKey, Pacing.
func tenantsFileKeys(t *testing.T) map[string]map[string]bool {
	t.Helper()
	path := filepath.Join(root(t), "platform", "config", "config.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return false
		}
		keys := map[string]bool{}
		for _, field := range st.Fields.List {
			if field.Tag == nil {
				continue
			}
			tag, err := strconv.Unquote(field.Tag.Value)
			if err != nil {
				t.Fatalf("%s: tag %s: %v", ts.Name.Name, field.Tag.Value, err)
			}
			name, _, _ := strings.Cut(reflect.StructTag(tag).Get("yaml"), ",")
			if name != "" && name != "-" {
				keys[name] = true
			}
		}
		if len(keys) > 0 {
			out[ts.Name.Name] = keys
		}
		return false
	})
	for _, s := range []string{"Config", "Tenant", "Server", "DKIMKey", "Pacing"} {
		if len(out[s]) == 0 {
			t.Fatalf("%s: no yaml keys found for struct %s (renamed?)", path, s)
		}
	}
	return out
}

// checkTenantsFile checks that every key of a rendered tenants file is one
// the services accept, recursively.
func checkTenantsFile(t *testing.T, keys map[string]map[string]bool, doc map[string]any) {
	t.Helper()
	check := func(where, structName string, m map[string]any) {
		for k := range m {
			if !keys[structName][k] {
				t.Errorf("tenants file: %s: key %q is not one of platform/config's %s keys", where, k, structName)
			}
		}
	}
	check("top level", "Config", doc)
	tenants, _ := doc["tenants"].(map[string]any)
	if len(tenants) == 0 {
		t.Errorf("tenants file: no tenants")
	}
	for id, tv := range tenants {
		tm, ok := tv.(map[string]any)
		if !ok {
			t.Errorf("tenants file: tenant %s is %T, want a mapping", id, tv)
			continue
		}
		check("tenants."+id, "Tenant", tm)
		for list, structName := range map[string]string{"servers": "Server", "dkim": "DKIMKey", "pacing": "Pacing"} {
			items, _ := tm[list].([]any)
			for i, it := range items {
				im, _ := it.(map[string]any)
				check("tenants."+id+"."+list+"["+strconv.Itoa(i)+"]", structName, im)
			}
		}
	}
	for i, it := range asList(doc["pacing"]) {
		im, _ := it.(map[string]any)
		check("pacing["+strconv.Itoa(i)+"]", "Pacing", im)
	}
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
