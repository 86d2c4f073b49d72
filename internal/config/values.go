package config

import (
	"reflect"
	"strconv"
	"strings"
	"time"
)

var durationType = reflect.TypeFor[time.Duration]()

// Problems shared by the file and the flags, so both say the same about the same mistake.
const (
	notDuration = "is not a duration (examples: 500ms, 10s, 1m)"
	notInteger  = "is not an integer"
	notBoolean  = "is not a boolean (allowed: true, false)"
)

// leafKind is the kind of value a key holds.
type leafKind int

const (
	kindOther leafKind = iota
	kindString
	kindInt
	kindBool
	kindDuration
)

// kindOf classifies a field's type; Duration is checked before Int because it is one.
func kindOf(t reflect.Type) leafKind {
	switch {
	case t == durationType:
		return kindDuration
	case t.Kind() == reflect.String:
		return kindString
	case t.Kind() == reflect.Bool:
		return kindBool
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return kindInt
	}
	return kindOther
}

// typeName names a kind in "must be ..." messages.
func typeName(k leafKind) string {
	switch k {
	case kindString:
		return "a string"
	case kindInt:
		return "an integer"
	case kindBool:
		return "a boolean (true or false)"
	case kindDuration:
		return "a duration (examples: 500ms, 10s, 1m)"
	}
	return "a value"
}

// parseInt accepts decimal integers and the 0x, 0o and 0b forms YAML also reads; a leading zero
// stays decimal, as in YAML 1.2, rather than turning octal as Go's base 0 would.
func parseInt(s string) (int64, bool) {
	base := 10
	body := strings.TrimLeft(s, "+-")
	if len(body) > 1 && body[0] == '0' && strings.ContainsRune("xXoObB", rune(body[1])) {
		base = 0
	}
	i, err := strconv.ParseInt(s, base, 64)
	return i, err == nil
}

// parseYAMLBool accepts only YAML 1.2's booleans, not yes/no/on/off, which mean true in one
// YAML version and a string in another.
func parseYAMLBool(s string) (bool, bool) {
	switch s {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	return false, false
}

// setLeaf parses text into v according to its kind and returns the problem when it does not
// parse; flags pass strconv.ParseBool's forms for booleans, as pflag does.
func setLeaf(v reflect.Value, text string, flagBools bool) string {
	switch kindOf(v.Type()) {
	case kindString:
		v.SetString(text)
	case kindDuration:
		d, err := time.ParseDuration(text)
		if err != nil {
			return notDuration
		}
		v.SetInt(int64(d))
	case kindInt:
		i, ok := parseInt(text)
		if !ok || v.OverflowInt(i) {
			return notInteger
		}
		v.SetInt(i)
	case kindBool:
		b, ok := parseYAMLBool(text)
		if flagBools {
			var err error
			b, err = strconv.ParseBool(text)
			ok = err == nil
		}
		if !ok {
			return notBoolean
		}
		v.SetBool(b)
	default:
		return "has a type the configuration cannot hold"
	}
	return ""
}

// formatLeaf renders v as the file and the flags write it.
func formatLeaf(v reflect.Value) string {
	switch kindOf(v.Type()) {
	case kindString:
		return v.String()
	case kindDuration:
		return formatDuration(time.Duration(v.Int()))
	case kindInt:
		return strconv.FormatInt(v.Int(), 10)
	case kindBool:
		return strconv.FormatBool(v.Bool())
	}
	return ""
}

// formatDuration is time.Duration.String without the trailing zero units ("1m", not "1m0s"),
// which still parses back to the same value.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
