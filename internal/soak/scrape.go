package soak

import (
	"io"
	"net/http"
	"strconv"
	"strings"
)

// scrape reads an agent's /metrics page.
func scrape(client *http.Client, addr string) (string, error) {
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	return string(raw), err
}

// parseSample splits a sample line with labels of the text exposition into the series as
// written (name and labels), its name and labels, and its value.
func parseSample(line string) (series string, s promSeries, value string, ok bool) {
	if line == "" || line[0] == '#' {
		return "", promSeries{}, "", false
	}
	open, end := strings.IndexByte(line, '{'), strings.LastIndexByte(line, '}')
	if open < 0 || end < open {
		return "", promSeries{}, "", false
	}
	s = promSeries{name: line[:open], labels: map[string]string{}}
	for _, kv := range splitLabels(line[open+1 : end]) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			s.labels[k] = v
		}
	}
	if fields := strings.Fields(line[end+1:]); len(fields) > 0 {
		value = fields[0]
	}
	return line[:end+1], s, value, true
}

// splitLabels splits a label list at the commas outside quoted values.
func splitLabels(s string) []string {
	var out []string
	quoted, escaped, from := false, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escaped:
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = append(out, s[from:i])
			from = i + 1
		}
	}
	if from < len(s) {
		out = append(out, s[from:])
	}
	return out
}
