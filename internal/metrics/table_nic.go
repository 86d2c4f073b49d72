package metrics

// Attribute keys of the nic collector.
const (
	AttrInterfaceName = "network.interface.name"
	AttrLinkKind      = "capstan.network.kind"
	AttrLinkDriver    = "capstan.network.driver"
	AttrIBDevice      = "capstan.infiniband.device"
	AttrIBPort        = "capstan.infiniband.port"
	AttrIBLinkLayer   = "capstan.infiniband.link_layer"
	AttrIBHWCounter   = "capstan.infiniband.hw_counter"
)

// ibAttrs identify an InfiniBand or RoCE port.
var ibAttrs = []string{AttrIBDevice, AttrIBPort, AttrIBLinkLayer}

// NIC metrics, appended to Table after those of table.go and table_host.go.
var (
	NetworkIO = def("system.network.io", "By", Counter, "nic",
		"Bytes received and transmitted by a network interface (64-bit kernel counters through netlink), Ethernet headers included.",
		AttrInterfaceName, AttrIODirection)
	NetworkPackets = def("system.network.packet.count", "{packet}", Counter, "nic",
		"Packets received and transmitted by a network interface.",
		AttrInterfaceName, AttrIODirection)
	NetworkErrors = def("system.network.errors", "{error}", Counter, "nic",
		"Receive and transmit errors of a network interface (rx_errors, tx_errors).",
		AttrInterfaceName, AttrIODirection)
	NetworkDropped = def("system.network.packet.dropped", "{packet}", Counter, "nic",
		"Packets a network interface dropped on receive or transmit (rx_dropped, tx_dropped).",
		AttrInterfaceName, AttrIODirection)
	NetworkInfo = def("capstan.network.info", "{info}", Gauge, "nic",
		"Always 1; names a network interface's kind (physical, loopback, or the rtnetlink kind: veth, bond, vlan, bridge, ipoib …) and its driver (the sysfs device/driver link; empty for virtual links).",
		AttrInterfaceName, AttrLinkKind, AttrLinkDriver)
	NetworkUp = def("hw.network.up", "1", UpDownCounter, "nic",
		"1 when the interface is administratively up and has carrier (operational state up, or unknown with carrier for links that do not report one), else 0.",
		AttrInterfaceName)
	NetworkOperState = def("capstan.network.operstate", "{state}", Gauge, "nic",
		"RFC 2863 operational state of the interface: 0 unknown, 1 notpresent, 2 down, 3 lowerlayerdown, 4 testing, 5 dormant, 6 up.",
		AttrInterfaceName)
	NetworkCarrier = def("capstan.network.carrier", "{carrier}", Gauge, "nic",
		"1 while the interface has carrier (IFLA_CARRIER), else 0.",
		AttrInterfaceName)
	NetworkCarrierChanges = def("capstan.network.carrier.changes", "{change}", Counter, "nic",
		"Carrier changes the kernel counted since the interface was created (IFLA_CARRIER_CHANGES): every down and every up.",
		AttrInterfaceName)
	NetworkCarrierTransitions = def("capstan.network.carrier.transitions", "{transition}", Counter, "nic",
		"Carrier transitions (lower-up gained or lost) the agent saw through its rtnetlink link subscription since it started, so a flap between two collections is counted.",
		AttrInterfaceName)
	NetworkMTU = def("capstan.network.mtu", "By", Gauge, "nic",
		"Maximum transmission unit of the interface.",
		AttrInterfaceName)
	NetworkBandwidthLimit = def("hw.network.bandwidth.limit", "By/s", UpDownCounter, "nic",
		"Link speed the interface negotiated (sysfs speed, converted from Mb/s); absent while unknown (link down, virtual links).",
		AttrInterfaceName)

	IBIO = def("capstan.infiniband.io", "By", Counter, "nic",
		"Bytes received and transmitted by an InfiniBand or RoCE port (port_rcv_data and port_xmit_data, which count 4-byte words, times 4).",
		with(ibAttrs, AttrIODirection)...)
	IBPackets = def("capstan.infiniband.packet.count", "{packet}", Counter, "nic",
		"Packets received and transmitted by an InfiniBand or RoCE port.",
		with(ibAttrs, AttrIODirection)...)
	IBErrors = def("capstan.infiniband.errors", "{error}", Counter, "nic",
		"Error counters of an InfiniBand or RoCE port; error.type is the counter's name (symbol_error, link_downed, link_error_recovery, port_rcv_errors, port_xmit_discards, …).",
		with(ibAttrs, AttrErrorType)...)
	IBHWCounters = def("capstan.infiniband.hw_counter", "{event}", Counter, "nic",
		"Driver counters of a port (hw_counters, mlx5 and others) that show RoCE congestion and retransmission: out_of_buffer, out_of_sequence, packet_seq_err, local_ack_timeout_err, rnr_nak_retry_err, np_cnp_sent, np_ecn_marked_roce_packets, rp_cnp_handled, rp_cnp_ignored, roce_adp_retrans, roce_slow_restart; capstan.infiniband.hw_counter names it.",
		with(ibAttrs, AttrIBHWCounter)...)
	IBXmitWait = def("capstan.infiniband.xmit_wait", "{tick}", Counter, "nic",
		"Ticks a port had data to send but could not (port_xmit_wait): the fabric's congestion.",
		ibAttrs...)
	IBPortState = def("capstan.infiniband.port.state", "{state}", Gauge, "nic",
		"Logical state of an InfiniBand port: 1 down, 2 init, 3 armed, 4 active, 5 active_defer.",
		ibAttrs...)
	IBPortPhysState = def("capstan.infiniband.port.physical_state", "{state}", Gauge, "nic",
		"Physical state of an InfiniBand port: 1 sleep, 2 polling, 3 disabled, 4 port configuration training, 5 linkup, 6 link error recovery, 7 phy test.",
		ibAttrs...)
	IBPortRate = def("capstan.infiniband.port.rate", "By/s", Gauge, "nic",
		"Signalling rate of an InfiniBand or RoCE port (sysfs rate, converted from Gb/s).",
		ibAttrs...)
)
