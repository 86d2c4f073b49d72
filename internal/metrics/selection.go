package metrics

// Per-metric selection: the configuration's metrics.NAME.enabled turns any metric on or off,
// after the OpenTelemetry Collector's convention. A metric is on unless it is listed here;
// metrics whose series multiply with something unbounded on a node (per link, per process)
// belong here, so that a default node keeps a sane number of series.
var offByDefault = map[*Def]bool{}

// OnByDefault reports whether the metric is exported when the configuration does not say.
func (d *Def) OnByDefault() bool { return !offByDefault[d] }

// CollectorSeries counts what each collector exports, for keeping series counts in view.
var CollectorSeries = def("capstan.collector.series", "{series}", Gauge, "agent",
	"Series the collector's last successful collection exported, after the per-metric selection (metrics.NAME.enabled).",
	AttrCollector)
