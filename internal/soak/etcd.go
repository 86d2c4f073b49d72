package soak

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// MemberCommand is the argument that makes the harness's own binary run one etcd member
// (RunMember): the members are processes of their own, killed and restarted like servers.
const MemberCommand = "etcd-member"

// RunMember runs one embedded etcd member until SIGTERM or SIGINT; args are its flags.
func RunMember(args []string) error {
	fs := flag.NewFlagSet(MemberCommand, flag.ContinueOnError)
	name := fs.String("name", "", "member name")
	dir := fs.String("dir", "", "data directory")
	client := fs.String("client", "", "client URL")
	peer := fs.String("peer", "", "peer URL")
	initial := fs.String("initial-cluster", "", "name=peerURL,…")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = *name, *dir
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	// 50 ms ticks and half-second elections: a killed leader is replaced within about a
	// second, and a member starved for CPU on a busy machine does not call elections for
	// nothing.
	cfg.TickMs, cfg.ElectionMs = 50, 500
	cu, err := url.Parse(*client)
	if err != nil {
		return err
	}
	pu, err := url.Parse(*peer)
	if err != nil {
		return err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = *initial
	cfg.InitialClusterToken = "capstan-soak"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting etcd member %s: %w", *name, err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-e.Err():
		e.Close()
		return err
	}
	e.Close()
	return nil
}

// etcdCluster is the three members, each in its own process.
type etcdCluster struct {
	self    string // the harness binary, run with MemberCommand
	dir     string
	logDir  string
	names   []string
	clients []string // host:port
	peers   []string
	mu      sync.Mutex
	procs   []*exec.Cmd
	done    []chan struct{}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

func newEtcdCluster(self, dir, logDir string, n int) (*etcdCluster, error) {
	c := &etcdCluster{self: self, dir: dir, logDir: logDir}
	for i := range n {
		ca, err := freeAddr()
		if err != nil {
			return nil, err
		}
		pa, err := freeAddr()
		if err != nil {
			return nil, err
		}
		c.names = append(c.names, fmt.Sprintf("etcd-%d", i))
		c.clients = append(c.clients, ca)
		c.peers = append(c.peers, pa)
	}
	c.procs = make([]*exec.Cmd, n)
	c.done = make([]chan struct{}, n)
	return c, nil
}

func (c *etcdCluster) initial() string {
	var parts []string
	for i, n := range c.names {
		parts = append(parts, n+"=http://"+c.peers[i])
	}
	return strings.Join(parts, ",")
}

// start starts member i (again, from its data directory after a stop).
func (c *etcdCluster) start(i int) error {
	log, err := os.OpenFile(filepath.Join(c.logDir, c.names[i]+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.self, MemberCommand, "-name", c.names[i], "-dir", filepath.Join(c.dir, c.names[i]),
		"-client", "http://"+c.clients[i], "-peer", "http://"+c.peers[i], "-initial-cluster", c.initial())
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("starting %s: %w", c.names[i], err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = log.Close(); close(done) }()
	c.mu.Lock()
	c.procs[i], c.done[i] = cmd, done
	c.mu.Unlock()
	return nil
}

// stop stops member i with sig (SIGKILL: a crash; SIGTERM: a clean stop) and waits.
func (c *etcdCluster) stop(i int, sig syscall.Signal) {
	c.mu.Lock()
	cmd, done := c.procs[i], c.done[i]
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (c *etcdCluster) startAll() error {
	for i := range c.names {
		if err := c.start(i); err != nil {
			return err
		}
	}
	return c.waitHealthy(60 * time.Second)
}

func (c *etcdCluster) stopAll(sig syscall.Signal) {
	var wg sync.WaitGroup
	for i := range c.names {
		wg.Go(func() { c.stop(i, sig) })
	}
	wg.Wait()
}

func (c *etcdCluster) client() (*clientv3.Client, error) {
	var eps []string
	for _, a := range c.clients {
		eps = append(eps, "http://"+a)
	}
	return clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
}

// leader returns the index of the member that leads, or -1.
func (c *etcdCluster) leader() int {
	cli, err := c.client()
	if err != nil {
		return -1
	}
	defer func() { _ = cli.Close() }()
	for i, a := range c.clients {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, "http://"+a)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// waitHealthy waits until a member leads and a write goes through.
func (c *etcdCluster) waitHealthy(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if c.leader() >= 0 {
			cli, err := c.client()
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err = cli.Put(ctx, "/soak/health", time.Now().String())
				cancel()
				_ = cli.Close()
				if err == nil {
					return nil
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("etcd cluster not healthy after %v; see %s", limit, c.logDir)
}
