package metrics

// Attribute keys of the cluster budget.
const (
	AttrClusterGroup  = "capstan.cluster.group"
	AttrClusterError  = "capstan.cluster.error"
	AttrClusterDomain = "capstan.cluster.domain"
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
	ClusterNodeDomain = def("capstan.cluster.node.domain", "{domain}", Gauge, "cluster",
		"1 for the power domain the node attaches to (capstan.cluster.domain, its path from the group down; the group itself for a flat group).",
		AttrClusterGroup, AttrClusterDomain)
	ClusterDomainLimit = def("capstan.cluster.domain.limit", "W", Gauge, "cluster",
		"The power limit of each domain of the group, as the elected allocator reads it (the group budget for the root); only the allocator exports it.",
		AttrClusterGroup, AttrClusterDomain)
	ClusterDomainGranted = def("capstan.cluster.domain.granted", "W", Gauge, "cluster",
		"Σ of the grants under each domain (live nodes' grants and what gone nodes keep), as the elected allocator last computed them.",
		AttrClusterGroup, AttrClusterDomain)
	ClusterDomainDraw = def("capstan.cluster.domain.draw", "W", Gauge, "cluster",
		"Σ of the draw the live nodes under each domain last wrote to their records (nodes rewrite them when demand moves), as the elected allocator read it.",
		AttrClusterGroup, AttrClusterDomain)
	ClusterDomainOversubscribed = def("capstan.cluster.domain.oversubscribed", "{oversubscribed}", Gauge, "cluster",
		"1 while a domain's reservations and its live nodes' floors exceed its limit (or its record is malformed and its limit unknown): its nodes are held at their floors and none is raised; else 0.",
		AttrClusterGroup, AttrClusterDomain)
	ClusterEtcdErrors = def("capstan.cluster.etcd.errors", "{error}", Counter, "cluster",
		"etcd problems by kind: request (a call failed or timed out), malformed (a record in etcd failed to parse and was ignored; the last good value stays), lost_lease (the node's lease expired and it registered again).",
		AttrClusterGroup, AttrClusterError)
)
