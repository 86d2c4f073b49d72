package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// agentCode are the directories of code the agent runs; capstanctl and test support start
// goroutines of their own that no GPU limit depends on.
func agentCode(dir string) bool {
	for _, ts := range testSupport {
		if under(dir, ts) {
			return false
		}
	}
	return under(dir, "capping") || under(dir, "collectors") || under(dir, "exporters") ||
		under(dir, "cmd/capstan") || under(dir, "internal") && !under(dir, "internal/layout")
}

// recovers reports whether a go statement's function defers a recovery first: panics.Recover,
// the agent guard's recover, or a deferred function that calls recover().
func recovers(g *ast.GoStmt) bool {
	lit, ok := g.Call.Fun.(*ast.FuncLit)
	if !ok || len(lit.Body.List) == 0 {
		return false
	}
	d, ok := lit.Body.List[0].(*ast.DeferStmt)
	if !ok {
		return false
	}
	switch fn := d.Call.Fun.(type) {
	case *ast.SelectorExpr:
		return fn.Sel.Name == "Recover" || fn.Sel.Name == "recover"
	case *ast.FuncLit:
		found := false
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			if c, ok := n.(*ast.CallExpr); ok {
				if id, ok := c.Fun.(*ast.Ident); ok && id.Name == "recover" {
					found = true
				}
			}
			return !found
		})
		return found
	}
	return false
}

// A panic in any goroutine the agent runs must reach its guard, which restores the GPUs'
// limits before the process dies: goroutines start through panics.Go, or defer a recovery
// first.
func TestAgentGoroutinesAreGuarded(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "testdata", "bin", "dist", "node_modules", ".git":
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel("../..", filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || !agentCode(rel) || rel == "internal/panics" {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if g, ok := n.(*ast.GoStmt); ok && !recovers(g) {
				t.Errorf("%s: a goroutine outside the panic guard: start it with panics.Go, so that a panic in it restores the GPU limits", fset.Position(g.Pos()))
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
