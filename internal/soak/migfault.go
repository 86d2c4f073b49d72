package soak

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// KindMIGReconfigured is the invariant of the MIG reconfiguration fault: read from the outside,
// each new layout of a running GPU is exported within migSettle, with no series of the
// instances it replaced, by the same agent process.
const KindMIGReconfigured = "mig_reconfigured"

// KindNVLinkCounted is the invariant of the NVLink error fault: the GPU's error counter over
// all its links rises by exactly the errors added to one link, within nvlinkSettle, and never
// goes back.
const KindNVLinkCounted = "nvlink_errors_counted"

// migSettle is how long a reconfiguration may take to show: two of the GPU collector's 10 s MIG
// discoveries and a margin for a loaded machine.
const migSettle = 25 * time.Second

// nvlinkSettle is how long added NVLink errors may take to show: a few collections.
const nvlinkSettle = 10 * time.Second

// migLayouts are the layouts the fault takes a GPU through, ending where the soak's GPUs start
// (MIG off), each with the profiles it must show.
var migLayouts = []struct {
	layout string
	want   map[string]int
}{
	{"3g.40gb,4g.40gb", map[string]int{"3g.40gb": 1, "4g.40gb": 1}},
	{"7x1g.10gb", map[string]int{"1g.10gb": 7}},
	{"off", map[string]int{}},
}

// migReconfigure reconfigures one GPU's MIG layout three times while the agent runs, as an
// operator's `nvidia-smi mig` would, and checks what /metrics shows after each.
func migReconfigure(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	gpu := h.randGPU()
	client := &http.Client{Timeout: 5 * time.Second}
	p := a.current()
	if p == nil {
		return fmt.Errorf("agent %s is not running", a.name)
	}
	var problems, ids []string
	old := map[string]bool{} // UUIDs of the instances the current layout replaced
	for _, step := range migLayouts {
		id, err := a.faults.add(simFault{Kind: "mig-layout", GPU: gpu, Layout: step.layout}, time.Time{})
		if err != nil {
			return err
		}
		ids = append(ids, id)
		start, shown, last := time.Now(), false, "no scrape answered"
		for time.Since(start) < migSettle && ctx.Err() == nil {
			sleep(ctx, time.Second)
			page, err := scrape(client, a.addr)
			if err != nil {
				continue // the /metrics checks count failed scrapes
			}
			mode, devices := migSeries(page, gpu)
			if last = migMismatch(mode, devices, step.want, old); last == "" {
				shown = true
				clear(old)
				for uuid := range devices {
					old[uuid] = true
				}
				break
			}
		}
		if !shown {
			problems = append(problems, fmt.Sprintf("GPU %d's layout %q not exported within %v: %s", gpu, step.layout, migSettle, last))
			break
		}
		r.note("GPU %d to %q in %.0f s", gpu, step.layout, time.Since(start).Seconds())
	}
	for _, id := range ids {
		if err := a.faults.remove(id); err != nil {
			return err
		}
	}
	if a.current() != p {
		problems = append(problems, "the agent did not keep running through the reconfigurations")
	}
	var v *devstate.Violation
	if len(problems) > 0 {
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: r.Kind + ": " + strings.Join(problems, "; ")}
	}
	h.check.Add(KindMIGReconfigured, v)
	return nil
}

// migMismatch says what keeps a GPU's exported MIG state from the layout want ("" when it
// matches): the mode, the profiles of its MIG devices, and any device of the layout before.
func migMismatch(mode string, devices map[string]string, want map[string]int, old map[string]bool) string {
	wantMode := "1"
	if len(want) == 0 {
		wantMode = "0"
	}
	if mode != wantMode {
		return fmt.Sprintf("capstan_gpu_mig_mode %q, want %s", mode, wantMode)
	}
	got := map[string]int{}
	for uuid, profile := range devices {
		if old[uuid] {
			return fmt.Sprintf("MIG device %s of the layout before still exported", uuid)
		}
		got[profile]++
	}
	if !maps.Equal(got, want) {
		return fmt.Sprintf("MIG devices %v, want %v", got, want)
	}
	return ""
}

// migSeries reads a GPU's MIG mode and MIG devices (UUID → profile) from a /metrics page.
func migSeries(page string, gpu int) (mode string, devices map[string]string) {
	devices = map[string]string{}
	index := strconv.Itoa(gpu)
	for line := range strings.SplitSeq(page, "\n") {
		_, s, value, ok := parseSample(line)
		if !ok || s.labels["gpu_index"] != index {
			continue
		}
		switch s.name {
		case "capstan_gpu_mig_mode":
			mode = value
		case "capstan_gpu_mig_info":
			devices[s.labels["capstan_mig_uuid"]] = s.labels["capstan_mig_profile"]
		}
	}
	return mode, devices
}

// nvlinkErrors adds CRC-data errors to one NVLink link of one GPU and checks the GPU's error
// counter over all links.
func nvlinkErrors(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	gpu := h.randGPU()
	h.rngMu.Lock()
	link := h.rng.IntN(18) // an H100 has 18 links
	h.rngMu.Unlock()
	const added = 7
	client := &http.Client{Timeout: 5 * time.Second}
	counter := func() (float64, bool) {
		page, err := scrape(client, a.addr)
		if err != nil {
			return 0, false
		}
		return nvlinkCRCData(page, gpu)
	}
	before, ok := counter()
	for start := time.Now(); !ok && time.Since(start) < nvlinkSettle && ctx.Err() == nil; {
		sleep(ctx, time.Second)
		before, ok = counter()
	}
	if !ok {
		return fmt.Errorf("GPU %d's CRC-data error counter is not on /metrics", gpu)
	}
	id, err := a.faults.add(simFault{Kind: "nvlink-errors", GPU: gpu, Link: link, Counter: "crc_data", Count: added}, time.Time{})
	if err != nil {
		return err
	}
	var problems []string
	prev, reached := before, false
	for start := time.Now(); time.Since(start) < nvlinkSettle && ctx.Err() == nil; {
		sleep(ctx, time.Second)
		v, ok := counter()
		if !ok {
			continue
		}
		if v < prev {
			problems = append(problems, fmt.Sprintf("the counter went back from %v to %v", prev, v))
			break
		}
		prev = v
		if v == before+added {
			reached = true
			break
		}
		if v > before+added {
			problems = append(problems, fmt.Sprintf("the counter rose by %v, %d errors were added", v-before, added))
			break
		}
	}
	if !reached && len(problems) == 0 {
		problems = append(problems, fmt.Sprintf("the counter rose by %v within %v, %d errors were added", prev-before, nvlinkSettle, added))
	}
	r.note("%d CRC-data errors on GPU %d link %d; counter %v → %v", added, gpu, link, before, prev)
	if err := a.faults.remove(id); err != nil {
		return err
	}
	var v *devstate.Violation
	if len(problems) > 0 {
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: r.Kind + ": " + strings.Join(problems, "; ")}
	}
	h.check.Add(KindNVLinkCounted, v)
	return nil
}

// nvlinkCRCData is a GPU's CRC-data error counter over all its links on a /metrics page.
func nvlinkCRCData(page string, gpu int) (float64, bool) {
	index := strconv.Itoa(gpu)
	for line := range strings.SplitSeq(page, "\n") {
		_, s, value, ok := parseSample(line)
		if ok && s.name == "capstan_gpu_nvlink_errors_total" && s.labels["gpu_index"] == index && s.labels["error_type"] == "crc_data" {
			v, err := strconv.ParseFloat(value, 64)
			return v, err == nil
		}
	}
	return 0, false
}
