package collectors

import (
	"errors"
	"testing"
	"time"
)

func newNothing(Settings, Config) (Collector, error) { return nil, nil }

func TestRegisterPanics(t *testing.T) {
	Register(Factory{Name: "taken", Interval: time.Second, New: newNothing,
		CreateDefaultConfig: func() Config { return &struct{}{} }})
	defer Unregister("taken")
	for name, f := range map[string]Factory{
		"duplicate":      {Name: "taken", Interval: time.Second, New: newNothing},
		"empty name":     {Name: "", Interval: time.Second, New: newNothing},
		"dotted name":    {Name: "gpu.power", Interval: time.Second, New: newNothing},
		"short interval": {Name: "fast", Interval: time.Millisecond, New: newNothing},
		"zero interval":  {Name: "zero", New: newNothing},
		"no New":         {Name: "nonew", Interval: time.Second},
		"section taken": {Name: "other", Interval: time.Second, New: newNothing, Section: "taken",
			CreateDefaultConfig: func() Config { return &struct{}{} }},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			Register(f)
		})
	}
	if got := len(Factories()); got != 1 {
		t.Errorf("a rejected registration stayed: %v", Factories())
	}
}

func TestLookup(t *testing.T) {
	opened := 0
	res := &Resources{}
	Provide(res, func() (int, error) { opened++; return 42, nil })
	set := Settings{Resources: res}
	for range 2 {
		if v, err := Lookup[int](set); err != nil || v != 42 {
			t.Fatalf("Lookup[int] = %v, %v, want 42", v, err)
		}
	}
	if opened != 1 {
		t.Errorf("opened %d times, want once for every Lookup", opened)
	}
	if _, err := Lookup[string](set); !errors.Is(err, ErrNoSource) {
		t.Errorf("Lookup of a type nobody provides = %v, want ErrNoSource", err)
	}
	if _, err := Lookup[int](Settings{}); !errors.Is(err, ErrNoSource) {
		t.Errorf("Lookup without resources = %v, want ErrNoSource", err)
	}
}
