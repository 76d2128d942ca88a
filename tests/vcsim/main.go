// deskpool-vcsim: a vCenter simulator for deskpool's tests, built on govmomi
// 0.24.2's simulator.VPX() model (the version Debian bookworm ships).
//
// On top of the stock simulator it adds what deskpool's tests need:
//   - asynchronous CloneVM_Task / PowerOnVM_Task / PowerOffVM_Task / Destroy_Task
//     with configurable delays (the task is returned queued/running, and
//     completes later through the simulator so property collectors see it),
//   - DuplicateName, missing-snapshot and injected InsufficientResourcesFault
//     task errors, spec.powerOn,
//   - paging in RetrievePropertiesEx: options.maxObjects (and -page-cap) cut
//     the answer into pages with a token, read with ContinueRetrievePropertiesEx,
//     dropped with CancelRetrievePropertiesEx (paging.go),
//   - VMware Tools and a guest IPv4 address in 127.0.0.0/8 some time after a power-on, and
//     Customization* events for clones made with a customization spec (guest.go),
//   - counters (SOAP calls per method, non-linked clones, clones in flight),
//   - a JSON control API on a second listener (see control.go).
//
// Build: tests/vcsim/build.sh (GOPATH mode, offline).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// vpxGoldenName is the VPX model VM used as the golden image.
const vpxGoldenName = "DC0_C0_RP0_VM0"

type options struct {
	listen        string
	controlListen string
	readyFile     string
	username      string
	password      string
	golden        string
	snapshots     string
	folders       string
	cloneDelay    time.Duration
	powerDelay    time.Duration
	guestDelay    time.Duration
	failRate      float64
	leaveVMRate   float64
	seed          int64
	sessionIdle   time.Duration
	pageCap       int
	updateTick    time.Duration
	tmpDir        string
	stdinWatch    bool
	verbose       bool
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "SOAP listen address (SDK at /sdk)")
	flag.StringVar(&o.controlListen, "control-listen", "127.0.0.1:0", "control API listen address")
	flag.StringVar(&o.readyFile, "ready-file", "", "write the ready JSON here (atomically) once serving")
	flag.StringVar(&o.username, "username", "user", "login user name")
	flag.StringVar(&o.password, "password", "pass", "login password")
	flag.StringVar(&o.golden, "golden", "golden", "name of the golden VM (the VPX VM "+vpxGoldenName+" renamed); inventory path DC0/vm/NAME")
	flag.StringVar(&o.snapshots, "snapshots", "base", "comma-separated snapshot paths to create on the golden VM, e.g. base,base/v2 (last one becomes current; empty = none)")
	flag.StringVar(&o.folders, "folders", "", "comma-separated VM folders to create under DC0/vm")
	flag.DurationVar(&o.cloneDelay, "clone-delay", 0, "time a CloneVM_Task stays running")
	flag.DurationVar(&o.powerDelay, "power-delay", 0, "time PowerOnVM_Task/PowerOffVM_Task/Destroy_Task stay running")
	flag.DurationVar(&o.guestDelay, "guest-delay", 50*time.Millisecond, "after a power-on, time until VMware Tools run, and again until the guest reports its IPv4 address (see guest.go)")
	flag.Float64Var(&o.failRate, "clone-fail-rate", 0, "fraction of clone tasks that fail with InsufficientResourcesFault")
	flag.Float64Var(&o.leaveVMRate, "fail-leave-vm-rate", 0, "fraction of injected clone failures that leave the VM behind")
	flag.Int64Var(&o.seed, "seed", 1, "seed for the failure-injection RNG")
	flag.DurationVar(&o.sessionIdle, "session-idle", 0, "simulator.SessionIdleTimeout (0 = sessions never expire when idle)")
	flag.IntVar(&o.pageCap, "page-cap", 0, "most objects per RetrievePropertiesEx page even when the client asks for more or sets no maxObjects (0 = only honour options.maxObjects)")
	flag.DurationVar(&o.updateTick, "update-tick", 5*time.Millisecond, "how often a waiting WaitForUpdatesEx looks for updates (stock govmomi 0.24.2: 250ms; a real vCenter answers at once)")
	flag.StringVar(&o.tmpDir, "tmp-dir", "", "directory for the simulated datastores (default: a fresh temp dir, removed on exit)")
	flag.BoolVar(&o.stdinWatch, "stdin-watch", false, "exit when stdin reaches EOF (parent died)")
	flag.BoolVar(&o.verbose, "verbose", false, "keep the simulator's log output")
	flag.Parse()
	return o
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func main() {
	o := parseFlags()
	if !o.verbose {
		log.SetOutput(io.Discard) // the simulator logs every WaitForUpdates tick
	}
	fail := func(format string, args ...interface{}) {
		fmt.Fprintf(os.Stderr, "deskpool-vcsim: "+format+"\n", args...)
		os.Exit(1)
	}

	// The VPX model keeps datastores in temp dirs: keep them in our own dir.
	ownTmp := false
	if o.tmpDir == "" {
		d, err := os.MkdirTemp("", "deskpool-vcsim-")
		if err != nil {
			fail("temp dir: %v", err)
		}
		o.tmpDir, ownTmp = d, true
	} else if err := os.MkdirAll(o.tmpDir, 0o700); err != nil {
		fail("tmp dir: %v", err)
	}
	_ = os.Setenv("TMPDIR", o.tmpDir)

	simulator.SessionIdleTimeout = o.sessionIdle
	if o.updateTick <= 0 {
		fail("-update-tick must be positive")
	}
	simulator.WaitForUpdatesTick = o.updateTick

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		fail("model: %v", err)
	}
	cleanup := func() {
		model.Remove()
		if ownTmp {
			_ = os.RemoveAll(o.tmpDir)
		}
	}

	// NewServer registers the SDK handlers on model.Service.ServeMux. It also
	// starts its own listener, which we close: we serve the mux ourselves,
	// behind a wrapper that counts and intercepts calls.
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(o.username, o.password)}
	inner := model.Service.NewServer()
	inner.Close()

	ctx := context.Background()
	client, err := vim25.NewClient(ctx, model.Service) // in-process, no HTTP
	if err != nil {
		fail("in-process client: %v", err)
	}

	h := newHarness(o, client, model.Service.ServeMux)
	h.setPassword = func(p string) {
		model.Service.Listen = &url.URL{Host: model.Service.Listen.Host, User: url.UserPassword(o.username, p)}
	}
	if err := h.setupInventory(ctx); err != nil {
		fail("inventory: %v", err)
	}

	sdkLn, err := net.Listen("tcp", o.listen)
	if err != nil {
		fail("listen %s: %v", o.listen, err)
	}
	ctlLn, err := net.Listen("tcp", o.controlListen)
	if err != nil {
		fail("control listen %s: %v", o.controlListen, err)
	}
	go func() { _ = (&http.Server{Handler: h}).Serve(sdkLn) }()
	go func() { _ = (&http.Server{Handler: h.controlMux()}).Serve(ctlLn) }()

	ready := map[string]interface{}{
		"sdk_url":      fmt.Sprintf("http://%s/sdk", sdkLn.Addr().String()),
		"control_url":  fmt.Sprintf("http://%s", ctlLn.Addr().String()),
		"username":     o.username,
		"password":     o.password,
		"golden_path":  "DC0/vm/" + h.goldenName,
		"golden_moref": h.golden.Value,
		"pid":          os.Getpid(),
	}
	line, _ := json.Marshal(ready)
	if o.readyFile != "" {
		tmp := o.readyFile + ".tmp"
		if err := os.WriteFile(tmp, append(line, '\n'), 0o644); err != nil {
			fail("ready file: %v", err)
		}
		if err := os.Rename(tmp, o.readyFile); err != nil {
			fail("ready file: %v", err)
		}
	}
	fmt.Println(string(line))

	done := make(chan struct{}, 1)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; done <- struct{}{} }()
	if o.stdinWatch {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); done <- struct{}{} }()
	}
	<-done
	cleanup()
}

// setupInventory renames the golden VM, powers it off, creates the snapshot
// tree and the folders. Runs before the listeners are open.
func (h *harness) setupInventory(ctx context.Context) error {
	vm, ok := simulator.Map.Any("VirtualMachine").(*simulator.VirtualMachine)
	if !ok {
		return fmt.Errorf("no VM in the model")
	}
	var golden *simulator.VirtualMachine
	for _, e := range simulator.Map.All("VirtualMachine") {
		if v := e.(*simulator.VirtualMachine); v.Name == vpxGoldenName {
			golden = v
		}
	}
	if golden == nil {
		return fmt.Errorf("VPX model has no %s (found e.g. %s)", vpxGoldenName, vm.Name)
	}
	h.golden = golden.Self
	h.goldenName = h.opts.golden
	h.dcVMFolder = *golden.Parent

	if h.opts.golden != vpxGoldenName {
		res, err := methods.Rename_Task(ctx, h.client, &types.Rename_Task{This: golden.Self, NewName: h.opts.golden})
		if err != nil {
			return fmt.Errorf("rename golden: %v", err)
		}
		if _, f := innerTaskResult(res.Returnval); f != nil {
			return fmt.Errorf("rename golden: %T", f)
		}
	}
	if golden.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		res, err := methods.PowerOffVM_Task(ctx, h.client, &types.PowerOffVM_Task{This: golden.Self})
		if err != nil {
			return fmt.Errorf("power off golden: %v", err)
		}
		if _, f := innerTaskResult(res.Returnval); f != nil {
			return fmt.Errorf("power off golden: %T", f)
		}
	}

	// Snapshot tree: each entry is a path; its parent must come earlier.
	byPath := map[string]types.ManagedObjectReference{}
	snaps := splitList(h.opts.snapshots)
	for _, p := range snaps {
		parent, leaf := "", p
		if i := strings.LastIndex(p, "/"); i >= 0 {
			parent, leaf = p[:i], p[i+1:]
		}
		if parent == "" {
			// New root: detach from the current snapshot.
			simulator.Map.WithLock(golden, func() {
				if golden.Snapshot != nil {
					golden.Snapshot.CurrentSnapshot = nil
				}
			})
		} else {
			pref, ok := byPath[parent]
			if !ok {
				return fmt.Errorf("snapshot %q: parent %q not listed before it", p, parent)
			}
			if err := h.revertTo(ctx, pref); err != nil {
				return err
			}
		}
		res, err := methods.CreateSnapshot_Task(ctx, h.client, &types.CreateSnapshot_Task{
			This: golden.Self, Name: leaf, Description: "deskpool-vcsim " + p,
		})
		if err != nil {
			return fmt.Errorf("snapshot %q: %v", p, err)
		}
		r, f := innerTaskResult(res.Returnval)
		if f != nil {
			return fmt.Errorf("snapshot %q: %T", p, f)
		}
		byPath[p] = r.(types.ManagedObjectReference)
	}
	if len(snaps) > 0 {
		if err := h.revertTo(ctx, byPath[snaps[len(snaps)-1]]); err != nil {
			return err
		}
	}

	for _, name := range splitList(h.opts.folders) {
		if _, _, err := h.createFolder(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) revertTo(ctx context.Context, snap types.ManagedObjectReference) error {
	res, err := methods.RevertToSnapshot_Task(ctx, h.client, &types.RevertToSnapshot_Task{This: snap})
	if err != nil {
		return fmt.Errorf("revert to %s: %v", snap.Value, err)
	}
	if _, f := innerTaskResult(res.Returnval); f != nil {
		return fmt.Errorf("revert to %s: %T", snap.Value, f)
	}
	return nil
}

// createFolder creates DC0/vm/NAME (or returns the existing one).
func (h *harness) createFolder(ctx context.Context, name string) (types.ManagedObjectReference, bool, error) {
	if strings.Contains(name, "/") {
		return types.ManagedObjectReference{}, false, fmt.Errorf("folder %q: nested paths are not supported", name)
	}
	if ref, ok := h.childFolder(name); ok {
		return ref, false, nil
	}
	res, err := methods.CreateFolder(ctx, h.client, &types.CreateFolder{This: h.dcVMFolder, Name: name})
	if err != nil {
		if ref, ok := h.childFolder(name); ok { // lost a race with another creator
			return ref, false, nil
		}
		return types.ManagedObjectReference{}, false, fmt.Errorf("create folder %q: %v", name, err)
	}
	return res.Returnval, true, nil
}

func (h *harness) childFolder(name string) (types.ManagedObjectReference, bool) {
	f, ok := simulator.Map.Get(h.dcVMFolder).(*simulator.Folder)
	if !ok {
		return types.ManagedObjectReference{}, false
	}
	var found types.ManagedObjectReference
	simulator.Map.WithLock(f, func() {
		for _, c := range f.ChildEntity {
			if c.Type != "Folder" {
				continue
			}
			if cf, ok := simulator.Map.Get(c).(*simulator.Folder); ok && cf.Name == name {
				found = c
			}
		}
	})
	return found, found.Value != ""
}

// innerTaskResult reads the outcome of a task the simulator ran synchronously.
func innerTaskResult(ref types.ManagedObjectReference) (types.AnyType, types.BaseMethodFault) {
	t, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: ref}
	}
	if t.Info.Error != nil {
		return nil, t.Info.Error.Fault
	}
	return t.Info.Result, nil
}
