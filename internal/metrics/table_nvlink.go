package metrics

// Attribute keys of NVLink links.
const (
	AttrNVLink        = "capstan.nvlink.link"
	AttrNVLinkVersion = "capstan.nvlink.version"
	AttrNVLinkRemote  = "capstan.nvlink.remote"
)

// NVLink metrics: the GPU's links together (on by default) and each link (off by default: 18
// series per GPU and metric on Hopper).
var (
	GPUNVLinkLinks = def("capstan.gpu.nvlink.links", "{link}", Gauge, "gpu",
		"NVLink links of the GPU by hw.state: up, down. A link that goes down lowers the bandwidth of every collective the GPU takes part in.",
		with(gpuAttrs, AttrHWState)...)
	GPUNVLinkIO = def("capstan.gpu.nvlink.io", "By", Counter, "gpu",
		"Data bytes moved over all the GPU's NVLink links, by network.io.direction (transmit, receive).",
		with(gpuAttrs, AttrIODirection)...)
	GPUNVLinkErrors = def("capstan.gpu.nvlink.errors", "{error}", Counter, "gpu",
		"NVLink errors over all the GPU's links, by error.type: crc_flit, crc_data (CRC errors), replay (a flit resent), recovery (a link retrained). A rising rate points at a bad link, cable or NVSwitch port.",
		with(gpuAttrs, AttrErrorType)...)
	GPUNVLinkLinkState = def("capstan.gpu.nvlink.link.state", "{up}", Gauge, "gpu",
		"1 while the NVLink link is up, 0 when it is down, with its version and what it connects to (capstan.nvlink.remote: gpu, switch, ibmnpu, unknown). One series per link.",
		with(gpuAttrs, AttrNVLink, AttrNVLinkVersion, AttrNVLinkRemote)...)
	GPUNVLinkLinkIO = def("capstan.gpu.nvlink.link.io", "By", Counter, "gpu",
		"Data bytes moved over one NVLink link, by network.io.direction. Two series per link.",
		with(gpuAttrs, AttrNVLink, AttrIODirection)...)
	GPUNVLinkLinkErrors = def("capstan.gpu.nvlink.link.errors", "{error}", Counter, "gpu",
		"NVLink errors of one link, by error.type: crc_flit, crc_data, replay, recovery. Four series per link.",
		with(gpuAttrs, AttrNVLink, AttrErrorType)...)
)

func init() {
	offByDefault[GPUNVLinkLinkState] = true
	offByDefault[GPUNVLinkLinkIO] = true
	offByDefault[GPUNVLinkLinkErrors] = true
}
