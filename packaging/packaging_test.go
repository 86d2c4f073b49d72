package packaging

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/capstan-power/capstan/internal/agent/cmdline"
)

const (
	unitPath      = "systemd/capstan.service"
	telemetryOnly = "systemd/telemetry-only.conf"
)

// need returns whether the commands exist; without them the test is skipped, except in CI
// (CI=true), where a missing tool is a broken CI setup and fails.
func need(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing in CI: .ci/run must install it", c)
			}
			t.Skipf("%s is not installed (Debian: rpm, dpkg, gcc-aarch64-linux-gnu, systemd)", c)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

func TestUnitHardening(t *testing.T) {
	u, err := ReadUnit(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range [][2]string{
		{"Type", "notify"}, {"Restart", "on-failure"}, {"RestartPreventExitStatus", "2"},
		{"NoNewPrivileges", "yes"}, {"ProtectSystem", "strict"}, {"ProtectHome", "yes"},
		{"PrivateTmp", "yes"}, {"StateDirectory", "capstan"}, {"ExecReload", "/bin/kill -HUP $MAINPID"},
	} {
		if got := u.Value("Service", want[0]); got != want[1] {
			t.Errorf("%s=%q, want %q", want[0], got, want[1])
		}
	}
	// NVML opens /dev/nvidia*: nothing may put the unit on a device allow-list (ProtectClock
	// does, before systemd 253).
	for _, k := range []string{"PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"} {
		if v := u.Values("Service", k); len(v) > 0 {
			t.Errorf("%s=%q would hide the GPUs' device nodes from NVML", k, v)
		}
	}
	// A root service gets its bounding set as effective capabilities; ambient ones would only
	// widen a non-root service and must not be there to confuse the picture.
	if v := u.Values("Service", "AmbientCapabilities"); len(v) > 0 || u.Value("Service", "User") != "" {
		t.Errorf("AmbientCapabilities %q, User %q: the unit runs as root confined by its bounding set", v, u.Value("Service", "User"))
	}
	full, err := u.Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(full, "CAP_SYS_ADMIN") {
		t.Errorf("bounding set %v lacks CAP_SYS_ADMIN, which NVML power-limit writes need", full)
	}
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON"} {
		if !slices.Contains(full, c) {
			t.Errorf("bounding set %v lacks %s, which the eBPF programs need", full, c)
		}
	}
	tu, err := ReadUnit(unitPath, telemetryOnly)
	if err != nil {
		t.Fatal(err)
	}
	tele, err := tu.Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.DeleteFunc(slices.Clone(full), func(c string) bool { return c == "CAP_SYS_ADMIN" }); !slices.Equal(tele, want) {
		t.Errorf("with the telemetry-only drop-in the bounding set is %v, want %v", tele, want)
	}
}

// The unit's command line, with the packaged environment file and configuration, must be one the
// agent accepts, and it must keep its state where ProtectSystem=strict lets it write.
func TestUnitCommandLine(t *testing.T) {
	u, err := ReadUnit(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	env, err := ReadEnvironmentFile("capstan.env")
	if err != nil {
		t.Fatal(err)
	}
	// The example in the environment file's comment must work as written, too.
	example := ""
	for _, line := range strings.Split(mustRead(t, "capstan.env"), "\n") {
		if _, v, ok := strings.Cut(line, "#   CAPSTAN_ARGS="); ok {
			example, _ = strconv.Unquote(v)
		}
	}
	if example == "" {
		t.Fatal("capstan.env has no CAPSTAN_ARGS example")
	}
	for name, e := range map[string]map[string]string{"packaged": env, "example": {"CAPSTAN_ARGS": example}} {
		args, err := u.ExecStart(e)
		if err != nil {
			t.Fatal(err)
		}
		if args[0] != "/usr/bin/capstan" {
			t.Fatalf("ExecStart runs %s, want /usr/bin/capstan", args[0])
		}
		for i, a := range args {
			if a == "--config.file=/etc/capstan/capstan.yaml" {
				args[i] = "--config.file=capstan.yaml" // the file the package installs there
			}
		}
		cfg, err := cmdline.Parse(args[1:])
		if err != nil {
			t.Fatalf("%s: the agent rejects the unit's command line %q: %v", name, args, err)
		}
		state := filepath.Join("/var/lib", u.Value("Service", "StateDirectory"))
		if filepath.Dir(cfg.Capping.StateFile) != state {
			t.Errorf("%s: capping.state-file %s is outside the StateDirectory %s, read-only under ProtectSystem=strict", name, cfg.Capping.StateFile, state)
		}
		if cfg.Capping.Enabled {
			t.Errorf("%s: the packaged configuration turns capping on; telemetry only is the default", name)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// file is what a package must hold at a path.
type file struct {
	mode   fs.FileMode // permission bits, plus fs.ModeDir for a directory
	config bool        // a configuration file the package manager keeps on upgrade
}

// wantFiles is the content of the package for packager deb or rpm.
func wantFiles(packager string) map[string]file {
	w := map[string]file{
		"/usr/bin/capstan":                                    {mode: 0o755},
		"/etc/capstan/capstan.yaml":                           {mode: 0o640, config: true},
		"/var/lib/capstan":                                    {mode: fs.ModeDir | 0o750},
		"/usr/share/doc/capstan/README.md":                    {mode: 0o644},
		"/usr/share/doc/capstan/install.md":                   {mode: 0o644},
		"/usr/share/doc/capstan/capping.md":                   {mode: 0o644},
		"/usr/share/doc/capstan/metrics.md":                   {mode: 0o644},
		"/usr/share/doc/capstan/examples/capstan.yaml":        {mode: 0o644},
		"/usr/share/doc/capstan/examples/telemetry-only.conf": {mode: 0o644},
	}
	for _, cmd := range []string{"capstanctl", "capstan-simulate"} {
		if hasGoFiles("../cmd/" + cmd) {
			w["/usr/bin/"+cmd] = file{mode: 0o755}
		}
	}
	if packager == "deb" {
		w["/lib/systemd/system/capstan.service"] = file{mode: 0o644}
		w["/etc/default/capstan"] = file{mode: 0o640, config: true}
		w["/usr/share/doc/capstan/copyright"] = file{mode: 0o644}
	} else {
		w["/usr/lib/systemd/system/capstan.service"] = file{mode: 0o644}
		w["/etc/sysconfig/capstan"] = file{mode: 0o640, config: true}
		w["/usr/share/licenses/capstan/LICENSE"] = file{mode: 0o644}
	}
	return w
}

func hasGoFiles(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	return len(m) > 0
}

// parsePerms turns ls-style permissions (-rwxr-xr-x, drwxr-x---) into a mode.
func parsePerms(s string) fs.FileMode {
	var m fs.FileMode
	for i, c := range s[1:10] {
		if c != '-' {
			m |= 1 << (8 - i)
		}
	}
	if s[0] == 'd' {
		m |= fs.ModeDir
	}
	return m
}

// TestPackages builds the RPM and DEB for amd64 and arm64 with "make packages" and inspects them
// with the distribution's own tools: files, modes, configuration marking, scripts, architecture.
func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four packages; not in -short")
	}
	need(t, "make", "rpm", "dpkg-deb", "aarch64-linux-gnu-gcc")
	dist := t.TempDir()
	t.Logf("make packages:\n%s", run(t, "make", "-C", "..", "packages", "DIST="+dist))

	scripts := map[string]string{}
	for _, s := range []string{"postinstall", "preremove", "postremove"} {
		scripts[s] = strings.TrimSpace(mustRead(t, "scripts/"+s+".sh"))
	}
	for _, arch := range []struct{ goarch, deb, rpm string }{
		{"amd64", "amd64", "x86_64"}, {"arm64", "arm64", "aarch64"},
	} {
		debs, _ := filepath.Glob(filepath.Join(dist, "capstan_*_"+arch.deb+".deb"))
		rpms, _ := filepath.Glob(filepath.Join(dist, "capstan-*."+arch.rpm+".rpm"))
		if len(debs) != 1 || len(rpms) != 1 {
			t.Fatalf("%s: want one DEB and one RPM in %s, found %v and %v", arch.goarch, dist, debs, rpms)
		}
		t.Run("deb-"+arch.goarch, func(t *testing.T) { checkDeb(t, debs[0], arch.deb, scripts) })
		t.Run("rpm-"+arch.goarch, func(t *testing.T) { checkRPM(t, rpms[0], arch.rpm, scripts) })
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "capstan_*_amd64.deb"))
	t.Run("install-deb", func(t *testing.T) { installDeb(t, debs[0]) })
}

func checkDeb(t *testing.T, pkg, arch string, scripts map[string]string) {
	if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", pkg, "Architecture")); got != arch {
		t.Errorf("Architecture %q, want %q", got, arch)
	}
	got := map[string]file{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", pkg)), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Fatalf("dpkg-deb -c line %q: want 6 fields (no links expected)", line)
		}
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", f[5], f[1])
		}
		p := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
		if mode := parsePerms(f[0]); !mode.IsDir() || p == "/var/lib/capstan" {
			got[p] = file{mode: mode}
		}
	}
	for _, c := range strings.Fields(run(t, "dpkg-deb", "-I", pkg, "conffiles")) {
		f := got[c]
		f.config = true
		got[c] = f
	}
	compareFiles(t, got, wantFiles("deb"))

	for deb, ours := range map[string]string{"postinst": "postinstall", "prerm": "preremove", "postrm": "postremove"} {
		if s := strings.TrimSpace(run(t, "dpkg-deb", "-I", pkg, deb)); s != scripts[ours] {
			t.Errorf("%s differs from scripts/%s.sh", deb, ours)
		}
	}
	checkBinaryArch(t, pkg, arch)
}

// checkBinaryArch reads /usr/bin/capstan out of the DEB and checks its ELF machine.
func checkBinaryArch(t *testing.T, pkg, arch string) {
	out, err := exec.Command("dpkg-deb", "--fsys-tarfile", pkg).Output()
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no ./usr/bin/capstan in %s: %v", pkg, err)
		}
		if h.Name != "./usr/bin/capstan" {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
		if f.Machine != want {
			t.Errorf("/usr/bin/capstan is built for %v, want %v", f.Machine, want)
		}
		checkGlibcDepends(t, f, run(t, "dpkg-deb", "-f", pkg, "Depends"))
		return
	}
}

func checkRPM(t *testing.T, pkg, arch string, scripts map[string]string) {
	if got := run(t, "rpm", "-qp", "--qf", "%{NAME} %{ARCH} %{LICENSE}", pkg); got != "capstan "+arch+" Apache-2.0" {
		t.Errorf("rpm header %q, want name capstan, arch %s, licence Apache-2.0", got, arch)
	}
	// -qpl lists the paths; --queryformat adds what -qpl cannot show: modes and file flags.
	listed := strings.Fields(run(t, "rpm", "-qpl", pkg))
	got := map[string]file{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "rpm", "-qp", "--qf",
		`[%{FILENAMES}\t%{FILEMODES:octal}\t%{FILEFLAGS:fflags}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\n]`, pkg)), "\n") {
		f := strings.Split(line, "\t")
		mode, err := strconv.ParseUint(f[1], 8, 32)
		if err != nil {
			t.Fatalf("mode of %s: %v", f[0], err)
		}
		m := fs.FileMode(mode & 0o777)
		if mode&0o170000 == 0o040000 {
			m |= fs.ModeDir
		}
		if f[3] != "root:root" {
			t.Errorf("%s is owned by %s, want root:root", f[0], f[3])
		}
		if strings.Contains(f[2], "c") && !strings.Contains(f[2], "n") {
			t.Errorf("%s is %%config but not noreplace: an upgrade would replace the user's edits", f[0])
		}
		got[f[0]] = file{mode: m, config: strings.Contains(f[2], "c")}
	}
	if len(listed) != len(got) {
		t.Errorf("rpm -qpl lists %d paths, the query format %d", len(listed), len(got))
	}
	compareFiles(t, got, wantFiles("rpm"))

	out := run(t, "rpm", "-qp", "--scripts", pkg)
	for rpm, ours := range map[string]string{"postinstall": "postinstall", "preuninstall": "preremove", "postuninstall": "postremove"} {
		if !strings.Contains(out, rpm+" scriptlet (using /bin/sh):\n"+scripts[ours]+"\n") {
			t.Errorf("the %s scriptlet is not scripts/%s.sh", rpm, ours)
		}
	}
}

func compareFiles(t *testing.T, got, want map[string]file) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("missing %s", p)
		case g != w:
			t.Errorf("%s: mode %v config %v, want mode %v config %v", p, g.mode, g.config, w.mode, w.config)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected %s in the package", p)
		}
	}
}

// installDeb installs the DEB on this machine, checks what the scripts did, reinstalls it over a
// changed configuration (which must survive), runs the installed agent without CAP_SYS_ADMIN as
// the telemetry-only drop-in would, and purges it.
func installDeb(t *testing.T, pkg string) {
	if os.Geteuid() != 0 {
		t.Skip("installing a package needs root")
	}
	need(t, "dpkg", "systemd-analyze", "setpriv")
	if exec.Command("dpkg-query", "-W", "capstan").Run() == nil {
		t.Skip("a capstan package is already installed here; not touching it")
	}
	run(t, "dpkg", "-i", pkg)
	purged := false
	defer func() {
		if !purged {
			_ = exec.Command("dpkg", "-P", "capstan").Run()
		}
	}()

	if out := run(t, "/usr/bin/capstan", "version"); !strings.HasPrefix(out, "capstan ") {
		t.Errorf("capstan version printed %q", out)
	}
	// capstan simulate runs the capstan-simulate the package installs beside it.
	if out := run(t, "/usr/bin/capstan", "simulate", "--gpu.sim.count=2", "--budget.watts=1000", "--duration=1m", "--json"); !strings.Contains(out, `"throughput_vs_static_pct"`) {
		t.Errorf("capstan simulate --json printed %q", out)
	}
	run(t, "systemd-analyze", "verify", "/lib/systemd/system/capstan.service")
	if fi, err := os.Stat("/var/lib/capstan"); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("/var/lib/capstan: %v, mode %v; want a 0750 directory", err, fi)
	}
	// Enabled, not started: systemctl works offline on the symlink even without systemd as PID 1.
	wants := "/etc/systemd/system/multi-user.target.wants/capstan.service"
	if target, err := os.Readlink(wants); err != nil || !strings.HasSuffix(target, "/capstan.service") {
		t.Errorf("the unit is not enabled after install: %s -> %q (%v)", wants, target, err)
	}

	// A changed configuration survives a reinstall (dpkg runs the upgrade path of the scripts).
	const mark = "\n# changed by the operator\n"
	if err := os.WriteFile("/etc/capstan/capstan.yaml", []byte(mustRead(t, "capstan.yaml")+mark), 0o640); err != nil {
		t.Fatal(err)
	}
	run(t, "dpkg", "-i", pkg)
	if !strings.HasSuffix(mustRead(t, "/etc/capstan/capstan.yaml"), mark) {
		t.Error("reinstalling replaced the operator's /etc/capstan/capstan.yaml")
	}

	// Telemetry without CAP_SYS_ADMIN: the bounding set of the unit with the telemetry-only drop-in.
	u, err := ReadUnit("/lib/systemd/system/capstan.service", "/usr/share/doc/capstan/examples/telemetry-only.conf")
	if err != nil {
		t.Fatal(err)
	}
	caps, err := u.Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	points := collectUnder(t, caps)
	gpuPower := 0
	for _, p := range points {
		if p.Name == "hw.power" && p.Attributes["hw.type"] == "gpu" {
			gpuPower++
		}
	}
	if gpuPower != 2 {
		t.Errorf("capstan collect under bounding set %v reported GPU power for %d GPUs, want 2", caps, gpuPower)
	}
	// The eBPF programs load with exactly the telemetry set, and each of its capabilities is
	// needed: without one, the workload collector falls back to cgroup cpu.stat.
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Logf("no kernel BTF here (%v): the eBPF capability checks need it", err)
	} else {
		if src := workloadSources(points); !slices.Equal(src, []string{"ebpf"}) {
			t.Errorf("under %v the workload collector measured with %v, want ebpf", caps, src)
		}
		for _, drop := range caps {
			less := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == drop })
			if src := workloadSources(collectUnder(t, less)); slices.Contains(src, "ebpf") {
				t.Errorf("eBPF loaded without %s: the unit's bounding set holds a capability it does not need", drop)
			}
		}
	}

	// Remove, then install again from the config-files state: the admin's enablement is kept.
	run(t, "dpkg", "-r", "capstan")
	run(t, "dpkg", "-i", pkg)
	if target, err := os.Readlink(wants); err != nil || !strings.HasSuffix(target, "/capstan.service") {
		t.Errorf("the unit is not enabled after remove and reinstall: %s -> %q (%v)", wants, target, err)
	}

	run(t, "dpkg", "-P", "capstan")
	purged = true
	for _, p := range []string{"/usr/bin/capstan", "/usr/bin/capstan-simulate", "/etc/capstan", "/var/lib/capstan", wants, "/lib/systemd/system/capstan.service"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there after dpkg -P", p)
		}
	}
}

// point is one data point of "capstan collect --json".
type point struct {
	Name       string            `json:"name"`
	Attributes map[string]string `json:"attributes"`
}

// collectUnder runs the installed agent once (sim GPUs, every collector, capping in dry run)
// with a bounding set of exactly caps, as systemd would give it.
func collectUnder(t *testing.T, caps []string) []point {
	t.Helper()
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	out := run(t, "setpriv", "--bounding-set="+bounding, "--inh-caps=-all", "--",
		"/usr/bin/capstan", "collect", "--json", "--config.file=/etc/capstan/capstan.yaml",
		"--gpu.backend=sim", "--gpu.sim.count=2", "--collector.workload",
		"--capping.enabled", "--budget.watts=1000", "--capping.dry-run")
	var points []point
	if err := json.Unmarshal([]byte(out), &points); err != nil {
		t.Fatalf("capstan collect --json under %s: %v", bounding, err)
	}
	return points
}

// workloadSources returns the capstan.workload.source values of the workload points, sorted.
func workloadSources(points []point) []string {
	var src []string
	for _, p := range points {
		if s := p.Attributes["capstan.workload.source"]; s != "" && !slices.Contains(src, s) {
			src = append(src, s)
		}
	}
	slices.Sort(src)
	return src
}

// checkGlibcDepends checks that the package's libc6 dependency asks for at least the newest
// glibc symbol version the binary imports: otherwise it installs where it cannot run.
func checkGlibcDepends(t *testing.T, f *elf.File, depends string) {
	t.Helper()
	syms, err := f.ImportedSymbols()
	if err != nil {
		t.Fatal(err)
	}
	newest := "2.0"
	for _, s := range syms {
		if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok && versionLess(newest, v) {
			newest = v
		}
	}
	m := regexp.MustCompile(`libc6 \(>= ([0-9.]+)\)`).FindStringSubmatch(depends)
	if m == nil || versionLess(m[1], newest) {
		t.Errorf("Depends %q: the binary needs glibc %s", depends, newest)
	}
}

// versionLess compares dotted numeric versions (2.9 < 2.34).
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}
