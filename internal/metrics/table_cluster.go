package metrics

// Attribute keys of the cluster budget.
const (
	AttrClusterGroup = "capstan.cluster.group"
	AttrClusterError = "capstan.cluster.error"
)

// Cluster budget metrics (source "cluster": the etcd budget source publishes them to the store
// itself, on every change and every control period).
var (
	ClusterGrant = def("capstan.cluster.grant", "W", Gauge, "cluster",
		"The node's grant from the group allocator, as the node applies it (the floor once cut off from etcd for longer than the lease TTL).",
		AttrClusterGroup)
	ClusterBudget = def("capstan.cluster.budget", "W", Gauge, "cluster",
		"The group power budget the node last read from etcd.",
		AttrClusterGroup)
	ClusterGeneration = def("capstan.cluster.generation", "{generation}", Gauge, "cluster",
		"Generation of the grant the node applies; it rises with every publication that changed the node's grant.",
		AttrClusterGroup)
	ClusterAllocator = def("capstan.cluster.allocator", "{allocator}", Gauge, "cluster",
		"1 while this node is the group's elected allocator, else 0.",
		AttrClusterGroup)
	ClusterGrantAge = def("capstan.cluster.grant.age", "s", Gauge, "cluster",
		"Seconds since etcd last answered the node (renewed its lease): the age of the node's hold on its grant. Past capstan.cluster.lease.ttl the node runs on its floor.",
		AttrClusterGroup)
	ClusterLeaseTTL = def("capstan.cluster.lease.ttl", "s", Gauge, "cluster",
		"The node lease's TTL: how long a node cut off from etcd holds its grant before it drops to its floor.",
		AttrClusterGroup)
	ClusterEtcdErrors = def("capstan.cluster.etcd.errors", "{error}", Counter, "cluster",
		"etcd problems by kind: request (a call failed or timed out), malformed (a record in etcd failed to parse and was ignored; the last good value stays), lost_lease (the node's lease expired and it registered again).",
		AttrClusterGroup, AttrClusterError)
)
