package soak

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// KindSensorFault is the invariant of the sensor faults: the agent keeps running, logs each
// failing sensor once (and once again when it reads again), keeps exporting every other
// sensor, stops exporting the failing ones (no stale value) and exports them again after.
const KindSensorFault = "sensor_fault_isolated"

// sensorFaultFor is how long a sensor fault lasts: four of the thermal collector's 5 s
// collections.
const sensorFaultFor = 20 * time.Second

// sensorRecovery is how long the failed sensors may take to be exported again: two
// collections and a margin for a loaded machine.
const sensorRecovery = 15 * time.Second

var hwmonValue = regexp.MustCompile(`^(temp|fan|in|curr|power|energy)([0-9]+)_input$`)

// sensorTarget is one sensor value file the thermal collector reads, by the path it reads it
// at (relative to the sysfs root), with what names its series.
type sensorTarget struct {
	rel string
	// hwID is the series' hw_id for a thermal zone (thermal_zoneN); for an hwmon sensor, chip
	// is the chip's name and sensor its name (temp1), the hw_id's last part.
	hwID, chip, sensor string
}

// explains tells whether series s is one of the target's.
func (t sensorTarget) explains(s promSeries) bool {
	id := s.labels["hw_id"]
	if t.hwID != "" {
		return id == t.hwID
	}
	return s.labels["hw_name"] == t.chip && strings.HasSuffix(id, "/"+t.sensor)
}

// sensorTargets lists the value files of every hwmon sensor and thermal zone of the tree, at
// the paths the thermal collector reads them (class/hwmon/hwmonN/…, class/thermal/…).
func sensorTargets(t *sensorTree) []sensorTarget {
	var out []sensorTarget
	for _, chipDir := range t.list("class/hwmon") {
		dir := filepath.Join("class/hwmon", chipDir)
		name := t.file(filepath.Join(dir, "name"))
		if name == nil {
			continue
		}
		for _, f := range t.list(dir) {
			m := hwmonValue.FindStringSubmatch(f)
			if m == nil || t.file(filepath.Join(dir, f)) == nil {
				continue // not a value file, or one that is no file (a fixture's broken sensor)
			}
			out = append(out, sensorTarget{rel: filepath.Join(dir, f), chip: strings.TrimSpace(string(name.content)), sensor: m[1] + m[2]})
		}
	}
	for _, z := range t.list("class/thermal") {
		rel := filepath.Join("class/thermal", z, "temp")
		if strings.HasPrefix(z, "thermal_zone") && t.file(rel) != nil {
			out = append(out, sensorTarget{rel: rel, hwID: z})
		}
	}
	return out
}

// promSeries is one series of a /metrics page.
type promSeries struct {
	name   string
	labels map[string]string
}

// sensorValueMetrics are the metrics of a sensor's value; the others (limits, alarms) go with
// the value, as the collector skips a failing sensor's limits too.
var sensorValueMetrics = map[string]bool{"hw_temperature_celsius": true, "hw_fan_speed": true, "hw_voltage_volts": true,
	"capstan_hw_current_amperes": true, "hw_power_watts": true, "hw_energy_joules_total": true}

// hostSensorSeries parses a /metrics page into its host sensor series (every series with an
// hw_id of a host part: not a GPU's), by their text.
func hostSensorSeries(page string) map[string]promSeries {
	out := map[string]promSeries{}
	for line := range strings.SplitSeq(page, "\n") {
		if line == "" || line[0] == '#' || !strings.Contains(line, `hw_id="`) || strings.Contains(line, `hw_type="gpu"`) {
			continue
		}
		if series, s, _, ok := parseSample(line); ok {
			out[series] = s
		}
	}
	return out
}

// compareSensorSeries compares the host sensor series exported during a sensor fault with
// those before it: every series that went missing must be a failing sensor's (problem
// otherwise), and landed tells whether exactly the failing sensors' values are gone.
func compareSensorSeries(before, during map[string]promSeries, failing []sensorTarget) (landed bool, problem string) {
	var unexplained []string
	missingValues := 0
	for key, s := range before {
		if _, ok := during[key]; ok {
			continue
		}
		explained := false
		for _, t := range failing {
			if t.explains(s) {
				explained = true
				break
			}
		}
		if !explained {
			unexplained = append(unexplained, key)
			continue
		}
		if sensorValueMetrics[s.name] {
			missingValues++
		}
	}
	sort.Strings(unexplained)
	switch {
	case len(unexplained) > 0:
		return false, fmt.Sprintf("%d series of sensors not under fault stopped being exported, the first %s", len(unexplained), unexplained[0])
	case missingValues > len(failing):
		return false, fmt.Sprintf("%d sensor values stopped being exported for %d failing sensors", missingValues, len(failing))
	}
	return missingValues == len(failing), ""
}

// sensorLogProblems checks an agent's log lines written during a sensor fault and its recovery:
// each failing file reported once, with the errno's text, and said readable again once.
func sensorLogProblems(log string, root string, failing []sensorTarget, errno syscall.Errno) []string {
	skipped, again := map[string]int{}, map[string]int{}
	wrongErr := map[string]string{}
	for line := range strings.SplitSeq(log, "\n") {
		file := logValue(line, "file")
		if file == "" {
			continue
		}
		switch {
		case strings.Contains(line, `msg="skipping a sensor while it fails to read"`):
			skipped[file]++
			if !strings.Contains(logValue(line, "err"), errno.Error()) {
				wrongErr[file] = logValue(line, "err")
			}
		case strings.Contains(line, `msg="sensor readable again"`):
			again[file]++
		}
	}
	var out []string
	for _, t := range failing {
		p := filepath.Join(root, t.rel)
		switch n := skipped[p]; {
		case n == 0:
			out = append(out, fmt.Sprintf("%s failing with %s was never reported", t.rel, errno.Error()))
		case n > 1:
			out = append(out, fmt.Sprintf("%s failing with %s was reported %d times, not once", t.rel, errno.Error(), n))
		}
		if e, ok := wrongErr[p]; ok {
			out = append(out, fmt.Sprintf("%s was reported with %q, not %s", t.rel, e, errno.Error()))
		}
		if again[p] != 1 {
			out = append(out, fmt.Sprintf("%s was said readable again %d times after the fault, not once", t.rel, again[p]))
		}
	}
	return out
}

// logValue returns key's value in a logfmt line ("" when absent), unquoted.
func logValue(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		end := 1
		for end < len(v) && (v[end] != '"' || v[end-1] == '\\') {
			end++
		}
		return strings.ReplaceAll(v[1:min(end, len(v))], `\"`, `"`)
	}
	if sp := strings.IndexByte(v, ' '); sp >= 0 {
		return v[:sp]
	}
	return v
}

// scrapeSensors reads an agent's host sensor series and its thermal collector's
// capstan.collector.up.
func scrapeSensors(client *http.Client, addr string) (map[string]promSeries, string, error) {
	page, err := scrape(client, addr)
	if err != nil {
		return nil, "", err
	}
	return hostSensorSeries(page), thermalUp(page), nil
}

// thermalUp is the value of the thermal collector's capstan_collector_up on a /metrics page
// ("" when absent).
func thermalUp(page string) string {
	for line := range strings.SplitSeq(page, "\n") {
		if v, ok := strings.CutPrefix(line, `capstan_collector_up{collector="thermal"} `); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// sensorFault makes a third of the node's sensor value files (hwmon inputs and thermal zone
// temperatures), drawn from the seed, answer errno to every read for sensorFaultFor, through
// the FUSE tree the node's sysfs is served from, and checks what the agent did.
func sensorFault(errno syscall.Errno) func(context.Context, *harness, *agent, *faultRecord) error {
	return func(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
		if a.sensors == nil {
			return errSkip(h.noSensorTree)
		}
		targets := sensorTargets(a.sensors)
		if len(targets) == 0 {
			return errSkip("no sensor value file in the fixture tree")
		}
		h.rngMu.Lock()
		h.rng.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
		h.rngMu.Unlock()
		failing := targets[:(len(targets)+2)/3]
		client := &http.Client{Timeout: 5 * time.Second}
		p := a.current()
		if p == nil {
			return fmt.Errorf("agent %s is not running", a.name)
		}
		before, _, err := scrapeSensors(client, a.addr)
		if err != nil {
			return fmt.Errorf("reading the sensors exported before the fault: %w", err)
		}
		logFrom := int64(0)
		if st, err := os.Stat(a.logPath()); err == nil {
			logFrom = st.Size()
		}
		for _, t := range failing {
			a.sensors.file(t.rel).fail(errno)
		}
		start := time.Now()
		var problems []string
		landed, downSeen := false, false
		for time.Since(start) < sensorFaultFor && ctx.Err() == nil {
			sleep(ctx, time.Second)
			during, up, err := scrapeSensors(client, a.addr)
			if err != nil {
				continue // the /metrics checks count failed scrapes
			}
			// Some sensors still read: the collection succeeds (the collector fails only
			// when no sensor reads at all).
			if up != "1" && !downSeen {
				downSeen = true
				problems = append(problems, fmt.Sprintf("%.0f s into the fault: the thermal collector's capstan_collector_up is %q, not 1, with only some sensors failing", time.Since(start).Seconds(), up))
			}
			ok, problem := compareSensorSeries(before, during, failing)
			landed = landed || ok
			if problem != "" && len(problems) == 0 {
				problems = append(problems, fmt.Sprintf("%.0f s into the fault: %s", time.Since(start).Seconds(), problem))
			}
		}
		var reads int64
		unread := 0
		for _, t := range failing {
			f := a.sensors.file(t.rel)
			n := f.failed.Load()
			f.fail(0)
			f.failed.Store(0)
			reads += n
			if n == 0 {
				unread++
			}
		}
		r.note("%d of %d sensor value files of %s answered %s for %v (%d failed reads)", len(failing), len(targets), a.sysfs, errnoName(errno), sensorFaultFor, reads)
		if unread > 0 {
			problems = append(problems, fmt.Sprintf("%d of the %d failing sensors were not read during the fault", unread, len(failing)))
		}
		if !landed {
			problems = append(problems, "the failing sensors' values were never all missing from /metrics during the fault (stale values, or no collection)")
		}
		// After the fault every sensor is exported again.
		back := false
		for end := time.Now().Add(sensorRecovery); time.Now().Before(end) && ctx.Err() == nil; {
			sleep(ctx, time.Second)
			now, _, err := scrapeSensors(client, a.addr)
			if err != nil {
				continue
			}
			if _, problem := compareSensorSeries(before, now, nil); problem == "" {
				back = true
				break
			}
		}
		if !back {
			problems = append(problems, fmt.Sprintf("the sensors were not all exported again within %v after the fault", sensorRecovery))
		}
		if a.current() != p {
			problems = append(problems, "the agent did not keep running through the fault")
		} else {
			// The log copy runs a line behind the agent: give it a moment.
			sleep(ctx, 500*time.Millisecond)
			problems = append(problems, sensorLogProblems(readFrom(a.logPath(), logFrom), a.sysfs, failing, errno)...)
		}
		var v *devstate.Violation
		if len(problems) > 0 {
			v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: r.Kind + ": " + strings.Join(problems, "; ")}
		}
		h.check.Add(KindSensorFault, v)
		return nil
	}
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.ENODATA:
		return "ENODATA"
	case syscall.EIO:
		return "EIO"
	}
	return e.Error()
}

// readFrom reads a file from offset on ("" when it cannot).
func readFrom(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	raw, _ := io.ReadAll(f)
	return string(raw)
}
