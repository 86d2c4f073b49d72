package config

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Error is a configuration problem, located as precisely as its source allows. Load, Parse,
// Validate and Resolve return it (and nothing else) for anything the user has to fix, so that
// errors.As(err, new(*config.Error)) tells a usage error from a runtime failure.
type Error struct {
	// File is the configuration file; empty when the value came from a flag or a default.
	File string
	// Line is the 1-based line in File, or 0 when no line applies.
	Line int
	// Key is the dotted key (gpu.sim.count), or the flag with its dashes (--gpu.sim.count) when
	// the value came from the command line; empty for a problem with the file as a whole.
	Key string
	// Value is the offending value as the message shows it: strings quoted, numbers, booleans
	// and durations bare. Empty when the problem is not about one value.
	Value string
	// Problem says what is wrong and what is allowed, e.g. "is out of range (allowed: 1 to 64)".
	Problem string

	// keyInProblem marks messages that name the key themselves (unknown key "gpu.bakend").
	keyInProblem bool
	// err is the underlying cause, such as the OS error of an unreadable file.
	err error
}

// Error formats the one-line message: "FILE:LINE: KEY: VALUE PROBLEM".
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" && !e.keyInProblem {
		b.WriteString(e.Key + ": ")
	}
	if e.Value != "" {
		b.WriteString(e.Value + " ")
	}
	b.WriteString(e.Problem)
	return oneLine(b.String())
}

// Unwrap returns the cause, so that errors.Is(err, fs.ErrNotExist) works for a missing file.
func (e *Error) Unwrap() error { return e.err }

// oneLine replaces line breaks so that a message never spans lines, whatever a file held.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// readError describes a configuration file that cannot be read, keeping the OS error.
func readError(path string, err error) *Error {
	cause := err
	op := "read"
	var pe *fs.PathError
	if errors.As(err, &pe) {
		op, cause = pe.Op, pe.Err
	}
	return &Error{File: path, Problem: fmt.Sprintf("cannot %s the configuration file: %v", op, cause), err: err}
}

// maxShown bounds how much of a value a message repeats, since values can be whole files.
const maxShown = 80

// quote renders a string value for a message: Go-quoted (so control characters stay visible)
// and shortened when long.
func quote(s string) string {
	if len(s) > maxShown {
		cut := maxShown
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "…"
	}
	return strconv.Quote(s)
}

// segment renders one part of a dotted key, quoting it when it is not a plain word, so that a
// header name with a dot or a newline stays unambiguous.
func segment(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == '.' || r == '"' || !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return quote(s)
		}
	}
	if len(s) > maxShown {
		return quote(s)
	}
	return s
}

// join appends a segment to a dotted key.
func join(parent, name string) string {
	if parent == "" {
		return segment(name)
	}
	return parent + "." + segment(name)
}
