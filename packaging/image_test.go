package packaging

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The image that `make image` builds is the one the manifests run, it carries every command,
// and it is built with the Go release go.mod asks for.
func TestImageMatchesBuildAndManifests(t *testing.T) {
	dockerfile := readRepoFile(t, "packaging/Dockerfile")
	makefile := readRepoFile(t, "Makefile")

	image := regexp.MustCompile(`(?m)^IMAGE\s*\?=\s*(\S+)$`).FindStringSubmatch(makefile)
	if image == nil {
		t.Fatal("Makefile sets no IMAGE")
	}
	for _, tc := range []struct{ file, pattern string }{
		{"deploy/kustomize/base/daemonset.yaml", `(?m)^\s*image:\s*(\S+):\S+$`},
		{"deploy/helm/capstan/values.yaml", `(?m)^\s*repository:\s*(\S+)$`},
	} {
		m := regexp.MustCompile(tc.pattern).FindStringSubmatch(readRepoFile(t, tc.file))
		if m == nil || m[1] != image[1] {
			t.Errorf("%s runs image %v; make image builds %s", tc.file, m, image[1])
		}
	}

	cmds, err := filepath.Glob("../cmd/*/main.go")
	if err != nil || len(cmds) == 0 {
		t.Fatalf("no commands under cmd/: %v", err)
	}
	copyLine := regexp.MustCompile(`(?m)^COPY --from=build (.+) /usr/bin/$`).FindStringSubmatch(dockerfile)
	if copyLine == nil {
		t.Fatal("the Dockerfile copies no binaries to /usr/bin/")
	}
	copied := strings.Fields(copyLine[1])
	for _, c := range cmds {
		name := filepath.Base(filepath.Dir(c))
		if !slices.Contains(copied, "/src/bin/"+name) {
			t.Errorf("the image lacks %s: COPY line has %v", name, copied)
		}
	}
	if !strings.Contains(dockerfile, `ENTRYPOINT ["/usr/bin/capstan"]`) {
		t.Error(`the image's entrypoint is not ["/usr/bin/capstan"]`)
	}

	goMod := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(readRepoFile(t, "go.mod"))
	goArg := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindStringSubmatch(dockerfile)
	if goMod == nil || goArg == nil || goArg[1] != goMod[1] {
		t.Errorf("the Dockerfile builds with Go %v, go.mod asks for %v", goArg, goMod)
	}
}
