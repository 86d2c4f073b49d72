package soak

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// needFUSE skips a test that mounts a FUSE filesystem where it cannot.
func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a FUSE filesystem with mount(2) needs root")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no usable /dev/fuse here: %v", err)
	}
	_ = f.Close()
}

func mounted(t *testing.T, mnt string) bool {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

// The sensor tree serves a sysfs copy whose files read their value, or the errno the harness
// sets, through a descriptor held open across the fault as the agents hold theirs (pread at
// offset 0), and through a fresh open; the other files read on; unmounting with a descriptor
// still open falls back to a lazy unmount.
func TestSensorTree(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	src, mnt := filepath.Join(dir, "sys.src"), filepath.Join(dir, "sys")
	chip := filepath.Join(src, "devices/platform/coretemp.0/hwmon/hwmon1")
	for _, d := range []string{chip, filepath.Join(src, "class/hwmon"), mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, value := range map[string]string{"name": "coretemp\n", "temp1_input": "52000\n", "temp2_input": "49000\n"} {
		if err := os.WriteFile(filepath.Join(chip, name), []byte(value), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../../devices/platform/coretemp.0/hwmon/hwmon1", filepath.Join(src, "class/hwmon/hwmon1")); err != nil {
		t.Fatal(err)
	}
	tree, err := mountSensorTree(src, mnt)
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			_ = tree.unmount()
		}
	})
	through := filepath.Join(mnt, "class/hwmon/hwmon1")
	held, err := os.Open(filepath.Join(through, "temp1_input"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Close() }()
	pread := func() (string, error) {
		buf := make([]byte, 64)
		n, err := held.ReadAt(buf, 0)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return string(buf[:n]), err
	}
	if v, err := pread(); err != nil || v != "52000\n" {
		t.Fatalf("before any fault: %q, %v", v, err)
	}
	f := tree.file("class/hwmon/hwmon1/temp1_input")
	if f == nil || tree.file("class/hwmon/hwmon1/nothing") != nil {
		t.Fatalf("looking files up through the class symlink: %v", f)
	}
	for _, errno := range []syscall.Errno{syscall.ENODATA, syscall.EIO} {
		f.fail(errno)
		if _, err := pread(); !errors.Is(err, errno) {
			t.Errorf("held descriptor under %v: %v", errno, err)
		}
		fresh, err := os.Open(filepath.Join(through, "temp1_input"))
		if err != nil {
			t.Errorf("opening a failing sensor (sysfs opens it; only reads fail): %v", err)
		} else {
			if _, err := fresh.Read(make([]byte, 64)); !errors.Is(err, errno) {
				t.Errorf("fresh descriptor under %v: %v", errno, err)
			}
			_ = fresh.Close()
		}
		if v, err := os.ReadFile(filepath.Join(through, "temp2_input")); err != nil || string(v) != "49000\n" {
			t.Errorf("the other sensor under %v: %q, %v", errno, v, err)
		}
	}
	f.fail(0)
	if v, err := pread(); err != nil || v != "52000\n" {
		t.Errorf("after the fault: %q, %v", v, err)
	}
	if n := f.failed.Load(); n != 4 {
		t.Errorf("%d reads answered an errno, want 4", n)
	}
	if _, err := os.OpenFile(filepath.Join(through, "temp1_input"), os.O_WRONLY, 0); !errors.Is(err, syscall.EACCES) {
		t.Errorf("opening for writing: %v", err)
	}
	if !mounted(t, mnt) {
		t.Fatalf("%s is not in the mount table", mnt)
	}
	// held is still open: a plain unmount is refused (EBUSY), the lazy one goes through.
	if err := tree.unmount(); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	if mounted(t, mnt) {
		t.Errorf("%s still mounted after unmount", mnt)
	}
}

// sensorFixture writes a small sysfs tree: two coretemp chips with the same sensor names (as a
// two-socket host has), a PSU chip with a broken sensor (a directory) and a thermal zone.
func sensorFixture(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "sys")
	write := func(rel, value string) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(value+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, rel string) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range []string{"1", "2"} {
		dir := "devices/platform/coretemp." + string(rune('0'+i)) + "/hwmon/hwmon" + n
		write(dir+"/name", "coretemp")
		write(dir+"/temp1_input", "52000")
		write(dir+"/temp1_max", "91000")
		write(dir+"/temp1_label", "Package id "+string(rune('0'+i)))
		write(dir+"/temp2_input", "49000")
		link("../../"+dir, "class/hwmon/hwmon"+n)
	}
	psu := "devices/pci0000:00/i2c-7/7-0058/hwmon/hwmon4"
	write(psu+"/name", "dps460")
	write(psu+"/in1_input", "230250")
	write(psu+"/power1_input", "411000000")
	write(psu+"/temp3_input/.keep", "")
	link("../../"+psu, "class/hwmon/hwmon4")
	write("class/thermal/thermal_zone0/temp", "27800")
	write("class/thermal/thermal_zone0/type", "acpitz")
	write("class/thermal/cooling_device0/cur_state", "0")
	return src
}

// The sensor faults fail the value files the thermal collector reads, at the paths it reads
// them: every hwmon chip's inputs (not a broken sensor that is no file) and every zone's
// temperature, named as their series are.
func TestSensorTargets(t *testing.T) {
	tree, err := readSensorTree(sensorFixture(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sensorTargets(tree) {
		got = append(got, s.rel+" "+s.hwID+s.chip+"/"+s.sensor)
		if tree.file(s.rel) == nil {
			t.Errorf("%s is no file of the tree", s.rel)
		}
	}
	want := []string{
		"class/hwmon/hwmon1/temp1_input coretemp/temp1", "class/hwmon/hwmon1/temp2_input coretemp/temp2",
		"class/hwmon/hwmon2/temp1_input coretemp/temp1", "class/hwmon/hwmon2/temp2_input coretemp/temp2",
		"class/hwmon/hwmon4/in1_input dps460/in1", "class/hwmon/hwmon4/power1_input dps460/power1",
		"class/thermal/thermal_zone0/temp thermal_zone0/",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("targets\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

const sensorPage = `# HELP hw_temperature_celsius Temperature.
hw_temperature_celsius{hw_id="coretemp-isa-0000/temp1",hw_name="coretemp",hw_sensor_location="Package id 0",hw_type="temperature"} 52
hw_temperature_celsius{hw_id="coretemp-isa-0000/temp2",hw_name="coretemp",hw_sensor_location="Core 0",hw_type="temperature"} 49
hw_temperature_celsius{hw_id="coretemp-isa-0001/temp1",hw_name="coretemp",hw_sensor_location="Package id 1",hw_type="temperature"} 52
hw_temperature_limit_celsius{hw_id="coretemp-isa-0000/temp1",hw_limit_type="max",hw_name="coretemp",hw_sensor_location="Package id 0",hw_type="temperature"} 91
hw_temperature_celsius{hw_id="thermal_zone0",hw_name="acpitz",hw_sensor_location="acpitz",hw_type="temperature"} 27.8
hw_voltage_volts{hw_id="dps460-i2c-7-58/in1",hw_name="dps460",hw_sensor_location="vin, \"main\"",hw_type="voltage"} 230.25
hw_temperature_celsius{hw_id="GPU-1",hw_name="H100",hw_type="gpu"} 40
capstan_collector_up{collector="thermal"} 1
`

// drop returns page without the lines containing any of subs.
func drop(page string, subs ...string) string {
	var keep []string
	for line := range strings.SplitSeq(page, "\n") {
		gone := false
		for _, s := range subs {
			gone = gone || strings.Contains(line, s)
		}
		if !gone {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// During a sensor fault only the failing sensors' series may go: another sensor's series
// missing is a problem, and the fault has landed once every failing sensor's value is gone.
func TestCompareSensorSeries(t *testing.T) {
	before := hostSensorSeries(sensorPage)
	if len(before) != 6 {
		t.Fatalf("%d host sensor series parsed, want 6 (not the GPU's, not the collector's)", len(before))
	}
	if v := before[`hw_voltage_volts{hw_id="dps460-i2c-7-58/in1",hw_name="dps460",hw_sensor_location="vin, \"main\"",hw_type="voltage"}`]; v.labels["hw_type"] != "voltage" || v.labels["hw_sensor_location"] != `vin, "main"` {
		t.Fatalf("a label value with a comma and quotes: %+v", v)
	}
	pkg0 := sensorTarget{rel: "class/hwmon/hwmon1/temp1_input", chip: "coretemp", sensor: "temp1"}
	zone := sensorTarget{rel: "class/thermal/thermal_zone0/temp", hwID: "thermal_zone0"}
	for _, c := range []struct {
		name    string
		page    string
		failing []sensorTarget
		landed  bool
		problem string
	}{
		{"nothing gone yet", sensorPage, []sensorTarget{pkg0, zone}, false, ""},
		{"one of two gone", drop(sensorPage, "thermal_zone0"), []sensorTarget{pkg0, zone}, false, ""},
		{"both gone, with the limit", drop(sensorPage, "thermal_zone0", "isa-0000/temp1"), []sensorTarget{pkg0, zone}, true, ""},
		{"another sensor gone", drop(sensorPage, "thermal_zone0", "dps460"), []sensorTarget{zone}, false, "1 series of sensors not under fault stopped being exported"},
		// The twin chips' temp1 both match (coretemp, temp1): one more value gone than sensors fail.
		{"the twin chip's sensor gone too", drop(sensorPage, "/temp1\""), []sensorTarget{pkg0}, false, "2 sensor values stopped being exported for 1 failing sensors"},
		{"everything back", sensorPage, nil, true, ""},
		{"not back", drop(sensorPage, "thermal_zone0"), nil, false, "1 series of sensors not under fault"},
	} {
		landed, problem := compareSensorSeries(before, hostSensorSeries(c.page), c.failing)
		if landed != c.landed || (c.problem == "") != (problem == "") || !strings.Contains(problem, c.problem) {
			t.Errorf("%s: landed %v, problem %q; want %v, %q", c.name, landed, problem, c.landed, c.problem)
		}
	}
}

// Each failing sensor must be reported once with the errno's text, and said readable again
// once after the fault.
func TestSensorLogProblems(t *testing.T) {
	root := "/tmp/capstan-soak-1/node-2/sys"
	a := sensorTarget{rel: "class/hwmon/hwmon1/temp1_input"}
	b := sensorTarget{rel: "class/thermal/thermal_zone0/temp"}
	skip := func(rel, err string) string {
		return `time=2026-12-06T06:38:01.757Z level=WARN msg="skipping a sensor while it fails to read" collector=thermal file=` +
			root + "/" + rel + ` err="read ` + root + "/" + rel + ": " + err + `"`
	}
	again := func(rel string) string {
		return `time=2026-12-06T06:38:21.757Z level=INFO msg="sensor readable again" collector=thermal file=` + root + "/" + rel
	}
	good := strings.Join([]string{skip(a.rel, "no data available"), skip(b.rel, "no data available"), again(a.rel), again(b.rel)}, "\n")
	if p := sensorLogProblems(good, root, []sensorTarget{a, b}, syscall.ENODATA); len(p) != 0 {
		t.Errorf("a good log: %v", p)
	}
	for _, c := range []struct {
		name, log string
		want      string
	}{
		{"never reported", strings.Join([]string{skip(a.rel, "no data available"), again(a.rel), again(b.rel)}, "\n"), "thermal_zone0/temp failing with no data available was never reported"},
		{"reported twice", good + "\n" + skip(a.rel, "no data available"), "hwmon1/temp1_input failing with no data available was reported 2 times"},
		{"another errno", strings.ReplaceAll(good, "no data available", "input/output error"), "was reported with"},
		{"not readable again", strings.Join([]string{skip(a.rel, "no data available"), skip(b.rel, "no data available"), again(a.rel)}, "\n"), "thermal_zone0/temp was said readable again 0 times"},
	} {
		p := sensorLogProblems(c.log, root, []sensorTarget{a, b}, syscall.ENODATA)
		if !strings.Contains(strings.Join(p, "\n"), c.want) {
			t.Errorf("%s: %v, want %q", c.name, p, c.want)
		}
	}
}

func TestThermalUp(t *testing.T) {
	if up := thermalUp(sensorPage); up != "1" {
		t.Errorf("thermal up %q", up)
	}
	if up := thermalUp(strings.ReplaceAll(sensorPage, `"thermal"} 1`, `"thermal"} 0`)); up != "0" {
		t.Errorf("thermal down read as %q", up)
	}
	if up := thermalUp(drop(sensorPage, "capstan_collector_up")); up != "" {
		t.Errorf("absent read as %q", up)
	}
}
